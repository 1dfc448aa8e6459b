"""Data-parallel training backends around the one-process loop.

- horovod: launched through Spark (`horovod.spark.run`, one process per Spark task, Gloo).
  Each rank is started by its Spark task on the executor, with the executors' Python (found
  by a probe task, never the driver's `sys.executable`) and the executor's environment plus
  the few variables the ranks need (never the driver's environment).
  DistributedOptimizer allreduces gradients; rank 0's parameters and optimizer state are
  broadcast first. A rank that runs out of batches calls `hvd.join()`, so the others finish
  theirs (no hang, no rows dropped); then the last rank's state is broadcast to all.
- torch-distributor: `TorchDistributor` with DistributedDataParallel over Gloo, and DDP's
  `Join` for uneven shards: torchrun processes on the driver machine under a local master,
  barrier tasks on the executors (local_mode=False) on a cluster.

A rank's device follows its local rank (`cuda:<local rank>` where the task has a GPU and
train.device allows it, else the CPU). Each rank reads its own row groups through the
filesystem layer (its options travel in the job). Rank 0 writes the checkpoints; every rank
resumes from them (the checkpoint folder must be shared storage on a cluster)."""
from __future__ import annotations

import os
import socket
import sys

import torch

from psrq.storage import fs
from psrq.training.loop import make_optimizer, resume, save_checkpoint, train_loop
from psrq.training.readers import make_reader

# what each rank needs on top of its executor's own environment
RANK_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def rank_device(choice: str, local_rank: int) -> torch.device:
    """cuda:<local rank> when the rank's task has a GPU and train.device allows it."""
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    if choice == "cuda":
        raise RuntimeError(f"train.device=cuda but rank with local rank {local_rank} sees no CUDA device")
    return torch.device("cpu")


def _where() -> dict:
    """Where a rank ran (its host, process and interpreter), for the run's record."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.executable}


def param_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def _model_and_opt(job: dict, device: torch.device):
    from psrq.content import read_content
    from psrq.models.ranker import build_model

    fs.configure(job["fs"])  # the driver's filesystem options (endpoint, region)
    torch.set_num_threads(job.get("threads", 1))
    torch.manual_seed(job["seed"])
    content = read_content(job["content"]) if job.get("content") else None
    model = build_model(**job["model"], content=content).to(device)
    opt = make_optimizer(model, job["lr"])
    start = resume(job["checkpoint_dir"], model, opt, job["meta"])
    return model, opt, start


def _summary(rank, world, res, model, reader, device) -> dict:
    return {"rank": rank, "world": world, "steps": res.steps, "samples": res.samples, "seconds": res.seconds,
            "last_loss": res.last_loss, "checksum": param_checksum(model), "rows": reader.rows,
            "device": str(device), **_where()}


def horovod_worker(job: dict) -> dict:
    """Runs in each Spark task; `job` holds plain values only."""
    import horovod.torch as hvd

    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    device = rank_device(job["device"], hvd.local_rank())
    model, opt, start = _model_and_opt(job, device)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    reader = make_reader(job["reader"], job["path"], model.inputs + ["label"], job["batch_size"], rank, world)
    res = train_loop(model, lambda: iter(reader), opt, device, job["checkpoint_dir"] if rank == 0 else None,
                     job["checkpoint_every"] if rank == 0 else 0, job["meta"], job.get("max_steps"), start, progress=False)
    # Uneven shards: a rank out of batches joins and the others finish theirs (the joined
    # ranks take part in their allreduces with zeros, but do not step). The rank that joined
    # last took every step: its parameters and optimizer state are the run's, on every rank.
    last = hvd.join()
    hvd.broadcast_parameters(model.state_dict(), root_rank=last)
    hvd.broadcast_optimizer_state(opt, root_rank=last)
    steps = hvd.broadcast_object(start + res.steps, root_rank=last)
    if rank == 0 and job["checkpoint_dir"]:
        save_checkpoint(job["checkpoint_dir"], model, opt, steps, job["meta"])  # the final, synchronised state
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


def run_horovod(spark, job: dict, num_proc: int) -> list[dict]:
    import horovod.spark

    nics = {"lo"} if loopback_only(spark) else None
    return horovod.spark.run(horovod_worker, args=(job,), num_proc=num_proc, use_gloo=True, verbose=0,
                             env=dict(RANK_ENV), nics=nics, executable=executor_python(spark))


def ddp_worker(job: dict) -> list[dict]:
    """Runs in each TorchDistributor process; returns every rank's summary (from rank 0)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.join import Join
    from torch.nn.parallel import DistributedDataParallel as DDP

    if job.get("gloo_ifname"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", job["gloo_ifname"])
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = rank_device(job["device"], int(os.environ.get("LOCAL_RANK", "0")))
        model, opt, start = _model_and_opt(job, device)
        ddp = DDP(model)  # broadcasts rank 0's parameters on construction
        reader = make_reader(job["reader"], job["path"], model.inputs + ["label"], job["batch_size"], rank, world)
        with Join([ddp]):  # uneven shards: finished ranks shadow the collectives of the others
            res = train_loop(ddp, lambda: iter(reader), opt, device, job["checkpoint_dir"] if rank == 0 else None,
                             job["checkpoint_every"] if rank == 0 else 0, job["meta"], job.get("max_steps"), start,
                             state_model=model, progress=False)
        out = [None] * world
        dist.all_gather_object(out, _summary(rank, world, res, model, reader, device))
        return out
    finally:
        dist.destroy_process_group()


def run_torch_distributor(spark, job: dict, num_proc: int) -> list[dict]:
    """Under a local master, torchrun's processes run on this machine (local_mode=True); on
    a cluster, in barrier tasks on the executors (local_mode=False)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    local = spark is None or spark.sparkContext.master.startswith("local")
    if spark is None or loopback_only(spark):
        job = {**job, "gloo_ifname": "lo"}  # Gloo over the loopback interface only
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    use_gpu = job["device"] != "cpu" and torch.cuda.is_available() if local else job["device"] == "cuda"
    return TorchDistributor(num_processes=num_proc, local_mode=local, use_gpu=use_gpu).run(ddp_worker, job)
