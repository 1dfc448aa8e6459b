"""A standalone Spark cluster on this machine's loopback address, from the pyspark
distribution's own `spark-class` launcher: one master and N workers (each with its own work
directory), every process bound to 127.0.0.1 and stopped by the PID it was started with.
The suite's cluster tests and `benchmarks/bench_cluster.py` run on it; it is also the
quickest way to try `python -m psrq.submit` before a real cluster.

    with StandaloneCluster(root, workers=2) as c:
        subprocess.run([sys.executable, "-m", "psrq.submit", "--master", c.url, ...])
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    def __init__(self, root: str | Path, workers: int = 2, cores: int = 1, memory: str = "2g", timeout: float = 90,
                 env: dict[str, str] | None = None):
        """env: more environment for the master and workers (their executors inherit it), as
        a node's own settings would be, e.g. the object store's credentials."""
        import pyspark

        self.home = Path(pyspark.__file__).parent
        self.root = Path(root)
        self.workers, self.cores, self.memory, self.timeout = workers, cores, memory, timeout
        self.env = dict(env or {})
        self.logs = self.root / "logs"
        self.url = ""
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str], log: Path, env: dict) -> subprocess.Popen:
        with open(log, "w") as f:  # the child keeps its own descriptor
            p = subprocess.Popen([str(self.home / "bin" / "spark-class"), *args], env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.logs))
        self.procs.append(p)
        return p

    def _wait_for(self, log: Path, text: str, proc: subprocess.Popen) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"{text!r} not in {log} after {self.timeout}s:\n{log.read_text(errors='replace')[-3000:]}")

    def start(self) -> "StandaloneCluster":
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "SPARK_HOME": str(self.home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1",
               "SPARK_MASTER_HOST": "127.0.0.1"}
        port = free_port()
        self.url = f"spark://127.0.0.1:{port}"
        try:
            master = self._start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                                  "--webui-port", str(free_port())], self.logs / "master.log", env)
            self._wait_for(self.logs / "master.log", "I have been elected leader", master)
            for i in range(1, self.workers + 1):
                work = self.root / f"worker{i}"
                work.mkdir(parents=True, exist_ok=True)
                w = self._start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores",
                                 str(self.cores), "--memory", self.memory, "--work-dir", str(work), "--webui-port",
                                 str(free_port()), self.url], self.logs / f"worker{i}.log", env)
                self._wait_for(self.logs / f"worker{i}.log", "Successfully registered with master", w)
        except BaseException:
            self.stop()
            raise
        return self

    def master_log(self) -> str:
        return (self.logs / "master.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to each process group this object started, SIGKILL after 20 s."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.procs = []

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
