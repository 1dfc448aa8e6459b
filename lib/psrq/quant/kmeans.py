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
    if backend.startswith("faiss"):
        gpu = backend == "faiss-gpu"
        init = None
        if spec.init == "kmeans++":
            points = gpu_points(x) if gpu else None
            init = kmeans_pp(x, spec.k, spec.seed, points)
            if points is not None:
                import torch

                del points
                torch.cuda.empty_cache()  # faiss allocates its own GPU memory: torch must not keep the sample's
        return _faiss(x, spec, init, gpu=gpu)
    return _torch(x, spec, None, device="cuda" if backend == "torch-cuda" else "cpu")


def gpu_points(x: np.ndarray):
    """x on torch's first GPU for the seeding's distances, or None where torch sees no CUDA
    device (faiss's GPU build beside a CPU torch): the seeding then runs on the host."""
    if not torch_cuda():
        return None
    import torch

    return torch.from_numpy(x).cuda()


def kmeans_pp(x: np.ndarray, k: int, seed: int, points=None) -> np.ndarray:
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance.
    Distances via |x|^2 - 2 x.c + |c|^2 (one matrix-vector product per centroid).

    points: x as a torch tensor already on a GPU (torch-cuda k-means; faiss-gpu's through
    gpu_points). The k sequential passes over the sample then run there (on the host they
    took longer than the whole GPU fit: 4.6 s against 1.4 s at 262,144 x 1,536, K=256, on an
    H200) and only each pass's n distances come back; the draws, running sums and minima
    stay on the host as for x, so the seeds are the host's up to the rounding of the
    distances, and the same on every run."""
    if points is None:
        sq = np.einsum("ij,ij->i", x, x)

        def distances(i: int) -> np.ndarray:
            return np.maximum(sq - 2.0 * (x @ x[i]) + sq[i], 0.0)
    else:
        psq = (points * points).sum(1)

        def distances(i: int) -> np.ndarray:
            return (psq - 2.0 * (points @ points[i]) + psq[i]).clamp_min_(0.0).cpu().numpy()
    rng = np.random.default_rng(seed)
    idx = [int(rng.integers(len(x)))]
    d2 = distances(idx[0])
    for _ in range(1, k):
        total = float(d2.sum())
        nxt = int(np.searchsorted(np.cumsum(d2), rng.random() * total)) if total > 0 else int(rng.integers(len(x)))
        nxt = min(nxt, len(x) - 1)
        idx.append(nxt)
        np.minimum(d2, distances(nxt), out=d2)
    return x[idx].copy()


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
    """Lloyd iterations from `init` (None: seeded as spec.init says, on the device the points
    are copied to once); an empty cluster is re-seeded at the point farthest from its
    centroid. Deterministic by seed on both devices (see cluster_sums)."""
    import torch

    X = torch.from_numpy(x).to(device)
    if init is None and spec.init == "kmeans++":
        init = kmeans_pp(x, spec.k, spec.seed, X if X.is_cuda else None)
    elif init is None:
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
    the points, the same bits on every run: `index_add_` adds with atomics on CUDA, in no
    fixed order, and the same seed gave other centroids on a GPU (H200, 2026-11-30). On the
    CPU index_add_ is ordered and k times cheaper. The product's cost on a GPU (2knd FLOP and
    a (k, n) matrix, as the distances) is not measured yet: the machine was not lent again."""
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
