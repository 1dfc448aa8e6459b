"""Shared by the benchmarks: machine facts and the JSON result files."""
from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import numpy

    try:  # the GPU benchmark runs where only the torch side of the stack is installed
        import pyspark
    except ImportError:
        pyspark = None
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pyspark": pyspark.__version__ if pyspark else None,
    }


def inertia(x, centroids) -> float:
    """k-means' objective: the mean squared distance of the points to their nearest centroid."""
    from psrq.quant.kmeans import nearest

    return float(((x - centroids[nearest(x, centroids)]) ** 2).sum(1).mean())


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}", flush=True)
    return path


class PeakMemory:
    """Peak resident memory of a process tree, sampled every `interval` seconds, by kind: the
    Python driver (the root process, or with `driver_marker` the process whose command line
    holds it: under spark-submit the driver is the JVM's child), the JVMs (in local mode the
    driver's JVM also runs the executors) and every other Python process (Spark's Python
    workers, Horovod's ranks), summed per sample. pid: the root (default: this process)."""

    def __init__(self, interval: float = 0.2, pid: int | None = None, driver_marker: str | None = None):
        self.interval, self.pid, self.marker = interval, pid, driver_marker
        self.peaks = {"driver_python_mib": 0.0, "jvm_mib": 0.0, "python_workers_mib": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        now = dict.fromkeys(self.peaks, 0.0)
        for p in procs:
            try:
                cmd, rss = " ".join(p.cmdline()), p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            is_driver = (self.marker in cmd) if self.marker else p.pid == root.pid
            if is_driver and "python" in cmd:
                now["driver_python_mib"] += rss
            elif "java" in cmd.split(" ")[0]:
                now["jvm_mib"] += rss
            elif "python" in cmd:
                now["python_workers_mib"] += rss
        for k, v in now.items():
            self.peaks[k] = max(self.peaks[k], v)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peaks = {k: round(v, 1) for k, v in self.peaks.items()}
