"""fit_codebooks -> assign_ids through Spark, against in-process encoding."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from psrq.catalog.assign import assign, assign_incremental, lookup
from psrq.catalog.fit import fit_stage
from psrq.data.embeddings import embeddings_to_numpy
from psrq.data.generate import generate
from psrq.errors import ArtifactError, InputValidationError, QuantizerError
from psrq.quant.artifact import CodebookStore
from psrq.storage import open_engine

from conftest import small_config
from psrq.job import JobContext

CB = ["codebooks.k=16", "codebooks.sample_size=300", "codebooks.kmeans.iters=10"]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("assign")
    cfg = small_config(tmp, *CB)
    generate(JobContext.of(spark, cfg))
    manifest = fit_stage(JobContext.of(spark, cfg))
    return cfg, manifest


def test_fit_writes_a_versioned_artifact_with_diagnostics(world):
    cfg, m = world
    assert m.version == "v0001" and m.method == "psrq" and m.status == "fitted"
    assert m.sample_size == 300 and m.manifest["source"]["delta_version"] == 0 and m.manifest["source"]["rows"] == 400
    assert set(m.diagnostics) == {"text", "audio", "joint"}
    layers = m.diagnostics["joint"]["layers"]
    assert len(layers) == 3 and all(0 < ly["utilisation"] <= 1 for ly in layers)
    cbs, manifest = CodebookStore(cfg.codebooks_root()).load()
    assert manifest["checksums"] and manifest["spec"]["k"] == 16


def test_fit_is_idempotent_per_run_and_settings(spark, world, tmp_path):
    """A retried fit of the same run keeps its version (every item keeps its ID); another
    run id or another setting fits a new version."""
    cfg, m = world
    again = fit_stage(JobContext.of(spark, cfg))
    assert again.status == "already done" and again.version == m.version == "v0001"
    assert again.manifest == m.manifest  # the whole manifest, as written
    shutil.copytree(cfg.codebooks_root(), tmp_path / "cb")
    cfg = cfg.with_overrides({"storage.codebooks": str(tmp_path / "cb")})  # the module's root stays as it is
    other_run = fit_stage(JobContext.of(spark, cfg.with_overrides({"run.run_id": 5})))
    assert other_run.status == "fitted" and other_run.version == "v0002"
    other_k = fit_stage(JobContext.of(spark, cfg.with_overrides({"run.run_id": 5, "codebooks.k": 8})))
    assert other_k.status == "fitted" and other_k.version == "v0003"
    assert fit_stage(JobContext.of(spark, cfg.with_overrides({"run.run_id": 5}))).version == "v0002"


def test_sample_is_seeded_and_partition_independent(spark, world):
    from psrq.quant.semantic_ids import sample_items

    cfg, _ = world
    items = open_engine(spark, "delta-rs").read(cfg.table_path("items"))
    a = sorted(r[0] for r in sample_items(items, cfg.codebooks, 400).select("item_id").collect())
    b = sorted(r[0] for r in sample_items(items.repartition(7), cfg.codebooks, 400).select("item_id").collect())
    assert a == b and len(a) == 300


def test_the_fit_sample_comes_to_the_driver_in_bounded_pieces_in_the_same_order(spark, world, monkeypatch):
    """The sample reaches the driver as many small task results (a 1 GB driver heap ran out of
    memory on two results of 200 MB each): the same ids and matrices, in the same order, as
    when it comes whole."""
    import psrq.quant.semantic_ids as si

    cfg, _ = world
    items = open_engine(spark, "delta-rs").read(cfg.table_path("items"))
    mods = {m: {"column": c.column, "dim": c.dim} for m, c in cfg.dataset.modalities.items()}
    width = sum(m["dim"] for m in mods.values())
    sample = si.sample_items(items.coalesce(1), cfg.codebooks, 400)
    whole_ids, whole = si.sample_matrices(sample, mods, "items")
    monkeypatch.setattr(si, "RESULT_PIECE_BYTES", 4096)
    assert si.result_pieces(300, mods) == -(-300 * (16 + 4 * width) // 4096) > 5
    ids, embs = si.sample_matrices(sample, mods, "items", expected_rows=300)
    assert np.array_equal(ids, whole_ids) and all(np.array_equal(embs[m], whole[m]) for m in mods)


def test_spark_assignment_equals_in_process_encoding(spark, world):
    cfg, _ = world
    res = assign(JobContext.of(spark, cfg))
    assert res.items == 400 and not res.skipped
    engine = open_engine(spark, "delta-rs")
    sid = engine.read(cfg.table_path("semantic_ids")).toPandas().set_index("item_id").sort_index()
    items = engine.read(cfg.table_path("items")).toArrow()
    cbs, _ = CodebookStore(cfg.codebooks_root()).load()
    embs = {m: embeddings_to_numpy(items.column(info["column"]), info["dim"])[0] for m, info in cbs.modalities.items()}
    want = cbs.encode(embs)
    order = np.argsort(np.asarray(items.column("item_id")))
    for space, codes in want.items():
        got = np.stack(sid[f"{space}_codes"].to_numpy())
        assert np.array_equal(got, codes[order]), space
    assert (sid["codebook_version"] == "v0001").all()
    # dedup numbers items sharing a full joint code 0..n-1
    for _, g in sid.groupby("code_key"):
        assert sorted(g["dedup"]) == list(range(len(g)))
    # a re-run of the same job run is a no-op
    assert assign(JobContext.of(spark, cfg)).skipped


def test_reverse_lookup(spark, world):
    cfg, _ = world
    assign(JobContext.of(spark, cfg))
    engine = open_engine(spark, "delta-rs")
    sid = engine.read(cfg.table_path("semantic_ids"))
    top = sid.groupBy("joint_codes").count().orderBy(F.desc("count")).first()
    found = lookup(engine, cfg.table_path("semantic_ids"), list(top.joint_codes), 16, "v0001")
    assert found.count() == top["count"]
    assert {tuple(r.joint_codes) for r in found.collect()} == {tuple(top.joint_codes)}


def test_merge_of_a_subset_continues_dedup(spark, world):
    cfg, _ = world
    assign(JobContext.of(spark, cfg))
    engine = open_engine(spark, "delta-rs")
    path = cfg.table_path("semantic_ids")
    before = engine.version(path)
    subset = engine.read(cfg.table_path("items")).filter("item_id < 40")
    res = assign_incremental(spark, cfg, engine, subset, CodebookStore(cfg.codebooks_root()).load()[0])
    assert res.version == before + 1 and res.items == 40
    sid = engine.read(path).toPandas()
    assert len(sid) == 400 and not sid.duplicated(["code_key", "dedup"]).any()


def test_codebook_versions_coexist_and_marking_current_is_its_own_step(spark, world, tmp_path):
    """A rollout: v2 assigned beside v1 without marking it; readers stay on v1 until v2 is
    marked current (one commit); v1's rows are untouched by v2's assignment and re-runs."""
    from psrq.catalog.current import current_version, mark_current, version_in_use

    cfg, _ = world
    shutil.copytree(cfg.codebooks_root(), tmp_path / "cb")
    cfg = cfg.with_overrides({"storage.codebooks": str(tmp_path / "cb"), "storage.root": str(tmp_path / "delta")})
    engine = open_engine(spark, "delta-rs")
    shutil.copytree(Path(world[0].table_path("items")), tmp_path / "delta" / "items")
    first = assign(JobContext.of(spark, cfg))
    assert first.codebook_version == "v0001" and first.current == "v0001"
    v2 = fit_stage(JobContext.of(spark, cfg.with_overrides({"run.run_id": 2}))).version
    rollout = cfg.with_overrides({"codebooks.version": v2, "codebooks.mark_current": False, "run.run_id": 2})
    second = assign(JobContext.of(spark, rollout))
    assert second.codebook_version == v2 and second.current is None
    sid = engine.read(cfg.table_path("semantic_ids")).toPandas()
    assert sorted(sid.groupby("codebook_version").size().items()) == [("v0001", 400), (v2, 400)]
    assert current_version(engine, cfg) == "v0001" and version_in_use(engine, cfg) == "v0001"
    again = assign(JobContext.of(spark, rollout))  # a retried run of the rollout: nothing moves
    assert again.skipped and engine.read(cfg.table_path("semantic_ids")).count() == 800
    current_before = engine.version(cfg.table_path("codebook_current"))
    marked = mark_current(spark, engine, cfg.with_overrides({"run.run_id": 2}), v2)
    assert marked.codebook_version == v2 and not marked.skipped
    assert engine.version(cfg.table_path("codebook_current")) == current_before + 1
    assert version_in_use(engine, cfg) == v2
    assert mark_current(spark, engine, cfg.with_overrides({"run.run_id": 3}), "v0001").codebook_version == "v0001"  # rollback
    assert version_in_use(engine, cfg) == "v0001"
    with pytest.raises(ArtifactError, match="not found"):
        mark_current(spark, engine, cfg, "v0042")


def test_bad_embeddings_stop_the_job_before_any_write(spark, world, tmp_path):
    cfg, _ = world
    engine = open_engine(spark, "delta-rs")
    items = engine.read(cfg.table_path("items"))
    bad = items.withColumn("text_emb", F.when(F.col("item_id") == 5, F.array_repeat(F.lit(float("nan")).cast("float"), 16))
                           .when(F.col("item_id") == 9, F.array_repeat(F.lit(0.0).cast("float"), 16))
                           .when(F.col("item_id") == 11, F.array_repeat(F.lit(1.0).cast("float"), 3))
                           .otherwise(F.col("text_emb")))
    other = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"root": str(tmp_path / "delta")})})
    with pytest.raises(InputValidationError) as e:
        assign_incremental(spark, other, open_engine(spark, "delta-rs"), bad, CodebookStore(cfg.codebooks_root()).load()[0])
    msg = str(e.value)
    assert "NaN or Inf" in msg and "(e.g. 5)" in msg and "all-zero" in msg and "(e.g. 9)" in msg
    assert "dimension differs from the codebook's (16)" in msg and "(e.g. 11)" in msg
    assert not engine.exists(other.table_path("semantic_ids"))


def test_codebook_must_match_the_table(spark, world, tmp_path):
    cfg, _ = world
    home = Path(cfg.storage.root).parent
    wrong = small_config(home, *CB, "dataset.modalities.audio.dim=13")
    with pytest.raises(ArtifactError, match="fitted for modalities .*'dim': 12.* but the dataset configures .*'dim': 13"):
        assign(JobContext.of(spark, wrong))
    missing = small_config(home, *CB, "codebooks.version=v0042")
    with pytest.raises(ArtifactError, match="'v0042' not found"):
        assign(JobContext.of(spark, missing))


def test_k_larger_than_the_sample(spark, world):
    cfg, _ = world
    small = cfg.model_copy(update={"codebooks": cfg.codebooks.model_copy(update={"k": 50, "sample_size": 30})})
    with pytest.raises(QuantizerError, match="K=50 is larger than the sample \\(30 items of 400\\)"):
        fit_stage(JobContext.of(spark, small))


def test_a_registered_quantizer_runs_through_fit_and_assign(spark, tmp_path):
    """One file (tests/toy_quantizer.py) plus one register line: fitted by the fit job,
    saved and loaded as an artifact, applied on the executors by assign."""
    from psrq.quant import registry

    import toy_quantizer

    spark.sparkContext.addPyFile(toy_quantizer.__file__)
    registry.register("random_residual", toy_quantizer.RandomResidual)
    try:
        cfg = small_config(tmp_path, *CB, "codebooks.method=random_residual")
        generate(JobContext.of(spark, cfg))
        m = fit_stage(JobContext.of(spark, cfg))
        assert m.method == "random_residual" and set(m.diagnostics) == {"text", "audio", "joint"}
        cbs, _ = CodebookStore(cfg.codebooks_root()).load()
        assert all(type(q) is toy_quantizer.RandomResidual for q in cbs.quantizers.values())
        assert assign(JobContext.of(spark, cfg)).items == 400
        engine = open_engine(spark, "delta-rs")
        sid = engine.read(cfg.table_path("semantic_ids")).toPandas().set_index("item_id").sort_index()
        items = engine.read(cfg.table_path("items")).toArrow()
        embs = {mo: embeddings_to_numpy(items.column(info["column"]), info["dim"])[0] for mo, info in cbs.modalities.items()}
        want = cbs.encode(embs)["joint"][np.argsort(np.asarray(items.column("item_id")))]
        assert np.array_equal(np.stack(sid["joint_codes"].to_numpy()), want) and want.shape == (400, 3)
    finally:
        registry.unregister("random_residual")
    with pytest.raises(Exception, match="unknown quantizer 'random_residual'"):
        small_config(tmp_path, "codebooks.method=random_residual")


def test_semantic_ids_estimator_fits_the_jobs_codebooks_and_transform_adds_codes(spark, world):
    """The Spark ML-style facade: the same settings fit the same codebooks as the fit job
    from the same table; transform keeps every column and adds the codes (null for a bad row)."""
    from psrq.quant.semantic_ids import SemanticIds

    cfg, _ = world
    items = open_engine(spark, "delta-rs").read(cfg.table_path("items"))
    mods = {m: (c.column, c.dim) for m, c in cfg.dataset.modalities.items()}
    model = SemanticIds(mods, **cfg.codebooks.model_dump()).fit(items.repartition(5))
    job, _ = CodebookStore(cfg.codebooks_root()).load("v0001")
    assert model.codebooks.spaces == job.spaces == ["text", "audio", "joint"]
    assert all(np.array_equal(model.codebooks.arrays[s][n], a) for s, arrs in job.arrays.items() for n, a in arrs.items())

    bad = items.limit(1).withColumn("item_id", F.lit(10**9).cast("long")).withColumn("audio_emb", F.lit(None).cast("array<float>"))
    out = model.transform(items.unionByName(bad).repartition(3))
    assert out.columns == items.columns + ["text_codes", "audio_codes", "joint_codes", "code_key"]
    got = out.toPandas().set_index("item_id").sort_index()
    assert got.loc[10**9, ["audio_codes", "joint_codes", "code_key"]].isna().all()
    arrow = items.toArrow()
    embs = {m: embeddings_to_numpy(arrow.column(info["column"]), info["dim"])[0] for m, info in job.modalities.items()}
    order = np.argsort(np.asarray(arrow.column("item_id")))
    for space, codes in job.encode(embs).items():
        assert np.array_equal(np.stack(got[f"{space}_codes"].drop(10**9).to_numpy()), codes[order])
    with pytest.raises(QuantizerError, match=r"overwrite the frame's columns \['audio_codes', 'code_key'"):
        model.transform(out)
