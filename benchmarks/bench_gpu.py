"""The GPU paths on a CUDA machine, side by side with its CPU:
- k-means of 262,144 x 1,536 float32 points, K=256, 20 iterations (the size of a
  codebook layer fit on text embeddings), on the GPU (codebooks.kmeans.device=cuda: faiss's
  GPU build, else torch on CUDA) and with faiss on the CPU; the k-means++ seeding alone on
  the host and on the GPU, and Lloyd's iterations alone on the GPU; each fit's inertia;
- MCCA training samples/s in one process on cuda:0, float32 and bf16 autocast, sparse item
  tables (the defaults), batch 512 and 4096, the samples' exact schema (bench_training's rows);
- with --pipeline ITEMS TRAIN_ROWS VOCAB: the middle size of bench_pipeline.py (its PSRQ fit,
  GPU against the node's CPU, and one epoch of MCCA; see pipeline_size).

Writes benchmarks/results/gpu.json with the GPU's name. Without a CUDA device it says so
and exits with status 2, writing nothing. Needs the torch side of the stack only (torch, numpy,
pyarrow, psutil; no Spark), so a GPU node's own Python runs it.

    python benchmarks/bench_gpu.py [--points 262144] [--dim 1536] [--steps 300]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import inertia, write_result


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, round(time.perf_counter() - t, 2)


def kmeans(points: int, dim: int) -> dict:
    from psrq.quant.kmeans import KMeansSpec, _torch, fit_kmeans, kmeans_pp, resolve_backend

    x = np.random.default_rng(0).normal(size=(points, dim)).astype(np.float32)
    spec = dict(k=256, iters=20, seed=0, max_points_per_centroid=-(-points // 256))
    host_init, host_seeding = timed(kmeans_pp, x, 256, 0)
    _, gpu_seeding = timed(lambda: kmeans_pp(x, 256, 0, torch.from_numpy(x).cuda()))  # the upload included
    _, lloyd = timed(_torch, x, KMeansSpec(**spec), host_init, "cuda")
    out = {}
    for device in ("cuda", "cpu"):
        c, seconds = timed(fit_kmeans, x, KMeansSpec(**spec, device=device))
        out[device] = {"backend": resolve_backend("auto", device), "seconds": seconds, "inertia": round(inertia(x, c), 4)}
    out["seeding_seconds"] = {"host": host_seeding, "gpu": gpu_seeding}
    out["lloyd_20_iterations_gpu_seconds"] = lloyd
    return out


def training(path: str, steps: int, batch_size: int, amp: bool, prefetch: int = 2) -> dict:
    from psrq.models.registry import ModelArgs, build_model
    from psrq.training.loop import LoopOptions, train_loop
    from psrq.training.optim import make_optimizer
    from psrq.training.readers import make_reader

    from bench_training import K, L, N, V

    device = torch.device("cuda:0")
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats(device)
    model = build_model(ModelArgs("mcca", V, K, L, N, 64, sparse=True)).to(device)
    res = train_loop(model, lambda: make_reader("arrow", path, model.inputs + ["label"], batch_size), make_optimizer(model, 5e-4), device,
                     LoopOptions(max_steps=steps, progress=False, amp_dtype=torch.bfloat16 if amp else None, prefetch=prefetch))
    torch.cuda.synchronize()
    return {"steps": res.steps, "prefetch": prefetch, "samples_per_second": round(res.samples_per_second),
            "median_step_ms": round(1000 * res.median_step_seconds, 2), "precision": res.precision,
            "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)}


def pipeline_size(items: int, train_rows: int, vocab: int, batch_size: int, work: Path,
                  devices: tuple = ("cuda", "cpu")) -> dict:
    """The pipeline's middle size (bench_pipeline.py) on this GPU: the PSRQ fit of its
    catalogue (the synthetic generator's items, the fit's 65,536-item sample, K=256, L=3, text,
    audio and joint spaces) with k-means on the GPU and with faiss on this node's cores; and one
    epoch of MCCA in one process on cuda:0 over rows of the samples' exact schema, as many as
    that size's train split, with its vocabulary (random values: this measures cost)."""
    from psrq.config import SyntheticConf
    from psrq.data import synthetic as syn
    from psrq.quant.base import QuantSpec
    from psrq.quant.kmeans import KMeansSpec
    from psrq.quant.spaces import fit_codebooks

    sc = SyntheticConf(n_items=items, n_users=items // 4, popularity_exponent=0.9)
    world = syn.make_world(sc, {"text": 768, "audio": 768})
    blocks = [syn.item_block(b, sc, world) for b in range(syn.n_blocks(items, sc.block_size))]
    pick = np.sort(np.random.default_rng(0).choice(items, size=min(65_536, items), replace=False))
    embs = {m: np.concatenate([b[f"{m}_emb"] for b in blocks])[pick] for m in ("text", "audio")}
    modalities = {m: {"column": f"{m}_emb", "dim": 768} for m in embs}
    fit = {}
    for device in devices:
        spec = QuantSpec(method="psrq", k=256, layers=3, kmeans=KMeansSpec(k=256, iters=20, max_points_per_centroid=256,
                                                                            seed=0, device=device))
        _, seconds = timed(fit_codebooks, spec, embs, modalities, "l2", True)
        fit[device] = {"seconds": seconds}
    print("pipeline fit", fit, flush=True)

    from bench_scale import zipf_items
    from bench_training import SPACES

    from psrq.models.registry import ModelArgs, build_model
    from psrq.samples.layout import fixed_lists
    from psrq.training.loop import LoopOptions, train_loop
    from psrq.training.optim import make_optimizer
    from psrq.training.readers import make_reader

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    path = work / "pipeline_train"
    path.mkdir(parents=True, exist_ok=True)
    n, hist = train_rows, 20
    lens = rng.integers(0, hist + 1, n)
    mask = np.arange(hist)[None, :] < lens[:, None]
    cols = {"label": rng.integers(0, 2, n).astype(np.int32), "item_idx": zipf_items(rng, vocab, n).astype(np.int32),
            "hist_len": lens.astype(np.int32),
            "hist_item_idx": fixed_lists(zipf_items(rng, vocab, (n, hist)) * mask, np.int32)}
    for s in SPACES:
        cols[f"target_{s}_codes"] = fixed_lists(rng.integers(1, 257, (n, 3)), np.int16)
        cols[f"hist_{s}_codes"] = fixed_lists((rng.integers(1, 257, (n, hist, 3)) * mask[:, :, None]).reshape(n, hist * 3),
                                              np.int16)
    pq.write_table(pa.table(cols), path / "part-0.parquet", row_group_size=-(-n // 16))
    device = torch.device("cuda:0" if devices[0] == "cuda" else "cpu")
    gpu = device.type == "cuda"
    torch.manual_seed(0)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(ModelArgs("mcca", vocab, 256, 3, hist, 64, sparse=True)).to(device)
    res = train_loop(model, lambda: make_reader("arrow", str(path), model.inputs + ["label"], batch_size), make_optimizer(model, 5e-3), device,
                     LoopOptions(progress=False, prefetch=2, epoch_steps=-(-n // batch_size)))
    if gpu:
        torch.cuda.synchronize()
    train = {"rows": n, "vocab": vocab, "batch_size": batch_size, "steps": res.steps,
             "epoch_seconds": round(res.seconds, 2), "samples_per_second": round(res.samples_per_second),
             "median_step_ms": round(1000 * res.median_step_seconds, 2), **res.timing(),
             "wait_over_step": round(res.wait_seconds / max(sum(res.step_seconds), 1e-9), 4),
             "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if gpu else None}
    print("pipeline training", train, flush=True)
    return {"items": items, "fit_sample": len(pick), "psrq_fit": fit,
            "fit_cpu_over_gpu": round(fit["cpu"]["seconds"] / fit["cuda"]["seconds"], 1) if "cuda" in fit else None,
            "mcca_one_epoch_one_process": train}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=262_144)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--work", default="benchmarks/.work/gpu")
    p.add_argument("--pipeline", nargs=3, type=int, metavar=("ITEMS", "TRAIN_ROWS", "VOCAB"), default=None,
                   help="also the pipeline's middle size (bench_pipeline.py's figures for it)")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU here: torch sees no CUDA device, so bench_gpu.py has nothing to measure "
              "(run it on a machine where nvidia-smi lists a GPU, after `make setup GPU=1`)", file=sys.stderr)
        sys.exit(2)
    from bench_training import write_samples

    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}", flush=True)
    (torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")).sum().item()  # CUDA and cuBLAS started
    km = kmeans(a.points, a.dim)
    print("k-means", km, flush=True)
    path = str(write_samples(Path(a.work), max(a.batch_sizes) * a.steps) / "train")
    big = max(a.batch_sizes)
    train = {f"batch_{b}_{p}": training(path, a.steps, b, p == "bf16") for b in a.batch_sizes for p in ("fp32", "bf16")
             if (b, p) != (big, "fp32")}
    # the largest batch in float32 reading in the loop's thread, then reading ahead
    # (train.prefetch, the default 2), one right after the other
    for key, depth in ((f"batch_{big}_fp32_no_prefetch", 0), (f"batch_{big}_fp32", 2)):
        train[key] = training(path, a.steps, big, False, prefetch=depth)
    print("training", train, flush=True)
    pipeline = pipeline_size(*a.pipeline, 512, Path(a.work)) if a.pipeline else None
    write_result("gpu", {
        "gpu": name, "cuda": torch.version.cuda, "torch": torch.__version__,
        "sizes": {"kmeans_points": a.points, "kmeans_dim": a.dim, "k": 256, "iters": 20, "train_steps": a.steps,
                  "batch_sizes": a.batch_sizes},
        "kmeans": km, "kmeans_cpu_over_gpu": round(km["cpu"]["seconds"] / km["cuda"]["seconds"], 1),
        "mcca_training_one_process": train,
        "prefetch_speedup": round(train[f"batch_{big}_fp32"]["samples_per_second"]
                                  / train[f"batch_{big}_fp32_no_prefetch"]["samples_per_second"], 2),
        **({"pipeline_middle_size": pipeline} if pipeline else {}),
    })


if __name__ == "__main__":
    main()
