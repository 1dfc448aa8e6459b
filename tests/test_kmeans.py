import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from psrq.errors import QuantizerError
from psrq.quant.kmeans import KMeansSpec, fit_kmeans, nearest, subsample


def planted(n=1500, k=6, d=24, seed=0, spread=0.25):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, n)
    return (centres[labels] + spread * rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_backends_recover_planted_clusters(backend):
    x, labels = planted()
    c = fit_kmeans(x, KMeansSpec(k=6, iters=15, seed=3, backend=backend))
    assert c.shape == (6, 24) and c.dtype == np.float32
    assert adjusted_rand_score(labels, nearest(x, c)) > 0.99


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_fits_are_deterministic_by_seed(backend):
    x, _ = planted()
    a = fit_kmeans(x, KMeansSpec(k=5, seed=1, backend=backend))
    b = fit_kmeans(x, KMeansSpec(k=5, seed=1, backend=backend))
    assert np.array_equal(a, b)


def test_explicit_subsample():
    x, _ = planted(n=1000)
    s = subsample(x, KMeansSpec(k=4, max_points_per_centroid=50, seed=0))
    assert len(s) == 200 and np.array_equal(s, subsample(x, KMeansSpec(k=4, max_points_per_centroid=50, seed=0)))
    assert len(subsample(x, KMeansSpec(k=4, max_points_per_centroid=500))) == 1000


def test_torch_refills_empty_clusters():
    # 5 distinct points, many copies, k=5: a poor init would leave clusters empty
    base = np.eye(5, dtype=np.float32) * 10
    x = np.repeat(base, 40, axis=0)
    c = fit_kmeans(x, KMeansSpec(k=5, seed=0, backend="torch", init="random"))
    assert np.isfinite(c).all()
    assert len(np.unique(nearest(x, c))) == 5


def test_bad_inputs():
    x, _ = planted(n=10)
    with pytest.raises(QuantizerError, match="K=20 is larger than the sample \\(10 rows\\)"):
        fit_kmeans(x, KMeansSpec(k=20))
    x[3, 2] = np.nan
    with pytest.raises(QuantizerError, match="NaN or Inf"):
        fit_kmeans(x, KMeansSpec(k=2))


def test_gpu_backend_without_gpu_says_so():
    x, _ = planted(n=100)
    from psrq.quant.kmeans import faiss_gpus

    if faiss_gpus() > 0:
        pytest.skip("a GPU is visible")
    with pytest.raises(QuantizerError, match="faiss-gpu"):
        fit_kmeans(x, KMeansSpec(k=3, backend="faiss-gpu"))


def test_nearest_is_exact_and_batch_independent():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    c = rng.normal(size=(40, 16)).astype(np.float32)
    brute = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    got = nearest(x, c)
    assert (got == brute).mean() > 0.999  # float32 rounding may flip exact near-ties
    assert np.array_equal(np.concatenate([nearest(x[:1234], c), nearest(x[1234:], c, chunk=100)]), got)


def test_seeding_with_the_points_in_torch_draws_what_the_host_draws():
    """kmeans_pp with the points as a torch tensor (a GPU's, here the CPU's) makes the host's
    draws: on small integer points every distance is exact in both, so they pick the same
    points; so does a fit whose sample has fewer distinct points than K (zero mass)."""
    import torch

    from psrq.quant.kmeans import kmeans_pp

    x = np.random.default_rng(4).integers(-8, 9, size=(400, 6)).astype(np.float32)
    for seed in range(5):
        assert np.array_equal(kmeans_pp(x, 12, seed, torch.from_numpy(x)), kmeans_pp(x, 12, seed))
    same = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    assert np.array_equal(kmeans_pp(same, 5, 0, torch.from_numpy(same)), kmeans_pp(same, 5, 0))


def test_faiss_gpu_seeds_with_torch_on_the_gpu_and_draws_the_hosts_seeds(monkeypatch):
    """faiss-gpu's k-means++ seeding computes its distances with torch on the GPU where torch
    sees one (gpu_points; here substituted by the points as a CPU tensor, and faiss's fit by
    a recorder): the same seeds as the host's; where torch sees no GPU it seeds on the host."""
    import torch

    from psrq.quant import kmeans

    x = np.random.default_rng(4).integers(-8, 9, size=(400, 6)).astype(np.float32)
    handed = {}
    monkeypatch.setattr(kmeans, "resolve_backend", lambda backend, device: "faiss-gpu")
    monkeypatch.setattr(kmeans, "_faiss", lambda x, spec, init, gpu: handed.update(init=init, gpu=gpu) or init)
    used = []
    monkeypatch.setattr(kmeans, "gpu_points", lambda x: used.append(len(x)) or torch.from_numpy(x))
    fit_kmeans(x, KMeansSpec(k=12, seed=3))
    assert used == [400] and handed["gpu"] is True
    assert np.array_equal(handed["init"], kmeans.kmeans_pp(x, 12, 3))
    monkeypatch.undo()
    if not kmeans.torch_cuda():
        assert kmeans.gpu_points(x) is None  # no CUDA for torch: the host seeds


def test_cluster_sums_in_a_fixed_order_equal_index_add():
    """The GPU's ordered sums (a one-hot product, run here on the CPU) are the per-cluster
    sums, with empty clusters at zero. (That they are the same bits on every run matters on a
    GPU, where index_add_ is not: tests/test_cuda.py checks that; both are here.)"""
    import torch

    from psrq.quant.kmeans import cluster_sums

    g = torch.Generator().manual_seed(0)
    X = torch.randn(5000, 16, generator=g)
    assign = torch.randint(0, 7, (5000,), generator=g)
    assign[assign == 3] = 4  # cluster 3 empty
    fixed = cluster_sums(X, assign, 8, fixed_order=True)
    expected = torch.stack([X[assign == c].sum(0) if (assign == c).any() else torch.zeros(16) for c in range(8)])
    torch.testing.assert_close(fixed, expected, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(cluster_sums(X, assign, 8, fixed_order=False), expected, atol=1e-3, rtol=1e-5)
    assert torch.equal(fixed, cluster_sums(X, assign, 8, fixed_order=True)) and not fixed[3].any()
