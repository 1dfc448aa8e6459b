"""Training samples: history sequences by hand, and the Spark job end to end (no leakage)."""
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from psrq.errors import ArtifactError, StorageError
from psrq.quant.artifact import MANIFEST, SELF, manifest_checksum
from psrq.samples.build import Split, build_samples, split_cutoffs
from psrq.samples.layout import event_histories, fixed_lists, row_bytes, user_samples
from psrq.storage import open_engine

from conftest import copy_pipeline, small_config
from psrq.job import JobContext


def test_event_histories_by_hand():
    #            t:  1  2  2  3  5  6
    ts = np.array([1, 2, 2, 3, 5, 6])
    labels = np.array([1, 1, 0, 1, 0, 1])
    idx, length = event_histories(ts, labels, 2)
    assert length.tolist() == [0, 1, 1, 2, 2, 2]
    # event at t=2 sees only t=1 (the other t=2 positive is not strictly before)
    assert idx.tolist() == [[-1, -1], [0, -1], [0, -1], [0, 1], [1, 3], [1, 3]]
    none, zero = event_histories(ts, np.zeros(6, dtype=int), 3)
    assert (none == -1).all() and zero.tolist() == [0] * 6


def test_row_bytes_is_the_width_of_real_sample_rows():
    """The row-group size comes from the layout, not from a pass over the data: the width
    row_bytes gives is what Arrow holds for real sample rows of that schema."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from psrq.schemas import samples_schema

    rng = np.random.default_rng(0)
    m, n, layers = 4096, 5, 3
    events = pa.table({
        "user_id": np.repeat(np.arange(64), m // 64), "item_id": rng.integers(0, 500, m),
        "label": rng.integers(0, 2, m).astype(np.int32),
        "ts": pa.array(rng.integers(0, 10**12, m), type=pa.timestamp("us", tz="UTC")),
        "item_idx": rng.integers(2, 500, m).astype(np.int32), "is_cold": np.zeros(m, np.int32),
        **{f"{s}_codes": pa.array(rng.integers(0, 255, (m, layers)).tolist(), type=pa.list_(pa.int16())) for s in ("a", "b")},
        "content_idx": rng.integers(1, 500, m).astype(np.int32),
    })
    got = user_samples(events, ["a", "b"], layers, n, 10**11, 10**12 // 2, "v0012").drop(["split"])
    schema = to_arrow_schema(samples_schema(["a", "b"], True), timestamp_utc=True)
    schema = schema.remove(schema.get_field_index("split"))
    real = got.select(schema.names).cast(schema).combine_chunks().nbytes / m
    assert row_bytes(schema, n, layers, "v0012") == pytest.approx(real, rel=0.005)  # validity bits aside


def test_user_samples_by_hand():
    t = lambda d: datetime(2026, 1, d, tzinfo=timezone.utc)  # noqa: E731
    events = pa.table({
        "user_id": [7, 7, 7, 7],
        "item_id": [30, 10, 20, 40],
        "label": [1, 1, 0, 1],
        "ts": pa.array([t(3), t(1), t(2), t(9)], type=pa.timestamp("us", tz="UTC")),
        "item_idx": [4, 2, 3, 1],
        "is_cold": [0, 0, 1, 1],
        "text_codes": pa.array([[3, 0], [1, 1], [2, 2], [0, 5]], type=pa.list_(pa.int16())),
        "content_idx": [13, 11, 12, 14],
    })
    got = user_samples(events, ["text"], 2, 2, valid_from=int(t(5).timestamp() * 1e6),
                       test_from=int(t(8).timestamp() * 1e6), codebook_version="v0007").to_pylist()
    assert [r["item_id"] for r in got] == [10, 20, 30, 40]  # ordered by time
    assert [r["hist_len"] for r in got] == [0, 1, 1, 2]
    assert [r["hist_item_idx"] for r in got] == [[0, 0], [2, 0], [2, 0], [2, 4]]
    # codes + 1, 0 = padding, history flattened oldest first
    assert [r["hist_text_codes"] for r in got] == [[0, 0, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0], [2, 2, 4, 1]]
    assert [r["target_text_codes"] for r in got] == [[2, 2], [3, 3], [4, 1], [1, 6]]
    assert [r["content_idx"] for r in got] == [11, 12, 13, 14]
    assert [r["hist_content_idx"] for r in got] == [[0, 0], [11, 0], [11, 0], [11, 13]]
    assert [r["split"] for r in got] == ["train", "train", "train", "test"]
    assert got[0]["hist_last_ts"] is None and got[3]["hist_last_ts"] == t(3)
    assert {r["codebook_version"] for r in got} == {"v0007"}


def test_vocabulary_is_numbered_across_partitions(spark):
    """Indices 2.. in order of train count (ties by item_id), contiguous over the sorted ids'
    partitions (7, asked for, whatever spark.sql.shuffle.partitions says); items without a
    train interaction get none."""
    from psrq.samples.build import build_vocabulary

    rng = np.random.default_rng(0)
    rows = [(int(i), int(n) + int(t), int(t)) for i, n, t in zip(rng.permutation(5000), rng.integers(0, 5, 5000),
                                                                  rng.integers(0, 40, 5000))]
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "400")  # the cluster profile's: not what the vocabulary gets
    try:
        counts = spark.createDataFrame(rows, "item_id long, n_all long, n_train long")
        vocab, ranked = build_vocabulary(counts, 7)
        got = sorted((r["idx"], r["item_id"]) for r in vocab.collect())
        assert ranked.select("_p").distinct().count() == 7 and vocab.rdd.getNumPartitions() == 7
        ranked.unpersist()
        # a persisted aggregate (build_samples' item counts) is read in merged partitions,
        # not in 400 tasks (psrq.spark: canChangeCachedPlanOutputPartitioning)
        agg = counts.groupBy("n_train").count().persist()
        assert agg.count() == 40 and agg.rdd.getNumPartitions() < 10
        agg.unpersist()
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    want = [i for _, i in sorted((-t, i) for i, _, t in rows if t > 0)]
    assert got == list(zip(range(2, len(want) + 2), want))
    empty, ranked = build_vocabulary(counts.filter("n_train = 0"))
    assert empty.count() == 0 and empty.schema.fieldNames() == ["item_id", "idx"]
    ranked.unpersist()


def test_split_cutoffs_are_exact_whatever_the_partitioning(spark, monkeypatch, caplog):
    """The valid/test cut-offs are the exact ceil(q·n)-th event times, the same for the events
    in one partition or in several (approxQuantile alone moves with the partitioning); the
    rows of each split come with them."""
    from pyspark.sql import functions as F

    n = 200_000
    base = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    # times with ties (about 2 events per instant), rows not in time order
    events = spark.range(n).select(F.timestamp_micros(F.col("id") * 7919 % 100_003 * 1000 + base).alias("ts"))
    us = np.sort(np.array([r[0] for r in events.select(F.unix_micros("ts")).collect()]))
    exact = (int(us[int(np.ceil(0.8 * n)) - 1]), int(us[int(np.ceil(0.9 * n)) - 1]))
    rows = {"train": int((us < exact[0]).sum()), "valid": int(((us >= exact[0]) & (us < exact[1])).sum()),
            "test": int((us >= exact[1]).sum())}
    for parts in (1, 3, 8):
        assert split_cutoffs(events.repartition(parts), 0.8, 0.9) == (Split(*exact), rows), parts
    assert split_cutoffs(events.limit(1), 0.8, 0.9) == (Split(base, base), {"train": 0, "valid": 0, "test": 1})
    # brackets that miss (approxQuantile breaking its promise): still exact, from all rows
    monkeypatch.setattr(type(events), "approxQuantile", lambda self, col, probs, err: [base] * len(probs))
    with caplog.at_level("WARNING", logger="psrq.samples.build"):
        assert split_cutoffs(events, 0.8, 0.9) == (Split(*exact), rows)
    assert caplog.text.count("bracket of quantile") == 2


def test_samples_job_no_leakage_and_splits(spark, small_pipeline):
    cfg, info = small_pipeline
    train = pq.read_table(info.splits["train"]["path"]).to_pandas()
    test = pq.read_table(info.splits["test"]["path"]).to_pandas()
    n = {s: info.splits[s]["rows"] for s in ("train", "valid", "test")}
    inter = open_engine(spark, "delta-rs").read(cfg.table_path("interactions")).count()
    assert sum(n.values()) == inter and 0.7 < n["train"] / inter < 0.9
    assert train.ts.max() < test.ts.min()
    both = [train, test]
    for df in both:
        has = df[df.hist_len > 0]
        assert (has.hist_last_ts < has.ts).all()  # no history element at or after its event
        assert (df.hist_len <= 5).all() and len(df.hist_item_idx.iloc[0]) == 5
        assert all(len(c) == 15 for c in df.hist_joint_codes.head(50))


def test_targets_carry_their_semantic_ids_and_vocabulary(spark, small_pipeline):
    cfg, info = small_pipeline
    engine = open_engine(spark, "delta-rs")
    sid = engine.read(cfg.table_path("semantic_ids")).toPandas().set_index("item_id")
    test = pq.read_table(info.splits["test"]["path"]).to_pandas()
    row = test.iloc[0]
    assert list(row.target_joint_codes) == [c + 1 for c in sid.loc[row.item_id, "joint_codes"]]
    vocab = engine.read(cfg.table_path("item_vocab")).toPandas().set_index("item_id")["idx"]
    assert vocab.min() == 2 and vocab.max() == info.vocab_size - 1 and vocab.is_unique
    in_vocab = test.item_id.isin(vocab.index)
    assert (test[~in_vocab].item_idx == 1).all()  # items never seen in train: out of vocabulary
    assert (test[in_vocab].item_idx == vocab.loc[test[in_vocab].item_id].to_numpy()).all()
    manifest = json.loads(open(f"{cfg.samples.path}/manifest.json").read())
    assert manifest["codebook_version"] == "v0001" and manifest["spaces"] == ["text", "audio", "joint"]


def test_samples_are_petastorm_readable(small_pipeline):
    from petastorm import make_batch_reader

    _, info = small_pipeline
    rows = 0
    with make_batch_reader(f"file://{info.splits['valid']['path']}", num_epochs=1, workers_count=1) as reader:
        for batch in reader:
            rows += len(batch.label)
            assert batch.hist_joint_codes.shape[1] == 15
    assert rows == info.splits["valid"]["rows"]


def test_samples_take_the_codebook_version_in_use(spark, small_pipeline):
    """semantic_ids may hold several versions: samples read only the one in use (set, or
    marked current); a codebook without rows (fitted, never assigned) or without a folder is
    a clear error, nothing is written."""
    cfg, info = small_pipeline
    assert info.codebook_version == "v0001"
    root = Path(cfg.codebooks_root())
    shutil.copytree(root / "v0001", root / "v0002")  # a second fit, not assigned
    manifest = json.loads((root / "v0002" / MANIFEST).read_text()) | {"version": "v0002"}
    manifest["checksums"][SELF] = manifest_checksum(manifest)
    (root / "v0002" / MANIFEST).write_text(json.dumps(manifest))
    try:
        with pytest.raises(StorageError, match="semantic_ids holds no rows of codebook v0002 \\(it holds \\['v0001'\\]\\)"):
            build_samples(JobContext.of(spark, cfg.with_overrides({"codebooks.version": "v0002"})))
    finally:
        shutil.rmtree(root / "v0002")
    with pytest.raises(ArtifactError, match="codebook version 'v0099' not found .* \\(available: v0001\\)"):
        build_samples(JobContext.of(spark, cfg.with_overrides({"codebooks.version": "v0099"})))


def test_content_features_cover_the_catalogue(spark, small_pipeline):
    """content_idx indexes every catalogue item (cold ones too); the reduced content is the
    item's own embedding, projected; QARM codes exist for every item."""
    from psrq.data.embeddings import embeddings_to_numpy
    from psrq.samples.content import projection, read_content, reduce

    cfg, info = small_pipeline
    feats = read_content(f"{cfg.samples.path}/{info.content['file']}")
    items = open_engine(spark, "delta-rs").read(cfg.table_path("items")).toPandas().set_index("item_id")
    assert feats.size == len(items) + 1 and feats.item_ids[0] == -1
    assert sorted(feats.item_ids[1:].tolist()) == sorted(items.index.tolist())
    test = pq.read_table(info.splits["test"]["path"]).to_pandas()
    assert (feats.item_ids[test.content_idx.to_numpy()] == test.item_id.to_numpy()).all()
    cold = test[test.item_idx == 1].iloc[0]  # out of vocabulary, yet it has content
    mc = cfg.dataset.modalities["text"]
    raw, _ = embeddings_to_numpy(pa.array([items.loc[cold.item_id, mc.column].tolist()], pa.list_(pa.float32())), mc.dim)
    want = reduce(raw, projection(mc.dim, cfg.samples.content.dim, "text", cfg.samples.content.seed))[0]
    np.testing.assert_allclose(feats.modalities["text"][cold.content_idx], want, rtol=1e-5, atol=1e-6)
    # history content indices point at the same items as the history vocabulary indices
    row = test[test.hist_len > 2].iloc[0]
    vocab = open_engine(spark, "delta-rs").read(cfg.table_path("item_vocab")).toPandas().set_index("item_id")["idx"]
    hist_items = feats.item_ids[np.asarray(row.hist_content_idx[: row.hist_len])]
    assert vocab.reindex(hist_items).fillna(1).astype(int).tolist() == list(row.hist_item_idx[: row.hist_len])
    assert (row.hist_content_idx[row.hist_len:] == 0).all()
    for name, width in {"qarm_vq": 1, "qarm_rq": cfg.samples.qarm.layers}.items():
        codes = feats.codes[name]
        assert codes.shape == (feats.size, width) and (codes[0] == 0).all() and (codes[1:] >= 1).all()
    assert info.content["qarm_pairs"] > 0
    # without QARM's codes (a build for another model): the same reduced content, no codes, no pairs
    from psrq.samples.content_spark import build_content, catalogue_index

    engine = open_engine(spark, "delta-rs")
    cat = catalogue_index(engine.read(cfg.table_path("items")))
    bare, bare_info = build_content(cfg, engine.read(cfg.table_path("items")), cat,
                                    engine.read(cfg.table_path("interactions")), codes=False)
    assert bare.codes == {} and bare_info["codes"] == {} and "qarm_pairs" not in bare_info
    np.testing.assert_array_equal(bare.item_ids, feats.item_ids)
    for m, v in feats.modalities.items():
        np.testing.assert_array_equal(bare.modalities[m], v)


