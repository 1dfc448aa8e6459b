"""k-means fit time and quality: the faiss backend vs scikit-learn's KMeans on the same
sample, same K, same iterations and the same k-means++ initial centroids (so quality differs
only by the implementations). The torch backend (CPU here) is measured beside them.

    python benchmarks/bench_kmeans.py [--n 65536] [--dim 768] [--k 256] [--iters 20]
                                      [--backends faiss torch sklearn faiss-gpu torch-cuda]
"""
import argparse
import time

import numpy as np

from psrq.config import SyntheticConf
from psrq.data import synthetic as syn
from psrq.quant.kmeans import KMeansSpec, _faiss, _torch, kmeans_pp
from psrq.quant.spaces import normalise

from common import inertia, write_result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--backends", nargs="+", default=["faiss", "torch", "sklearn"],
                   choices=["faiss", "torch", "sklearn", "faiss-gpu", "torch-cuda"])
    a = p.parse_args()
    cfg = SyntheticConf(n_items=a.n, block_size=a.n, n_genres=24, subgenres_per_genre=8, latent_dim=32)
    x = normalise(syn.item_block(0, cfg, syn.make_world(cfg, {"text": a.dim, "audio": 8}))["text_emb"], "l2")
    spec = KMeansSpec(k=a.k, iters=a.iters, seed=0, max_points_per_centroid=a.n)
    t = time.perf_counter()
    init = kmeans_pp(x, a.k, 0)
    init_s = time.perf_counter() - t
    fits = {
        "faiss": lambda: _faiss(x, spec, init, gpu=False),
        "faiss-gpu": lambda: _faiss(x, spec, init, gpu=True),
        "torch": lambda: _torch(x, spec, init, device="cpu"),
        "torch-cuda": lambda: _torch(x, spec, init, device="cuda"),
        "sklearn": lambda: __import__("sklearn.cluster", fromlist=["KMeans"]).KMeans(
            a.k, init=init, n_init=1, max_iter=a.iters, tol=0.0, algorithm="lloyd").fit(x).cluster_centers_.astype(np.float32),
    }
    results = {}
    for name in a.backends:
        t = time.perf_counter()
        c = fits[name]()
        s = time.perf_counter() - t
        results[name] = {"fit_seconds": round(s, 2), "inertia": round(inertia(x, c), 6)}
        print(name, results[name], flush=True)
    for name in list(results):
        if name != "sklearn" and "sklearn" in results:
            results[f"{name}_speedup_vs_sklearn"] = round(results["sklearn"]["fit_seconds"] / results[name]["fit_seconds"], 2)
            results[f"{name}_inertia_ratio_vs_sklearn"] = round(results[name]["inertia"] / results["sklearn"]["inertia"], 4)
    gpu = any(b.endswith(("gpu", "cuda")) for b in a.backends)
    write_result("kmeans_gpu" if gpu else "kmeans", {
        "sizes": {"n": a.n, "dim": a.dim, "k": a.k, "iters": a.iters},
        "kmeanspp_init_seconds": round(init_s, 2), "results": results})


if __name__ == "__main__":
    main()
