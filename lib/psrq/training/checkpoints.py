"""Training checkpoints: what a run leaves in its folder and how it is read back.

A checkpoint is two files: `checkpoint.pt` (the weights, the step and the run's identity:
all that evaluation reads) and `optimizer-<step>.pt` (the optimiser state for resuming).
The optimiser file is written first and the weights file last, so the weights file is the
commit point: it always names a step whose optimiser state is whole. Both hold tensors and
plain numbers only, are written atomically (temp file, then rename) and loaded with
`weights_only=True`. The best validation's weights go to `best-<step>.pt` (what evaluation
reads), named by the checkpoint's early-stopping record."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Optional

import torch

from psrq.errors import PsrqError, TrainingError
from psrq.storage import fs

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST = "best-{step}.pt"  # the weights of the best validation so far (the checkpoint's record names it)
OPTIMIZER = "optimizer-{step}.pt"


def save_checkpoint(directory: str, model: torch.nn.Module, opt, step: int, meta: dict,
                    trace: Optional[dict] = None) -> str:
    """Optimiser state first, then the weights (the commit point) with the early-stopping
    record `trace`, then older optimiser states go. Each write is atomic
    (psrq.storage.fs.write_bytes): a crash at any point leaves a weights file whose step has
    its optimiser state."""
    fs.torch_save({"optim": opt.state_dict(), "step": step, "identity": meta.get("identity")},
                  fs.join(directory, OPTIMIZER.format(step=step)))
    path = fs.join(directory, CHECKPOINT)
    fs.torch_save({"model": model.state_dict(), "step": step, "meta": meta, "trace": trace}, path)
    best = BEST.format(step=(trace or {}).get("best_step"))
    for name in fs.listdir(directory):
        if name.endswith(".pt") and ((name.startswith("optimizer-") and name != OPTIMIZER.format(step=step))
                                     or (name.startswith("best-") and name != best)):
            fs.delete(fs.join(directory, name))  # superseded, or written after a step that never committed
    return path


_RESTART = "set train.restart=true to move the folder aside and train afresh"


def _load(path: str):
    """torch_load with weights_only; a damaged or foreign file is a TrainingError."""
    try:
        return fs.torch_load(path)  # one round trip: no exists() first
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False: never follow that advice here
        raise TrainingError(f"checkpoint {path} holds objects other than tensors and plain values, which this "
                            f"project never writes: refused, nothing in it was run ({_RESTART}, or delete it)") from exc
    except Exception as exc:  # noqa: BLE001 - zip, EOF and torch errors all mean a damaged file
        raise TrainingError(f"checkpoint {path} is unreadable (truncated or corrupt: {str(exc).splitlines()[0][:200]}); "
                            f"{_RESTART}") from exc


def save_best(directory: str, model: torch.nn.Module, step: int, meta: dict, valid: dict) -> str:
    """The weights of a new best validation, written before the step's checkpoint, whose
    early-stopping record then names it (a crash in between leaves a file no record names)."""
    path = fs.join(directory, BEST.format(step=step))
    fs.torch_save({"model": model.state_dict(), "step": step, "meta": meta, "valid": valid}, path)
    return path


def load_checkpoint(directory: str, best: bool = False) -> Optional[dict]:
    """The weights checkpoint in `directory` ({model, step, meta, ...}), None when there is
    none; best=True: the best validation's weights (best-<step>.pt) where the run kept them, else
    the last. Loaded with weights_only: a file holding anything but tensors and plain values
    is refused before any of it runs. The optimiser state is not read (load_optimizer_state)."""
    last = load_checkpoint_file(fs.join(directory, CHECKPOINT))
    best_step = ((last or {}).get("trace") or {}).get("best_step") if best else None
    if last is None or best_step is None or best_step == last["step"]:
        return last
    ckpt = load_checkpoint_file(path := fs.join(directory, BEST.format(step=best_step)))
    if ckpt is None:
        raise TrainingError(f"the checkpoint in {directory} names its best weights {path}, which is missing; {_RESTART}")
    return ckpt


def load_checkpoint_file(path: str) -> Optional[dict]:
    try:
        ckpt = _load(path)
    except FileNotFoundError:
        return None
    if not isinstance(ckpt, dict) or not {"model", "step", "meta"} <= set(ckpt):
        raise TrainingError(f"checkpoint {path} is not a checkpoint of this project (no model/step/meta); {_RESTART}")
    return ckpt


def load_optimizer_state(directory: str, step: int) -> dict:
    path = fs.join(directory, OPTIMIZER.format(step=step))
    try:
        state = _load(path)
    except FileNotFoundError:
        raise TrainingError(f"the checkpoint in {directory} is at step {step} but its optimiser state {path} is "
                            f"missing; {_RESTART}") from None
    if not isinstance(state, dict) or state.get("step") != step or "optim" not in state:
        raise TrainingError(f"{path} is not the optimiser state of step {step}; {_RESTART}")
    return state["optim"]


def check_compatible(ckpt: dict, meta: dict, where: str = "") -> None:
    """A checkpoint resumes or is evaluated only under the identity it was written for."""
    diff = [f"{key}={ckpt['meta'].get(key)!r} (this run: {meta[key]!r})"
            for key in meta if ckpt["meta"].get(key) != meta[key]]
    if diff:
        raise TrainingError(f"checkpoint {where or ''}was written for another run: " + ", ".join(diff)
                            + f"; {_RESTART}")


def clean_stale_temporaries(directory: str) -> list[str]:
    """Remove `<checkpoint file>.tmp-<pid>` files left by killed writers (pid no longer alive)."""
    removed: list[str] = []
    if not fs.is_local(directory):
        return removed  # object stores: a PUT is whole or absent, no temporaries
    for tmp in Path(fs.local_path(directory)).glob("*.pt.tmp-*"):
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


def restore(directory: str, ckpt: dict, model: torch.nn.Module, opt, meta: dict) -> int:
    """Weights and optimiser state of the checkpoint `ckpt` (read from `directory`)."""
    check_compatible(ckpt, meta)
    step = int(ckpt["step"])
    model.load_state_dict(ckpt["model"])
    try:
        opt.load_state_dict(load_optimizer_state(directory, step))
    except (ValueError, KeyError, PsrqError) as exc:
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(f"the optimiser state in {directory} does not fit this run ({exc}); {_RESTART}") from exc
    return step


def resume(checkpoint_dir: Optional[str], model: torch.nn.Module, opt, meta: dict) -> tuple[int, Optional[dict]]:
    """Restore model and optimizer from checkpoint_dir if it holds a checkpoint: its step and
    early-stopping record (0, None: nothing to resume)."""
    if checkpoint_dir and (ckpt := load_checkpoint(checkpoint_dir)) is not None:
        step = restore(checkpoint_dir, ckpt, model, opt, meta)
        log.info("resuming from step %d (%s)", step, checkpoint_dir)
        return step, ckpt.get("trace")
    return 0, None
