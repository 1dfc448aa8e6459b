"""A real standalone Spark cluster on this machine: one master and two workers (1 core each,
their own work directories), every process bound to 127.0.0.1. The pipeline is submitted
through the documented launcher (`python -m psrq.submit`) from a working directory that is
not the repository, with the package zip `make package` builds and executors whose Python
sits at another path than the driver's; the semantic IDs must equal a local-mode run's.
The nodes hold the object store's credentials in their environment, as instance settings
would (the executors' Python inherits them; Spark's s3a gets the driver's, which Spark
copies into the Hadoop configuration): one demo keeps everything on a local S3 endpoint
(tests/s3_endpoint.py), and the secret must show up in no output or log of the driver,
master, workers or executors.
The cluster is stopped by the PIDs this test started."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from s3_endpoint import CREDENTIALS, SECRET, assert_pipeline_on_s3, delta_table, read_metrics, s3_locations
from psrq.job import JobContext

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from psrq.standalone import StandaloneCluster

    with StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g", env=CREDENTIALS) as c:
        yield c.url, c.logs


SMALL = ["spark.shuffle_partitions=4", "dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12",
         "synthetic.n_items=400", "synthetic.n_users=120", "synthetic.block_size=64", "synthetic.mean_events_per_user=30",
         "codebooks.k=16", "codebooks.sample_size=300", "samples.history_len=5", "samples.content.dim=0",
         "train.max_steps=30", "train.dim=16", "train.backend=horovod", "train.num_proc=2", "train.reader=petastorm",
         "demo.baseline=null", "run.run_id=3"]  # the baseline would train the same code path again


@pytest.fixture(scope="module")
def submit(cluster, tmp_path_factory):
    """Runs `python -m psrq.submit --master <cluster> --python <executors' python> jobs/<job>.py
    --json ...` (the README's launcher line) from a folder outside the repository; the
    job's JSON document."""
    import json

    url, logs = cluster
    base = tmp_path_factory.mktemp("submit")
    # the executors' Python: the same environment reached through another path
    other_env = base / "executor-env"
    other_env.symlink_to(Path(sys.executable).parent.parent)
    executor_python = str(other_env / "bin" / "python")
    work = base / "cwd"
    work.mkdir()
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "package.py")], check=True, capture_output=True)
    env = {**os.environ, **CREDENTIALS, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_PYTHON", None)

    # your own dataset, described in a file outside the repository (shipped by the launcher)
    dataset = base / "elsewhere" / "mydata.yaml"
    dataset.parent.mkdir()
    dataset.write_text(Path(ROOT, "conf", "datasets", "synthetic_small.yaml").read_text()
                       .replace("name: synthetic_small", "name: mydata"))

    def run(job: str, *overrides: str, conf: tuple[str, ...] = (), python: str = executor_python,
            expect: int = 0) -> dict:
        cmd = [sys.executable, "-m", "psrq.submit", "--master", url, "--python", python,
               "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.executor.memory=1g",
               *[a for kv in conf for a in ("--conf", kv)],
               os.path.join(ROOT, "jobs", f"{job}.py"), "--profile", "cluster", "--dataset", str(dataset), "--json",
               *overrides]
        t = time.time()
        out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=400)
        if expect:
            assert out.returncode == expect, out.stderr[-3000:]
            return {"stderr": out.stderr, "_seconds": time.time() - t}
        assert out.returncode == 0, f"{job}:\n{out.stderr[-4000:]}"
        assert "Traceback" not in out.stderr, f"{job} succeeded with a traceback in its output:\n{out.stderr[-4000:]}"
        assert SECRET not in out.stdout + out.stderr
        run_id = next(o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("run.run_id="))
        # the application ran on the cluster, under its own name
        assert f"Registered app psrq-{job}-{run_id} with ID" in (logs / "master.log").read_text()
        doc = json.loads(out.stdout)
        doc["_seconds"] = round(time.time() - t, 1)
        return doc

    run.executor_python = executor_python
    run.cwd = work
    return run


