"""Data-parallel training backends around the one-process loop.

- horovod: launched through Spark (`horovod.spark.run`, one process per Spark task, Gloo).
  Each rank is started by its Spark task on the executor, with the executors' Python (found
  by a probe task, never the driver's `sys.executable`) and the executor's environment plus
  the few variables the ranks need (never the driver's environment).
  One DistributedOptimizer per optimiser part (psrq.training.optim): dense gradients are
  allreduced, the item tables' sparse gradients allgathered as (rows, values), never
  densified. Rank 0's parameters and optimizer state are broadcast first.
- torch-distributor: `TorchDistributor` with DistributedDataParallel over Gloo (which
  reduces sparse gradients as sparse; NCCL for dense models on GPUs, see ddp_backend):
  torchrun processes on the driver machine under a local master, barrier tasks on the
  executors (local_mode=False) on a cluster.

Uneven shards: the ranks agree on the step count first (the largest shard's batches, or
train.max_steps), and a rank whose shard ends early takes its remaining steps on a batch
with weight 0 (psrq.training.loop.padded): every rank joins every exchange and applies the
same update, so no row is dropped, nothing hangs and the ranks end equal. The driver checks
that they do (parameter checksums) and fails the run otherwise.

A rank's device follows its local rank (`cuda:<local rank>` where the task has a GPU and
train.device allows it, else the CPU). Each rank reads its own row groups through the
filesystem layer (its options travel in the job). Rank 0 writes the checkpoints; every rank
resumes from them (the checkpoint folder must be shared storage on a cluster)."""
from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import traceback
from dataclasses import dataclass, field, replace
from typing import Optional

import cloudpickle
import torch

from psrq.config import TrainConf
from psrq.errors import TrainingError
from psrq.models.registry import ModelArgs
from psrq.storage import fs
from psrq.storage.fs import FsOptions
from psrq.training import entry, statistics
from psrq.training.checkpoints import resume
from psrq.training.early_stop import EarlyStopping
from psrq.training.loop import LoopHooks, LoopOptions, autocast_dtype, batch_count, device_for, rank_seed, train_loop, validator
from psrq.training.optim import make_optimizer
from psrq.training.readers import make_reader

# what each rank needs on top of its executor's own environment
RANK_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class RankJob:
    """What every rank receives (pickled to it): the run's training settings as configured
    (train: lr, batch size, reader, seed, optimisers, epochs, validation, precision, device,
    prefetch), and what the driver resolved for this run."""

    train: TrainConf
    model: ModelArgs                       # what the ranker is built from (psrq.training.run.model_args)
    path: str                              # the train split
    meta: dict = field(default_factory=dict)  # the run's identity, recorded in its checkpoints
    checkpoint_dir: Optional[str] = None   # None: a run that keeps no checkpoint
    valid_path: Optional[str] = None       # the split rank 0 validates on (None: no validation)
    content: Optional[str] = None          # the content features file, for the models that read it
    statistics: Optional[str] = None       # the priors' file (train.priors)
    fs: FsOptions = field(default_factory=fs.current)  # the driver's filesystem options (endpoint, region)
    gloo_ifname: Optional[str] = None      # Gloo's network interface (lo where Spark is on the loopback)


def _where() -> dict:
    """Where a rank ran (its host, process and interpreter, and the psrq it imported), for the
    run's record."""
    import psrq

    return {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.executable,
            "package": os.path.dirname(psrq.__file__)}


def param_checksum(model: torch.nn.Module, chunk: int = 1 << 22) -> float:
    """The sum of every parameter, in float64, in chunks: a float64 copy of a 10M-row
    table at once would be 5 GB."""
    return float(sum(c.sum(dtype=torch.float64).item() for p in model.parameters()
                     for c in p.detach().reshape(-1).split(chunk)))


def same_start(starts: list[int]) -> int:
    """Every rank resumed from the same checkpoint step, or none did; else a clear error (a
    checkpoint folder that not every rank sees)."""
    if len(set(starts)) != 1:
        raise TrainingError(f"the ranks resumed from different steps {starts}: train.checkpoint_dir must be storage "
                            "that every rank sees (a shared filesystem or object storage)")
    return starts[0]


def _model_and_opt(job: RankJob, device: torch.device, dense_biases: bool = False):
    """dense_biases (DDP): the one-wide bias tables (the priors', VBPR's) take dense
    gradients. Gloo's sparse allreduce corrupted memory on them intermittently (free():
    invalid size, SIGSEGV in backward; torch 2.x, 2 of 3 two-epoch runs here); a dense
    gradient of a one-wide table costs 4 bytes per vocabulary row per step."""
    from psrq.models.layers import item_tables
    from psrq.models.registry import build_model
    from psrq.samples.content import read_content

    fs.configure(job.fs)  # the driver's filesystem options (endpoint, region)
    torch.set_num_threads(1)  # a rank per core
    torch.manual_seed(job.train.seed)
    content = read_content(job.content) if job.content else None
    model = statistics.apply(build_model(job.model, content), job.statistics).to(device)
    for table in item_tables(model) if dense_biases else ():
        table.sparse = table.sparse and table.embedding_dim > 1
    tc = job.train
    opt = make_optimizer(model, tc.lr, tc.table_optimizer, tc.table_lr, tc.weight_decay)
    start, trace = resume(job.checkpoint_dir, model, opt, job.meta)
    return model, opt, start, EarlyStopping.restored(trace, tc.patience, tc.select_on)


