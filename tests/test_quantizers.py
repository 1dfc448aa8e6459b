import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from psrq.config import SyntheticConf
from psrq.data import synthetic as syn
from psrq.errors import ArtifactError, QuantizerError
from psrq.quant.artifact import CodebookStore
from psrq.quant.base import QuantSpec
from psrq.quant.diagnostics import diagnose, group_coherence
from psrq.quant.kmeans import KMeansSpec
from psrq.quant.registry import quantizer
from psrq.quant.spaces import JOINT, fit_codebooks, normalise


@pytest.fixture(scope="module")
def catalogue():
    """Planted hierarchy: 6 genres x 4 sub-genres, 48-d text and 40-d audio embeddings."""
    cfg = SyntheticConf(n_items=2400, block_size=2400, n_genres=6, subgenres_per_genre=4, latent_dim=12, item_noise=0.2)
    it = syn.item_block(0, cfg, syn.make_world(cfg, {"text": 48, "audio": 40}))
    return it


def spec(method, k=24, layers=3, **kw):
    return QuantSpec(method=method, k=k, layers=layers, kmeans=KMeansSpec(k=k, seed=5, iters=20), epochs=15, **kw)


@pytest.mark.parametrize("method,layers,min_ari", [("vq", 1, 0.9), ("rq", 3, 0.9), ("psrq", 3, 0.9), ("pq", 4, 0.85), ("rqvae", 3, 0.7)])
def test_each_quantizer_recovers_planted_clusters(method, layers, min_ari):
    rng = np.random.default_rng(11)
    centres = normalise(rng.normal(size=(24, 48)), "l2")
    truth = rng.integers(0, 24, 2400)
    x = normalise(centres[truth] + 0.02 * rng.normal(size=(2400, 48)), "l2")
    s = spec(method, layers=layers, latent_dim=16, hidden_dim=64)
    q = quantizer(s).fit(x)
    codes = q.encode(x)
    assert codes.shape == (len(x), layers) and codes.min() >= 0 and codes.max() < 24
    # the first code (for pq: all sub-space codes together) groups the planted sub-genres
    first = codes[:, 0] if method != "pq" else np.unique(codes, axis=0, return_inverse=True)[1].ravel()
    assert adjusted_rand_score(truth, first) > min_ari
    recon = q.decode(codes)
    assert recon.shape == x.shape
    assert ((x - recon) ** 2).sum(1).mean() < ((x - x.mean(0)) ** 2).sum(1).mean()


def test_psrq_layer1_equals_rq_layer1(catalogue):
    x = normalise(catalogue["audio_emb"], "l2")
    rq, ps = spec("rq"), spec("psrq")
    c_rq = quantizer(rq).fit(x).encode(x)
    c_ps = quantizer(ps).fit(x).encode(x)
    assert np.array_equal(c_rq[:, 0], c_ps[:, 0])
    assert not np.array_equal(c_rq[:, 1:], c_ps[:, 1:])


def test_psrq_centroids_are_twice_as_wide_and_prefix_is_an_option(catalogue):
    x = normalise(catalogue["text_emb"], "l2")
    a = quantizer(spec("psrq")).fit(x).arrays
    assert a["layer0"].shape == (24, 48) and a["layer1"].shape == (24, 96)
    b = quantizer(spec("psrq", prefix="input")).fit(x).arrays
    assert np.array_equal(a["layer0"], b["layer0"]) and not np.allclose(a["layer1"], b["layer1"])


@pytest.mark.parametrize("method", ["rq", "psrq", "pq", "rqvae"])
def test_encode_is_deterministic_and_independent_of_batching(catalogue, method):
    x = normalise(catalogue["text_emb"], "l2")
    s = spec(method, layers=4 if method == "pq" else 3, latent_dim=16, hidden_dim=32)
    q1, q2 = quantizer(s).fit(x), quantizer(s).fit(x)
    assert all(np.array_equal(q1.arrays[k], q2.arrays[k]) for k in q1.arrays)
    whole = q1.encode(x)
    parts = np.concatenate([q1.encode(x[i : i + 333]) for i in range(0, len(x), 333)])
    assert np.array_equal(whole, parts)


def test_wrong_dimension_and_unknown_method(catalogue):
    x = normalise(catalogue["text_emb"], "l2")
    s = spec("rq")
    q = quantizer(s).fit(x)
    with pytest.raises(QuantizerError, match="dimension 40, the codebook expects 48"):
        q.encode(normalise(catalogue["audio_emb"], "l2"))
    with pytest.raises(QuantizerError, match="unknown quantizer 'opq' \\(choose from vq, rq, psrq, pq, rqvae"):
        quantizer(QuantSpec(method="opq"))
    with pytest.raises(QuantizerError, match="rq quantizer is not fitted"):
        quantizer(s).encode(x)


def test_group_coherence_by_hand():
    x = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    # group 0 = rows 0,1 (mean direction 45 degrees), group 1 = rows 2,3
    got = group_coherence(x, np.array([0, 0, 1, 1]))
    assert got == pytest.approx((np.cos(np.pi / 4) * 2 + 2) / 4, abs=1e-6)


