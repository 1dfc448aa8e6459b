"""Early stopping on a valid split's score (train.select_on: AUC, higher is better, or
Logloss, lower is better), and the run's learning curve.

A plain record that travels in the checkpoint (plain values only), so a resumed run knows
its best step, how long it has gone without a better one, and whether it already stopped."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class EarlyStopping:
    patience: int = 0                  # validations without a better score before stopping; 0: never
    best_step: Optional[int] = None    # the step whose weights scored best (best-<step>.pt)
    best: Optional[dict] = None        # its valid metrics
    since_best: int = 0
    stopped: bool = False
    curve: list = field(default_factory=list)  # {step, epoch, train_loss, valid_auc, ...} per validation
    metric: str = "auc"                # the valid score compared: auc (higher is better) or logloss (lower)

    @property
    def best_auc(self) -> Optional[float]:
        return None if self.best is None else self.best.get("auc")

    @property
    def best_score(self) -> Optional[float]:
        return None if self.best is None else self.best.get(self.metric)

    def _better(self, score: Optional[float]) -> bool:
        if score is None:  # a missing score never beats a present one
            return False
        best = self.best_score
        return best is None or (score < best if self.metric == "logloss" else score > best)

    def update(self, step: int, epoch: int, train_loss: Optional[float], valid: dict) -> bool:
        """Record a validation; True when its weights are the new best (the first always is,
        so a run always has a best)."""
        self.curve.append({"step": step, "epoch": epoch, "train_loss": train_loss,
                           **{f"valid_{k}": v for k, v in valid.items() if k != "rows"}})
        improved = self.best is None or self._better(valid.get(self.metric))
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
    def restored(cls, state: Optional[dict], patience: int, metric: str = "auc") -> "EarlyStopping":
        """From a checkpoint's record (None: a fresh run), under this run's patience and score
        (the score is part of the run's identity: a checkpoint never changes it)."""
        return cls(patience=patience, metric=metric) if not state else cls(**{**state, "patience": patience,
                                                                               "metric": metric})
