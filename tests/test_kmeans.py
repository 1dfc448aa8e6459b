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
