"""A real standalone Spark cluster on this machine: one master and two workers (1 core each,
their own work directories), every process bound to 127.0.0.1. The pipeline is submitted
through the documented launcher (`python -m psrq.submit`) from a working directory that is
not the repository, with the package zip `make package` builds and executors whose Python
sits at another path than the driver's; the semantic IDs must equal a local-mode run's.
The cluster is stopped by the PIDs this test started."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {log} after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import pyspark

    home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1",
           "SPARK_MASTER_HOST": "127.0.0.1"}
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(home / "bin" / "spark-class")
    procs = []

    def start(args, log):
        f = open(log, "w")  # noqa: SIM115 - closed when the process ends
        p = subprocess.Popen([spark_class, *args], env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             cwd=str(logs))
        procs.append(p)
        return p

    try:
        master = start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                        "--webui-port", str(_free_port())], logs / "master.log")
        _wait_for(logs / "master.log", "I have been elected leader", master)
        for i in (1, 2):
            work = tmp_path_factory.mktemp(f"worker{i}")
            w = start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1", "--memory", "2g",
                       "--work-dir", str(work), "--webui-port", str(_free_port()), url], logs / f"worker{i}.log")
            _wait_for(logs / f"worker{i}.log", "Successfully registered with master", w)
        yield url, logs
    finally:
        _stop(procs)


def test_pipeline_through_the_launcher_on_a_standalone_cluster(cluster, tmp_path, spark):
    url, logs = cluster
    from psrq.stages.assign import assign
    from psrq.stages.codebooks import fit_stage
    from psrq.stages.generate import generate
    from psrq.storage import open_engine

    from conftest import small_config

    # the executors' Python: the same environment reached through another path
    other_env = tmp_path / "executor-env"
    other_env.symlink_to(Path(sys.executable).parent.parent)
    executor_python = str(other_env / "bin" / "python")
    work = tmp_path / "submit-cwd"
    work.mkdir()
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "package.py")], check=True, capture_output=True)
    data = tmp_path / "data"
    overrides = [f"storage.root={data}/delta", f"storage.codebooks={data}/codebooks", f"samples.path={data}/samples",
                 "storage.engine=delta-rs", "spark.shuffle_partitions=4", "dataset.modalities.text.dim=16",
                 "dataset.modalities.audio.dim=12", "synthetic.n_items=400", "synthetic.n_users=120",
                 "synthetic.block_size=64", "synthetic.mean_events_per_user=30", "codebooks.k=16",
                 "codebooks.sample_size=300", "samples.history_len=5", "samples.content.dim=0", "run.run_id=3"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_PYTHON", None)
    for job in ("generate_synthetic", "validate_inputs", "fit_codebooks", "assign_ids", "build_samples"):
        cmd = [sys.executable, "-m", "psrq.submit", "--master", url, "--python", executor_python,
               "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.executor.memory=1g",
               os.path.join(ROOT, "jobs", f"{job}.py"), "--json", *overrides]
        out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, f"{job}:\n{out.stderr[-4000:]}"
        if job == "generate_synthetic":
            assert '"rows_written"' in out.stdout
        # the application ran on the cluster, under its own name
        assert f"Registered app psrq-{job}-3 with ID" in (logs / "master.log").read_text()
    engine = open_engine(spark, "delta-rs")
    on_cluster = engine.read(f"{data}/delta/semantic_ids").toPandas()
    # the same data and seed in local mode, in this process
    local = small_config(tmp_path / "local", "codebooks.k=16", "codebooks.sample_size=300", "run.run_id=3")
    generate(spark, local)
    fit_stage(spark, local)
    assign(spark, local)
    in_local = engine.read(local.table_path("semantic_ids")).toPandas()
    cols = ["item_id", "text_codes", "audio_codes", "joint_codes", "code_key", "dedup", "codebook_version"]
    a = on_cluster[cols].sort_values("item_id").reset_index(drop=True).astype(str)
    b = in_local[cols].sort_values("item_id").reset_index(drop=True).astype(str)
    assert len(a) == 400 and a.equals(b)
    assert (data / "samples" / "manifest.json").is_file()
