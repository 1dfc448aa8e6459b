"""k-means behind one interface: faiss (GPU when it has one, else CPU) or torch (CUDA or CPU),
plus the nearest-centroid search used for encoding.

The sample is explicit: faiss silently subsamples to 256 points per centroid unless told
otherwise, so the subsampling happens here, seeded and logged, and faiss is told to use all
it is given."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from psrq.errors import QuantizerError

log = logging.getLogger(__name__)

Backend = Literal["auto", "faiss", "faiss-gpu", "torch", "torch-cuda"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class KMeansSpec:
    k: int
    iters: int = 20
    seed: int = 0
    # points per centroid kept for the fit; more are subsampled (seeded) before fitting
    max_points_per_centroid: int = 256
    backend: Backend = "auto"
    # k-means++ seeding (deterministic by seed) avoids the poor local minima of random init
    init: Literal["kmeans++", "random"] = "kmeans++"
    device: Device = "auto"


def faiss_gpus() -> int:
    try:
        import faiss

        return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        return 0


def torch_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


_GPU = {"faiss": "faiss-gpu", "torch": "torch-cuda"}
_said: set = set()


def resolve_backend(backend: Backend, device: Device = "auto") -> str:
    """The library and device k-means runs on. device=auto: on the GPU when one is usable
    (faiss's GPU build, else torch on CUDA), else on the CPU, and that fallback is logged
    (once per process); device=cuda without a usable GPU, or a backend naming the other
    device, is an error."""
    if backend in ("faiss-gpu", "torch-cuda"):
        if device == "cpu":
            raise QuantizerError(f"kmeans backend {backend} runs on the GPU but kmeans device is cpu")
        device = "cuda"
    lib = backend.split("-")[0]
    if device == "cpu":
        return "faiss" if lib == "auto" else lib
    gpu = {"faiss": faiss_gpus() > 0, "torch": torch_cuda()}
    usable = [name for name in ((lib,) if lib != "auto" else ("faiss", "torch")) if gpu[name]]
    if usable:
        return _GPU[usable[0]]
    if device == "cuda":
        what = {"faiss": "the installed faiss has no GPU support or sees no GPU (faiss-gpu)",
                "torch": "torch sees no CUDA device (torch-cuda)"}
        raise QuantizerError("kmeans device cuda: " + "; ".join(what[n] for n in ((lib,) if lib != "auto" else gpu)))
    fallback = "faiss" if lib == "auto" else lib
    if fallback not in _said:
        _said.add(fallback)
        log.warning("k-means on the CPU (%s): no usable GPU (faiss GPUs: %d, torch CUDA: %s); "
                    "set codebooks.kmeans.device=cpu to say so", fallback, faiss_gpus(), torch_cuda())
    return fallback


def subsample(x: np.ndarray, spec: KMeansSpec) -> np.ndarray:
    cap = spec.k * spec.max_points_per_centroid
    if len(x) <= cap:
        return x
    idx = np.sort(np.random.default_rng(spec.seed).choice(len(x), cap, replace=False))
    log.info("k-means: subsampled %d of %d points (%d per centroid)", cap, len(x), spec.max_points_per_centroid)
    return x[idx]


def fit_kmeans(x: np.ndarray, spec: KMeansSpec) -> np.ndarray:
    """Centroids (k, d) float32. Raises QuantizerError for K > n or non-finite input."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise QuantizerError(f"k-means needs a non-empty 2-d sample, got shape {x.shape}")
    if spec.k > len(x):
        raise QuantizerError(f"K={spec.k} is larger than the sample ({len(x)} rows): lower K or sample more items")
    if not np.isfinite(x).all():
        raise QuantizerError("k-means sample contains NaN or Inf values")
    x = subsample(x, spec)
    backend = resolve_backend(spec.backend, spec.device)
    init = kmeans_pp(x, spec.k, spec.seed, "cuda" if backend == "torch-cuda" else "cpu") if spec.init == "kmeans++" else None
    if backend.startswith("faiss"):
        return _faiss(x, spec, init, gpu=backend == "faiss-gpu")
    return _torch(x, spec, init, device="cuda" if backend == "torch-cuda" else "cpu")


def kmeans_pp(x: np.ndarray, k: int, seed: int, device: str = "cpu") -> np.ndarray:
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance.
    Distances via |x|^2 - 2 x.c + |c|^2 (one matrix-vector product per centroid). device=cuda:
    the same draws with the points on the GPU (torch-cuda k-means), where the k sequential
    passes over the sample would otherwise cost more on the host than the whole GPU fit."""
    if device != "cpu":
        import torch

        return x[seed_indices(torch.from_numpy(x).to(device), k, seed)].copy()
    rng = np.random.default_rng(seed)
    sq = np.einsum("ij,ij->i", x, x)
    idx = [int(rng.integers(len(x)))]
    d2 = np.maximum(sq - 2.0 * (x @ x[idx[0]]) + sq[idx[0]], 0.0)
    for _ in range(1, k):
        total = float(d2.sum())
        nxt = int(np.searchsorted(np.cumsum(d2), rng.random() * total)) if total > 0 else int(rng.integers(len(x)))
        nxt = min(nxt, len(x) - 1)
        idx.append(nxt)
        np.minimum(d2, np.maximum(sq - 2.0 * (x @ x[nxt]) + sq[nxt], 0.0), out=d2)
    return x[idx].copy()


def seed_indices(X, k: int, seed: int) -> list[int]:
    """kmeans_pp's draws over a torch tensor on any device (the same random stream and rule;
    the running sum in float64, so a draw can differ from the host's float32 one only at a
    boundary between two points)."""
    import torch

    rng = np.random.default_rng(seed)
    sq = (X * X).sum(1)
    idx = [int(rng.integers(len(X)))]
    d2 = (sq - 2.0 * (X @ X[idx[0]]) + sq[idx[0]]).clamp_min_(0.0)
    for _ in range(1, k):
        cum = torch.cumsum(d2, 0, dtype=torch.float64)
        total = float(cum[-1])
        if total > 0:
            at = torch.tensor([rng.random() * total], dtype=torch.float64, device=X.device)
            nxt = int(torch.searchsorted(cum, at)[0])
        else:
            nxt = int(rng.integers(len(X)))
        nxt = min(nxt, len(X) - 1)
        idx.append(nxt)
        torch.minimum(d2, (sq - 2.0 * (X @ X[nxt]) + sq[nxt]).clamp_min_(0.0), out=d2)
    return idx


def _faiss(x: np.ndarray, spec: KMeansSpec, init, gpu: bool) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        x.shape[1], spec.k, niter=spec.iters, seed=spec.seed, gpu=gpu, verbose=False,
        max_points_per_centroid=len(x),  # never subsample again: we already did, explicitly
        min_points_per_centroid=1,
    )
    km.train(x, init_centroids=init)  # empty clusters: faiss splits a large cluster to refill them
    return np.asarray(km.centroids, dtype=np.float32)


def _torch(x: np.ndarray, spec: KMeansSpec, init, device: str) -> np.ndarray:
    """Lloyd iterations; an empty cluster is re-seeded at the point farthest from its centroid.
    Deterministic by seed on both devices (see cluster_sums)."""
    import torch

    X = torch.from_numpy(x).to(device)
    if init is None:
        gen = torch.Generator().manual_seed(spec.seed)
        init = x[torch.randperm(len(x), generator=gen)[: spec.k].numpy()]
    C = torch.from_numpy(np.ascontiguousarray(init)).to(device)
    for _ in range(spec.iters):
        dist = torch.cdist(X, C)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=spec.k)
        sums = cluster_sums(X, assign, spec.k, fixed_order=X.is_cuda)
        C = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], C)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = dist.gather(1, assign[:, None]).squeeze(1).topk(len(empty)).indices
            C[empty] = X[far]
    return C.cpu().numpy().astype(np.float32)


def cluster_sums(X, assign, k: int, fixed_order: bool):
    """The sum of each cluster's points (k, d). fixed_order: as a one-hot (k, n) matrix times
    the points, the same bits on every run; `index_add_` adds with atomics on CUDA, in no fixed
    order, and the same seed gave other centroids on a GPU (H200, 2026-11-30). On the CPU
    index_add_ is ordered and k times cheaper; on the GPU the product costs about what the
    distances do (a millisecond per iteration at n=262,144, d=1,536, k=256)."""
    import torch

    if not fixed_order:
        return torch.zeros(k, X.shape[1], dtype=X.dtype, device=X.device).index_add_(0, assign, X)
    onehot = torch.zeros(k, len(X), dtype=X.dtype, device=X.device)
    onehot[assign, torch.arange(len(X), device=X.device)] = 1.0
    return onehot @ X


def nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the nearest centroid per row (squared L2), by matrix products in chunks;
    ties go to the lowest index, so results do not depend on batching."""
    c = np.asarray(centroids, dtype=np.float32)
    half_norms = 0.5 * (c * c).sum(1)
    out = np.empty(len(x), dtype=np.int32)
    for s in range(0, len(x), chunk):
        scores = x[s : s + chunk] @ c.T - half_norms  # argmax of x·c - |c|²/2 = argmin |x - c|²
        out[s : s + chunk] = scores.argmax(1)
    return out
