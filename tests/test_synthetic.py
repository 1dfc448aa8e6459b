"""The generator: deterministic by seed, independent of partitioning, with planted signal."""
import numpy as np
import pytest

from psrq.config import SyntheticConf
from psrq.data import synthetic as syn
from psrq.data.synthetic_spark import synthetic_frames

from conftest import small_config

DIMS = {"text": 16, "audio": 12}


def test_blocks_are_deterministic_by_seed():
    cfg = SyntheticConf(n_items=300, n_users=50, block_size=100, latent_dim=8)
    w = syn.make_world(cfg, DIMS)
    a, b = syn.item_block(1, cfg, w), syn.item_block(1, cfg, syn.make_world(cfg, DIMS))
    assert np.array_equal(a["text_emb"], b["text_emb"]) and np.array_equal(a["genre"], b["genre"])
    other = SyntheticConf(seed=8, n_items=300, n_users=50, block_size=100, latent_dim=8)
    c = syn.item_block(1, other, syn.make_world(other, DIMS))
    assert not np.allclose(a["text_emb"], c["text_emb"])
    assert a["item_id"].tolist() == list(range(100, 200))
    assert a["text_emb"].shape == (100, 16) and a["audio_emb"].shape == (100, 12)


def test_popularity_permutation_is_a_bijection():
    cfg = SyntheticConf(n_items=997, block_size=100)
    w = syn.make_world(cfg, DIMS)
    ids = np.arange(997)
    ranks = syn.popularity_rank(ids, w, 997)
    assert sorted(ranks.tolist()) == ids.tolist()
    assert np.array_equal(syn.item_for_rank(ranks, w, 997), ids)


def test_modalities_agree_only_partly():
    cfg = SyntheticConf(n_items=4000, block_size=4000, modality_agreement=0.5, subgenres_per_genre=4)
    it = syn.item_block(0, cfg, syn.make_world(cfg, DIMS))
    agree = (it["text_subgenre"] == it["audio_style"]).mean()
    # agreement p + (1 - p) / S by chance
    assert abs(agree - (0.5 + 0.5 / 4)) < 0.03


def test_label_hash_is_order_independent():
    u, i, t = np.arange(50), np.arange(50) * 7, np.arange(50) * 1000
    h = syn.uniform_hash(3, u, i, t)
    perm = np.random.default_rng(0).permutation(50)
    assert np.array_equal(syn.uniform_hash(3, u[perm], i[perm], t[perm]), h[perm])
    assert ((h >= 0) & (h < 1)).all() and 0.3 < h.mean() < 0.7


def collect(frames, name):
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in frames[name].collect())


def test_spark_output_does_not_depend_on_partitioning(spark, tmp_path):
    cfg = small_config(tmp_path)
    a = synthetic_frames(spark, cfg)
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        b = synthetic_frames(spark, cfg)
        assert collect(a, "interactions") == collect(b, "interactions")
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
    assert collect(a, "items") == collect(b, "items")


def test_generated_data_has_the_planted_shape(spark, tmp_path):
    cfg = small_config(tmp_path)
    fr = synthetic_frames(spark, cfg)
    items = fr["items"]
    assert items.count() == 400 and items.select("item_id").distinct().count() == 400
    inter = fr["interactions"].toPandas()
    assert set(inter["label"].unique()) == {0, 1}
    assert 0.05 < inter["label"].mean() < 0.6
    counts = inter.groupby("item_id").size().reindex(range(400), fill_value=0)
    assert (counts < 30).mean() > 0.5  # long tail: most items are cold
    assert counts.max() > 5 * counts.median()
    # labels carry signal: items in the user's most-liked genre are liked more often
    truth = fr["item_truth"].toPandas().set_index("item_id")
    inter["genre"] = truth.loc[inter["item_id"], "genre"].to_numpy()
    pos = inter[inter.label == 1]
    fav = pos.groupby("user_id")["genre"].agg(lambda g: g.value_counts().idxmax())
    inter["fav"] = inter["user_id"].map(fav)
    known = inter.dropna(subset=["fav"])
    rate_fav = known[known.genre == known.fav].label.mean()
    rate_other = known[known.genre != known.fav].label.mean()
    assert rate_fav > 2 * rate_other


def test_generator_needs_text_and_audio(spark, tmp_path):
    from psrq.errors import ConfigError

    cfg = small_config(tmp_path)
    mods = {"text": cfg.dataset.modalities["text"]}
    bad = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"modalities": mods})})
    with pytest.raises(ConfigError, match="missing \\['audio'\\]"):
        synthetic_frames(spark, bad)
