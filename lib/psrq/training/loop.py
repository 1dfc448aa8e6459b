"""The training loop of one process (the distributed backends wrap it).

A checkpoint is two files: `checkpoint.pt` (the weights, the step and the run's identity:
all that evaluation reads) and `optimizer-<step>.pt` (the optimiser state for resuming).
The optimiser file is written first and the weights file last, so the weights file is the
commit point: it always names a step whose optimiser state is whole. Both hold tensors and
plain numbers only, are written atomically (temp file, then rename) and loaded with
`weights_only=True`. Reading order is deterministic, so a run
killed and resumed from a checkpoint continues with the same batches and ends with the same
weights as an uninterrupted run. A non-finite loss stops training, names the step, and
leaves the last good checkpoint in place.

Epochs and early stopping: the loop makes up to `epochs` passes; at each validation point
(every eval_every steps, or each epoch's end) a `validate` callback scores the valid split,
psrq.training.early_stop records it, the best weights so far go to `best-<step>.pt` (what
evaluation reads), and training stops after `patience` validations without a better AUC.
The stopping record travels in checkpoint.pt, so a resumed run continues the same curve."""
from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, cast

import numpy as np
import torch
from tqdm import tqdm

from psrq.errors import PsrqError
from psrq.models.base import LOGITS, Ranker
from psrq.storage import fs
from psrq.training.early_stop import EarlyStopping
from psrq.training.optim import gradient_bytes
from psrq.training.readers import prefetched

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST = "best-{step}.pt"  # the weights of the best validation so far (the checkpoint's record names it)
OPTIMIZER = "optimizer-{step}.pt"


class TrainingError(PsrqError):
    """Training cannot go on (a NaN loss, a checkpoint that does not fit the model)."""


class TrainingInterrupted(TrainingError):
    """SIGTERM stopped the training at a step boundary, after a checkpoint: the same command
    resumes it. The job exits 143 (128 + SIGTERM), as a terminated process does."""

    exit_code = 143


@contextmanager
def stop_on_sigterm(enabled: bool):
    """An event set by SIGTERM while the block runs (in the main thread of a single-process
    training; elsewhere, or with enabled false, one that is never set), the previous handler
    restored after."""
    requested = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: requested.set())
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class TrainResult:
    steps: int
    samples: int
    seconds: float
    last_loss: Optional[float]  # None when no step ran
    losses: list = field(default_factory=list)
    padding_steps: int = 0     # synchronised steps this rank took without data of its own
    gradient_bytes: float = 0  # mean bytes of gradient this rank contributed per step
    step_seconds: list = field(default_factory=list)  # wall time of each step taken
    wait_seconds: float = 0.0  # time spent waiting for the next batch (the reader), between steps
    precision: str = "fp32"    # what the forward pass ran in (bf16 under autocast)
    stopping: Optional[EarlyStopping] = None  # the validations and the best step (with a validate callback)

    @property
    def median_step_seconds(self) -> Optional[float]:
        return float(np.median(self.step_seconds)) if self.step_seconds else None

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    def timing(self) -> dict:
        """Where the loop's time went: in steps (tensors, forward, backward, the exchange,
        the update) and waiting for the reader's next batch."""
        return {"step_seconds_total": round(float(sum(self.step_seconds)), 3),
                "wait_seconds": round(self.wait_seconds, 3)}


def to_tensors(batch: dict, device: torch.device) -> dict:
    # np.array copies: Arrow-backed arrays are read-only, torch wants writable memory
    return {k: torch.from_numpy(np.array(v)).to(device) for k, v in batch.items() if v.dtype != object}


def device_for(choice: str, local_rank: int = 0) -> torch.device:
    """A process's device for train.device: cuda:<local rank> (modulo the visible devices)
    when its task has a GPU and the setting allows it, else the CPU; `cuda` without one is
    an error. One function for the single process and every Horovod/DDP rank."""
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    if choice == "cuda":
        raise TrainingError(f"train.device=cuda but the process with local rank {local_rank} sees no CUDA device")
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast where it is safe and pays (CUDA; train.precision=auto), or when asked
    (bf16); None: float32 throughout. Embedding lookups and the loss stay float32 under autocast."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def batch_loss(model: torch.nn.Module, state_model: Ranker, data: dict) -> torch.Tensor:
    """Log loss of the logits plus the ranker's auxiliary losses (MAKE's multimodal head).
    model: what runs the forward pass (the ranker, or DDP around it); state_model: the ranker."""
    outputs = model(data)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs[LOGITS], data["label"].float())
    for term in state_model.losses(data, outputs).values():
        loss = loss + term
    return loss


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


