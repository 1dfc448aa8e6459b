"""Stage: train a ranker on the samples and report validation metrics.

The run's identity (psrq.training.identity) names its checkpoint folder. A finished run
leaves `result.json` there: a re-run of the same identity reports it with status "already
done" and trains nothing; a run with any other setting trains in its own folder."""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Optional

import torch

from psrq.config import Config
from psrq.errors import TrainingError
from psrq.job import JobContext
from psrq.models.registry import build_model, needs_content
from psrq.results import TrackedResult
from psrq.samples.content import read_content
from psrq.samples.layout import FIRST_INDEX, VOCAB_ORDER, SamplesManifest
from psrq.storage import fs
from psrq.tracking.stages import train_runs
from psrq.tracking.store import tracked
from psrq.training import statistics
from psrq.training.checkpoints import BEST, CHECKPOINT, check_compatible, clean_stale_temporaries, load_checkpoint, restore
from psrq.training.early_stop import EarlyStopping
from psrq.training.identity import TrainIdentity
from psrq.training.loop import LoopHooks, LoopOptions, autocast_dtype, batch_count, device_for, train_loop, validator
from psrq.training.optim import make_optimizer
from psrq.training.readers import make_reader
from psrq.training.run import checkpoint_meta, content_file, identity_and_folder, model_args

log = logging.getLogger(__name__)
RESULT = "result.json"


def move_aside(folder: str, why: str) -> str:
    moved = f"{folder}.moved-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
    fs.move(folder, moved)
    log.warning("moved %s aside to %s (%s)", folder, moved, why)
    return moved


def read_result(folder: str, ident: TrainIdentity) -> dict | None:
    """The finished run's summary, if this identity finished in `folder`."""
    f = fs.join(folder, RESULT)
    try:
        text = fs.read_text(f)
    except FileNotFoundError:
        return None
    try:
        stored = json.loads(text)
    except ValueError as exc:
        raise TrainingError(f"{f} is unreadable ({exc}); set train.restart=true to train afresh") from exc
    if stored.get("identity") != ident.key:
        raise TrainingError(f"{f} belongs to run {stored.get('identity')!r}, not {ident.key!r}: "
                            "set train.restart=true to train afresh")
    for name, want in stored.get("checksums", {}).items():  # "already done" checks what it reports
        path = fs.join(folder, name)
        got = fs.sha256(path) if fs.exists(path) else None
        if got != want:
            what = "missing" if got is None else "its SHA-256 differs from the one recorded when the run finished"
            raise TrainingError(f"the finished run's {path} is damaged ({what}): set train.restart=true to train afresh")
    return stored


def checksums(folder: str, best_step: int) -> dict[str, str]:
    """The SHA-256 of what a finished run leaves for evaluation: its last checkpoint and its
    best validation's weights."""
    names = [CHECKPOINT, *([BEST.format(step=best_step)] if fs.exists(fs.join(folder, BEST.format(step=best_step))) else [])]
    return {n: fs.sha256(fs.join(folder, n)) for n in names}


def write_result(folder: str, result: TrainResult) -> None:
    # atomic: the run counts as finished only once this exists, whole
    fs.write_text(fs.join(folder, RESULT), json.dumps({k: v for k, v in result.as_dict().items() if k != "tracking"},
                                                      indent=2, allow_nan=False))


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


@tracked(train_runs)
def train_stage(job: JobContext) -> TrainResult:
    """Train cfg.train.model with cfg.train.backend; validation metrics from the result."""
    cfg, spark, progress = job.cfg, job.spark, job.progress  # Spark is optional: train.backend=single
    tc = cfg.train
    check_launchable(cfg, spark)
    man = checked_samples(cfg)
    ident, ckpt_dir = identity_and_folder(cfg, man)
    meta = checkpoint_meta(ident)
    if tc.restart and fs.exists(ckpt_dir):
        move_aside(ckpt_dir, "train.restart=true")
    if (done := read_result(ckpt_dir, ident)) is not None:
        log.info("%s run %s already done (%s): nothing to train", tc.model, ident.key, ckpt_dir)
        return replace(TrainResult.from_dict(done), status="already done", steps_this_run=0)
    clean_stale_temporaries(ckpt_dir)
    existing = load_checkpoint(ckpt_dir)  # unreadable or foreign: refused before any worker starts
    if existing is not None:
        check_compatible(existing, meta, f"{ckpt_dir}/{CHECKPOINT} ")
    torch.manual_seed(tc.seed)
    content_path = content_file(cfg.samples_root(), man) if needs_content(tc.model, tc.model_options) else None
    # the ranks build the model of a distributed run: the driver checks it on a vocabulary of
    # a few rows (its item tables would otherwise hold the whole catalogue here too)
    args = model_args(cfg, man) if tc.backend == "single" else replace(model_args(cfg, man), vocab_size=FIRST_INDEX + 1,
                                                                        max_vocab=None, hash_buckets=0)
    model = build_model(args, read_content(content_path) if content_path else None)
    needed = {c[len("hist_"):-len("_codes")] for c in model.inputs if c.startswith("hist_") and c.endswith("_codes")}
    if not needed <= set(man.spaces):
        raise TrainingError(f"model {tc.model} needs code spaces {sorted(needed)}, the samples have {list(man.spaces)}")
    device = device_for(tc.device)
    stats = statistics.prepare(ckpt_dir, man.split_path("train"), man.vocab_size, tc.user_buckets) if tc.priors else None
    if tc.backend == "single":
        statistics.apply(model, stats)
        ranks = [_train_single(cfg, man, model, device, ckpt_dir, meta, existing, progress)]
    else:
        ranks = _train_distributed(cfg, spark, man, meta, ckpt_dir, content_path, stats)
    result = _result(cfg, man, ident, ckpt_dir, model if tc.backend == "single" else None, device, ranks,
                     resumed=existing is not None)
    write_result(ckpt_dir, result)
    return result