def test_qarm_codes_are_built_for_qarm_or_when_asked(tmp_path):
    """samples.qarm.codes unset: codes when train.model is qarm; the manifest records the
    resolved choice, and a build with codes serves a configuration that wants none (not the
    other way round; a manifest from before the setting always had them)."""
    from psrq.samples.layout import build_settings, qarm_codes, settings_differ

    cfg = small_config(tmp_path)
    assert not qarm_codes(cfg) and qarm_codes(cfg.with_overrides({"train.model": "qarm"}))
    assert qarm_codes(cfg.with_overrides({"samples.qarm.codes": True}))
    assert not qarm_codes(cfg.with_overrides({"train.model": "qarm", "samples.qarm.codes": False}))
    assert not qarm_codes(cfg.with_overrides({"train.model": "qarm", "samples.content.dim": 0}))
    mcca, qarm = build_settings(cfg), build_settings(cfg.with_overrides({"train.model": "qarm"}))
    assert (mcca["qarm"]["codes"], qarm["qarm"]["codes"]) == (False, True) and mcca["history_len"] == 20
    assert settings_differ(qarm, mcca) == {} and settings_differ(mcca, mcca) == {}
    assert settings_differ(mcca, qarm) == {"qarm.codes": (False, True)}
    old = {**mcca, "qarm": {k: v for k, v in mcca["qarm"].items() if k != "codes"}}
    assert settings_differ(old, qarm) == {}
    assert settings_differ(mcca, {**mcca, "history_len": 5}) == {"history_len": (20, 5)}


