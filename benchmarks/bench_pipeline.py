"""The whole nightly pipeline at catalogue scale: every stage run as its job runs (one
process per job submission, as `python jobs/<job>.py` in local[2] and `python -m psrq.submit`
on a 2-worker standalone cluster on 127.0.0.1), on synthetic data of about 10^5, 10^6 and
10^7 events with 10^4 to 10^6 items (768-d text and audio embeddings), and on the demo's data.

Stages: generate, validate, fit (PSRQ), assign, a first reindex night (nothing changed: it
records the watermark), then a catalogue update of 1% of the items (new embeddings and
updated_at, merged into the items table with delta-rs, outside the pipeline), the reindex night
that picks them up, build_samples, train (MCCA, 2 Horovod ranks, one epoch, the dataset's
tuned settings otherwise), evaluate, floors (the evaluate job again with floors on: its
evaluation is found already recorded).

Per stage: wall seconds of the job (JVM and session start included) and of the stage inside
it (from the job's log), rows per second per core, the Spark jobs, stages, tasks and scans it
ran, the bytes it shuffled and spilled, the largest execution memory a task held (all from the
application's event log), the executors' peak memory (in local mode the driver's JVM is the
executor), and the peak resident memory of the processes on this machine (the Python driver,
the JVMs, the Python workers and ranks), sampled every 0.5 s. Training: the ranks' time in
steps and waiting for batches. Between consecutive sizes: each stage's growth exponent,
log(time ratio) / log(size ratio).

Writes benchmarks/results/pipeline_scale.json and pipeline_scale.png (seconds against events,
log-log, one line per stage). A size that finished is kept in the work folder's progress file
and not run again by --resume; --update keeps the committed JSON's other sizes and measures
only the ones named. Each size records the commit it measured.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/bench_pipeline.py [--sizes demo 1e5 1e6 1e7] [--cluster demo 1e6]
    PYTHONPATH=benchmarks .venv/bin/python benchmarks/bench_pipeline.py --update --sizes demo --cluster demo 1e6
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


import eventlog
from common import PeakMemory, write_result

ROOT = Path(__file__).resolve().parents[1]
CORES = 2  # local[2], and the cluster's 2 workers x 1 core
SIZES = {
    "demo": {},  # synthetic_small as it is: 3,000 items, 2,000 users, ~80k events
    "1e5": {"synthetic.n_items": 10_000, "synthetic.n_users": 2_500},
    "1e6": {"synthetic.n_items": 100_000, "synthetic.n_users": 25_000},
    "1e7": {"synthetic.n_items": 1_000_000, "synthetic.n_users": 250_000},
}
SETTINGS = ["storage.engine=delta-rs", "train.model=mcca", "train.backend=horovod", "train.num_proc=2",
            "train.reader=petastorm", "train.epochs=1", "run.run_id=1"]
STAGES = [  # (stage, job, its overrides)
    ("generate", "generate_synthetic", []),
    ("validate", "validate_inputs", []),
    ("fit", "fit_codebooks", []),
    ("assign", "assign_ids", []),
    ("reindex_first_night", "reindex_catalog", ["run.run_id=1"]),
    ("reindex", "reindex_catalog", ["run.run_id=2"]),
    ("build_samples", "build_samples", []),
    ("train", "train_ranker", []),
    ("evaluate", "evaluate", ["evaluate.floors=false"]),
    ("floors", "evaluate", ["evaluate.floors=true"]),
]
CHANGED_SHARE = 0.01


def stage_seconds(log: str) -> dict:
    """The session's start and the stage's own time, from the job's log lines."""
    ready = re.search(r"spark \S+ ready in ([\d.]+)s", log)
    done = re.search(r"\S+ done in ([\d.]+)s", log)
    return {"session_seconds": float(ready.group(1)) if ready else None,
            "stage_seconds": float(done.group(1)) if done else None}


