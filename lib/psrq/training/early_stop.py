"""Early stopping on the valid split's AUC, and the run's learning curve.

A plain record that travels in the checkpoint (plain values only), so a resumed run knows
its best step, how long it has gone without a better one, and whether it already stopped."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class EarlyStopping:
    patience: int = 0                  # validations without a better AUC before stopping; 0: never
    best_step: Optional[int] = None    # the step whose weights scored best (best-<step>.pt)
    best: Optional[dict] = None        # its valid metrics
    since_best: int = 0
    stopped: bool = False
    curve: list = field(default_factory=list)  # {step, epoch, train_loss, valid_auc, ...} per validation

    @property
    def best_auc(self) -> Optional[float]:
        return None if self.best is None else self.best.get("auc")

    def update(self, step: int, epoch: int, train_loss: Optional[float], valid: dict) -> bool:
        """Record a validation; True when its weights are the new best (the first always is,
        so a run always has a best; a missing AUC never beats a present one)."""
        self.curve.append({"step": step, "epoch": epoch, "train_loss": train_loss,
                           **{f"valid_{k}": v for k, v in valid.items() if k != "rows"}})
        auc = valid.get("auc")
        improved = self.best is None or (auc is not None and (self.best_auc is None or auc > self.best_auc))
        if improved:
            self.best_step, self.best, self.since_best = step, dict(valid), 0
        else:
            self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            self.stopped = True
        return improved

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def restored(cls, state: Optional[dict], patience: int) -> "EarlyStopping":
        """From a checkpoint's record (None: a fresh run), under this run's patience."""
        return cls(patience=patience) if not state else cls(**{**state, "patience": patience})
