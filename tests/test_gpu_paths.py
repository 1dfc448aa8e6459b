"""The GPU paths as far as a machine without a GPU can run them: device selection resolves to
the CPU, the cluster profile's GPU scheduling settings and the discovery script are
well-formed, k-means falls back to the CPU out loud, bf16 autocast trains (on the CPU)."""
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from sample_rows import K, L, N, V, batch

from psrq.config import load_config
from psrq.spark import GPU_DISCOVERY, gpu_discovery_script, spark_settings

from conftest import ROOT

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")


@no_cuda
def test_device_auto_resolves_to_the_cpu_here_and_cuda_is_refused():
    from psrq.errors import TrainingError
    from psrq.training.loop import device_for

    assert device_for("auto") == device_for("auto", 3) == device_for("cpu", 1) == torch.device("cpu")
    with pytest.raises(TrainingError, match="train.device=cuda but the process with local rank 1 sees no CUDA device"):
        device_for("cuda", 1)


def test_the_cluster_profile_schedules_one_gpu_per_task_when_asked(monkeypatch):
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "4711")  # under spark-submit: a cluster master
    cpu = spark_settings(load_config("cluster", "synthetic_1m").spark)
    assert not [k for k in cpu if ".resource.gpu." in k]  # a CPU cluster by default
    monkeypatch.setenv("PSRQ_GPUS_PER_EXECUTOR", "4")
    gpu = spark_settings(load_config("cluster", "synthetic_1m").spark)
    assert gpu["spark.executor.resource.gpu.amount"] == "4" and gpu["spark.task.resource.gpu.amount"] == "1"
    assert gpu["spark.executor.resource.gpu.discoveryScript"] == f"./{GPU_DISCOVERY}"
    # a local master has no executors to schedule: no GPU settings even when asked
    local = load_config("local", "synthetic_small", ["spark.gpus_per_executor=1", "spark.master=local[2]"]).spark
    assert not [k for k in spark_settings(local) if ".resource.gpu." in k]


def test_the_launcher_ships_the_discovery_script_under_the_name_the_settings_use():
    from psrq.submit import command

    cmd = command("jobs/train_ranker.py", ["--profile", "cluster", "--dataset", "catalogue", "spark.gpus_per_executor=2"], "yarn", "dist/psrq.zip")
    files = cmd[cmd.index("--files") + 1]
    path, name = files.split("#")
    assert os.path.isfile(path) and os.access(path, os.X_OK) and name == GPU_DISCOVERY
    confs = {cmd[i + 1] for i, c in enumerate(cmd) if c == "--conf"}
    assert {"spark.executor.resource.gpu.amount=2", f"spark.executor.resource.gpu.discoveryScript=./{GPU_DISCOVERY}"} <= confs
    plain = command("jobs/train_ranker.py", ["--profile", "cluster", "--dataset", "catalogue"], "yarn", "dist/psrq.zip")
    assert "--files" not in plain