def _summary(rank, world, res, model, reader, device) -> dict:
    return {"rank": rank, "world": world, "steps": res.steps, "samples": res.samples, "seconds": res.seconds,
            "last_loss": res.last_loss, "checksum": param_checksum(model), "rows": reader.rows,
            "padding_steps": res.padding_steps, "gradient_bytes": res.gradient_bytes,
            "median_step_seconds": res.median_step_seconds, **res.timing(),
            "peak_rss_mb": peak_rss_mb(), "device": str(device), "precision": res.precision, **_where()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_steps(job: RankJob, reader, agree_max) -> int:
    """The steps of one epoch on every rank: the longest shard's batches (agree_max: the
    backend's max-reduction over ranks)."""
    return int(agree_max(batch_count(reader.rows, job.train.batch_size)))


def loop_setup(job: RankJob, rank: int, reader, device: torch.device, agree_max, stopping: EarlyStopping,
               start: int) -> tuple[LoopOptions, LoopHooks]:
    """train_loop's options and hooks, set the same way by every backend: rank 0 checkpoints
    and validates, every rank takes the agreed steps and learns the stopping decision."""
    tc = job.train
    validate = validator(tc.reader, job.valid_path, device) if rank == 0 and job.valid_path else None
    options = LoopOptions(checkpoint_dir=job.checkpoint_dir if rank == 0 else None,
                          checkpoint_every=tc.checkpoint_every if rank == 0 else 0, meta=job.meta,
                          max_steps=tc.max_steps, start_step=start, progress=False,
                          epoch_steps=epoch_steps(job, reader, agree_max), amp_dtype=autocast_dtype(tc.precision, device),
                          epochs=tc.epochs, eval_every=tc.eval_every, prefetch=tc.prefetch, seed=rank_seed(tc.seed, rank))
    return options, LoopHooks(validate=validate, stopping=stopping, agree=lambda flag: int(agree_max(flag)))


def horovod_worker(job: RankJob) -> dict:
    """Runs in each Spark task; `job` holds plain values only."""
    import horovod.torch as hvd

    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    device = device_for(job.train.device, hvd.local_rank())
    model, opt, start, stopping = _model_and_opt(job, device)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    # every rank restored the same checkpoint or none (checked): the optimiser state needs
    # no broadcast, which would give every table a dense zero gradient to initialise it
    start = same_start(hvd.allgather_object(start))
    names = {id(p): n for n, p in model.named_parameters()}
    opt.wrap(lambda part: hvd.DistributedOptimizer(
        part, named_parameters=[(names[id(p)], p) for g in part.param_groups for p in g["params"]]))
    reader = make_reader(job.train.reader, job.path, model.inputs + ["label"], job.train.batch_size, rank, world)
    calls = iter(range(1 << 62))  # Horovod matches collectives by name: one name per call

    def agree_max(n: int) -> int:
        return int(hvd.allreduce(torch.tensor(n), op=hvd.Max, name=f"psrq.agree.{next(calls)}").item())

    options, hooks = loop_setup(job, rank, reader, device, agree_max, stopping, start)
    res = train_loop(model, lambda: iter(reader), opt, device, options, hooks)
    return _summary(rank, world, res, model, reader, device)


def executor_python(spark) -> str:
    """The Python the executors run (spark.pyspark.python / PYSPARK_PYTHON on their hosts),
    asked of an executor: the driver's may not exist there."""
    return spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).collect()[0]


def loopback_only(spark) -> bool:
    """Every process on this machine's loopback address: a local master, or a cluster whose
    driver is bound to 127.0.0.1 (the test cluster)."""
    return (spark.sparkContext.master.startswith("local")
            or spark.conf.get("spark.driver.host", "") in ("127.0.0.1", "localhost"))


def run_horovod(spark, job: RankJob, num_proc: int) -> list[dict]:
    import horovod.spark

    nics = {"lo"} if loopback_only(spark) else None
    with entry.by_value() as first:  # the ranks import the shipped package, not an installed one
        args = (entry.shipped_archives(spark), "psrq.training.distributed:horovod_worker", cloudpickle.dumps((job,)))
        return horovod.spark.run(first, args=args, num_proc=num_proc, use_gloo=True, verbose=0,
                                 env=dict(RANK_ENV), nics=nics, executable=executor_python(spark))