def test_diagnostics_show_the_psrq_trade_off(catalogue):
    """Deep RQ codes alone group unrelated items (near random coherence); PSRQ's stay
    coherent, at the price of more collisions of full codes."""
    x = normalise(catalogue["text_emb"], "l2")
    d = {}
    for m in ("rq", "psrq"):
        s = spec(m)
        q = quantizer(s).fit(x)
        d[m] = q.diagnostics(x, seed=0)
        codes = q.encode(x)
        assert d[m] == diagnose(x, codes, q.decode(codes), 24, seed=0)
    rq3, ps3 = d["rq"]["layers"][2], d["psrq"]["layers"][2]
    assert ps3["coherence_layer"] > rq3["coherence_layer"] + 0.2
    assert rq3["coherence_layer"] - rq3["coherence_random"] < 0.15
    assert d["psrq"]["collision_rate"] > d["rq"]["collision_rate"]
    assert d["rq"]["relative_error"] < d["psrq"]["relative_error"]
    lay = d["psrq"]["layers"][0]
    assert 0 < lay["utilisation"] <= 1 and 1 <= lay["perplexity"] <= 24 and lay["entropy_bits"] > 0


def fitted_set(catalogue):
    mods = {"text": {"column": "text_emb", "dim": 48}, "audio": {"column": "audio_emb", "dim": 40}}
    embs = {"text": catalogue["text_emb"], "audio": catalogue["audio_emb"]}
    return fit_codebooks(spec("psrq", k=8), embs, mods, "l2"), embs


def test_joint_space_and_artifact_round_trip(catalogue, tmp_path):
    cbs, embs = fitted_set(catalogue)
    assert cbs.spaces == ["text", "audio", JOINT] and cbs.arrays[JOINT]["layer0"].shape == (8, 88)
    root = str(tmp_path / "cb")
    v1 = CodebookStore(root).write(cbs, {"seed": 5})
    v2 = CodebookStore(root).write(cbs, {"seed": 6})
    assert (v1, v2) == ("v0001", "v0002") and CodebookStore(root).versions() == [v1, v2]
    loaded, manifest = CodebookStore(root).load(v1)
    assert manifest["seed"] == 5 and loaded.version == v1 and loaded.spaces == cbs.spaces
    assert list(loaded.modalities) == ["text", "audio"]
    got, want = loaded.encode(embs), cbs.encode(embs)
    assert all(np.array_equal(got[s], want[s]) for s in want)
    assert CodebookStore(root).manifest()["version"] == v2  # latest by default
    assert CodebookStore(root).versions(method="rq") == []
    with pytest.raises(ArtifactError, match="no rq codebook versions"):
        CodebookStore(root).manifest(method="rq")


def test_corrupt_missing_and_incomplete_artifacts(catalogue, tmp_path):
    cbs, _ = fitted_set(catalogue)
    root = str(tmp_path / "cb")
    v = CodebookStore(root).write(cbs, {})
    with pytest.raises(ArtifactError, match="'v0009' not found .*available: v0001"):
        CodebookStore(root).load("v0009")
    (tmp_path / "cb" / "v0002").mkdir()  # a fit that died before its manifest
    assert CodebookStore(root).versions() == [v]
    blob = tmp_path / "cb" / v / "codebooks.safetensors"
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt: codebooks.safetensors checksum"):
        CodebookStore(root).load(v)
    with pytest.raises(ArtifactError, match="no codebook versions"):
        CodebookStore(str(tmp_path / "empty")).load()


def test_a_hand_edited_manifest_is_refused_and_a_broken_one_blocks_no_other(catalogue, tmp_path):
    import json

    cbs, _ = fitted_set(catalogue)
    root = str(tmp_path / "cb")
    v1, v2 = CodebookStore(root).write(cbs, {}), CodebookStore(root).write(cbs, {})
    f = tmp_path / "cb" / v1 / "manifest.json"
    m = json.loads(f.read_text())
    m["spec"]["k"] = 16  # 8 in the arrays
    f.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="v0001.*manifest.json was modified after it was written"):
        CodebookStore(root).load(v1)
    # the broken version is skipped when listing (with a warning) and blocks nothing else
    assert CodebookStore(root).versions() == [v2]
    loaded, _ = CodebookStore(root).load()
    assert loaded.version == v2
    # a manifest without its own checksum (an older format) is still checked against the arrays
    del m["checksums"]["manifest"]
    f.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="layer0 has 8 codes, the manifest's spec says k=16"):
        CodebookStore(root).load(v1)


def test_every_kmeans_setting_reaches_each_layer():
    from dataclasses import replace

    from psrq.quant.base import layer_kmeans
    from psrq.quant.kmeans import KMeansSpec

    km = KMeansSpec(k=99, iters=7, seed=3, max_points_per_centroid=11, backend="torch", init="random")
    s = replace(spec("rq", k=16), kmeans=km)
    layer2 = layer_kmeans(s, 2)
    assert layer2 == replace(km, k=16, seed=5)
