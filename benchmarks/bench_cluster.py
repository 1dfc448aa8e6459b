"""The pipeline's jobs in Spark local mode (local[2]) and on a 2-worker standalone cluster
(1 core, 2 GB each, on 127.0.0.1, submitted with `python -m psrq.submit`), on the same
demo-size data; and build_samples before and after the layout change (seeded order,
adaptive partitions, byte-sized row groups), with the cluster profile's 400 shuffle
partitions, from a git worktree of the commit before it.

Seconds are wall-clock per job submission (JVM, executors and Python workers included).
Writes benchmarks/results/cluster.json.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/bench_cluster.py [--before dce47b1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from psrq.standalone import StandaloneCluster

from common import write_result

ROOT = Path(__file__).resolve().parents[1]
STAGES = [("generate_synthetic", []), ("validate_inputs", []), ("fit_codebooks", []), ("assign_ids", []),
          ("reindex_catalog", ["run.run_id=20261128"]), ("build_samples", []), ("train_ranker", []), ("evaluate", [])]
COMMON = ["--dataset", "synthetic_small", "train.backend=horovod", "train.num_proc=2", "train.reader=petastorm", "storage.engine=delta-rs",
          "spark.shuffle_partitions=8", "run.run_id=1"]


def timed(cmd: list[str], cwd: Path, env: dict, parse: bool = True) -> tuple[float, dict | None]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-4000:]}")
    return round(time.perf_counter() - t, 1), json.loads(out.stdout) if parse else None


def locations(data: Path) -> list[str]:
    return [f"storage.root={data}/delta", f"storage.codebooks={data}/codebooks", f"samples.path={data}/samples",
            f"train.checkpoint_dir={data}/checkpoints"]


def layout(samples: Path) -> dict:
    """Rows, files (= write partitions) and row groups per split."""
    out = {}
    for split in ("train", "valid", "test"):
        files = sorted((samples / split).glob("*.parquet"))
        mds = [pq.ParquetFile(f).metadata for f in files]
        out[split] = {"rows": sum(m.num_rows for m in mds), "files": len(files),
                      "row_groups": sum(m.num_row_groups for m in mds)}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", default="dce47b1", help="the commit before the samples layout change")
    p.add_argument("--work", default="benchmarks/.work/cluster")
    a = p.parse_args()
    work = (ROOT / a.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    # a run stopped by a signal leaves its worktree registered: forget it, or the add fails
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True, capture_output=True)
    work.mkdir(parents=True)
    cwd = work / "cwd"
    cwd.mkdir()
    before = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), a.before], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        return run(work, cwd, before, a.before)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)


def run(work: Path, cwd: Path, before: Path, before_ref: str):
    # the driver spark-submit starts and the executors run this environment's Python
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT / "lib"),
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_PYTHON", None)
    old_env = {**env, "PYTHONPATH": str(before / "lib")}
    for tree, e in ((ROOT, env), (before, old_env)):
        subprocess.run([sys.executable, str(tree / "scripts" / "package.py")], cwd=tree, env=e, check=True,
                       capture_output=True)
    local, cluster = {}, {}
    data_local, data_cluster = work / "local", work / "cluster-data"
    for job, extra in STAGES:
        local[job], _ = timed([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--json", "spark.master=local[2]",
                               *locations(data_local), *COMMON, *extra], cwd, env)
        print("local", job, local[job], flush=True)
    samples_compare = {}
    with StandaloneCluster(work / "standalone", workers=2, cores=1, memory="2g") as c:
        def submit(tree: Path, e: dict, job: str, args: list[str], parse: bool = True):
            return timed([sys.executable, "-m", "psrq.submit", "--master", c.url, "--python", sys.executable, "--package",
                          str(tree / "dist" / "psrq.zip"), "--conf", "spark.driver.host=127.0.0.1",
                          "--conf", "spark.executor.memory=1g", str(tree / "jobs" / f"{job}.py"), "--json", *args],
                         cwd, e, parse)

        trained = None
        for job, extra in STAGES:
            cluster[job], doc = submit(ROOT, env, job, [*locations(data_cluster), *COMMON, *extra])
            trained = doc if job == "train_ranker" else trained
            print("cluster", job, cluster[job], flush=True)
        # build_samples with the cluster profile's 400 shuffle partitions: the code before the
        # change (its own package and job) and after, on the same tables, in both modes
        for name, tree, e in (("before", before, old_env), ("after", ROOT, env)):
            for mode in ("local[2]", "cluster"):
                out = work / f"samples-{name}-{mode[:5]}"
                args = [*locations(data_cluster), f"samples.path={out}", *COMMON, "spark.shuffle_partitions=400",
                        "run.run_id=2"]
                if mode == "cluster":
                    # the old launcher's stdout mixes the driver's logs with the document
                    secs, _ = submit(tree, e, "build_samples", args, parse=name == "after")
                else:
                    secs, _ = timed([sys.executable, str(tree / "jobs" / "build_samples.py"), "--json",
                                     "spark.master=local[2]", *args], cwd, e)
                samples_compare.setdefault(name, {})[mode] = {"seconds": secs, **layout(out)}
                print("build_samples", name, mode, samples_compare[name][mode], flush=True)
    ratio = {job: round(cluster[job] / local[job], 2) for job in local}
    write_result("cluster", {
        "data": "synthetic_small (3,000 items, 2,000 users, ~80k interactions), delta-rs engine, local paths",
        "what": "wall-clock seconds per job submission, JVM and executor start included",
        "local_mode": {"master": "local[2]", "seconds": local, "total": round(sum(local.values()), 1)},
        "standalone_cluster": {"master": "2 workers x 1 core, 2 GB, 127.0.0.1, via python -m psrq.submit",
                               "seconds": cluster, "total": round(sum(cluster.values()), 1)},
        "cluster_over_local": ratio,
        "horovod_ranks_on_cluster": [{k: r[k] for k in ("rank", "pid", "python", "device", "steps", "seconds")}
                                     for r in trained["ranks"]],
        "build_samples_400_shuffle_partitions": {"before_commit": before_ref, **samples_compare},
    })


if __name__ == "__main__":
    main()
