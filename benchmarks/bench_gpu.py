"""The GPU paths on a CUDA machine, side by side with its CPU:
- k-means of 262,144 x 1,536 float32 points, K=256, 20 iterations (the size of a
  codebook layer fit on text embeddings), on the GPU (codebooks.kmeans.device=cuda: faiss's
  GPU build, else torch on CUDA) and with faiss on the CPU;
- MCCA training samples/s in one process on cuda:0, float32 and bf16 autocast, sparse item
  tables (the defaults), batch 512, the samples' exact schema (bench_training's rows).

Writes benchmarks/results/gpu.json with the GPU's name. Without a CUDA device it says so
and exits with status 2, writing nothing.

    python benchmarks/bench_gpu.py [--points 262144] [--dim 1536] [--steps 300]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import write_result


def kmeans(points: int, dim: int, device: str) -> dict:
    from psrq.quant.kmeans import KMeansSpec, fit_kmeans, resolve_backend

    x = np.random.default_rng(0).normal(size=(points, dim)).astype(np.float32)
    spec = KMeansSpec(k=256, iters=20, seed=0, max_points_per_centroid=-(-points // 256), device=device)
    t = time.perf_counter()
    fit_kmeans(x, spec)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"backend": resolve_backend(spec.backend, spec.device), "seconds": round(time.perf_counter() - t, 2)}


def training(path: str, steps: int, amp: bool) -> dict:
    from psrq.models.registry import build_model
    from psrq.training.loop import train_loop
    from psrq.training.optim import make_optimizer
    from psrq.training.readers import make_reader

    from bench_training import K, L, N, V

    device = torch.device("cuda:0")
    torch.manual_seed(0)
    model = build_model("mcca", V, K, L, N, 64, sparse=True).to(device)
    res = train_loop(model, lambda: make_reader("arrow", path, model.inputs + ["label"], 512), make_optimizer(model, 5e-4),
                     device, max_steps=steps, progress=False, amp_dtype=torch.bfloat16 if amp else None)
    torch.cuda.synchronize()
    return {"steps": res.steps, "samples_per_second": round(res.samples_per_second),
            "median_step_ms": round(1000 * res.median_step_seconds, 2), "precision": res.precision,
            "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=262_144)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--work", default="benchmarks/.work/gpu")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU here: torch sees no CUDA device, so bench_gpu.py has nothing to measure "
              "(run it on a machine where nvidia-smi lists a GPU, after `make setup GPU=1`)", file=sys.stderr)
        sys.exit(2)
    from bench_training import write_samples

    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}", flush=True)
    km = {"cuda": kmeans(a.points, a.dim, "cuda"), "cpu": kmeans(a.points, a.dim, "cpu")}
    print("k-means", km, flush=True)
    path = str(write_samples(Path(a.work), 512 * a.steps) / "train")
    train = {"fp32": training(path, a.steps, False), "bf16": training(path, a.steps, True)}
    print("training", train, flush=True)
    write_result("gpu", {
        "gpu": name, "cuda": torch.version.cuda, "torch": torch.__version__,
        "sizes": {"kmeans_points": a.points, "kmeans_dim": a.dim, "k": 256, "iters": 20, "train_steps": a.steps,
                  "batch_size": 512},
        "kmeans": km, "kmeans_cpu_over_gpu": round(km["cpu"]["seconds"] / km["cuda"]["seconds"], 1),
        "mcca_training_one_process": train,
    })


if __name__ == "__main__":
    main()
