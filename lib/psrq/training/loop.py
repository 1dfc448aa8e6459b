"""The training loop of one process (the distributed backends wrap it).

Checkpoints (psrq.training.checkpoints) are written every `checkpoint_every` steps. Reading
order is deterministic and each step's randomness is drawn from the run's seed and the step
alone, so a run
killed and resumed from a checkpoint continues with the same batches and ends with the same
weights as an uninterrupted run. A non-finite loss stops training, names the step, and
leaves the last good checkpoint in place.

Epochs and early stopping: the loop makes up to `epochs` passes; at each validation point
(every eval_every steps, or each epoch's end) a `validate` callback scores the valid split,
psrq.training.early_stop records it, the best weights so far go to `best-<step>.pt` (what
evaluation reads), and training stops after `patience` validations without a better score
(train.select_on: AUC or Logloss).
The stopping record travels in checkpoint.pt, so a resumed run continues the same curve."""
from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, cast

import numpy as np
import torch
from tqdm import tqdm

from psrq.errors import TrainingError
from psrq.models.base import LOGITS, Ranker
from psrq.training.checkpoints import save_best, save_checkpoint
from psrq.training.early_stop import EarlyStopping
from psrq.training.optim import gradient_bytes
from psrq.training.readers import prefetched

log = logging.getLogger(__name__)


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


@dataclass
class LoopOptions:
    """How train_loop runs.

    checkpoint_dir: where checkpoints go (None: this process writes none), every
    checkpoint_every steps and at the end, with `meta` (the run's identity). max_steps: a cap
    on the steps; start_step: the steps a resumed run skips (they were trained before its
    checkpoint; see psrq.training.checkpoints.resume). epoch_steps: the steps of one epoch, the
    same on every data-parallel rank: a short shard is padded (see `padded`), so that every
    rank takes part in every step's exchange and applies the same update, and the ranks stay
    equal with no join and no final broadcast. amp_dtype: the autocast dtype of the forward
    pass (see autocast_dtype), None for float32. epochs: passes over the data at most;
    eval_every: steps between validations (0: each epoch's end). prefetch: batches read ahead
    on a background thread (readers.prefetched; the same batches in the same order). seed:
    each step's randomness (embedding dropout) is drawn from step_seed(seed, step) alone, so
    a resumed run, which skips the steps before its checkpoint, draws what an uninterrupted
    one draws (a data-parallel rank passes its own seed: rank_seed)."""

    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 0
    meta: dict = field(default_factory=dict)
    max_steps: Optional[int] = None
    start_step: int = 0
    progress: bool = True
    epoch_steps: Optional[int] = None
    amp_dtype: Optional[torch.dtype] = None
    epochs: int = 1
    eval_every: int = 0
    prefetch: int = 0
    seed: Optional[int] = None

    @property
    def limit(self) -> float:
        caps = (self.max_steps, self.epoch_steps * self.epochs if self.epoch_steps is not None else None)
        return min([float(c) for c in caps if c is not None] + [float("inf")])


@dataclass
class LoopHooks:
    """What train_loop calls out to. validate(model) -> valid metrics, at each validation point
    (every eval_every steps, else at each epoch's end, and after the last step) on the
    process that decides (rank 0); `stopping` records them and says when to stop;
    agree(flag) -> the flag's maximum over the ranks (every rank calls it at every
    validation point, so all stop at the same step; None in one process); state_model: what
    checkpoints hold (the ranker inside a DDP wrapper; None: the model itself)."""

    validate: Optional[Callable[[torch.nn.Module], dict]] = None
    stopping: Optional[EarlyStopping] = None
    agree: Optional[Callable[[int], int]] = None
    state_model: Optional[torch.nn.Module] = None


def train_loop(model: torch.nn.Module, batches: Callable[[], Iterable[dict]], opt, device: torch.device,
               options: Optional[LoopOptions] = None, hooks: Optional[LoopHooks] = None) -> TrainResult:
    """Up to `options.epochs` passes over `batches()` (called once per epoch): see LoopOptions
    and LoopHooks."""
    return _Loop(model, opt, device, options or LoopOptions(), hooks or LoopHooks()).run(batches)