def run_job(cmd: list[str], env: dict, logs: Path, timeout: int = 4 * 3600) -> tuple[dict, dict]:
    """One job submission: its JSON result and what it cost on this machine."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(logs, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        with PeakMemory(0.5, proc.pid, "jobs/") as mem:
            out, _ = proc.communicate(timeout=timeout)
    seconds = round(time.perf_counter() - t, 1)
    text = logs.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{text[-6000:]}")
    if "Traceback" in text:
        print(f"  note: a traceback in the log of a successful job: {logs}", flush=True)
    return json.loads(out), {"seconds": seconds, **stage_seconds(text), "memory": mem.peaks}


def change_items(items_path: Path, share: float) -> dict:
    """A catalogue update: the last `share` of the item ids get new embeddings (a small shift)
    and updated_at now, merged into the items table (delta-rs, one commit)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    dt = DeltaTable(str(items_path))
    n = dt.to_pyarrow_dataset().count_rows()
    first = n - max(1, int(n * share))
    t = dt.to_pyarrow_dataset().to_table(filter=pc.field("item_id") >= first)
    rng = np.random.default_rng(0)
    cols = {}
    for name in t.column_names:
        col = t.column(name).combine_chunks()
        if name.endswith("_emb"):
            flat = np.asarray(col.flatten(), dtype=np.float32)
            flat = flat + np.float32(0.01) * rng.standard_normal(len(flat), dtype=np.float32)
            col = pa.ListArray.from_arrays(col.offsets, pa.array(flat, type=col.type.value_type))
        elif name == "updated_at":
            col = pa.array([time.time_ns() // 1000] * len(t), type=pa.int64()).cast(col.type)
        cols[name] = col
    source = pa.table(cols, schema=t.schema)
    t0 = time.perf_counter()
    dt.merge(source=source, predicate="t.item_id = s.item_id", source_alias="s", target_alias="t") \
        .when_matched_update_all().execute()
    return {"changed_items": len(source), "catalogue_update_seconds": round(time.perf_counter() - t0, 1)}


def stage_rows(stage: str, doc: dict, counts: dict) -> int | None:
    """The rows a stage works through (for rows per second per core)."""
    return {
        "generate": counts["events"] + counts["items"], "validate": counts["events"] + counts["items"],
        "fit": counts.get("fit_sample"), "assign": counts["items"], "reindex_first_night": counts["items"],
        "reindex": counts.get("changed_items"), "build_samples": counts["events"], "train": counts.get("train_rows"),
        "evaluate": counts.get("test_rows"), "floors": counts.get("test_rows"),
    }.get(stage)


def run_size(name: str, mode: str, work: Path, env: dict, submit: list[str] | None) -> dict:
    data = work / f"{mode}-{name}"
    shutil.rmtree(data, ignore_errors=True)
    locations = [f"storage.root={data}/delta", f"storage.codebooks={data}/codebooks", f"samples.path={data}/samples",
                 f"train.checkpoint_dir={data}/checkpoints"]
    size = [f"{k}={v}" for k, v in SIZES[name].items()]
    counts: dict = {}
    stages: dict = {}
    for stage, job, extra in STAGES:
        if stage == "reindex":
            counts.update(change_items(data / "delta" / "items", CHANGED_SHARE))
            print(f"  catalogue update: {counts['changed_items']:,} items changed", flush=True)
        folder = work / "eventlogs" / f"{mode}-{name}" / stage
        shutil.rmtree(folder, ignore_errors=True)
        args = ["--dataset", "synthetic_small", "--json", *locations, *SETTINGS, *size, *extra,
                *eventlog.overrides(folder)]
        if submit is None:
            cmd = [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "spark.master=local[2]", *args]
        else:  # the launcher prints the job's document on stdout, spark-submit's output on stderr
            # the cluster profile, as the docs submit it (its dynamic allocation off: Horovod's ranks
            # run at once; the profile leaves it off since 2026-12-04)
            cmd = [*submit, str(ROOT / "jobs" / f"{job}.py"), "--profile", "cluster", *args,
                   "spark.conf.spark.dynamicAllocation.enabled=false"]
        doc, cost = run_job(cmd, env, work / "logs" / f"{mode}-{name}" / f"{stage}.log")
        if stage == "generate":
            g = doc["generated"]
            counts.update(events=g["interactions"]["rows_written"], items=g["items"]["rows_written"])
        elif stage == "fit":
            counts["fit_sample"] = doc["manifest"]["sample"]["size"]
        elif stage == "build_samples":
            counts.update(train_rows=doc["splits"]["train"]["rows"], test_rows=doc["splits"]["test"]["rows"],
                          vocab=doc["vocab_size"])
        entry = {**cost, "spark": eventlog.summarise(folder)}
        rows = stage_rows(stage, doc, counts)
        if rows:
            entry["rows"] = rows
            entry["rows_per_second_per_core"] = round(rows / cost["seconds"] / CORES, 1)
        if stage == "train":
            entry["training"] = training_split(doc)
        stages[stage] = entry
        print(f"  {mode} {name} {stage}: {cost['seconds']}s (stage {cost['stage_seconds']}s), "
              f"{entry['spark'].get('jobs', 0)} Spark jobs, driver {cost['memory']['driver_python_mib']} MiB", flush=True)
    shutil.rmtree(data, ignore_errors=True)  # 10^7 events are ~20 GB on disk
    return {"code": code_commit(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "counts": counts, "stages": stages, "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1)}


def code_commit() -> str:
    """The commit measured (with '+changes' when the tree, results aside, differs from it)."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return rev + ("+changes" if dirty else "")


def training_split(doc: dict) -> dict:
    """Where the ranks' time went: steps against waiting for the next batch (the slowest rank)."""
    ranks = doc.get("ranks", [])
    worst = max(ranks, key=lambda r: r.get("wait_seconds") or 0) if ranks else {}
    step, wait = worst.get("step_seconds_total"), worst.get("wait_seconds")
    return {"steps": doc.get("steps"), "samples_per_second": doc.get("samples_per_second"),
            "processes": doc.get("processes"), "rank_seconds": worst.get("seconds"),
            "step_seconds": step, "wait_seconds": wait,
            "wait_over_step": round(wait / step, 4) if step and wait is not None else None,
            "median_step_seconds": worst.get("median_step_seconds"),
            "rank_peak_rss_mib": [r.get("peak_rss_mb") for r in ranks]}


def exponents(runs: dict, order: list[str]) -> dict:
    """log(time ratio) / log(events ratio) per stage between consecutive sizes."""
    out = {}
    sized = [s for s in order if s in runs and s != "demo"]
    for a, b in zip(sized, sized[1:]):
        ra, rb = runs[a], runs[b]
        ratio = rb["counts"]["events"] / ra["counts"]["events"]
        out[f"{a}->{b}"] = {st: round(math.log(rb["stages"][st]["seconds"] / ra["stages"][st]["seconds"]) / math.log(ratio), 3)
                            for st in ra["stages"] if st in rb["stages"]}
        out[f"{a}->{b}"]["driver_python_rss_ratio"] = round(
            max(s["memory"]["driver_python_mib"] for s in rb["stages"].values())
            / max(s["memory"]["driver_python_mib"] for s in ra["stages"].values()), 3)
    return out


def sizing(runs: dict, order: list[str], target_events: float = 1e8) -> dict:
    """Each stage projected from the two largest sizes to target_events (items growing alongside,
    1 per 10 events): t(target) = t(largest) x (target / events)^exponent, on this run's 2 cores.
    On N executors of c cores divide by N*c/2 where the stage runs on the executors (every stage
    but the driver-side fit and QARM alignment); the fit's sample is capped, so its time stays."""
    sized = [s for s in order if s in runs and s != "demo"]
    if len(sized) < 2:
        return {}
    a, b = runs[sized[-2]], runs[sized[-1]]
    n_a, n_b = a["counts"]["events"], b["counts"]["events"]
    out = {}
    for st, cost in b["stages"].items():
        exp = math.log(cost["seconds"] / a["stages"][st]["seconds"]) / math.log(n_b / n_a)
        out[st] = {"seconds_at_largest": cost["seconds"], "exponent": round(exp, 3),
                   "projected_seconds_2_cores": round(cost["seconds"] * (target_events / n_b) ** max(exp, 0.0), 1),
                   "driver_python_mib": cost["memory"]["driver_python_mib"],
                   "task_peak_execution_mib": round(cost["spark"].get("task_peak_execution_memory_bytes", 0) / 2**20, 1),
                   "executor_peak_jvm_heap_mib": cost["spark"]["executor_peak_mib"].get("JVMHeapMemory"),
                   "shuffle_write_mib": round(cost["spark"].get("shuffle_write_bytes", 0) / 2**20, 1)}
    return {"from": f"{sized[-2]}->{sized[-1]}", "target_events": target_events, "events_at_largest": n_b, "stages": out}


def gpu_figures() -> dict | None:
    """The middle size's k-means fit and training on a GPU (bench_gpu.py --pipeline, run on
    a GPU node: results/gpu.json), beside this machine's figures."""
    path = ROOT / "benchmarks" / "results" / "gpu.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    if "pipeline_middle_size" not in doc:
        return None
    return {"gpu": doc["gpu"], "measured_at": doc["measured_at"], "source": "results/gpu.json",
            **doc["pipeline_middle_size"]}


def plot(local: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = [s for s in SIZES if s in local and s != "demo"]
    if not sized:
        return
    fig, ax = plt.subplots(figsize=(8, 6))
    for st, *_ in STAGES:
        xs = [local[s]["counts"]["events"] for s in sized]
        ys = [local[s]["stages"][st]["seconds"] for s in sized]
        ax.plot(xs, ys, marker="o", label=st)
    if len(sized) > 1:
        xs = [local[s]["counts"]["events"] for s in sized]
        ax.plot(xs, [10 * x / xs[0] for x in xs], "k:", label="linear (slope 1)")
    ax.set(xscale="log", yscale="log", xlabel="events", ylabel="seconds per job (local[2])",
           title="The pipeline's jobs against the data size")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="*", default=["demo", "1e5", "1e6", "1e7"], choices=list(SIZES))
    p.add_argument("--cluster", nargs="*", default=["demo", "1e6"], choices=list(SIZES))
    p.add_argument("--work", default="benchmarks/.work/pipeline")
    p.add_argument("--resume", action="store_true", help="keep the sizes already measured in the work folder")
    p.add_argument("--update", action="store_true",
                   help="keep the other sizes of the committed results JSON; measure only --sizes and --cluster again")
    a = p.parse_args()
    work = (ROOT / a.work).resolve()
    progress = work / "progress.json"
    if not a.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    done = json.loads(progress.read_text()) if progress.exists() else {"local": {}, "cluster": {}}
    if a.update and not progress.exists():
        kept = json.loads((ROOT / "benchmarks" / "results" / "pipeline_scale.json").read_text())
        done = {mode: {s: r for s, r in kept[mode].items() if s not in again}
                for mode, again in (("local", a.sizes), ("cluster", a.cluster))}
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT / "lib"),
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_PYTHON", None)

    def save():
        progress.write_text(json.dumps(done, indent=1))

    for name in a.sizes:
        if name not in done["local"]:
            print(f"== local[2], {name}", flush=True)
            done["local"][name] = run_size(name, "local", work, env, None)
            save()
    if a.cluster and any(n not in done["cluster"] for n in a.cluster):
        from psrq.standalone import StandaloneCluster

        subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py")], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        with StandaloneCluster(work / "standalone", workers=2, cores=1, memory="3g") as c:
            submit = [sys.executable, "-m", "psrq.submit", "--master", c.url, "--python", sys.executable, "--package",
                      str(ROOT / "dist" / "psrq.zip"), "--conf", "spark.driver.host=127.0.0.1",
                      "--conf", "spark.executor.memory=2g"]
            for name in a.cluster:
                if name not in done["cluster"]:
                    print(f"== standalone cluster, {name}", flush=True)
                    done["cluster"][name] = run_size(name, "cluster", work, env, submit)
                    save()
    local, cluster = done["local"], done["cluster"]
    order = list(SIZES)
    demo = {mode: runs["demo"]["stages"]["build_samples"] for mode, runs in (("local", local), ("cluster", cluster))
            if "demo" in runs}
    largest = [s for s in order if s in local and s != "demo"][-1:]
    plot(local, ROOT / "benchmarks" / "results" / "pipeline_scale.png")
    write_result("pipeline_scale", {
        "what": "every stage of the nightly pipeline as its job runs: seconds per job submission (JVM and session "
                "start included) and inside the job, Spark's own counts from the event log, resident memory",
        "data": {s: {"synthetic": SIZES[s] or "synthetic_small as shipped", **local[s]["counts"]} for s in order if s in local},
        "settings": SETTINGS,
        "modes": {"local": "local[2], spark.driver.memory 4g (conf/local.yaml)",
                  "cluster": "standalone, 2 workers x 1 core, executors 2 GB, 127.0.0.1, python -m psrq.submit"},
        "local": local, "cluster": cluster,
        "growth_exponents_local": exponents(local, order),
        "sizing_1e8_events": sizing(local, order),
        "demo_build_samples": {m: {k: v[k] for k in ("seconds", "stage_seconds", "session_seconds")} | {
            "spark_jobs": v["spark"]["jobs"]} for m, v in demo.items()},
        "gpu_middle_size": gpu_figures(),
        "training_wait_over_step_at_largest": local[largest[0]]["stages"]["train"]["training"]["wait_over_step"]
        if largest else None,
    })


if __name__ == "__main__":
    main()
