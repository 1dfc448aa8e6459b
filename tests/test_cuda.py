"""The GPU paths on a CUDA device: they run only where torch sees one (CI has none, so CI
skips this module; tests/test_gpu_paths.py covers what a CPU machine can). This module needs
the torch side of the stack only (no Spark, no conftest fixtures), so that a GPU node's
Python runs it as it is:

    PYTHONPATH=lib python -m pytest -p no:cacheprovider --noconftest tests/test_cuda.py

benchmarks/results/gpu_tests.txt records the last run on a GPU."""
import numpy as np
import pytest
import torch
from sample_rows import K, L, N, V, batch, ddp_job, world_of_one, write_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")


def mcca(sparse: bool = True):
    from psrq.models.registry import ModelArgs, build_model

    torch.manual_seed(0)
    return build_model(ModelArgs("mcca", V, K, L, N, 16, sparse=sparse))


def test_auto_devices_resolve_to_the_gpu():
    from psrq.quant.kmeans import resolve_backend
    from psrq.training.loop import autocast_dtype, device_for

    assert device_for("auto") == device_for("cuda") == torch.device("cuda:0")
    assert autocast_dtype("auto", torch.device("cuda:0")) == torch.bfloat16
    assert resolve_backend("auto", "auto") in ("faiss-gpu", "torch-cuda")
    assert resolve_backend("torch", "cuda") == "torch-cuda"


def test_kmeans_on_the_gpu_finds_the_cpu_centroids():
    """The same k-means++ draws (on the GPU there), the same Lloyd iterations: on well-separated
    clusters every point gets the same centroid on both devices, so the centroids agree to
    float rounding."""
    from psrq.quant.kmeans import KMeansSpec, fit_kmeans, nearest

    g = np.random.default_rng(0)
    centres = g.normal(scale=20.0, size=(8, 32))
    x = (centres[g.integers(0, 8, 20_000)] + g.normal(size=(20_000, 32))).astype(np.float32)
    spec = dict(k=8, iters=10, seed=0, max_points_per_centroid=20_000)
    gpu = fit_kmeans(x, KMeansSpec(**spec, backend="torch", device="cuda"))
    cpu = fit_kmeans(x, KMeansSpec(**spec, backend="torch", device="cpu"))
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    assert (nearest(x, gpu) == nearest(x, cpu)).all()
    auto = fit_kmeans(x, KMeansSpec(**spec))  # device auto: on the GPU here
    assert (nearest(x, auto) == nearest(x, cpu)).all()


def test_kmeans_on_the_gpu_is_deterministic_by_seed():
    """torch's k-means on CUDA: the same seed gives the same codebook bit for bit (with
    index_add_'s atomics it did not, on an H200)."""
    from psrq.quant.kmeans import KMeansSpec, fit_kmeans

    x = np.random.default_rng(1).normal(size=(50_000, 64)).astype(np.float32)
    spec = KMeansSpec(k=64, iters=10, seed=2, max_points_per_centroid=1_000, backend="torch", device="cuda")
    assert np.array_equal(fit_kmeans(x, spec), fit_kmeans(x, spec))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mcca_trains_on_the_gpu_with_sparse_item_tables(precision):
    from psrq.models.layers import item_tables
    from psrq.training.loop import LoopOptions, autocast_dtype, train_loop
    from psrq.training.optim import make_optimizer

    device = torch.device("cuda:0")
    model = mcca().to(device)
    assert any(t.sparse for t in item_tables(model))  # row-wise Adagrad on sparse CUDA gradients
    batches = [batch(256, s) for s in range(8)]
    res = train_loop(model, lambda: iter(batches), make_optimizer(model, 1e-2), device,
                     LoopOptions(progress=False, epochs=6, amp_dtype=autocast_dtype(precision, device)))
    assert res.precision == precision and res.steps == 48
    assert all(np.isfinite(res.losses)) and np.mean(res.losses[-8:]) < 0.9 * np.mean(res.losses[:8]), res.losses
    assert all(p.is_cuda and p.dtype == torch.float32 for p in model.parameters())


def test_a_checkpoint_written_on_the_gpu_predicts_the_same_on_the_cpu(tmp_path):
    """The evaluation reads the trainer's checkpoint on the CPU (map_location) and must
    score the rows as the GPU model does."""
    from psrq.training.checkpoints import load_checkpoint, save_checkpoint
    from psrq.training.loop import LoopOptions, predict, train_loop
    from psrq.training.optim import make_optimizer

    device = torch.device("cuda:0")
    model = mcca().to(device)
    opt = make_optimizer(model, 1e-2)
    train_loop(model, lambda: iter([batch(256, s) for s in range(4)]), opt, device, LoopOptions(progress=False))
    save_checkpoint(str(tmp_path), model, opt, 4, {"identity": "cuda-test"})
    ckpt = load_checkpoint(str(tmp_path))
    assert all(t.device.type == "cpu" for t in ckpt["model"].values() if isinstance(t, torch.Tensor))
    cpu_model = mcca()
    cpu_model.load_state_dict(ckpt["model"])
    rows = [batch(512, 99)]
    on_gpu, labels, _ = predict(model, rows, device)
    on_cpu, labels_cpu, _ = predict(cpu_model, rows, torch.device("cpu"))
    assert (labels == labels_cpu).all()
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse-gloo", "dense-nccl"])
def test_torch_distributor_rank_trains_on_its_gpu(sparse, tmp_path, monkeypatch):
    """One TorchDistributor rank (world 1 on one GPU) through ddp_worker: the process group
    ddp_backend names (Gloo for sparse item tables, NCCL for dense ones) initialises on
    CUDA and reduces the gradients."""
    from psrq.training.distributed import ddp_backend, ddp_worker

    world_of_one(monkeypatch)
    write_split(tmp_path / "train", batch(2048, 0))
    job = ddp_job(tmp_path / "train", sparse, "cuda")
    [summary] = ddp_worker(job)
    assert ddp_backend(torch.device("cuda:0"), sparse) == ("gloo" if sparse else "cpu:gloo,cuda:nccl")
    assert summary["device"] == "cuda:0" and summary["world"] == 1 and summary["steps"] == 8
    assert summary["rows"] == 2048 and np.isfinite(summary["last_loss"]) and np.isfinite(summary["checksum"])