def _ranks_ran_on_executors(trained: dict, executor_python: str) -> None:
    ranks = trained["ranks"]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and len({r["pid"] for r in ranks}) == 2
    # started by the executors with their interpreter, not the driver's
    assert all(r["python"] == executor_python != sys.executable for r in ranks), ranks
    # running the package the launcher shipped, not the psrq installed in the executors' Python
    # (the checkout's, here: a rank that imported it would run other code than the driver's)
    assert all(r["package"].endswith(os.path.join("psrq.zip", "psrq")) for r in ranks), [r["package"] for r in ranks]
    assert all(r["device"] == "cpu" for r in ranks)


def test_pipeline_through_the_launcher_on_a_standalone_cluster(submit, tmp_path, spark):
    """delta-rs engine, every location a file:// URI: the demo (generate, validate, fit,
    assign, a night of the reindex, build samples, train MCCA with Horovod, evaluate,
    floors) as one application."""
    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage
    from psrq.data.generate import generate
    from psrq.storage import open_engine

    from conftest import small_config

    data = tmp_path / "data"
    cwd_before = set(os.listdir(submit.cwd))
    # storage.root alone: every other location defaults under it, never under the working directory
    overrides = [f"storage.root=file://{data}", "storage.engine=delta-rs", "codebooks.compare=[]", *SMALL]
    demo = submit("demo", *overrides)
    assert set(os.listdir(submit.cwd)) == cwd_before
    assert {"codebooks", "samples", "checkpoints", "items", "semantic_ids", "eval_metrics"} <= set(os.listdir(data))
    assert demo["generated"]["items"]["rows_written"] == 400
    assert demo["generated"]["items"]["version"] == 0 and demo["assigned"]["version"] == 0
    night = demo["reindexed"]  # the night after the assignment: nothing changed
    assert night["status"] == "done" and night["outcome"]["n_changed"] == 0 and not night["outcome"]["refit"]
    engine = open_engine(spark, "delta-rs")
    versions = {t: engine.version(f"{data}/{t}") for t in ("items", "interactions", "semantic_ids",
                                                                  "codebook_current", "reindex_state", "eval_metrics")}
    assert versions == {"items": 0, "interactions": 0, "semantic_ids": 0, "codebook_current": 0, "reindex_state": 1,
                        "eval_metrics": 1}  # MCCA, then the floors in one commit
    # the Horovod ranks ran on the executors
    _ranks_ran_on_executors(demo["trained"], submit.executor_python)
    # the metrics the evaluations recorded are the ones the job reported
    metrics = engine.read(f"{data}/eval_metrics").toPandas().set_index("model")
    floors = sorted(f"floor:{f}" for f in demo["floors"])
    assert sorted(metrics.index) == [*floors, "mcca"] and len(floors) == 4
    assert metrics.loc["mcca", "train_identity"] == demo["trained"]["identity"]
    for model, m in [*demo["evaluated"].items(), *((f"floor:{f}", m) for f, m in demo["floors"].items())]:
        assert abs(metrics.loc[model, "auc"] - m["auc"]) < 1e-12 and 0 < m["auc"] < 1

    on_cluster = engine.read(f"{data}/semantic_ids").toPandas()
    # the same data and seed in local mode, in this process
    local = small_config(tmp_path / "local", "codebooks.k=16", "codebooks.sample_size=300", "run.run_id=3")
    generate(JobContext.of(spark, local))
    fit_stage(JobContext.of(spark, local))
    assign(JobContext.of(spark, local))
    in_local = engine.read(local.table_path("semantic_ids")).toPandas()
    cols = ["item_id", "text_codes", "audio_codes", "joint_codes", "code_key", "dedup", "codebook_version"]
    a = on_cluster[cols].sort_values("item_id").reset_index(drop=True).astype(str)
    b = in_local[cols].sort_values("item_id").reset_index(drop=True).astype(str)
    assert len(a) == 400 and a.equals(b)
    print("cluster seconds (delta-rs demo):", demo["_seconds"], demo["timings"])