def test_split_files_hold_about_eight_row_groups():
    from psrq.samples.build import ROW_GROUPS_PER_FILE, file_count, row_group_bytes

    assert file_count(0, 600.0, row_group_bytes(0, 600.0, 8, 16)) == 1  # an empty split: one (empty) partition
    for rows in (3_000, 64_231, 10_000_000):
        block = row_group_bytes(rows, 600.0, 8, 16)
        files = file_count(rows, 600.0, block)
        groups_per_file = rows * 600.0 / block / files
        assert ROW_GROUPS_PER_FILE / 2 < groups_per_file <= ROW_GROUPS_PER_FILE or files == 1, (rows, files)
    assert file_count(10_000_000, 600.0, 8 * 2**20) == 90  # 6 GB in 8 MB row groups: 90 files of ~64 MB


def test_behaviour_pairs_are_the_same_whatever_the_partitioning(spark):
    """QARM's pairs (each positive and the user's next one), sorted; above max_pairs the same
    seeded subset from 1 partition and from 5."""
    from psrq.samples.content_spark import behaviour_pairs

    rng = np.random.default_rng(0)
    rows = [(int(u), datetime.fromtimestamp(1_700_000_000 + int(t), timezone.utc), int(i), 1)
            for u, t, i in zip(rng.integers(0, 40, 3000), rng.integers(0, 10**6, 3000), rng.integers(0, 200, 3000))]
    train = spark.createDataFrame(rows, "user_id long, ts timestamp, item_id long, label int")
    cat = spark.createDataFrame([(i, i + 1) for i in range(200)], "item_id long, content_idx int")
    whole = {n: behaviour_pairs(train.repartition(n), cat.repartition(n), 10**6, 0) for n in (1, 5)}
    assert len(whole[1]) > 2000 and np.array_equal(whole[1], whole[5])
    assert (np.diff(whole[1][:, 0]) >= 0).all() and (whole[1][:, 0] != whole[1][:, 1]).all()
    part = {n: behaviour_pairs(train.repartition(n), cat.repartition(n), 500, 3) for n in (1, 5)}
    assert len(part[1]) == 500 and np.array_equal(part[1], part[5])
    assert not np.array_equal(part[1], behaviour_pairs(train, cat, 500, 4))  # another seed, another subset