def checked_samples(cfg: Config) -> SamplesManifest:
    """The samples' manifest, refused where the run's settings do not fit them."""
    tc, man = cfg.train, SamplesManifest.read(cfg.samples_root())
    if tc.codebook_version and tc.codebook_version != man.codebook_version:
        raise TrainingError(f"samples at {cfg.samples_root()} were built with codebook {man.codebook_version}, "
                            f"the model expects {tc.codebook_version} (train.codebook_version): rebuild the samples")
    if tc.max_vocab and man.raw.get("vocab_order") != VOCAB_ORDER:
        raise TrainingError(f"train.max_vocab keeps the most frequent items, but the samples at {cfg.samples_root()} "
                            "number items in another order (built before the vocabulary was frequency-ordered): "
                            "rebuild them with jobs/build_samples.py")
    return man


def _train_single(cfg: Config, man: SamplesManifest, model, device, ckpt_dir: str, meta: dict, existing: dict | None,
                  progress: bool) -> dict:
    """train.backend=single: this process; its summary as a rank's."""
    tc = cfg.train
    model.to(device)
    opt = make_optimizer(model, tc.lr, tc.table_optimizer, tc.table_lr, tc.weight_decay)
    start = restore(ckpt_dir, existing, model, opt, meta) if existing is not None else 0
    reader = make_reader(tc.reader, man.split_path("train"), model.inputs + ["label"], tc.batch_size)
    options = LoopOptions(ckpt_dir, tc.checkpoint_every, meta, tc.max_steps, start, progress,
                          batch_count(reader.rows, tc.batch_size), autocast_dtype(tc.precision, device), tc.epochs,
                          tc.eval_every, tc.prefetch, tc.seed)
    hooks = LoopHooks(validate=validator(tc.reader, man.split_path("valid"), device),
                      stopping=EarlyStopping.restored((existing or {}).get("trace"), tc.patience, tc.select_on))
    res = train_loop(model, lambda: iter(reader), opt, device, options, hooks)
    return {"rank": 0, "steps": res.steps, "samples": res.samples, "seconds": res.seconds, "last_loss": res.last_loss,
            "gradient_bytes": res.gradient_bytes, "device": str(device), "precision": res.precision, **res.timing()}


@dataclass
class TrainResult(TrackedResult):
    """What train_stage reports, and what result.json keeps of a finished run."""

    status: str                 # trained | resumed | already done
    identity: str               # TrainIdentity.key
    settings: dict              # TrainIdentity's fields
    model: str
    backend: str
    processes: int
    steps: int                  # the checkpoint's step
    steps_this_run: int         # 0 for "already done"
    best_step: int              # the weights evaluate reads
    stopped_early: bool
    samples_per_second: float
    train_loss: Optional[float]
    valid: dict[str, Optional[float]]  # the best validation: auc, cold_auc, logloss, ...
    curve: list[dict]           # every validation: step, epoch, train_loss, valid_<metric>
    checkpoint: str
    codebook_version: str
    ranks: list[dict]           # each rank's summary (steps, samples, seconds, timing, device)
    finished_at: str
    checksums: dict[str, str]   # SHA-256 of what the run leaves for evaluation