def padded(batches: Iterable[dict], total: int) -> Iterable[tuple[dict, bool]]:
    """Exactly `total` (batch, own) pairs: this rank's batches (own=True), then, on a rank
    whose shard is shorter than another's, its first batch again with own=False (trained
    with weight 0: the rank takes part in every exchange without adding to it)."""
    first, n = None, 0
    for batch in batches:
        if n == total:
            return
        first = batch if first is None else first
        yield batch, True
        n += 1
    if first is None and total:
        raise TrainingError("this rank's shard yielded no batch; every rank needs at least one")
    for _ in range(total - n):
        yield cast(dict, first), False


def batch_count(rows: int, batch_size: int) -> int:
    return -(-rows // batch_size)


def step_seed(seed: int, step: int) -> int:
    """The generator seed of one step: a function of the run's seed and the step alone."""
    return (seed * 1_000_003 + step) % 2**63


def rank_seed(seed: int, rank: int) -> int:
    """A data-parallel rank's seed: each rank draws its own dropout masks."""
    return seed * 4_099 + rank


def train_loop(
    model: torch.nn.Module,
    batches: Callable[[], Iterable[dict]],
    opt,
    device: torch.device,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every: int = 0,
    meta: Optional[dict] = None,
    max_steps: Optional[int] = None,
    start_step: int = 0,
    state_model: Optional[torch.nn.Module] = None,
    progress: bool = True,
    epoch_steps: Optional[int] = None,
    amp_dtype: Optional[torch.dtype] = None,
    epochs: int = 1,
    validate: Optional[Callable[[torch.nn.Module], dict]] = None,
    eval_every: int = 0,
    stopping: Optional[EarlyStopping] = None,
    agree: Optional[Callable[[int], int]] = None,
    prefetch: int = 0,
    seed: Optional[int] = None,
) -> TrainResult:
    """Up to `epochs` passes over `batches()` (called once per epoch), skipping the first
    `start_step` steps (a resumed run; see `resume`). Checkpoints go to checkpoint_dir
    (None: this process writes none); state_model is what they hold (the module inside a
    DDP wrapper).

    epoch_steps: the steps of one epoch, the same on every data-parallel rank: a
    short shard is padded (see `padded`), so that every rank takes part in every step's
    exchange and applies the same update, and the ranks stay equal with no join and no
    final broadcast. amp_dtype: the autocast dtype of the forward pass (see
    autocast_dtype), None for float32.

    validate(model) -> valid metrics, called at each validation point (every eval_every
    steps, else at each epoch's end, and after the last step) on the process that decides
    (rank 0); `stopping` records them and says when to stop; agree(flag) -> the flag's
    maximum over the ranks (every rank calls it at every validation point, so all stop at
    the same step; None in one process). prefetch: batches read ahead on a background
    thread (readers.prefetched; the same batches in the same order). seed: each step's
    randomness (embedding dropout) is drawn from step_seed(seed, step) alone, so a resumed
    run, which skips the steps before its checkpoint, draws what an uninterrupted one draws
    (a data-parallel rank passes its own seed: rank_seed)."""
    meta = meta or {}
    start = start_step
    state_model = cast(Ranker, state_model or model)
    stopping = stopping or EarlyStopping()
    model.train()
    step, samples, losses, pads, grad_bytes, step_seconds, waited = 0, 0, [], 0, 0, [], 0.0
    since_check: list[float] = []
    t0 = time.perf_counter()
    # a bar on a terminal only (disable=None); logs get the per-epoch validation lines
    bar = tqdm(desc="train", unit="batch", disable=None if progress else True, mininterval=2.0)
    last_good, checked = start, start
    stop, unsaved = False, False
    limit = min(x for x in (max_steps, epoch_steps * epochs if epoch_steps is not None else None, float("inf"))
                if x is not None)

    def check(epoch: int) -> bool:
        """A validation point: rank 0 scores, every rank learns whether to stop."""
        nonlocal checked, unsaved
        checked = step
        flag = 0
        if validate is not None:
            valid = validate(state_model)
            model.train()
            loss = float(np.mean(since_check)) if since_check else None
            if stopping.update(step, epoch, loss, valid) and checkpoint_dir:
                save_best(checkpoint_dir, state_model, step, meta, valid)
            log.info("step %d (epoch %d): train loss %s, valid AUC %s%s", step, epoch + 1,
                     "n/a" if loss is None else f"{loss:.4f}", valid.get("auc"),
                     " (best)" if stopping.best_step == step else f" (best {stopping.best_auc} at step {stopping.best_step})")
            flag = int(stopping.stopped)
            unsaved = True
        since_check.clear()
        return bool(agree(flag) if agree is not None else flag)

    if stopping.stopped:  # a run that had stopped early and was killed before its result: done
        return TrainResult(0, 0, 0.0, None, precision="bf16" if amp_dtype == torch.bfloat16 else "fp32", stopping=stopping)
    with stop_on_sigterm(agree is None) as terminated:
        for epoch in range(epochs):
            if stop or step >= limit:
                break
            if epoch_steps is not None and start >= step + epoch_steps:
                step += epoch_steps  # trained before the resume: skipped without reading it
                continue
            with closing(prefetched(batches(), prefetch)) as source:
                stream = padded(source, epoch_steps) if epoch_steps is not None else ((b, True) for b in source)
                t_ready = time.perf_counter()
                for batch, own in stream:
                    if step >= limit:
                        break
                    if step < start:  # already trained before the resume: same order, so skip
                        step += 1
                        continue
                    t_step = time.perf_counter()
                    waited += t_step - t_ready
                    if seed is not None:
                        torch.manual_seed(step_seed(seed, step))
                    data = to_tensors(batch, device)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        loss = batch_loss(model, state_model, data)
                    if not torch.isfinite(loss):
                        where = (f"last good checkpoint: step {last_good} in {checkpoint_dir}" if checkpoint_dir
                                 else "no checkpoint")
                        raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1}; training stopped ({where})")
                    opt.zero_grad()
                    (loss if own else loss * 0.0).backward()
                    grad_bytes += gradient_bytes(state_model)
                    opt.step()
                    step_seconds.append(time.perf_counter() - t_step)
                    step += 1
                    if own:
                        samples += len(batch["label"])
                        losses.append(float(loss.item()))
                        since_check.append(losses[-1])
                    else:
                        pads += 1
                    elapsed = time.perf_counter() - t0
                    bar.update(1)
                    if losses:
                        bar.set_postfix(loss=f"{losses[-1]:.4f}", samples_s=f"{samples / max(elapsed, 1e-9):,.0f}")
                    end_of_epoch = epoch_steps is not None and step % epoch_steps == 0
                    if (eval_every and step % eval_every == 0) or (not eval_every and end_of_epoch) or step == limit:
                        stop = check(epoch)
                    if checkpoint_dir and checkpoint_every and step % checkpoint_every == 0:
                        save_checkpoint(checkpoint_dir, state_model, opt, step, meta, stopping.state())
                        last_good, unsaved = step, False
                    if terminated.is_set():  # a step boundary: checkpoint, then stop
                        if checkpoint_dir and (step > last_good or unsaved):
                            save_checkpoint(checkpoint_dir, state_model, opt, step, meta, stopping.state())
                        where = f"a checkpoint at step {step} in {checkpoint_dir}" if checkpoint_dir else "no checkpoint"
                        raise TrainingInterrupted(f"training stopped by SIGTERM after step {step} ({where}): run the "
                                                  "same command again to resume")
                    if stop:
                        break
                    t_ready = time.perf_counter()  # validations and checkpoints are not waiting for data
            if not stop and step > checked and step > start:  # an epoch of unknown length ended
                stop = check(epoch)
    bar.close()
    if checkpoint_dir and (step > last_good or unsaved):
        save_checkpoint(checkpoint_dir, state_model, opt, step, meta, stopping.state())
    taken = max(step - start, 0)
    return TrainResult(taken, samples, time.perf_counter() - t0, losses[-1] if losses else None, losses, pads,
                       grad_bytes / max(taken, 1), step_seconds, waited,
                       "bf16" if amp_dtype == torch.bfloat16 else "fp32", stopping)


def valid_metrics(model: torch.nn.Module, batches: Iterable[dict], device: torch.device) -> dict:
    """The evaluation's metrics (psrq.evaluation.arrays) of `model` on `batches`."""
    from psrq.evaluation.arrays import metrics

    return metrics(*predict(model, batches, device))


def validator(reader: str, path: str, device: torch.device) -> Callable[[torch.nn.Module], dict]:
    """validate(model) for train_loop: the evaluation's metrics on the split at `path`."""
    from psrq.training.readers import make_reader

    def validate(model: torch.nn.Module) -> dict:
        columns = [*cast(Ranker, model).inputs, "label", "is_cold"]
        return valid_metrics(model, make_reader(reader, path, columns, 4096), device)

    return validate


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[dict], device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, is_cold) over all batches."""
    model.eval()
    scores, labels, cold = [], [], []
    for batch in batches:
        data = to_tensors(batch, device)
        scores.append(torch.sigmoid(model(data)[LOGITS]).cpu().numpy())
        labels.append(batch["label"])
        cold.append(batch.get("is_cold", np.zeros(len(batch["label"]), dtype=np.int32)))
    return np.concatenate(scores), np.concatenate(labels), np.concatenate(cold)
