"""Runs tracked in MLflow (psrq.tracking): recorded whole or not at all, linked instead of
repeated, nested under their parents, off the job's path when the store fails; and the demo
against a real `mlflow server` on 127.0.0.1."""
import logging
import os
import sys

import pytest

from conftest import run_python, small_config
from mlflow_server import mlflow_server, runs


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_a_run_is_recorded_whole_once_then_linked_and_nested_under_its_parent(tmp_path, monkeypatch, caplog):
    """The local store (a SQLite file under storage.root): parameters, metrics with their
    steps, tags and artifacts; the same kind and key again is the same run; children carry
    their parent; a parent whose block raised is FAILED."""
    from psrq.tracking.runs import TrackedRun
    from psrq.tracking.store import PARENT, Tracker, resolve

    uri, artifacts = resolve(small_config(tmp_path, "tracking.uri=local"))
    assert uri == f"sqlite:///{tmp_path}/delta/mlflow/mlflow.db" and artifacts == f"{tmp_path}/delta/mlflow/artifacts"
    tracker = Tracker(uri, "psrq-test", artifacts, 5)
    (tmp_path / "plot.png").write_bytes(b"png")
    run = TrackedRun("train", "k1", "train mcca", params={"lr": "0.01"}, metrics={"valid.auc": 0.71},
                     curves=[("valid_auc", 0.6, 10), ("valid_auc", 0.7, 20)], tags={"delta.read.interactions": "3"},
                     texts={"result/train.json": "{}"},
                     files={"plot.png": str(tmp_path / "plot.png"), "gone.png": str(tmp_path / "missing.png")})
    ref = tracker.record(run)
    assert ref["linked"] is False
    assert tracker.record(run) == {"run_id": ref["run_id"], "linked": True}  # "already done": no second run
    client = _client(uri)
    (found,) = runs(uri, "psrq-test", "train")
    assert found.info.status == "FINISHED" and found.data.params == {"lr": "0.01"}
    assert found.data.tags["delta.read.interactions"] == "3" and found.data.tags["psrq.key"] == "k1"
    assert [(m.step, m.value) for m in client.get_metric_history(ref["run_id"], "valid_auc")] == [(10, 0.6), (20, 0.7)]
    assert sorted(a.path for a in client.list_artifacts(ref["run_id"])) == ["plot.png", "result"]

    with tracker.parent(TrackedRun("search", "s1", "tune mcca")) as search:
        trial = TrackedRun("trial", "t1", "trial")
        with tracker.parent(trial) as trial_id:
            child = tracker.record(TrackedRun("train", "k2", "train"))
            trial.metrics = {"valid_auc_mean": 0.7}
    assert client.get_run(child["run_id"]).data.tags[PARENT] == trial_id
    assert client.get_run(trial_id).data.tags[PARENT] == search
    assert client.get_run(trial_id).data.metrics == {"valid_auc_mean": 0.7}
    assert client.get_run(search).info.status == "FINISHED"
    with pytest.raises(ValueError), tracker.parent(TrackedRun("cell", "c1", "cell")) as cell:
        raise ValueError("the cell's training failed")
    assert client.get_run(cell).info.status == "FAILED"
    with tracker.parent(TrackedRun("cell", "c1", "cell")) as again:  # the re-run resumes the same parent
        pass
    assert again == cell and client.get_run(cell).info.status == "FINISHED"

    # a store that fails half-way: that run is deleted, one warning, nothing more recorded
    from mlflow.tracking import MlflowClient

    def refuse(*args, **kwargs):
        raise OSError("artifact store full")

    monkeypatch.setattr(MlflowClient, "log_artifacts", refuse)
    with caplog.at_level(logging.WARNING, logger="psrq.tracking.store"):
        assert tracker.record(TrackedRun("evaluate", "e1", "evaluate", texts={"evaluation.json": "{}"})) is None
        assert tracker.record(TrackedRun("evaluate", "e2", "evaluate")) is None
    assert runs(uri, "psrq-test", "evaluate") == []
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1 == len(caplog.records)
    assert "artifact store full" in caplog.records[0].message and not tracker.on


def test_where_runs_are_tracked(tmp_path, monkeypatch):
    """The default is the local store, under a local storage.root only; PSRQ_TRACKING is the
    default a deployment (or this suite: off) sets, below the command line."""
    from psrq.config import load_config
    from psrq.tracking.store import resolve

    monkeypatch.delenv("PSRQ_TRACKING", raising=False)
    assert load_config("local", "synthetic_small").tracking.uri == "local"
    assert resolve(small_config(tmp_path, "storage.root=s3://bucket/psrq")) == (None, None)
    monkeypatch.setenv("PSRQ_TRACKING", "http://127.0.0.1:5000")
    assert load_config("local", "synthetic_small").tracking.uri == "http://127.0.0.1:5000"
    assert load_config("local", "synthetic_small", ["tracking.uri=off"]).tracking.uri == "off"
    assert resolve(small_config(tmp_path, "tracking.uri=off")) == (None, None)