def _result(cfg: Config, man: SamplesManifest, ident: TrainIdentity, ckpt_dir: str, model, device, ranks: list[dict],
            resumed: bool) -> TrainResult:
    """The finished run's record (result.json): its identity, the ranks, the validation curve
    and the SHA-256 of what it leaves for evaluation."""
    tc = cfg.train
    final = load_checkpoint(ckpt_dir)  # rank 0's: the ranks were checked equal
    if final is None:
        raise TrainingError(f"no checkpoint in {ckpt_dir} after training: its storage lost the file")
    step = int(final["step"])
    trace = EarlyStopping.restored(final.get("trace"), tc.patience, tc.select_on)
    samples, seconds = sum(r["samples"] for r in ranks), max(r["seconds"] for r in ranks)
    log.info("trained %s (%s, %d process(es)): %.0f samples/s", tc.model, tc.backend, len(ranks), samples / max(seconds, 1e-9))
    valid = trace.best
    if valid is None:  # no validation ran (no step was taken): score the weights there are
        if model is None:
            content_path = content_file(cfg.samples_root(), man) if needs_content(tc.model, tc.model_options) else None
            model = statistics.apply(build_model(model_args(cfg, man), read_content(content_path) if content_path else None),
                                     statistics.prepare(ckpt_dir, man.split_path("train"), man.vocab_size, tc.user_buckets)
                                     if tc.priors else None)
        model.load_state_dict(final["model"])
        model.to(device)
        valid = validator(tc.reader, man.split_path("valid"), device)(model)
    best_step = step if trace.best is None or trace.best_step is None else trace.best_step
    return TrainResult(
        status="resumed" if resumed else "trained", identity=ident.key, settings=ident.as_dict(), model=tc.model,
        backend=tc.backend, processes=len(ranks), steps=step, steps_this_run=max(r["steps"] for r in ranks),
        best_step=best_step, stopped_early=trace.stopped, samples_per_second=round(samples / max(seconds, 1e-9), 1),
        train_loss=_finite(ranks[0]["last_loss"]), valid={k: _finite(v) for k, v in valid.items()},
        curve=[{k: _finite(v) for k, v in point.items()} for point in trace.curve], checkpoint=ckpt_dir,
        codebook_version=man.codebook_version, ranks=[{k: _finite(v) for k, v in r.items()} for r in ranks],
        finished_at=datetime.now(timezone.utc).isoformat(), checksums=checksums(ckpt_dir, best_step))


def where_failed(exc: BaseException) -> str:
    """Where an exception of a distributed training came from, as its message shows: a task on
    an executor (a rank), or the driver (Spark refusing the job, say)."""
    text = f"{type(exc).__name__}: {exc}"
    if rank := re.search(r"Process name: (\d+)\s+Exit code: (-?\d+)", text):  # Horovod's launcher names it
        return f"in rank {rank.group(1)} (its process ended with exit code {rank.group(2)}; its traceback, if any, is above)"
    if "PythonException" in text or "stage failure" in text or ("Task " in text and " failed" in text):
        return "in a worker (its traceback is above)"
    return "in the driver"


def check_launchable(cfg: Config, spark) -> None:
    """A training backend this application cannot run is refused before any work starts."""
    tc = cfg.train
    if (tc.backend == "torch-distributor" and spark is not None and not spark.sparkContext.master.startswith("local")
            and spark.conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true"):
        raise TrainingError("train.backend=torch-distributor runs its processes as barrier tasks, which Spark refuses "
                            "under dynamic allocation (spark.dynamicAllocation.enabled=true in this application): "
                            "submit with --conf spark.dynamicAllocation.enabled=false, or use train.backend=horovod")


def _train_distributed(cfg: Config, spark, man: SamplesManifest, meta: dict, ckpt_dir: str, content_path,
                       stats: str | None) -> list[dict]:
    tc = cfg.train
    train_path = man.split_path("train")
    from psrq.training.distributed import RankJob

    job = RankJob(train=tc, model=model_args(cfg, man), path=train_path, meta=meta, checkpoint_dir=ckpt_dir,
                  valid_path=man.split_path("valid"), content=content_path, statistics=stats)
    from psrq.training.distributed import run_horovod, run_torch_distributor
    from psrq.training.readers import row_groups, shard

    shard(row_groups(train_path), 0, tc.num_proc)  # too few row groups: say so before any worker starts
    try:
        if tc.backend == "horovod":
            if spark is None:
                raise TrainingError("train.backend=horovod is launched through Spark: run it from a job")
            ranks = run_horovod(spark, job, tc.num_proc)
        else:
            ranks = run_torch_distributor(spark, job, tc.num_proc)
    except Exception as exc:  # noqa: BLE001 - the workers' own tracebacks are on stderr above
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(f"{tc.backend} training failed {where_failed(exc)}: {exc}") from exc
    if len({round(r["checksum"], 6) for r in ranks}) != 1:
        # never resumed as if it were good: the next run starts afresh
        bad = fs.join(ckpt_dir, CHECKPOINT)
        if fs.exists(bad):
            fs.move(bad, fs.join(ckpt_dir, f"checkpoint.diverged-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.pt"))
        raise TrainingError(f"parameters diverged across ranks: {[r['checksum'] for r in ranks]}; the run is not "
                            f"recorded as finished and its last checkpoint was set aside in {ckpt_dir}")
    return ranks