def ddp_backend(device: torch.device, sparse: bool) -> str:
    """The process group for DDP: Gloo on the CPU; on CUDA, NCCL for the tensors on the GPU
    (Gloo for the CPU ones) unless the item tables have sparse gradients, which stock
    PyTorch's NCCL group cannot reduce (pytorch/pytorch#22400) and Gloo can, on CUDA tensors
    too. Horovod has no such limit: it allgathers sparse gradients, over NCCL on GPUs."""
    if device.type != "cuda" or sparse:
        return "gloo"
    return "cpu:gloo,cuda:nccl"


def ddp_without_buffer_sync(model: torch.nn.Module):
    """DDP over the model, its buffers never broadcast: they (the priors' statistics, the
    content codes and vectors: catalogue-sized) are the same constants on every rank.
    broadcast_buffers=False says so on every torch; torch 2.13 deprecates it with a
    FutureWarning, and its successor (forward_sync_buffers=False) still broadcasts them
    once at the start, gigabytes at 10M items, so the old argument stays, the warning is
    dropped here."""
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return DDP(model, broadcast_buffers=False)


def ddp_worker(job: RankJob) -> list[dict]:
    """Runs in each TorchDistributor process; returns every rank's summary (from rank 0)."""
    import torch.distributed as dist

    if job.gloo_ifname:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", job.gloo_ifname)
    device = device_for(job.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(ddp_backend(device, job.model.sparse))
    try:
        return _ddp_train(job, device)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # their DDP wrapper must go first too (below)
        raise
    finally:
        # The DDP wrapper (its C++ Reducer) must be gone while the group registry still holds
        # the process group: a Reducer freed afterwards destroys the group itself, holding the
        # GIL, and Gloo's destructor waits for its worker threads, one of which may be freeing
        # a collective's tensors and needs the GIL: the rank hung there (seen in the suite).
        # destroy_process_group drops the group through its Python binding, which releases
        # the GIL (pytorch/pytorch#154976).
        gc.collect()
        dist.destroy_process_group()


def _ddp_train(job: RankJob, device: torch.device) -> list[dict]:
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    model, opt, start, stopping = _model_and_opt(job, device, dense_biases=True)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, start)
    start = same_start(gathered)
    ddp = ddp_without_buffer_sync(model)
    reader = make_reader(job.train.reader, job.path, model.inputs + ["label"], job.train.batch_size, rank, world)

    def agree_max(n: int) -> int:
        t = torch.tensor([n])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    options, hooks = loop_setup(job, rank, reader, device, agree_max, stopping, start)
    hooks.state_model = model  # the ranker inside DDP: what checkpoints hold
    res = train_loop(ddp, lambda: iter(reader), opt, device, options, hooks)
    out: list = [None] * world
    dist.all_gather_object(out, _summary(rank, world, res, model, reader, device))
    return out


def wants_gpu(device: str, spark, local: bool) -> bool:
    """Whether TorchDistributor asks Spark for GPUs: under a local master when this machine
    has one; on a cluster when train.device=cuda, or auto and the session schedules GPUs
    (spark.task.resource.gpu.amount, psrq.spark.gpu_settings)."""
    if device == "cpu":
        return False
    if local:
        return torch.cuda.is_available()
    return device == "cuda" or float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) >= 1


@contextlib.contextmanager
def environment(**values: str):
    """These variables set for what runs inside (their own value kept where one is set),
    the environment as it was afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: os.environ.get(k) or v for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_torch_distributor(spark, job: RankJob, num_proc: int) -> list[dict]:
    """Under a local master, torchrun's processes run on this machine (local_mode=True); on
    a cluster, in barrier tasks on the executors (local_mode=False). Under a local master
    torchrun inherits this process's environment for the run: Gloo on the loopback interface
    where Spark is, and OMP_NUM_THREADS=1 as every rank gets (without it torchrun prints a
    banner into the job's output and sets it itself); the driver's environment is restored."""
    from pyspark.ml.torch.distributor import TorchDistributor

    local = spark is None or spark.sparkContext.master.startswith("local")
    env = {"OMP_NUM_THREADS": RANK_ENV["OMP_NUM_THREADS"]} if local else {}
    if spark is None or loopback_only(spark):
        job = replace(job, gloo_ifname="lo")  # Gloo over the loopback interface only
        env["GLOO_SOCKET_IFNAME"] = "lo"
    use_gpu = wants_gpu(job.train.device, spark, local)
    with environment(**env), entry.by_value() as first:  # the ranks import the shipped package
        ranks = TorchDistributor(num_processes=num_proc, local_mode=local, use_gpu=use_gpu).run(
            first, entry.shipped_archives(spark), "psrq.training.distributed:ddp_worker", cloudpickle.dumps((job,)))
    if ranks is None:  # TorchDistributor returns rank 0's value: ddp_worker's list of every rank's summary
        raise TrainingError("TorchDistributor returned no result from rank 0")
    return ranks