@pytest.mark.slow
def test_the_demo_against_a_tracking_server(tmp_path):
    """The demo job end to end (its printed summary), against a real server: runs for fit,
    train, evaluate and floors with their identity, metrics and Delta versions; the same demo
    again adds no training or evaluation run; with the server stopped a job still succeeds and
    warns once."""
    overrides = [f"storage.root={tmp_path}/delta", f"storage.codebooks={tmp_path}/codebooks",
                 f"samples.path={tmp_path}/samples", "synthetic.n_items=300", "synthetic.n_users=100",
                 "codebooks.k=16", "dataset.modalities.text.dim=32", "dataset.modalities.audio.dim=32",
                 "spark.master=local[2]"]
    with mlflow_server(tmp_path / "mlflow") as server:
        tracked = [*overrides, f"tracking.uri={server.uri}"]
        out = run_python(["jobs/demo.py", *tracked], timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "validation: items and interactions meet their contracts" in out.stdout
        assert "items                0         300" in out.stdout
        assert "space: joint" in out.stdout and "psrq        3" in out.stdout and "rq          3" in out.stdout
        assert "night 0: 0 new/changed items" in out.stdout  # the reindex after the assignment: nothing changed
        assert (tmp_path / "codebooks" / "v0001" / "code_distributions.png").stat().st_size > 1000
        assert "training samples: train" in out.stdout and (tmp_path / "samples" / "manifest.json").exists()
        assert "floor:item_rate" in out.stdout and "floor:global_rate" in out.stdout
        assert "Calib." in out.stdout and "(best of 1 validation(s), at step" in out.stdout  # one epoch: one validation
        assert "Exception while sending command" not in out.stderr  # py4j's retried socket (Py4jRetryFilter)
        assert f"runs tracked in MLflow experiment psrq-synthetic_small at {server.uri}" in out.stdout
        exp = "psrq-synthetic_small"
        kinds = {kind: runs(server.uri, exp, kind) for kind in ("fit", "train", "evaluate", "floor")}
        assert {k: len(v) for k, v in kinds.items()} == {"fit": 2, "train": 2, "evaluate": 2, "floor": 4}  # psrq+rq
        for run in kinds["train"]:
            assert run.info.status == "FINISHED" and {"model", "lr", "samples", "codebook_version"} <= set(run.data.params)
            assert {"valid.auc", "valid.logloss"} <= set(run.data.metrics)
            assert {"delta.read.interactions", "delta.read.semantic_ids", "psrq.samples"} <= set(run.data.tags)
        for run in kinds["evaluate"]:
            assert {"auc", "cold_auc", "logloss", "gauc", "calibration_error"} <= set(run.data.metrics)
            assert {"delta.write.predictions", "delta.write.eval_metrics", "psrq.train_identity"} <= set(run.data.tags)
        assert all("diag.joint.mse" in r.data.metrics and "delta.read.items" in r.data.tags for r in kinds["fit"])
        assert {r.data.params["floor"] for r in kinds["floor"]} == {"global_rate", "item_popularity", "item_rate",
                                                                    "user_rate"}
        # the same demo again: every stage "already done", linked to its runs
        again = run_python(["jobs/demo.py", *tracked], timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "is run" in again.stderr and "already (linked)" in again.stderr
        for kind in ("train", "evaluate", "floor"):
            assert len(runs(server.uri, exp, kind)) == len(kinds[kind]), kind
        server.stop()
        # the server gone: the evaluation job still succeeds, with one warning
        down = run_python(["jobs/evaluate.py", *tracked], timeout=300)
        assert down.returncode == 0, down.stderr[-3000:]
        assert down.stderr.count("tracking off for the rest of this job") == 1, down.stderr[-3000:]
        assert "evaluation" in down.stdout and "already done" in down.stdout


@pytest.mark.real  # starts a process
def test_the_docs_mlflow_ui_line_serves_a_local_store(tmp_path):
    """docs/TRACKING.md's `mlflow ui` line, on a local store of this suite's making."""
    import re
    import shlex
    import signal
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    from conftest import ROOT
    from mlflow_server import free_port
    from psrq.tracking.runs import TrackedRun
    from psrq.tracking.store import Tracker

    line = re.search(r"^\.venv/bin/(mlflow ui [^\n]*)", Path(ROOT, "docs", "TRACKING.md").read_text(), re.M).group(1)
    store = f"sqlite:///{tmp_path}/data/mlflow/mlflow.db"
    Tracker(store, "psrq-docs", None, 5).record(TrackedRun("fit", "f1", "fit psrq v0001"))
    port = free_port()
    args = shlex.split(line.replace("sqlite:///data/mlflow/mlflow.db", store).replace("--port 5000", f"--port {port}"))
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), *args[1:]], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        assert len(runs(f"http://127.0.0.1:{port}", "psrq-docs", "fit")) == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
