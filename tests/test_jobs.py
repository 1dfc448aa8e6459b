"""The stages behind the jobs, and the jobs' command line."""

import pytest

from psrq.data.generate import generate
from psrq.data.validate import validate_inputs
from psrq.errors import InputValidationError
from psrq.job import JobContext
from psrq.storage import open_engine

from conftest import load_job, run_python, small_config


def test_generate_validate_and_rerun_is_a_no_op(spark, tmp_path):
    cfg = small_config(tmp_path)
    first = generate(JobContext.of(spark, cfg))
    assert {n: g.version for n, g in first.items()} == {"items": 0, "item_truth": 0, "interactions": 0}
    summary = validate_inputs(JobContext.of(spark, cfg))
    assert summary.items.rows == 400 and summary.interactions.rows == first["interactions"].rows_written
    assert summary.cold_items.fraction > 0.5
    again = generate(JobContext.of(spark, cfg))
    assert all(g.skipped and g.version == 0 for g in again.values())
    # new settings: a new generation overwrites, the old one stays reachable by version
    cfg2 = small_config(tmp_path, "synthetic.seed=99")
    third = generate(JobContext.of(spark, cfg2))
    assert all(not g.skipped and g.version == 1 for g in third.values())
    engine = open_engine(spark, "delta-rs")
    old = engine.read(cfg.table_path("items"), 0).orderBy("item_id").first().text_emb
    new = engine.read(cfg.table_path("items")).orderBy("item_id").first().text_emb
    assert old != new


def test_validation_of_a_table_with_the_wrong_dimension(spark, tmp_path):
    cfg = small_config(tmp_path)
    generate(JobContext.of(spark, cfg))
    # the same tables read with a configured dimension they do not have
    wrong = small_config(tmp_path, "dataset.modalities.audio.dim=13")
    with pytest.raises(InputValidationError, match="(?s)audio_emb.*400 row.*wrong dimension \\(expected 13\\)"):
        validate_inputs(JobContext.of(spark, wrong))


run = run_python


@pytest.mark.real  # starts a process
def test_a_bad_override_fails_before_spark_starts_and_names_the_key():
    out = run(["jobs/demo.py", "synthetic.n_items=-3"], timeout=60)
    assert out.returncode == 2
    assert "synthetic.n_items" in out.stderr and "Traceback" not in out.stderr


