"""The nightly reindex: incremental merge, drift-triggered refit, idempotence, crash safety."""
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from psrq.catalog.assign import assign
from psrq.catalog.current import current_version
from psrq.catalog.fit import fit_stage
from psrq.catalog.reindex import drift, reindex
from psrq.data import synthetic as syn
from psrq.data.generate import generate
from psrq.quant.artifact import CodebookStore
from psrq.schemas import items_schema
from psrq.storage import DeltaRsEngine, open_engine

from conftest import copy_pipeline, small_config
from psrq.job import JobContext

CB = ["codebooks.k=16", "codebooks.sample_size=400", "codebooks.kmeans.iters=10", "reindex.min_items_for_drift=50"]


def new_items(spark, cfg, first_id: int, n: int, seed: int, when: datetime):
    """Items from the generator's world for `seed` (seed != cfg's: another catalogue)."""
    sc = cfg.synthetic.model_copy(update={"seed": seed, "n_items": first_id + n, "block_size": first_id + n})
    dims = {m: c.dim for m, c in cfg.dataset.modalities.items()}
    it = syn.item_block(0, sc, syn.make_world(sc, dims))
    rows = [(int(i), it["text_emb"][i].tolist(), it["audio_emb"][i].tolist(), when) for i in range(first_id, first_id + n)]
    return spark.createDataFrame(rows, items_schema(["text_emb", "audio_emb"]))


@pytest.fixture(scope="module")
def assigned(spark, tmp_path_factory):
    cfg = small_config(tmp_path_factory.mktemp("catalogue"), *CB, "run.run_id=20261101")
    generate(JobContext.of(spark, cfg))
    fit_stage(JobContext.of(spark, cfg))
    assign(JobContext.of(spark, cfg))
    return cfg


@pytest.fixture
def catalogue(assigned, tmp_path):
    """An assigned catalogue of the test's own (the nights change it)."""
    return copy_pipeline(assigned, tmp_path)


def night(cfg, n):
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"run_id": n})})


def test_drift_measures():
    fit = {"error_p95": 1.0, "layer1_hist": [50, 50, 0, 0]}
    same = drift(np.array([0.5] * 95 + [2.0] * 5), np.array([0, 1] * 50), fit, 4)
    assert same == {"error_share": 0.05, "layer1_shift": 0.0}
    moved = drift(np.array([2.0] * 10), np.array([2, 3] * 5), fit, 4)
    assert moved == {"error_share": 1.0, "layer1_shift": 1.0}


def test_nightly_merge_then_idempotent_rerun(spark, catalogue):
    cfg = catalogue
    engine = open_engine(spark, "delta-rs")
    sid_path, items_path = cfg.table_path("semantic_ids"), cfg.table_path("items")
    first = reindex(JobContext.of(spark, night(cfg, 20261102)))  # no state yet: nothing new (all assigned)
    assert first.outcome.n_changed == 0 and not first.outcome.refit
    # 60 new items from the same catalogue world, and 5 changed ones
    later = datetime(2027, 1, 1, tzinfo=timezone.utc)
    engine.write(new_items(spark, cfg, 400, 60, cfg.synthetic.seed, later), items_path, "append")
    changed = new_items(spark, cfg, 0, 5, cfg.synthetic.seed + 1, later)
    engine.merge(changed, items_path, ["item_id"])
    sid_before = engine.version(sid_path)
    res = reindex(JobContext.of(spark, night(cfg, 20261103)))
    assert res.outcome.n_changed == 65 and not res.outcome.refit and res.outcome.error_share < 0.5
    assert engine.version(sid_path) == sid_before + 1
    sid = engine.read(sid_path).toPandas()
    assert len(sid) == 460 and set(range(400, 460)) <= set(sid.item_id)
    assert (sid.codebook_version == "v0001").all() and not sid.duplicated(["code_key", "dedup"]).any()
    # the same night again: nothing changes anywhere
    state_v = engine.version(cfg.table_path("reindex_state"))
    again = reindex(JobContext.of(spark, night(cfg, 20261103)))
    assert again.skipped and again.outcome is None
    assert engine.version(sid_path) == sid_before + 1 and engine.version(cfg.table_path("reindex_state")) == state_v
    # the next night sees nothing new (watermark)
    assert reindex(JobContext.of(spark, night(cfg, 20261104))).outcome.n_changed == 0