def test_demo_with_delta_spark_on_s3_through_the_launcher(submit, s3, cluster, tmp_path):
    """delta-spark engine on object storage: the Delta jars and hadoop-aws shipped by the
    launcher (--jars), every location on the S3 endpoint; the whole demo as one application,
    its training with TorchDistributor (barrier tasks on the executors start the torchrun
    ranks, which read their shards from the endpoint with Petastorm and write the checkpoints
    there)."""
    endpoint, bucket, client = s3
    root = f"{bucket}/cluster"
    cwd_before = set(os.listdir(submit.cwd))
    doc = submit("demo", *s3_locations(endpoint, root), "storage.engine=delta-spark", "spark.jvm_packages=[delta,s3a]",
                 "codebooks.compare=[]", "evaluate.floors=false", *SMALL, "samples.content.dim=8",
                 "train.backend=torch-distributor")
    assert doc["assigned"]["items"] == 400 and doc["trained"]["status"] == "trained"
    # the summary's row counts are the tables' (Delta's own writer reports them in its log)
    assert {t: r["rows_written"] for t, r in doc["generated"].items()} == {
        "items": 400, "item_truth": 400, "interactions": doc["validated"]["interactions"]["rows"]}
    assert doc["reindexed"]["status"] == "done" and doc["reindexed"]["outcome"]["n_changed"] == 0
    _ranks_ran_on_executors(doc["trained"], submit.executor_python)
    assert set(doc["evaluated"]) == {"mcca"} and all(0 < m["auc"] < 1 for m in doc["evaluated"].values())
    assert set(os.listdir(submit.cwd)) == cwd_before  # nothing local: every location was on the endpoint
    assert_pipeline_on_s3(client, bucket, "cluster", ["mcca"])
    metrics = read_metrics(endpoint, root)
    assert [m["model"] for m in metrics] == ["mcca"]
    assert abs(metrics[0]["auc"] - doc["evaluated"]["mcca"]["auc"]) < 1e-12
    # written by Delta's own writer (delta-spark) through s3a, read back by delta-rs
    history = delta_table(endpoint, f"{root}/delta/semantic_ids").history()
    assert "Delta-Lake" in history[0].get("engineInfo", "")  # the newest commit, by Delta's own writer
    # the credentials reached every process through its environment and were never printed:
    # the master's and workers' logs, each executor's stdout and stderr
    _, logs = cluster
    outputs = [f for f in logs.parent.rglob("*") if f.name in ("stdout", "stderr") or f.suffix == ".log"]
    assert len(outputs) >= 3 + 2 * 2  # master and 2 workers' logs; 2 executors' stdout and stderr at least
    assert not [str(f) for f in outputs if SECRET in f.read_text(errors="replace")]
    print("cluster seconds (delta-spark demo on S3):", doc["_seconds"], doc["timings"])



def test_a_conf_given_to_the_launcher_wins_over_the_profile(submit, tmp_path):
    """The cluster profile turns adaptive execution on; `--conf spark.sql.adaptive.enabled=false`
    on the launcher's line is what the running application has (read from its event log)."""
    import json

    logs = tmp_path / "events"
    logs.mkdir()
    submit("validate_inputs", f"storage.root=file://{tmp_path}/data", "storage.engine=delta-rs", *SMALL,
           expect=2, conf=("spark.sql.adaptive.enabled=false", "spark.eventLog.enabled=true",
                           f"spark.eventLog.dir=file://{logs}", "spark.eventLog.compress=false",
                           "spark.eventLog.rolling.enabled=false"))
    props = {}
    for f in logs.rglob("*"):
        for line in (f.read_text().splitlines() if f.is_file() and not f.name.startswith(".") else []):
            e = json.loads(line)
            if e.get("Event") == "SparkListenerEnvironmentUpdate":
                props = e["Spark Properties"]
    assert props.get("spark.sql.adaptive.enabled") == "false" and props.get("spark.sql.shuffle.partitions") == "4"


def test_executors_with_the_wrong_python_fail_in_seconds_with_one_line(submit, tmp_path):
    """An executors' interpreter without the stack (a bare virtual environment): the job stops
    before any real work, naming that Python, what it lacks and the option that sets it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    out = submit("validate_inputs", f"storage.root=file://{tmp_path}/data", "storage.engine=delta-rs", *SMALL,
                 python=bare, expect=2)
    lines = [line for line in out["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"the executors' Python ({bare}" in lines[0] and "numpy is missing" in lines[0]
    assert "--python" in lines[0] and "Traceback" not in out["stderr"] and out["_seconds"] < 30, out["_seconds"]