def test_py4j_retried_commands_leave_no_traceback_in_the_log():
    """py4j logs a command it retried on a fresh socket as an INFO traceback on the root
    logger (Horovod's Spark thread closes one in every training): dropped; py4j's warnings
    and other modules' INFO lines pass."""
    import logging

    import py4j.java_gateway

    from psrq.cli import Py4jRetryFilter, configure_logging

    def record(level, path):
        return logging.LogRecord("root", level, path, 1056, "Exception while sending command.", None, None)

    keep = Py4jRetryFilter().filter
    assert not keep(record(logging.INFO, py4j.java_gateway.__file__))
    assert keep(record(logging.WARNING, py4j.java_gateway.__file__)) and keep(record(logging.INFO, __file__))
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        configure_logging()
        configure_logging()  # once per handler, however often a process configures
        assert sum(isinstance(f, Py4jRetryFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


def test_a_job_opens_its_storage_engine_once(spark, tmp_path, capsys):
    """The context's engine is the one every stage of the job gets from open_engine; other
    filesystem options are another engine (an engine carries the options it was opened with)."""
    from psrq.storage import fs

    cfg = small_config(tmp_path)
    job = JobContext("assign_ids", cfg, spark)
    assert job.engine is open_engine(spark, cfg.storage.engine) is open_engine(spark, "delta-rs")
    before = fs.current()
    try:
        fs.configure(fs.FsOptions(endpoint="http://127.0.0.1:9", path_style=True))
        other = open_engine(spark, "delta-rs")
        assert other is not job.engine and other.options.endpoint == "http://127.0.0.1:9"
    finally:
        fs.configure(before)
    assert open_engine(spark, "delta-rs") is job.engine
    assert JobContext("assign_ids", cfg).progress is False  # stderr is not a terminal here: no bars
    with pytest.raises(RuntimeError, match="runs without Spark"):
        JobContext("clean_orphans", cfg).engine


def test_codebook_jobs_in_sequence(spark, tmp_path, capsys):
    """fit_codebooks -> assign_ids -> reindex_catalog, through the jobs' own stage functions."""
    cfg = small_config(tmp_path, "codebooks.k=16", "codebooks.sample_size=300", "run.run_id=20261123")
    generate(JobContext.of(spark, cfg))
    manifest = load_job("fit_codebooks").stage(JobContext("fit_codebooks", cfg, spark))
    out = capsys.readouterr().out
    assert manifest.version == "v0001" and "fitted: 300 items" in out and "space: joint" in out
    res = load_job("assign_ids").stage(JobContext("assign_ids", cfg, spark))
    assert res.items == 400 and "semantic_ids version 0 with codebook v0001" in capsys.readouterr().out
    load_job("reindex_catalog").stage(JobContext("reindex_catalog", cfg, spark))
    assert "night 20261123: 0 new/changed items" in capsys.readouterr().out
    load_job("reindex_catalog").stage(JobContext("reindex_catalog", cfg, spark))
    assert "night 20261123: already done, nothing changed" in capsys.readouterr().out


def test_train_and_evaluate_jobs_report_their_identity_as_one_json_document(spark, tmp_path, capfd):
    """A finished training re-run is "already done" (valid JSON, no NaN); a changed learning
    rate trains anew; --json prints exactly one JSON document on stdout (the jobs' main, in
    this process on the shared session)."""
    import json

    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage
    from psrq.samples.build import build_samples

    cfg = small_config(tmp_path, "codebooks.k=16", "codebooks.sample_size=300", f"samples.path={tmp_path}/samples",
                       "samples.history_len=5", "samples.content.dim=0")
    generate(JobContext.of(spark, cfg))
    fit_stage(JobContext.of(spark, cfg))
    assign(JobContext.of(spark, cfg))
    build_samples(JobContext.of(spark, cfg))
    common = [f"storage.root={tmp_path}/delta", "storage.engine=delta-rs", f"samples.path={tmp_path}/samples",
              f"train.checkpoint_dir={tmp_path}/ckpt", "train.model=din", "train.backend=single", "train.reader=arrow",
              "train.max_steps=3", "train.dim=8", "dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12"]

    def job(name, *extra):
        capfd.readouterr()
        code = load_job(name).main(["--json", *common, *extra])
        out, err = capfd.readouterr()
        assert code == 0, err[-3000:]
        return json.loads(out)  # the whole of stdout is one document

    first, again = job("train_ranker"), job("train_ranker")
    assert first["status"] == "trained" and first["steps"] == 3
    assert again["status"] == "already done" and again["steps_this_run"] == 0 and again["identity"] == first["identity"]
    faster = job("train_ranker", "train.lr=0.5")
    assert faster["status"] == "trained" and faster["identity"] != first["identity"]
    ev, ev_again = job("evaluate"), job("evaluate")
    assert ev["status"] == "evaluated" and ev_again["status"] == "already done" and ev_again["eval_id"] == ev["eval_id"]
    ev_fast = job("evaluate", "train.lr=0.5", "run.run_id=1")
    assert ev_fast["eval_id"] != ev["eval_id"] and ev_fast["train_identity"] == faster["identity"]
    # the floors beside each evaluation: computed once per samples build and split, then reported
    assert set(ev["floors"]) == {"global_rate", "item_popularity", "item_rate", "user_rate"}
    assert {f["status"] for f in ev["floors"].values()} == {"evaluated"}
    for later in (ev_again, ev_fast):
        assert {f["status"] for f in later["floors"].values()} == {"already done"}
        assert {n: f["auc"] for n, f in later["floors"].items()} == {n: f["auc"] for n, f in ev["floors"].items()}
    assert ev["floors"]["global_rate"]["auc"] == 0.5


def test_every_pipeline_job_prints_exactly_one_json_document(spark, tmp_path, capfd):
    """--json: stdout holds one JSON document and nothing else (logs and progress on stderr),
    for each job of the pipeline in order (in this process, on the shared session)."""
    import json

    common = ["--json", f"storage.root={tmp_path}/delta", f"storage.codebooks={tmp_path}/codebooks",
              f"samples.path={tmp_path}/samples", f"train.checkpoint_dir={tmp_path}/ckpt", "storage.engine=delta-rs",
              "dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12", "synthetic.n_items=400",
              "synthetic.n_users=120", "synthetic.block_size=64", "synthetic.mean_events_per_user=30",
              "codebooks.k=16", "codebooks.sample_size=300", "samples.history_len=5", "samples.content.dim=0",
              "train.model=din", "train.backend=single", "train.reader=arrow", "train.max_steps=2", "train.dim=8",
              "run.run_id=7"]
    jobs = [("generate_synthetic", []), ("validate_inputs", []), ("fit_codebooks", []), ("assign_ids", []),
            ("mark_current", ["codebooks.version=v0001"]), ("reindex_catalog", ["run.run_id=20261128"]),
            ("build_samples", []), ("train_ranker", []), ("evaluate", []), ("clean_orphans", ["maintenance.dry_run=true"])]
    docs = {}
    for name, extra in jobs:
        capfd.readouterr()
        code = load_job(name).main([*common, *extra])
        out, err = capfd.readouterr()
        assert code == 0, f"{name}: {err[-3000:]}"
        docs[name] = json.loads(out)  # the whole of stdout parses as one document
    assert docs["generate_synthetic"]["generated"]["items"]["rows_written"] == 400
    assert docs["assign_ids"]["codebook_version"] == "v0001" and docs["train_ranker"]["status"] == "trained"
    assert docs["reindex_catalog"]["outcome"]["n_changed"] == 0 and docs["evaluate"]["status"] == "evaluated"