@pytest.mark.real  # starts a process
def test_the_discovery_script_prints_spark_resource_json(tmp_path):
    script = gpu_discovery_script()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    two = subprocess.run(["bash", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(two.stdout) == {"name": "gpu", "addresses": ["0", "1"]}
    (fake / "nvidia-smi").unlink()
    none = subprocess.run(["bash", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})
    assert json.loads(none.stdout) == {"name": "gpu", "addresses": []}


def test_torch_distributor_asks_for_gpus_only_where_spark_schedules_them():
    from psrq.training.distributed import wants_gpu

    class Conf(dict):
        def get(self, key, default=None):
            return super().get(key, default)

    class Session:
        def __init__(self, **conf):
            self.conf = Conf(conf)

    assert not wants_gpu("cpu", Session(**{"spark.task.resource.gpu.amount": "1"}), local=False)
    assert wants_gpu("auto", Session(**{"spark.task.resource.gpu.amount": "1"}), local=False)
    assert not wants_gpu("auto", Session(), local=False)
    assert wants_gpu("cuda", Session(), local=False)  # TorchDistributor then names the missing setting
    assert wants_gpu("auto", Session(), local=True) == torch.cuda.is_available()


@no_cuda
def test_kmeans_falls_back_to_the_cpu_out_loud_and_refuses_cuda_without_a_gpu(caplog):
    import numpy as np

    from psrq.errors import QuantizerError
    from psrq.quant import kmeans
    from psrq.quant.kmeans import KMeansSpec, fit_kmeans, resolve_backend

    kmeans._said.clear()
    with caplog.at_level(logging.WARNING, logger="psrq.quant.kmeans"):
        assert resolve_backend("auto", "auto") == "faiss"
        assert resolve_backend("auto", "auto") == "faiss"
        assert resolve_backend("torch", "auto") == "torch"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "k-means on the CPU (faiss): no usable GPU" in warnings[0], warnings
    assert resolve_backend("auto", "cpu") == "faiss" and resolve_backend("torch", "cpu") == "torch"
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(QuantizerError, match="kmeans device cuda: .*faiss-gpu.*torch-cuda"):
        fit_kmeans(x, KMeansSpec(k=3, device="cuda"))
    with pytest.raises(QuantizerError, match="runs on the GPU but kmeans device is cpu"):
        resolve_backend("faiss-gpu", "cpu")


def test_bf16_autocast_trains_and_auto_precision_is_float32_on_the_cpu():
    from psrq.models.registry import ModelArgs, build_model
    from psrq.training.loop import LoopOptions, autocast_dtype, train_loop
    from psrq.training.optim import make_optimizer

    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    torch.manual_seed(0)
    model = build_model(ModelArgs("mcca", V, K, L, N, 16, sparse=True))
    rows = batch(64, 0)
    res = train_loop(model, lambda: [rows] * 20, make_optimizer(model, 1e-2), cpu,
                     LoopOptions(progress=False, amp_dtype=autocast_dtype("bf16", cpu)))
    assert res.precision == "bf16" and res.steps == 20
    assert all(map(lambda v: v == v, res.losses)) and res.losses[-1] < res.losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights in float32


@pytest.mark.real  # starts a process
@pytest.mark.skipif(bool(shutil.which("nvidia-smi") or shutil.which("nvcc")), reason="a GPU driver or CUDA toolkit is here")
def test_the_gpu_install_says_what_this_machine_lacks_before_changing_anything(tmp_path):
    def setup(env: dict):
        return subprocess.run(["bash", "scripts/setup_env.sh"], cwd=ROOT, env=env, capture_output=True, text=True)

    env = {**os.environ, "PSRQ_GPU": "1", "PSRQ_VENV": str(tmp_path / "venv")}
    no_driver = setup(env)
    assert no_driver.returncode == 1 and "needs an NVIDIA driver and nvidia-smi was not found" in no_driver.stderr
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    env["PATH"] = f"{fake}:{os.environ['PATH']}"
    no_toolkit = setup(env)
    assert no_toolkit.returncode == 1 and "needs the CUDA toolkit" in no_toolkit.stderr and "nvcc" in no_toolkit.stderr
    assert not (tmp_path / "venv").exists()  # refused before a virtual environment was made
    # the mode is sticky: a later run that names none keeps a GPU install's (and so checks
    # for the driver again) instead of swapping the CPU build back in
    kept = tmp_path / "gpu-venv"
    kept.mkdir()
    (kept / ".psrq-gpu").write_text("1\n")
    unnamed = {k: v for k, v in os.environ.items() if k != "PSRQ_GPU"}
    sticky = setup({**unnamed, "PSRQ_VENV": str(kept)})
    assert sticky.returncode == 1 and "needs an NVIDIA driver" in sticky.stderr, sticky.stderr
    bad = setup({**os.environ, "PSRQ_VENV": str(kept), "PSRQ_GPU": "yes"})
    assert bad.returncode == 1 and "must be 0 or 1, not 'yes'" in bad.stderr
    assert "PSRQ_GPU= bash scripts/setup_env.sh" in subprocess.run(["make", "-n", "test-gpu"], cwd=ROOT, capture_output=True,
                                                                   text=True, check=True).stdout
    # the README's `make setup GPU=1` is this script in GPU mode
    dry = subprocess.run(["make", "-n", "setup", "GPU=1"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "PSRQ_GPU=1 bash scripts/setup_env.sh" in dry.stdout


def test_ddp_uses_nccl_on_gpus_only_where_it_can_reduce_the_gradients():
    from psrq.training.distributed import ddp_backend

    assert ddp_backend(torch.device("cpu"), sparse=True) == ddp_backend(torch.device("cpu"), sparse=False) == "gloo"
    assert ddp_backend(torch.device("cuda:1"), sparse=False) == "cpu:gloo,cuda:nccl"
    assert ddp_backend(torch.device("cuda:0"), sparse=True) == "gloo"  # NCCL has no sparse allreduce


GPU_NODE_LINES = sorted({m.group(1) for doc in ("README.md", "benchmarks/README.md", "docs/GPUS.md")
                         for m in re.finditer(r"`(PYTHONPATH=lib python [^`]+)`", open(os.path.join(ROOT, doc)).read())})


def test_the_docs_show_the_gpu_node_command_lines():
    assert {w for line in GPU_NODE_LINES for w in line.split() if w.endswith(".py")} == {
        "benchmarks/bench_gpu.py", "tests/test_cuda.py"}


@pytest.mark.real  # starts a process
@no_cuda
@pytest.mark.parametrize("line", GPU_NODE_LINES)
def test_the_gpu_node_command_lines_run_as_written(line):
    """The docs' commands for a GPU node's own Python (no venv, no Spark) run as written; here,
    without a GPU, the tests skip and the benchmark says so, exits 2 and writes nothing."""
    words = shlex.split(line)
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
    result = os.path.join(ROOT, "benchmarks", "results", "gpu.json")
    before = open(result).read()
    out = subprocess.run([sys.executable, *words[2:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if "pytest" in words:
        assert out.returncode == 0 and " skipped" in out.stdout and "passed" not in out.stdout, out.stdout + out.stderr
    else:
        assert out.returncode == 2 and "no GPU here" in out.stderr, out.stdout + out.stderr
    assert open(result).read() == before


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_a_torch_distributor_rank_trains_on_the_cpu_without_library_warnings(sparse, tmp_path, monkeypatch):
    """tests/test_cuda.py's rank on the CPU (world 1, Gloo, in this process): it trains,
    reading ahead as the job says (train.prefetch), and neither DDP nor anything else warns
    (DDP's deprecated broadcast_buffers warned in every rank of every TorchDistributor
    training)."""
    import warnings

    import numpy as np
    from sample_rows import ddp_job, world_of_one, write_split

    from psrq.training import loop
    from psrq.training.distributed import ddp_worker

    depths = []
    real = loop.prefetched
    monkeypatch.setattr(loop, "prefetched", lambda batches, depth: depths.append(depth) or real(batches, depth))
    wrappers_at_destroy = _count_ddp_wrappers_at_destroy(monkeypatch)
    world_of_one(monkeypatch)
    write_split(tmp_path / "train", batch(1024, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [summary] = ddp_worker(ddp_job(tmp_path / "train", sparse, "cpu"))
    assert summary["device"] == "cpu" and summary["world"] == 1 and summary["steps"] == 4 and summary["rows"] == 1024
    assert np.isfinite(summary["last_loss"])
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert depths == [2]  # train.prefetch's default, read from the train section the rank gets
    assert wrappers_at_destroy == [0]


def _count_ddp_wrappers_at_destroy(monkeypatch) -> list[int]:
    """How many DDP wrappers are alive each time the process group is destroyed: a wrapper
    freed after it destroys the group under the GIL, which can hang a rank (ddp_worker)."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    counts = []
    real = dist.destroy_process_group

    def destroy(*args, **kwargs):
        counts.append(sum(type(o) is DistributedDataParallel for o in gc.get_objects()))  # type(): no attribute lookups
        return real(*args, **kwargs)
    monkeypatch.setattr(dist, "destroy_process_group", destroy)
    return counts


def test_a_failing_torch_distributor_rank_frees_its_ddp_wrapper_before_its_process_group(tmp_path, monkeypatch):
    from sample_rows import ddp_job, world_of_one

    from psrq.training.distributed import ddp_worker
    from psrq.training.readers import ShardError

    wrappers_at_destroy = _count_ddp_wrappers_at_destroy(monkeypatch)
    world_of_one(monkeypatch)
    with pytest.raises(ShardError, match="no Parquet files under"):  # after the wrapper was made
        ddp_worker(ddp_job(tmp_path / "nothing-here", True, "cpu"))
    assert wrappers_at_destroy == [0]