def test_drift_triggers_refit_and_full_reassignment(spark, catalogue):
    cfg = catalogue
    engine = open_engine(spark, "delta-rs")
    sid_path = cfg.table_path("semantic_ids")
    reindex(JobContext.of(spark, night(cfg, 20261102)))
    v_before = engine.version(sid_path)
    later = datetime(2027, 1, 1, tzinfo=timezone.utc)
    engine.write(new_items(spark, cfg, 400, 300, 4242, later), cfg.table_path("items"), "append")
    res = reindex(JobContext.of(spark, night(cfg, 20261103)))
    assert res.outcome.refit and res.outcome.codebook_version == "v0002"
    assert CodebookStore(cfg.codebooks_root()).versions() == ["v0001", "v0002"]
    sid = engine.read(sid_path).toPandas()
    # the new version's rows sit beside the old ones, and the new version is the one in use
    assert (sid.codebook_version == "v0002").sum() == 700 and (sid.codebook_version == "v0001").sum() == 400
    assert current_version(engine, cfg) == "v0002"
    old = engine.read(sid_path, v_before).toPandas()  # the previous assignment stays reachable
    assert len(old) == 400 and (old.codebook_version == "v0001").all()


def _kill_at_commit(monkeypatch, crash_at):
    calls = {"n": 0}
    real = DeltaRsEngine._commit

    def dying(self, commit):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("killed")
        return real(self, commit)

    monkeypatch.setattr(DeltaRsEngine, "_commit", dying)


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_a_night_killed_midway_resumes_without_double_work(spark, catalogue, monkeypatch, crash_at):
    """Killed at the plan commit (1: every table unchanged), between the plan and the
    semantic_ids commit (2), between the semantic_ids and the outcome commit (3)."""
    cfg = catalogue
    engine = open_engine(spark, "delta-rs")
    sid_path, state_path = cfg.table_path("semantic_ids"), cfg.table_path("reindex_state")
    reindex(JobContext.of(spark, night(cfg, 20261102)))
    later = datetime(2027, 1, 1, tzinfo=timezone.utc) + timedelta(days=1)
    engine.write(new_items(spark, cfg, 400, 30, cfg.synthetic.seed, later), cfg.table_path("items"), "append")
    before = {p: engine.version(p) for p in (sid_path, state_path)}
    _kill_at_commit(monkeypatch, crash_at)
    with pytest.raises(KeyboardInterrupt):
        reindex(JobContext.of(spark, night(cfg, 20261103)))
    monkeypatch.undo()
    after_crash = {p: engine.version(p) for p in (sid_path, state_path)}
    assert after_crash[state_path] == before[state_path] + (crash_at > 1)
    assert after_crash[sid_path] == before[sid_path] + (crash_at > 2)
    res = reindex(JobContext.of(spark, night(cfg, 20261103)))
    assert res.outcome.n_changed == 30 and res.status == "done" and not res.outcome.refit
    final = {p: engine.version(p) for p in (sid_path, state_path)}
    assert final == {sid_path: before[sid_path] + 1, state_path: before[state_path] + 2}  # plan + outcome
    assert engine.read(sid_path).count() == 430
    rows = engine.read(state_path).filter("night = 20261103").toPandas()
    assert sorted(rows.status) == ["done", "planned"] and (rows.n_changed == 30).all()


@pytest.mark.parametrize("crash_at", [3, 4])
def test_a_refit_night_killed_before_its_record_records_what_it_did(spark, catalogue, monkeypatch, crash_at):
    """Killed after the full reassignment, before the current marker (3) or before the
    outcome row (4); the re-run must mark the new version current and record 300 changed
    items, the refit and the new codebook, not a quiet night."""
    cfg = catalogue
    engine = open_engine(spark, "delta-rs")
    sid_path, state_path = cfg.table_path("semantic_ids"), cfg.table_path("reindex_state")
    reindex(JobContext.of(spark, night(cfg, 20261102)))
    later = datetime(2027, 1, 1, tzinfo=timezone.utc)
    engine.write(new_items(spark, cfg, 400, 300, 4242, later), cfg.table_path("items"), "append")
    _kill_at_commit(monkeypatch, crash_at)  # plan, semantic_ids, current marker, outcome
    with pytest.raises(KeyboardInterrupt):
        reindex(JobContext.of(spark, night(cfg, 20261103)))
    monkeypatch.undo()
    assert (engine.read(sid_path).toPandas().codebook_version == "v0002").sum() == 700
    sid_version = engine.version(sid_path)
    res = reindex(JobContext.of(spark, night(cfg, 20261103)))
    assert res.outcome.refit and res.outcome.n_changed == 300 and res.outcome.codebook_version == "v0002"
    assert engine.version(sid_path) == sid_version and CodebookStore(cfg.codebooks_root()).versions() == ["v0001", "v0002"]
    done = engine.read(state_path).filter("night = 20261103 and status = 'done'").toPandas()
    assert len(done) == 1 and done.refit[0] and done.n_changed[0] == 300 and done.codebook_version[0] == "v0002"
    assert current_version(engine, cfg) == "v0002"