def test_samples_do_not_depend_on_the_partition_layout(spark, small_pipeline, tmp_path):
    """The same data laid out otherwise (the interactions in several files instead of one) and
    built with other shuffle settings, another number of per-user grouping tasks and later in
    the session: the same rows in the same order, in the same files and row groups, so every
    data-parallel rank (they shard by row group) trains on the same batches, and one process
    too (validation AUCs within 0.005, here equal)."""
    from psrq.training.readers import ArrowReader, row_groups
    from psrq.training.stage import train_stage

    cfg, info = small_pipeline
    other = copy_pipeline(cfg, tmp_path).with_overrides({"samples.path": str(tmp_path / "samples"),
                                                         "samples.events_per_task": 997, "run.run_id": 1})
    engine = open_engine(spark, "delta-rs")
    path = other.table_path("interactions")
    rewritten = engine.write(engine.read(path).repartition(5), path, "overwrite")
    assert (rewritten.files_removed, rewritten.files_added) == (1, 5)
    # 7 shuffle partitions that adaptive execution may not merge: the first build's were merged into 1
    settings = {"spark.sql.shuffle.partitions": "7", "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    before = {k: spark.conf.get(k) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        again = build_samples(JobContext.of(spark, other))
    finally:
        for k, v in before.items():
            spark.conf.set(k, v)
    for split in ("train", "valid"):
        a, b = (pq.read_table(i.splits[split]["path"]).to_pandas() for i in (info, again))
        assert len(a) == info.splits[split]["rows"] and a.equals(b), split
        layouts = [[(g.index, g.rows) for g in row_groups(i.splits[split]["path"])] for i in (info, again)]
        assert layouts[0] == layouts[1], split
    # the content features too: QARM's codes are aligned on behaviour pairs drawn at random
    from psrq.samples.content import read_content_bytes

    assert info.content["qarm_pairs"] > 100
    assert read_content_bytes(f"{cfg.samples.path}/content.safetensors") == read_content_bytes(
        f"{other.samples.path}/content.safetensors")
    # the train split in several files (their boundaries are what moved before), as many as the manifest says
    written = {os.path.basename(g.file) for g in row_groups(info.splits["train"]["path"])}
    assert len(written) == info.splits["train"]["files"] > 1
    for world in (2, 3):
        for rank in range(world):
            a, b = ([x["item_idx"].tolist() for x in ArrowReader(i.splits["train"]["path"], ["item_idx"], 64, rank, world)]
                    for i in (info, again))
            assert a == b, (rank, world)
    # the order mixes users and time (a seeded shuffle, not grouped by user)
    train = pq.read_table(info.splits["train"]["path"]).to_pandas()
    assert (train.user_id.diff() != 0).mean() > 0.9
    # row groups small enough for 2 training processes, whole rows in each
    rows = ArrowReader(info.splits["train"]["path"], ["label"], 100, rank=1, world=2).rows
    assert 0 < rows < len(train)
    runs = [train_stage(JobContext.of(None, c.with_overrides({"train.model": "din", "train.backend": "single", "train.reader": "arrow",
                                          "train.dim": 16, "train.checkpoint_dir": str(tmp_path / f"ckpt{i}")}))) for i, c in enumerate((cfg, other))]
    assert abs(runs[0].valid["auc"] - runs[1].valid["auc"]) < 0.005


def test_events_of_items_without_codes_stop_the_build_before_any_write(spark, small_pipeline, tmp_path):
    """An interaction whose item has no semantic ID of the codebook in use: an error naming
    the items, and nothing committed (the vocabulary table keeps its version, no samples)."""
    from psrq.errors import InputValidationError

    cfg, _ = small_pipeline
    other = copy_pipeline(cfg, tmp_path).with_overrides({"samples.path": str(tmp_path / "samples"), "run.run_id": 7})
    engine = open_engine(spark, "delta-rs")
    path = other.table_path("interactions")
    from pyspark.sql import functions as F

    stray = engine.read(path).limit(3).withColumn("item_id", F.lit(987_654).cast("long"))
    engine.write(stray, path, "append")
    vocab = other.table_path("item_vocab")
    before = engine.version(vocab)
    with pytest.raises(InputValidationError, match=r"item_id.*without semantic IDs.*987654"):
        build_samples(JobContext.of(spark, other))
    assert engine.version(vocab) == before and not (tmp_path / "samples").exists()


def test_the_vocabulary_numbers_items_by_train_frequency(spark, small_pipeline):
    """train.max_vocab keeps the first indices: they must be the most frequent train items."""
    cfg, info = small_pipeline
    train = pq.read_table(info.splits["train"]["path"], columns=["item_idx"]).to_pandas()
    counts = train.item_idx.value_counts().sort_index()
    assert info.raw["vocab_order"] == "train_frequency"
    assert counts.index[0] == 2 and (counts.diff().dropna() <= 0).all()


@pytest.fixture(scope="module")
def skewed(spark, tmp_path_factory):
    """About 50k events, one user holding 30% of them and one item 10% of the impressions,
    fitted and assigned."""
    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage
    from psrq.data.generate import generate

    tmp = tmp_path_factory.mktemp("skewed")
    cfg = small_config(tmp, "codebooks.k=16", "codebooks.sample_size=400", "synthetic.n_users=500",
                       "synthetic.mean_events_per_user=70", "synthetic.heavy_users=[0.3]",
                       "synthetic.hot_item_share=0.1", "samples.history_len=5")
    generate(JobContext.of(spark, cfg))
    fit_stage(JobContext.of(spark, cfg))
    assign(JobContext.of(spark, cfg))
    return cfg


def test_streamed_histories_equal_each_users_own_and_hold_one_batch():
    """A partition streamed in small Arrow batches (a heavy user over many of them, runs of
    equal times across batch edges) gives each user's samples as if built from all their
    events at once, and no step holds more than a batch, N context rows and one run."""
    from psrq.samples.layout import sorted_samples, stream_samples

    rng = np.random.default_rng(3)
    counts = {0: 3000, 1: 7, 2: 400, 3: 1, 4: 90}  # user 0: 85% of the events
    rows = []
    for u, c in counts.items():
        ts = np.sort(rng.integers(0, c // 3 + 2, c))  # many equal times
        rows += [(u, int(rng.integers(0, 50)), int(rng.random() < 0.4), int(t)) for t in ts]
    df = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()), "item_id": pa.array([r[1] for r in rows], pa.int64()),
                   "label": pa.array([r[2] for r in rows], pa.int32()),
                   "ts": pa.array([r[3] * 10**6 for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
    df = df.append_column("item_idx", pc.add(df.column("item_id"), 2).cast(pa.int32()))
    df = df.append_column("is_cold", pa.array(np.zeros(len(rows), dtype=np.int32)))
    codes = np.stack([df.column("item_id").to_numpy() % 7, df.column("item_id").to_numpy() % 5], 1).astype(np.int16)
    df = df.append_column("text_codes", fixed_lists(codes, np.int16))
    order = np.lexsort((df.column("item_id").to_numpy(), df.column("ts").cast(pa.int64()).to_numpy(), df.column("user_id").to_numpy()))
    df = df.take(pa.array(order))
    kw = dict(spaces=["text"], layers=2, n=4, valid_from=800 * 10**6, test_from=900 * 10**6, codebook_version="v1")
    held = []

    def samples(t):
        held.append(t.num_rows)
        return sorted_samples(t, **kw)

    batch = 64
    streamed = pa.concat_tables(stream_samples(df.to_batches(max_chunksize=batch), samples, kw["n"]))
    per_user = pa.concat_tables(user_samples(df.filter(pc.equal(df.column("user_id"), u)), **kw) for u in counts)
    assert streamed.num_rows == len(rows) and streamed.equals(per_user)
    longest_run = max(np.unique(np.stack([df.column("user_id").to_numpy(), df.column("ts").cast(pa.int64()).to_numpy()]),
                                axis=1, return_counts=True)[1])
    assert len(held) > 50 and max(held) <= batch + kw["n"] + longest_run


def test_a_heavy_user_streams_through_the_history_step_with_the_same_samples(spark, skewed, tmp_path):
    """The history step holds one Arrow batch per Python worker, not a user's events: with
    batches of 500 rows the user holding 30% of the events runs over dozens of them, and the
    samples are the ones built with batches larger than any user, row for row. The floors'
    user-grouped AUC (GAUC, computed in the JVM) equals numpy's on the same skewed rows."""
    from psrq.evaluation.auc import auc
    from psrq.evaluation.floors import evaluate_floors, floor_scores

    engine = open_engine(spark, "delta-rs")
    inter = engine.read(skewed.table_path("interactions"))
    n = inter.count()
    per_user = inter.groupBy("user_id").count().orderBy("count", ascending=False).first()
    assert 45_000 < n < 60_000 and per_user["user_id"] == 0 and 0.27 < per_user["count"] / n < 0.33
    hot = inter.groupBy("item_id").count().orderBy("count", ascending=False).first()["count"]
    assert 0.1 <= hot / n < 0.25  # 10% forced on top of the most popular item's own share

    infos = {}
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    try:
        for rows in (500, 100_000):
            spark.conf.set(key, str(rows))
            infos[rows] = build_samples(JobContext.of(spark, skewed.with_overrides({"samples.path": str(tmp_path / str(rows))})))
    finally:
        spark.conf.set(key, before)
    for split in ("train", "valid", "test"):
        a, b = (pq.read_table(i.splits[split]["path"]).to_pandas() for i in infos.values())
        assert len(a) == infos[500].splits[split]["rows"] > 0 and a.equals(b), split

    train, test = (spark.read.parquet(infos[500].splits[s]["path"]) for s in ("train", "test"))
    floors = evaluate_floors(train, test)
    scored = floor_scores(train, test).toPandas()
    for name in ("item_rate", "item_popularity"):
        want = [(auc(g[name].to_numpy(), g.label.to_numpy()), len(g)) for _, g in scored.groupby("user_id")
                if g.label.nunique() == 2]
        assert floors[name]["gauc"] == pytest.approx(sum(a * c for a, c in want) / sum(c for _, c in want), abs=1e-12)


def test_content_rows_are_read_from_arrows_buffers():
    """The reduced embeddings reach the driver as fixed-width binary rows: read without a
    Python object per row, sliced chunks included, the same floats."""
    from psrq.samples.content_spark import fixed_width_rows

    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    rows = [r.tobytes() for r in x]
    col = pa.chunked_array([pa.array(rows[:3], pa.binary()), pa.array(rows, pa.binary()).slice(3, 7)])
    assert np.array_equal(fixed_width_rows(col, 4), x)
    with pytest.raises(ValueError, match="rows of 3 floats"):
        fixed_width_rows(col, 3)


def test_side_jobs_are_cancelled_when_the_caller_fails(spark):
    """build_samples writes its splits as side jobs: when the caller fails, a side job still
    running is cancelled (its job group), not waited for, and the caller's error is raised."""
    import time

    from psrq.spark import side_jobs

    def slow():  # two tasks of a minute each
        return spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(60) or x).collect()

    t = time.monotonic()
    with pytest.raises(RuntimeError, match="the caller failed"):
        with side_jobs(spark, "test-side") as submit:
            job = submit(slow)
            time.sleep(3)  # the job runs
            raise RuntimeError("the caller failed")
    assert time.monotonic() - t < 40
    assert isinstance(job.exception(), Exception) and "cancel" in str(job.exception()).lower()
    assert spark.sparkContext.parallelize(range(4), 2).sum() == 6  # the session goes on