class _Loop:
    """One run of train_loop: its counters, and the steps of an epoch."""

    def __init__(self, model: torch.nn.Module, opt, device: torch.device, options: LoopOptions, hooks: LoopHooks):
        self.model, self.opt, self.device, self.o = model, opt, device, options
        self.ranker = cast(Ranker, hooks.state_model or model)
        self.validate, self.agree = hooks.validate, hooks.agree
        self.stopping = hooks.stopping or EarlyStopping()
        self.step, self.samples, self.pads, self.grad_bytes, self.waited = 0, 0, 0, 0.0, 0.0
        self.losses: list[float] = []
        self.since_check: list[float] = []
        self.step_seconds: list[float] = []
        self.last_good = self.checked = options.start_step
        self.unsaved = False
        self.limit = options.limit
        self.t0 = time.perf_counter()
        # a bar on a terminal only (disable=None); logs get the per-epoch validation lines
        self.bar = tqdm(desc="train", unit="batch", disable=None if options.progress else True, mininterval=2.0)

    def run(self, batches: Callable[[], Iterable[dict]]) -> TrainResult:
        o = self.o
        if self.stopping.stopped:  # a run that had stopped early and was killed before its result: done
            self.bar.close()
            return TrainResult(0, 0, 0.0, None, precision=self._precision(), stopping=self.stopping)
        self.model.train()
        stop = False
        with stop_on_sigterm(self.agree is None) as terminated:
            for epoch in range(o.epochs):
                if stop or self.step >= self.limit:
                    break
                if o.epoch_steps is not None and o.start_step >= self.step + o.epoch_steps:
                    self.step += o.epoch_steps  # trained before the resume: skipped without reading it
                    continue
                stop = self._epoch(batches, epoch, terminated)
                if not stop and self.step > self.checked and self.step > o.start_step:  # an epoch of unknown length ended
                    stop = self._check(epoch)
        self.bar.close()
        if o.checkpoint_dir and (self.step > self.last_good or self.unsaved):
            self._save()
        taken = max(self.step - o.start_step, 0)
        return TrainResult(taken, self.samples, time.perf_counter() - self.t0, self.losses[-1] if self.losses else None,
                           self.losses, self.pads, self.grad_bytes / max(taken, 1), self.step_seconds, self.waited,
                           self._precision(), self.stopping)

    def _precision(self) -> str:
        return "bf16" if self.o.amp_dtype == torch.bfloat16 else "fp32"

    def _epoch(self, batches: Callable[[], Iterable[dict]], epoch: int, terminated: threading.Event) -> bool:
        """One pass; True when training stops (early stopping)."""
        o = self.o
        with closing(prefetched(batches(), o.prefetch)) as source:
            stream = padded(source, o.epoch_steps) if o.epoch_steps is not None else ((b, True) for b in source)
            t_ready = time.perf_counter()
            for batch, own in stream:
                if self.step >= self.limit:
                    break
                if self.step < o.start_step:  # already trained before the resume: same order, so skip
                    self.step += 1
                    continue
                t_step = time.perf_counter()
                self.waited += t_step - t_ready
                self._train_step(batch, own, t_step)
                if self._after_step(epoch, terminated):
                    return True
                t_ready = time.perf_counter()  # validations and checkpoints are not waiting for data
        return False

    def _train_step(self, batch: dict, own: bool, t_step: float) -> None:
        o = self.o
        if o.seed is not None:
            torch.manual_seed(step_seed(o.seed, self.step))
        data = to_tensors(batch, self.device)
        with torch.autocast(self.device.type, dtype=o.amp_dtype or torch.float32, enabled=o.amp_dtype is not None):
            loss = batch_loss(self.model, self.ranker, data)
        if not torch.isfinite(loss):
            where = (f"last good checkpoint: step {self.last_good} in {o.checkpoint_dir}" if o.checkpoint_dir
                     else "no checkpoint")
            raise TrainingError(f"non-finite loss ({loss.item()}) at step {self.step + 1}; training stopped ({where})")
        self.opt.zero_grad()
        (loss if own else loss * 0.0).backward()
        self.grad_bytes += gradient_bytes(self.ranker)
        self.opt.step()
        self.step_seconds.append(time.perf_counter() - t_step)
        self.step += 1
        if own:
            self.samples += len(batch["label"])
            self.losses.append(float(loss.item()))
            self.since_check.append(self.losses[-1])
        else:
            self.pads += 1
        self.bar.update(1)
        if self.losses:
            elapsed = time.perf_counter() - self.t0
            self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}", samples_s=f"{self.samples / max(elapsed, 1e-9):,.0f}")

    def _after_step(self, epoch: int, terminated: threading.Event) -> bool:
        """The step boundary: a validation point, a checkpoint, a SIGTERM; True to stop."""
        o, step = self.o, self.step
        stop = False
        end_of_epoch = o.epoch_steps is not None and step % o.epoch_steps == 0
        if (o.eval_every and step % o.eval_every == 0) or (not o.eval_every and end_of_epoch) or step == self.limit:
            stop = self._check(epoch)
        if o.checkpoint_dir and o.checkpoint_every and step % o.checkpoint_every == 0:
            self._save()
        if terminated.is_set():  # checkpoint, then stop
            if o.checkpoint_dir and (step > self.last_good or self.unsaved):
                self._save()
            where = f"a checkpoint at step {step} in {o.checkpoint_dir}" if o.checkpoint_dir else "no checkpoint"
            raise TrainingInterrupted(f"training stopped by SIGTERM after step {step} ({where}): run the same command "
                                      "again to resume")
        return stop

    def _save(self) -> None:
        assert self.o.checkpoint_dir is not None
        save_checkpoint(self.o.checkpoint_dir, self.ranker, self.opt, self.step, self.o.meta, self.stopping.state())
        self.last_good, self.unsaved = self.step, False

    def _check(self, epoch: int) -> bool:
        """A validation point: rank 0 scores, every rank learns whether to stop."""
        self.checked = self.step
        flag = 0
        if self.validate is not None:
            valid = self.validate(self.ranker)
            self.model.train()
            loss = float(np.mean(self.since_check)) if self.since_check else None
            if self.stopping.update(self.step, epoch, loss, valid) and self.o.checkpoint_dir:
                save_best(self.o.checkpoint_dir, self.ranker, self.step, self.o.meta, valid)
            best = self.stopping
            log.info("step %d (epoch %d): train loss %s, valid AUC %s, logloss %s%s", self.step, epoch + 1,
                     "n/a" if loss is None else f"{loss:.4f}", valid.get("auc"), valid.get("logloss"),
                     " (best)" if best.best_step == self.step
                     else f" (best {best.metric} {best.best_score} at step {best.best_step})")
            flag = int(best.stopped)
            self.unsaved = True
        self.since_check.clear()
        return bool(self.agree(flag) if self.agree is not None else flag)


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
