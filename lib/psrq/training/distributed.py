"""Data-parallel training backends around the one-process loop.

- horovod: launched through Spark (`horovod.spark.run`, one process per Spark task, Gloo).
  DistributedOptimizer allreduces gradients; rank 0's parameters and optimizer state are
  broadcast first. A rank that runs out of batches calls `hvd.join()`, so the others finish
  theirs: no hang, no rows dropped.
- torch-distributor: `TorchDistributor` (local mode here: torchrun processes on the driver
  machine; on a cluster, Spark tasks) with DistributedDataParallel over Gloo, and DDP's
  `Join` for uneven shards.

Each rank reads its own row groups. Rank 0 writes the checkpoints; every rank resumes from
them (the checkpoint folder must be shared storage on a cluster)."""
from __future__ import annotations

import os

import torch

from psrq.training.loop import make_optimizer, resume, train_loop
from psrq.training.readers import make_reader


def param_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def _model_and_opt(job: dict):
    from psrq.content import read_content
    from psrq.models.ranker import build_model

    torch.set_num_threads(job.get("threads", 1))
    torch.manual_seed(job["seed"])
    content = read_content(job["content"]) if job.get("content") else None
    model = build_model(**job["model"], content=content)
    opt = make_optimizer(model, job["lr"])
    start = resume(job["checkpoint_dir"], model, opt, job["meta"])
    return model, opt, start


def _summary(rank, world, res, model, reader) -> dict:
    return {"rank": rank, "world": world, "steps": res.steps, "samples": res.samples, "seconds": res.seconds,
            "last_loss": res.last_loss, "checksum": param_checksum(model), "rows": reader.rows}


def horovod_worker(job: dict) -> dict:
    """Runs in each Spark task; `job` holds plain values only."""
    import horovod.torch as hvd

    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    model, opt, start = _model_and_opt(job)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    reader = make_reader(job["reader"], job["path"], model.inputs + ["label"], job["batch_size"], rank, world)
    res = train_loop(model, lambda: iter(reader), opt, torch.device("cpu"), job["checkpoint_dir"] if rank == 0 else None,
                     job["checkpoint_every"] if rank == 0 else 0, job["meta"], job.get("max_steps"), start, progress=False)
    hvd.join()  # ranks with fewer batches wait here while the others finish theirs
    return _summary(rank, world, res, model, reader)


def run_horovod(spark, job: dict, num_proc: int) -> list[dict]:
    import horovod.spark

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # local mode: every rank is on this machine, so Gloo talks over the loopback interface only
    nics = {"lo"} if spark.sparkContext.master.startswith("local") else None
    return horovod.spark.run(horovod_worker, args=(job,), num_proc=num_proc, use_gloo=True, verbose=0, env=env, nics=nics)


def ddp_worker(job: dict) -> list[dict]:
    """Runs in each TorchDistributor process; returns every rank's summary (from rank 0)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.join import Join
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        model, opt, start = _model_and_opt(job)
        ddp = DDP(model)  # broadcasts rank 0's parameters on construction
        reader = make_reader(job["reader"], job["path"], model.inputs + ["label"], job["batch_size"], rank, world)
        with Join([ddp]):  # uneven shards: finished ranks shadow the collectives of the others
            res = train_loop(ddp, lambda: iter(reader), opt, torch.device("cpu"), job["checkpoint_dir"] if rank == 0 else None,
                             job["checkpoint_every"] if rank == 0 else 0, job["meta"], job.get("max_steps"), start,
                             state_model=model, progress=False)
        out = [None] * world
        dist.all_gather_object(out, _summary(rank, world, res, model, reader))
        return out
    finally:
        dist.destroy_process_group()


def run_torch_distributor(job: dict, num_proc: int) -> list[dict]:
    from pyspark.ml.torch.distributor import TorchDistributor

    # local mode: torchrun's processes run here; Gloo over the loopback interface only
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return TorchDistributor(num_processes=num_proc, local_mode=True, use_gpu=False).run(ddp_worker, job)
