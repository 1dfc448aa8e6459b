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
    """Samples RSS of this process (the Python driver), its JVM child and the JVM's Python
    workers (local-mode executors) every `interval` seconds; keeps the peaks."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peaks = {"driver_python_mib": 0.0, "jvm_mib": 0.0, "python_workers_mib": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        rss = {"driver_python_mib": me.memory_info().rss, "jvm_mib": 0, "python_workers_mib": 0}
        for child in me.children(recursive=True):
            try:
                name = " ".join(child.cmdline()[:3])
                mem = child.memory_info().rss
            except psutil.Error:
                continue
            if "java" in name:
                rss["jvm_mib"] += mem
            elif "python" in name:
                rss["python_workers_mib"] += mem
        for k, v in rss.items():
            self.peaks[k] = max(self.peaks[k], v / 2**20)

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
