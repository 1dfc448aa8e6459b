"""What a Spark application did, read from its event log (spark.eventLog.enabled): the jobs,
stages and tasks it ran, the bytes it read, shuffled and spilled, and the peak memory its
executors reported (spark.eventLog.logStageExecutorMetrics, with
spark.executor.processTreeMetrics.enabled for the JVM's and Python workers' resident memory).

The log is Spark's own record, so the figures are the same in local mode and on a cluster.
"""
from __future__ import annotations

import json
from pathlib import Path

# the settings that make an application write what summarise() reads (as job overrides)
SETTINGS = {
    "spark.eventLog.enabled": "true",
    "spark.eventLog.logStageExecutorMetrics": "true",
    "spark.executor.processTreeMetrics.enabled": "true",
    # one plain JSON file per application (Spark 4 rolls and compresses by default)
    "spark.eventLog.compress": "false",
    "spark.eventLog.rolling.enabled": "false",
}
PEAKS = ("JVMHeapMemory", "OnHeapExecutionMemory", "ProcessTreeJVMRSS", "ProcessTreePythonRSS")


def overrides(folder: Path) -> list[str]:
    """The job overrides that log the application into `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [f"spark.conf.{k}={v}" for k, v in {**SETTINGS, "spark.eventLog.dir": folder.as_uri()}.items()]


def _events(path: Path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)


def summarise_file(path: Path) -> dict:
    jobs = stages = tasks = failed_tasks = 0
    sums = dict.fromkeys(("input_bytes", "shuffle_write_bytes", "shuffle_read_bytes", "memory_spilled_bytes",
                          "disk_spilled_bytes"), 0)
    scans = set()  # stages that read input (files, tables): the passes over stored data
    task_peak_execution = 0
    executors: dict[str, dict[str, int]] = {}
    for e in _events(path):
        kind = e.get("Event")
        if kind == "SparkListenerJobStart":
            jobs += 1
        elif kind == "SparkListenerStageCompleted":
            stages += 1
        elif kind == "SparkListenerTaskEnd":
            tasks += 1
            failed_tasks += e.get("Task End Reason", {}).get("Reason") != "Success"
            m = e.get("Task Metrics") or {}
            read = (m.get("Input Metrics") or {}).get("Bytes Read", 0)
            sums["input_bytes"] += read
            if read:
                scans.add(e["Stage ID"])
            sums["shuffle_write_bytes"] += (m.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0)
            r = m.get("Shuffle Read Metrics") or {}
            sums["shuffle_read_bytes"] += r.get("Remote Bytes Read", 0) + r.get("Local Bytes Read", 0)
            sums["memory_spilled_bytes"] += m.get("Memory Bytes Spilled", 0)
            sums["disk_spilled_bytes"] += m.get("Disk Bytes Spilled", 0)
            task_peak_execution = max(task_peak_execution, m.get("Peak Execution Memory", 0))
        elif kind == "SparkListenerStageExecutorMetrics":
            peaks = executors.setdefault(e["Executor ID"], dict.fromkeys(PEAKS, 0))
            for k in PEAKS:
                peaks[k] = max(peaks[k], e.get("Executor Metrics", {}).get(k, 0))
    return {"jobs": jobs, "stages": stages, "tasks": tasks, "failed_tasks": failed_tasks, "scan_stages": len(scans),
            **sums, "task_peak_execution_memory_bytes": task_peak_execution, "executors": executors}


def summarise(folder: Path) -> dict:
    """All the applications logged in `folder` together (a job that starts one Spark
    application writes one file; Horovod's ranks run inside it)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    out: dict = {"applications": len(files)}
    for f in files:
        one = summarise_file(f)
        for k, v in one.items():
            if k == "executors":
                ex = out.setdefault("executors", {})
                for name, peaks in v.items():
                    mine = ex.setdefault(name, dict.fromkeys(PEAKS, 0))
                    for p in PEAKS:
                        mine[p] = max(mine[p], peaks[p])
            elif k == "task_peak_execution_memory_bytes":
                out[k] = max(out.get(k, 0), v)
            else:
                out[k] = out.get(k, 0) + v
    ex = out.pop("executors", {})
    # the largest any one executor reported, in MiB (in local mode the driver is the executor)
    out["executor_peak_mib"] = {p: round(max((x[p] for x in ex.values()), default=0) / 2**20, 1) for p in PEAKS}
    out["executors"] = len(ex)
    return out
