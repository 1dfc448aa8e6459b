"""The training loop of one process (the distributed backends wrap it).

Checkpoints hold tensors and plain numbers only, are written atomically (temp file, then
rename) and loaded with `weights_only=True`. Reading order is deterministic, so a run
killed and resumed from a checkpoint continues with the same batches and ends with the same
weights as an uninterrupted run. A non-finite loss stops training, names the step, and
leaves the last good checkpoint in place."""
from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from tqdm import tqdm

from psrq.errors import PsrqError
from psrq.storage import fs

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


class TrainingError(PsrqError):
    """Training cannot go on (a NaN loss, a checkpoint that does not fit the model)."""


@dataclass
class TrainResult:
    steps: int
    samples: int
    seconds: float
    last_loss: Optional[float]  # None when no step ran
    losses: list = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def to_tensors(batch: dict, device: torch.device) -> dict:
    # np.array copies: Arrow-backed arrays are read-only, torch wants writable memory
    return {k: torch.from_numpy(np.array(v)).to(device) for k, v in batch.items() if v.dtype != object}


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam; models with parameter groups of their own (SimTier+MAKE) set per-group rates."""
    groups = model.param_groups(lr) if hasattr(model, "param_groups") else model.parameters()
    return torch.optim.Adam(groups, lr=lr)


def batch_loss(model: torch.nn.Module, state_model: torch.nn.Module, data: dict) -> torch.Tensor:
    """Log loss of the logits, plus the model's auxiliary loss where it has one (MAKE's
    separately optimised multimodal part leaves its logits in `aux_logits`)."""
    labels = data["label"].float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data), labels)
    aux = getattr(state_model, "aux_logits", None)
    return loss if aux is None else loss + torch.nn.functional.binary_cross_entropy_with_logits(aux, labels)


def save_checkpoint(directory: str, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, meta: dict) -> str:
    """Atomic (psrq.storage.fs.write_bytes): a crash leaves the previous checkpoint whole."""
    path = fs.join(directory, CHECKPOINT)
    fs.torch_save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step, "meta": meta}, path)
    return path


_RESTART = "set train.restart=true to move the folder aside and train afresh"


def load_checkpoint(directory: str) -> Optional[dict]:
    """The checkpoint in `directory`, None when there is none. Loaded with weights_only: a
    file holding anything but tensors and plain values is refused before any of it runs."""
    path = fs.join(directory, CHECKPOINT)
    try:
        ckpt = fs.torch_load(path)  # one round trip: no exists() first
    except FileNotFoundError:
        return None
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False: never follow that advice here
        raise TrainingError(f"checkpoint {path} holds objects other than tensors and plain values, which this "
                            f"project never writes: refused, nothing in it was run ({_RESTART}, or delete it)") from exc
    except Exception as exc:  # noqa: BLE001 - zip, EOF and torch errors all mean a damaged file
        raise TrainingError(f"checkpoint {path} is unreadable (truncated or corrupt: {str(exc).splitlines()[0][:200]}); "
                            f"{_RESTART}") from exc
    if not isinstance(ckpt, dict) or not {"model", "optim", "step", "meta"} <= set(ckpt):
        raise TrainingError(f"checkpoint {path} is not a checkpoint of this project (no model/optim/step/meta); {_RESTART}")
    return ckpt


def check_compatible(ckpt: dict, meta: dict, where: str = "") -> None:
    """A checkpoint resumes or is evaluated only under the identity it was written for."""
    diff = [f"{key}={ckpt['meta'].get(key)!r} (this run: {meta[key]!r})"
            for key in meta if ckpt["meta"].get(key) != meta[key]]
    if diff:
        raise TrainingError(f"checkpoint {where or ''}was written for another run: " + ", ".join(diff)
                            + f"; {_RESTART}")


def clean_stale_temporaries(directory: str) -> list[str]:
    """Remove `checkpoint.pt.tmp-<pid>` files left by killed writers (pid no longer alive)."""
    removed = []
    if not fs.is_local(directory):
        return removed  # object stores: a PUT is whole or absent, no temporaries
    for tmp in Path(fs.local_path(directory)).glob(f"{CHECKPOINT}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(str(tmp))
    if removed:
        log.info("removed %d temporary checkpoint file(s) of killed runs in %s", len(removed), directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def restore(ckpt: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> int:
    check_compatible(ckpt, meta)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optim"])
    return int(ckpt["step"])


def resume(checkpoint_dir: Optional[str], model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> int:
    """Restore model and optimizer from checkpoint_dir if it holds a checkpoint; the step."""
    if checkpoint_dir and (ckpt := load_checkpoint(checkpoint_dir)) is not None:
        step = restore(ckpt, model, opt, meta)
        log.info("resuming from step %d (%s)", step, checkpoint_dir)
        return step
    return 0


def train_loop(
    model: torch.nn.Module,
    batches: Callable[[], Iterable[dict]],
    opt: torch.optim.Optimizer,
    device: torch.device,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every: int = 0,
    meta: Optional[dict] = None,
    max_steps: Optional[int] = None,
    start_step: int = 0,
    state_model: Optional[torch.nn.Module] = None,
    progress: bool = True,
) -> TrainResult:
    """One epoch over `batches()`, skipping the first `start_step` batches (a resumed run;
    see `resume`). Checkpoints go to checkpoint_dir (None: this process writes none);
    state_model is what they hold (the module inside a DDP wrapper)."""
    meta = meta or {}
    start = start_step
    state_model = state_model or model
    model.train()
    step, samples, losses = 0, 0, []
    t0 = time.perf_counter()
    bar = tqdm(desc="train", unit="batch", disable=not progress, mininterval=2.0)
    last_good = start
    for batch in batches():
        if max_steps is not None and step >= max_steps:
            break
        if step < start:  # already trained before the resume: same order, so skip
            step += 1
            continue
        data = to_tensors(batch, device)
        loss = batch_loss(model, state_model, data)
        if not torch.isfinite(loss):
            where = f"last good checkpoint: step {last_good} in {checkpoint_dir}" if checkpoint_dir else "no checkpoint"
            raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1}; training stopped ({where})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        samples += len(batch["label"])
        losses.append(float(loss.item()))
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", samples_s=f"{samples / max(elapsed, 1e-9):,.0f}")
        if checkpoint_dir and checkpoint_every and step % checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, state_model, opt, step, meta)
            last_good = step
    bar.close()
    if checkpoint_dir and step > last_good:
        save_checkpoint(checkpoint_dir, state_model, opt, step, meta)
    return TrainResult(step - start, samples, time.perf_counter() - t0, losses[-1] if losses else None, losses)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[dict], device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, is_cold) over all batches."""
    model.eval()
    scores, labels, cold = [], [], []
    for batch in batches:
        data = to_tensors(batch, device)
        scores.append(torch.sigmoid(model(data)).cpu().numpy())
        labels.append(batch["label"])
        cold.append(batch.get("is_cold", np.zeros(len(batch["label"]), dtype=np.int32)))
    return np.concatenate(scores), np.concatenate(labels), np.concatenate(cold)
