"""The fault suite: every bad input, broken artifact and crash a user can meet, through the
real jobs. Each case asserts the exit code, that the message names what is wrong, and that
every Delta table version and artifact is unchanged (docs/RELIABILITY.md lists them).

Bad inputs run the jobs' own `main(argv)` in this process (parse, configuration, write
probes, stage, error handling: all of it but the interpreter start). Crashes are real:
a job in its own process kills itself with SIGKILL at a chosen point (tests/faults/kill_at.py)
and is then run again."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, copy_tables, job_env, load_job, override_args, run_python

KILL_AT = os.path.join(ROOT, "tests", "faults", "kill_at.py")


def base_args(root: Path) -> list[str]:
    return [f"storage.root={root}/delta", f"storage.codebooks={root}/codebooks", f"samples.path={root}/samples",
            f"train.checkpoint_dir={root}/ckpt", "storage.engine=delta-rs", "spark.shuffle_partitions=2",
            "dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12", "synthetic.n_items=400",
            "synthetic.n_users=120", "synthetic.block_size=64", "synthetic.mean_events_per_user=30",
            "codebooks.k=16", "codebooks.sample_size=300", "samples.history_len=5", "samples.content.dim=0",
            "train.model=din", "train.backend=single", "train.reader=arrow", "train.max_steps=6",
            "train.checkpoint_every=2", "train.dim=8"]


def snapshot(root: Path) -> dict:
    """Every Delta table's version and every other file's content hash under root."""
    from deltalake import DeltaTable

    out = {}
    for dirpath, dirnames, files in os.walk(root):
        if "_delta_log" in dirnames:
            try:
                out[os.path.relpath(dirpath, root)] = ("delta", DeltaTable(dirpath).version())
                dirnames[:] = []  # the table's data files are covered by its version
                continue
            except Exception:  # noqa: BLE001 - a table whose log is damaged: its files, byte for byte
                pass
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, spark):
    """A complete small pipeline: tables, a codebook, IDs, samples, a trained model."""
    root = tmp_path_factory.mktemp("faults")
    args = base_args(root)
    for name in ("generate_synthetic", "fit_codebooks", "assign_ids", "build_samples", "train_ranker"):
        assert load_job(name).main(args) == 0, name
    return root, args


def run_fault(capsys, root: Path, job: str, args: list[str]):
    before = snapshot(root)
    code = load_job(job).main(args)
    err = capsys.readouterr().err
    assert snapshot(root) == before, f"{job} changed what it should not have"
    return code, err


CONFIG_CASES = [
    ("validate_inputs", ["nonsense.key=1"], r"nonsense: Extra inputs are not permitted"),
    ("generate_synthetic", ["synthetic.n_items=-3"], r"synthetic.n_items: Input should be greater than or equal to 1"),
    ("assign_ids", ["codebooks.version=v9999"], r"codebook version 'v9999' not found .*available: v0001"),
    ("assign_ids", ["dataset.modalities.audio.dim=13"], r"codebook v0001 was fitted for modalities .*fit a new codebook"),
    ("evaluate", ["train.seed=99"], r"no trained din \(seed 99\)"),
    ("train_ranker", ["validation.min_ts=yesterday"], r"validation.min_ts: Value error"),
]


@pytest.mark.parametrize("job,extra,message", CONFIG_CASES, ids=[f"{c[0]}-{c[1][0]}" for c in CONFIG_CASES])
def test_bad_configuration_and_missing_artifacts(world, capsys, job, extra, message):
    root, args = world
    code, err = run_fault(capsys, root, job, [*args, *extra])
    assert code == 2 and "Traceback" not in err
    assert re.search(message, err), err


def test_an_unwritable_or_unsupported_location_stops_before_any_work(world, capsys, tmp_path):
    root, args = world
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_fault(capsys, root, "generate_synthetic", [*args, f"storage.root={blocker}/delta"])
    assert code == 2 and f"storage.root: cannot write to {blocker}/delta" in err and "nothing was started" in err
    code, err = run_fault(capsys, root, "train_ranker", [*args, "train.checkpoint_dir=nosuchfs://bucket/ckpt"])
    assert code == 2 and "train.checkpoint_dir: unsupported filesystem scheme 'nosuchfs://'" in err


def _bad_tables(spark, root: Path, items=None, interactions=None) -> None:
    from psrq.storage import open_engine

    engine = open_engine(spark, "delta-rs")
    if items is not None:
        engine.write(items, f"{root}/delta/items", "create")
    if interactions is not None:
        engine.write(interactions, f"{root}/delta/interactions", "create")


ITEMS_DDL = "item_id long, text_emb array<float>, audio_emb array<float>"


def _item(i, text=None, audio=None):
    return (i, text or [1.0] * 15 + [float(i + 1)], audio or [0.5] * 11 + [float(i + 1)])


BAD_TABLES = {
    "nan-embeddings": ("validate_inputs", lambda s: (s.createDataFrame([_item(1), _item(2, [float("nan")] * 16)], ITEMS_DDL), None),
                       r"text_emb.*1 row\(s\) have NaN or Inf values in the embedding \(e.g. 2\)"),
    "wrong-dimension": ("assign_ids", lambda s: (s.createDataFrame([_item(1), _item(2, [1.0] * 7)], ITEMS_DDL), None),
                        r"text_emb.*1 row\(s\) have an embedding whose dimension differs from the codebook's \(16\) \(e.g. 2\)"),
    "null-ids": ("assign_ids", lambda s: (s.createDataFrame([_item(1), (None, *_item(2)[1:])], ITEMS_DDL), None),
                 r"item_id.*have a null item_id"),
    "duplicate-ids": ("assign_ids", lambda s: (s.createDataFrame([_item(1), _item(1), _item(2)], ITEMS_DDL), None),
                      r"item_id values occur more than once \(e.g. 1\)"),
    "string-ids": ("assign_ids", lambda s: (s.createDataFrame([("a", *_item(1)[1:])], "item_id string, text_emb array<float>, audio_emb array<float>"), None),
                   r"item_id.*integer column \(long\), not string"),
    "empty-items": ("validate_inputs", lambda s: (s.createDataFrame([], ITEMS_DDL), None), r"items.*the table is empty"),
    "unknown-items": ("validate_inputs", lambda s: (s.createDataFrame([_item(1)], ITEMS_DDL),
                                                    s.createDataFrame([(1, 1, 1, "2026-01-02"), (1, 77, 0, "2026-01-03")], "user_id long, item_id long, label int, ts string")),
                      r"point at items that are not in the items table \(e.g. 77\)"),
    "labels": ("validate_inputs", lambda s: (s.createDataFrame([_item(1)], ITEMS_DDL),
                                             s.createDataFrame([(1, 1, 2, "2026-01-02")], "user_id long, item_id long, label int, ts string")),
               r"label.*have a label other than 0/1"),
    "old-timestamps": ("validate_inputs", lambda s: (s.createDataFrame([_item(1)], ITEMS_DDL),
                                                     s.createDataFrame([(1, 1, 1, "1960-01-02"), (2, 1, 1, "9999-12-31")], "user_id long, item_id long, label int, ts string")),
                       r"2 row\(s\) have a timestamp outside the plausible window"),
    "string-item-in-interactions": ("validate_inputs", lambda s: (s.createDataFrame([_item(1)], ITEMS_DDL),
                                                                  s.createDataFrame([(1, "1", 1, "2026-01-02")], "user_id long, item_id string, label int, ts string")),
                                    r"interactions.*item_id.*integer column \(long\), not string"),
    "empty-interactions": ("validate_inputs", lambda s: (s.createDataFrame([_item(1)], ITEMS_DDL),
                                                         s.createDataFrame([], "user_id long, item_id long, label int, ts string")),
                           r"interactions.*the table is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_are_refused_by_the_job_that_reads_them(spark, capsys, tmp_path, world, case):
    _, args = world
    job, make, message = BAD_TABLES[case]
    items, interactions = make(spark)
    if interactions is None and job == "validate_inputs":
        interactions = spark.createDataFrame([(1, 1, 1, "2026-01-02")], "user_id long, item_id long, label int, ts string")
    _bad_tables(spark, tmp_path, items, interactions)
    if job == "assign_ids":  # a valid codebook of the world, so only the table is wrong
        import shutil

        shutil.copytree(world[0] / "codebooks", tmp_path / "codebooks")
    code, err = run_fault(capsys, tmp_path, job, [*args, f"storage.root={tmp_path}/delta", f"storage.codebooks={tmp_path}/codebooks"])
    assert code == 2 and "Traceback" not in err and "nothing was written" in err
    assert re.search(message, err, re.S), err


def test_a_tampered_codebook_manifest_is_refused(world, capsys, tmp_path):
    import json
    import shutil

    root, args = world
    shutil.copytree(root / "codebooks", tmp_path / "codebooks")
    f = tmp_path / "codebooks" / "v0001" / "manifest.json"
    m = json.loads(f.read_text())
    m["spec"]["k"] = 32
    f.write_text(json.dumps(m))
    code, err = run_fault(capsys, root, "assign_ids", [*args, f"storage.codebooks={tmp_path}/codebooks", "codebooks.version=v0001"])
    assert code == 2 and "manifest.json was modified after it was written" in err


def test_a_truncated_checkpoint_names_the_file_and_restart_recovers(world, capsys, tmp_path):
    import shutil

    root, args = world
    shutil.copytree(root / "ckpt", tmp_path / "ckpt")
    ckpt = next((tmp_path / "ckpt").glob("din-*/checkpoint.pt"))
    (ckpt.parent / "result.json").unlink()  # an unfinished run, so the checkpoint is read
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    run_args = [*args, f"train.checkpoint_dir={tmp_path}/ckpt"]
    code, err = run_fault(capsys, root, "train_ranker", run_args)
    assert code == 2 and f"checkpoint {ckpt} is unreadable (truncated or corrupt" in err and "train.restart=true" in err
    assert "weights_only=False" not in err
    assert load_job("train_ranker").main([*run_args, "train.restart=true"]) == 0
    assert len(list((tmp_path / "ckpt").glob("din-*.moved-*"))) == 1


def run_job_process(args: list[str], kill: tuple[str, int] | None = None, timeout=300) -> subprocess.CompletedProcess:
    return run_python([KILL_AT, kill[0], str(kill[1]), *args] if kill else args, timeout=timeout)


def _table(spark, path):
    from psrq.storage import open_engine

    return open_engine(spark, "delta-rs").read(path).toPandas()


def test_assign_killed_at_its_commit_then_rerun_equals_an_uninterrupted_run(spark, world, tmp_path):
    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    run_args = [*args, *override_args(copies), "run.run_id=7"]
    before = snapshot(tmp_path)
    killed = run_job_process(["jobs/assign_ids.py", *run_args], kill=("commit", 1))
    assert killed.returncode == -9
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if v[0] == "delta"} == {k: v for k, v in before.items() if v[0] == "delta"}
    again = run_job_process(["jobs/assign_ids.py", *run_args])
    assert again.returncode == 0, again.stderr[-2000:]
    cols = ["item_id", "joint_codes", "code_key", "dedup", "codebook_version"]
    got = _table(spark, f"{tmp_path}/delta/semantic_ids")[cols].sort_values("item_id").reset_index(drop=True)
    want = _table(spark, f"{root}/delta/semantic_ids")[cols].sort_values("item_id").reset_index(drop=True)
    assert got.astype(str).equals(want.astype(str))


def test_two_concurrent_assign_runs_of_one_run_id_commit_once(spark, world, tmp_path):
    from deltalake import DeltaTable

    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    sid = f"{tmp_path}/delta/semantic_ids"
    v0 = DeltaTable(sid).version()
    env = job_env()
    cmd = [sys.executable, "jobs/assign_ids.py", *args, *override_args(copies), "run.run_id=11"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert DeltaTable(sid).version() == v0 + 1  # exactly one commit of run 11
    assert sum("skipped (already written by this run)" in o[0] for o in outs) == 1


# MCCA with the synthetic data's tuned settings (conf/tuned/synthetic_small.yaml): dropout on, so
# a resumed run matches an uninterrupted one only if every step draws what it drew then
TUNED = ["train.model=mcca", "train.lr=0.005", "train.embedding_dropout=0.2", "train.weight_decay=0.0001",
         "train.priors=true"]


def _weights(folder: Path, model: str = "mcca"):
    import torch

    return torch.load(next(folder.glob(f"{model}-*/checkpoint.pt")), weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    """One uninterrupted single-process training with the tuned settings (in this process)."""
    root, args = world
    folder = tmp_path_factory.mktemp("whole")
    assert load_job("train_ranker").main([*args, *TUNED, f"train.checkpoint_dir={folder}"]) == 0
    return folder


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_single_process_training_stopped_after_a_checkpoint_resumes_to_the_same_weights(world, uninterrupted, tmp_path,
                                                                                       signal_name):
    """kill -9 after the step-4 checkpoint, or a scheduler's SIGTERM there (the loop stops at the
    step boundary, exit 143, saying how to resume): the re-run resumes and ends with the
    uninterrupted run's weights, bit for bit, with embedding dropout on."""
    root, args = world
    run_args = ["jobs/train_ranker.py", *args, *TUNED, f"train.checkpoint_dir={tmp_path}"]
    stopped = run_job_process(run_args, kill=("checkpoint" if signal_name == "SIGKILL" else "sigterm", 2))
    if signal_name == "SIGKILL":
        assert stopped.returncode == -9
    else:
        assert stopped.returncode == 143, stopped.stderr[-2000:]
        assert "stopped by SIGTERM after step 4" in stopped.stderr and "run the same command again" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    assert _weights(tmp_path)["step"] == 4
    resumed = run_job_process(run_args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stdout and "(2 this run)" in resumed.stdout
    assert _same_weights(_weights(uninterrupted), _weights(tmp_path))


def test_clean_orphans_removes_what_killed_runs_left_and_nothing_else(spark, world, tmp_path):
    import json

    from deltalake import DeltaTable

    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    run_args = [*args, *override_args(copies), f"train.checkpoint_dir={tmp_path}/ckpt", "run.run_id=9"]
    assert run_job_process(["jobs/assign_ids.py", *run_args], kill=("commit", 1)).returncode == -9
    (tmp_path / "codebooks" / "v0002").mkdir()  # a fit killed before its manifest
    (tmp_path / "codebooks" / "v0002" / "codebooks.safetensors").write_bytes(b"partial")
    (tmp_path / "ckpt" / "din-x").mkdir(parents=True)
    (tmp_path / "ckpt" / "din-x" / "checkpoint.pt.tmp-999999").write_bytes(b"partial")
    sid = f"{tmp_path}/delta/semantic_ids"
    live = set(DeltaTable(sid).file_uris())
    rows_before = _table(spark, sid).sort_values("item_id").reset_index(drop=True)

    def clean(*extra):
        out = run_job_process(["jobs/clean_orphans.py", "--json", *run_args, *extra])
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    assert clean()["files"] == 0  # everything is younger than the grace period
    listed = clean("maintenance.min_age_hours=0", "maintenance.dry_run=true")
    assert listed["files"] >= 2 and listed["folders"] == 1 and listed["dry_run"]
    assert any("/semantic_ids/" in p for p in listed["paths"]) and any(".tmp-999999" in p for p in listed["paths"])
    assert (tmp_path / "codebooks" / "v0002").exists()  # a dry run deletes nothing
    done = clean("maintenance.min_age_hours=0")
    assert done["paths"] == listed["paths"]
    assert not (tmp_path / "codebooks" / "v0002").exists() and not list((tmp_path / "ckpt").rglob("*.tmp-*"))
    on_disk = {str(p) for p in Path(sid).rglob("*.parquet")}
    assert on_disk == {u.removeprefix("file://") for u in live}  # exactly the committed files remain
    assert _table(spark, sid).sort_values("item_id").reset_index(drop=True).astype(str).equals(rows_before.astype(str))
    assert clean("maintenance.min_age_hours=0")["files"] == 0  # a second run finds nothing


def _descendants_alive(sid: int) -> list[int]:
    """Processes still running in the session the killed job started."""
    alive = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getsid(int(pid)) == sid:
                    alive.append(int(pid))
            except (ProcessLookupError, PermissionError):
                pass
    return alive


@pytest.mark.real  # starts a process
def test_two_rank_horovod_training_killed_after_a_checkpoint_resumes_and_finishes(world, tmp_path):
    """kill -9 of the whole job (driver, JVM, Spark workers, both Horovod ranks) once rank 0
    wrote its first checkpoint; the re-run resumes from it and ends with the weights of the
    same run uninterrupted, with embedding dropout on."""
    import json
    import signal
    import time

    import torch

    root, args = world
    run_args = [*args, *TUNED, f"train.checkpoint_dir={tmp_path}/ckpt", "train.backend=horovod", "train.num_proc=2",
                "train.max_steps=60", "train.checkpoint_every=5", "train.batch_size=32", "spark.master=local[2]"]
    env = job_env()
    job = subprocess.Popen([sys.executable, "jobs/train_ranker.py", *run_args], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    ckpt = None
    while time.time() < deadline and job.poll() is None:
        found = list((tmp_path / "ckpt").glob("mcca-*/checkpoint.pt"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint appeared"
    # every process of the job's session: driver, JVM, Python workers, ranks (some of them
    # run in process groups of their own)
    for pid in _descendants_alive(job.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(timeout=30)
    for _ in range(50):
        if not _descendants_alive(job.pid):
            break
        time.sleep(0.2)
    assert _descendants_alive(job.pid) == []  # nothing of the killed job lingers
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert step_at_kill > 0 and not (ckpt.parent / "result.json").exists()
    out = run_job_process(["jobs/train_ranker.py", "--json", *run_args], timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    final = torch.load(ckpt, weights_only=True)
    assert res["status"] == "resumed" and res["steps"] == final["step"] > step_at_kill
    assert res["steps_this_run"] > 0 and res["processes"] == 2
    assert (ckpt.parent / "result.json").exists()
    # the same run uninterrupted: the same weights, bit for bit (each rank's dropout is drawn
    # from its seed and the step alone)
    whole = run_job_process(["jobs/train_ranker.py", "--json", *run_args, f"train.checkpoint_dir={tmp_path}/whole"],
                            timeout=400)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert _same_weights(_weights(tmp_path / "whole"), final)


@pytest.fixture(scope="module")
def night(spark, world, tmp_path_factory):
    """A night to run: the world's tables after a first night (it sets the watermark), with
    25 changed items since (new embeddings from another item's, a later updated_at); and
    the same night run uninterrupted, in this process, on a copy. Returns a function that
    copies the prepared tables under a folder and gives the night's arguments there, and
    the uninterrupted night's folder."""
    from datetime import datetime, timezone

    from pyspark.sql import functions as F

    from psrq.storage import open_engine

    root, args = world
    base = tmp_path_factory.mktemp("night")
    engine = open_engine(spark, "delta-rs")
    first = [*args, *override_args(copy_tables(root / "delta", root / "codebooks", base / "prepared")),
             "reindex.min_items_for_drift=1000"]
    assert load_job("reindex_catalog").main([*first, "run.run_id=20261130"]) == 0  # the first night
    items = engine.read(f"{base}/prepared/delta/items")
    changed = (items.filter("item_id < 25").alias("a").join(items.filter("item_id >= 200 and item_id < 225").alias("b"),
                                                            F.expr("b.item_id = a.item_id + 200"))
               .selectExpr("a.item_id", "b.text_emb", "b.audio_emb")
               .withColumn("updated_at", F.lit(datetime(2027, 1, 1, tzinfo=timezone.utc))))
    engine.merge(changed.select(*items.columns), f"{base}/prepared/delta/items", ["item_id"])

    def prepared(dest) -> list[str]:
        copies = copy_tables(base / "prepared" / "delta", base / "prepared" / "codebooks", dest)
        return [*args, *override_args(copies), "reindex.min_items_for_drift=1000",
                "run.run_id=20261201"]

    assert load_job("reindex_catalog").main(prepared(base / "whole")) == 0  # uninterrupted
    return prepared, base / "whole"


@pytest.mark.parametrize("crash_at", [2, 3])
def test_a_night_killed_with_sigkill_resumes_to_the_uninterrupted_result(spark, night, tmp_path, crash_at):
    """kill -9 of reindex_catalog after its plan (2: before the semantic_ids commit) or after
    the semantic_ids commit (3: before the outcome row): the re-run ends with the IDs and the
    audit rows of an uninterrupted night."""
    prepared, whole = night
    killed = prepared(tmp_path / "killed")
    runs = {"whole": whole, "killed": tmp_path / "killed"}
    assert run_job_process(["jobs/reindex_catalog.py", *killed], kill=("commit", crash_at)).returncode == -9
    again = run_job_process(["jobs/reindex_catalog.py", *killed])
    assert again.returncode == 0, again.stderr[-2000:]
    cols = ["item_id", "joint_codes", "code_key", "dedup", "codebook_version"]
    ids = {n: _table(spark, f"{d}/delta/semantic_ids")[cols].sort_values("item_id").reset_index(drop=True).astype(str)
           for n, d in runs.items()}
    assert ids["killed"].equals(ids["whole"])
    audit_cols = ["night", "status", "items_version", "codebook_version", "n_changed", "refit", "error_share"]
    audit = {n: _table(spark, f"{d}/delta/reindex_state")[audit_cols].sort_values(["night", "status"])
             .reset_index(drop=True).astype(str) for n, d in runs.items()}
    assert audit["killed"].equals(audit["whole"]) and "25" in set(audit["whole"].n_changed)


def _locations_free(args: list[str]) -> list[str]:
    """The world's arguments without its explicit locations (storage.root alone then decides)."""
    keys = ("storage.root=", "storage.codebooks=", "samples.path=", "train.checkpoint_dir=")
    return [a for a in args if not a.startswith(keys)]


@pytest.mark.parametrize("job", ["assign_ids", "reindex_catalog"])
def test_an_empty_items_table_never_replaces_the_semantic_ids(spark, world, capsys, tmp_path, job):
    """assign_ids and reindex_catalog run without validate_inputs on an emptied items table:
    exit 2, every table version as it was (the IDs in use stay)."""
    from psrq.storage import open_engine

    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    engine = open_engine(spark, "delta-rs")
    items = f"{tmp_path}/delta/items"
    engine.write(engine.read(items).limit(0), items, "overwrite")
    code, err = run_fault(capsys, tmp_path, job, [*args, *override_args(copies), "run.run_id=5"])
    assert code == 2 and "Traceback" not in err and "the table is empty" in err, err
    assert "validation.allow_empty=true" in err


def test_a_rerun_of_a_finished_assignment_encodes_nothing(spark, world, tmp_path):
    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    run_args = ["jobs/assign_ids.py", *args, *override_args(copies), "run.run_id=12"]
    first = run_job_process(run_args)
    assert first.returncode == 0 and "encoded 400 items" in first.stderr, first.stderr[-2000:]
    again = run_job_process(run_args)
    assert again.returncode == 0 and "nothing encoded" in again.stderr and "encoded 400 items" not in again.stderr
    assert "skipped (already written by this run)" in again.stdout


def test_already_done_checks_the_checkpoint_it_reports(world, capsys, tmp_path):
    """A finished run whose checkpoint was damaged afterwards is not reported as done."""
    import shutil

    root, args = world
    shutil.copytree(root / "ckpt", tmp_path / "ckpt")
    ckpt = next((tmp_path / "ckpt").glob("din-*/checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    code, err = run_fault(capsys, root, "train_ranker", [*args, f"train.checkpoint_dir={tmp_path}/ckpt"])
    assert code == 2 and f"{ckpt} is damaged" in err and "train.restart=true" in err and "Traceback" not in err


def test_listing_codebooks_names_the_versions_it_skipped(world, capsys, tmp_path):
    """The only version's manifest edited: not "no versions", but which one was skipped and why."""
    import json
    import shutil

    root, args = world
    shutil.copytree(root / "codebooks", tmp_path / "codebooks")
    f = tmp_path / "codebooks" / "v0001" / "manifest.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "seed": 99}))
    code, err = run_fault(capsys, root, "assign_ids", [*args, f"storage.codebooks={tmp_path}/codebooks"])
    assert code == 2 and "no usable psrq codebook version" in err and "1 skipped (v0001:" in err
    assert "manifest.json was modified after it was written" in err and "run jobs/fit_codebooks.py first" not in err


def test_jobs_started_anywhere_with_storage_root_alone_write_only_under_it(world, tmp_path):
    """A dataset file outside the repository, storage.root the only location given, started
    from another working directory: the codebooks land under storage.root, the working
    directory stays empty, and the fit is the one started from the repository."""
    import json

    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path / "copy")
    data = tmp_path / "copy" / "delta"
    dataset = tmp_path / "elsewhere" / "mine.yaml"
    dataset.parent.mkdir()
    dataset.write_text(Path(ROOT, "conf", "datasets", "synthetic_small.yaml").read_text())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "fit_codebooks.py"), "--dataset", str(dataset), "--json",
           *_locations_free(args), f"storage.root={data}", "run.run_id=31"]
    out = subprocess.run(cmd, cwd=cwd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.listdir(cwd) == [] and (data / "codebooks" / "v0001" / "manifest.json").is_file()
    fitted = json.loads(out.stdout)
    mine = json.loads((data / "codebooks" / "v0001" / "manifest.json").read_text())
    want = json.loads((Path(copies["storage.codebooks"]) / "v0001" / "manifest.json").read_text())
    assert fitted["version"] == "v0001" and mine["checksums"]["codebooks.safetensors"] == want["checksums"]["codebooks.safetensors"]


def test_a_table_folder_that_cannot_be_written_stops_the_job_before_any_work(world, capsys, tmp_path):
    """One table the job writes sits where nothing can be written (here a folder of /proc, which
    refuses even root): the write probe names it before Spark starts."""
    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    sid = tmp_path / "delta" / "semantic_ids"
    import shutil

    shutil.rmtree(sid)
    sid.symlink_to("/proc/self/fdinfo")
    code, err = run_fault(capsys, tmp_path, "assign_ids", [*args, *override_args(copies), "run.run_id=13"])
    assert code == 2 and f"tables.semantic_ids: cannot write to {sid}" in err and "nothing was started" in err


def test_a_truncated_delta_log_entry_names_the_table_the_file_and_the_way_back(spark, world, capsys, tmp_path):
    root, args = world
    copies = copy_tables(root / "delta", root / "codebooks", tmp_path)
    logs = sorted((tmp_path / "delta" / "interactions" / "_delta_log").glob("*.json"))
    log = logs[-1]
    log.write_bytes(log.read_bytes()[: len(log.read_bytes()) // 2])
    code, err = run_fault(capsys, tmp_path, "validate_inputs", [*args, *override_args(copies)])
    assert code == 2 and "Traceback" not in err and f"{tmp_path}/delta/interactions" in err
    assert f"{log} is not valid JSON" in err and "move it out of _delta_log" in err
    way_back = f"go back to version {len(logs) - 2}" if len(logs) > 1 else "it has no earlier version"
    assert way_back in err
    assert not re.search(r"^\s*\d+: ", err, re.M)  # no Rust backtrace frames


def test_a_file_size_limit_during_a_write_is_one_line_and_a_rerun_recovers(world, tmp_path):
    """`ulimit -f` small enough that the checkpoint cannot be written: exit 2 with one line
    naming the file; no checkpoint or result is left half-written; without the limit the same
    command trains the run."""
    import resource

    root, args = world
    run_args = ["jobs/train_ranker.py", *args, *TUNED, f"train.checkpoint_dir={tmp_path}", "train.dim=32"]
    limit = 64 * 1024  # the checkpoint holds about 0.3 MB; Spark's own files here are smaller

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = run_python(run_args, timeout=300, preexec_fn=limited)
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "storage refused a write (File too large: " in lines[0] and str(tmp_path) in lines[0], lines[0]
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.tmp-*"))
    again = run_job_process(run_args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert list(tmp_path.rglob("result.json"))


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it, by parent PID (Horovod's middleman calls setsid,
    so its ranks leave the job's session but not its process tree)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rank_processes(root: int) -> dict[int, int]:
    """Horovod rank -> PID of the Python process running it, below the job's process."""
    out = {}
    for pid in _process_tree(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"horovod.spark.task.gloo_exec_fn" in argv and b"python" in os.path.basename(argv[0]):
            rank = next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"HOROVOD_RANK=")), None)
            if rank is not None:
                out[rank] = pid
    return out


@pytest.mark.real  # starts a process
def test_one_horovod_rank_killed_fails_the_job_in_seconds_naming_the_rank(world, tmp_path):
    """kill -9 of rank 1 alone mid-run: the job fails within 60 s, says which rank, and records
    nothing as done (no result.json)."""
    import signal
    import time

    root, args = world
    run_args = [*args, f"train.checkpoint_dir={tmp_path}/ckpt", "train.backend=horovod", "train.num_proc=2",
                "train.max_steps=100000", "train.epochs=1000", "train.checkpoint_every=5", "train.batch_size=16",
                "spark.master=local[2]"]
    job = subprocess.Popen([sys.executable, "jobs/train_ranker.py", *run_args], cwd=ROOT, env=job_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, ranks = time.time() + 240, {}
        while time.time() < deadline and job.poll() is None:
            ranks = _rank_processes(job.pid)
            if len(ranks) == 2 and list((tmp_path / "ckpt").glob("din-*/checkpoint.pt")):
                break
            time.sleep(0.2)
        assert len(ranks) == 2, f"the ranks did not start: {ranks}"
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.time()
        _, err = job.communicate(timeout=120)
        assert time.time() - killed_at < 60
    finally:
        for pid in {*_descendants_alive(job.pid), *_process_tree(job.pid)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert job.returncode == 2, err[-3000:]
    assert "error: horovod training failed in rank 1 (its process ended with exit code" in err
    assert not list((tmp_path / "ckpt").glob("*/result.json"))
