"""Peak memory of assign_ids as the catalogue grows (1M, 2M, 4M items): the Python driver,
the JVM (driver and, in local mode, executors) and the Python workers (executors).
Each size runs in a fresh process. Items are generated on the executors as the job reads
them (not read from Delta) to spare 24 GB of test data on a 2-core box; the assignment,
dedup and the Delta write are the real ones.

    python benchmarks/bench_assign_memory.py [--sizes 1000000 2000000 4000000]
"""
import argparse
import json
import subprocess
import sys
import time

from common import PeakMemory, write_result
from psrq.job import JobContext


def _overrides(work: str, dim: int) -> list[str]:
    return [f"storage.root={work}/delta", f"storage.codebooks={work}/codebooks", "synthetic.n_users=1000",
            f"dataset.modalities.text.dim={dim}", f"dataset.modalities.audio.dim={dim}",
            "codebooks.k=256", "codebooks.sample_size=16384", "codebooks.kmeans.iters=10"]


def prepare(work: str, dim: int) -> None:
    """Fit the codebook once (on a 50k-item table), outside the measured runs."""
    from psrq.catalog.fit import fit_stage
    from psrq.config import load_config
    from psrq.data.synthetic_spark import synthetic_frames
    from psrq.spark import build_spark
    from psrq.storage import open_engine

    cfg = load_config("local", "synthetic_1m", _overrides(work, dim) + ["synthetic.n_items=50000"])
    spark = build_spark(cfg.spark)
    engine = open_engine(spark, cfg.storage.engine)
    engine.write(synthetic_frames(spark, cfg)["items"], cfg.table_path("items"), "overwrite")
    fit_stage(JobContext.of(spark, cfg))
    spark.stop()


def one(n: int, work: str, dim: int) -> dict:
    from psrq.catalog.assign import assign_full
    from psrq.config import load_config
    from psrq.data.synthetic_spark import synthetic_frames
    from psrq.quant.artifact import CodebookStore
    from psrq.spark import build_spark
    from psrq.storage import open_engine

    over = _overrides(work, dim)
    with PeakMemory() as mem:
        spark = build_spark(load_config("local", "synthetic_1m", over).spark)
        big = load_config("local", "synthetic_1m", over + [f"synthetic.n_items={n}", f"run.run_id={int(time.time())}"])
        items = synthetic_frames(spark, big)["items"]
        t = time.perf_counter()
        cbs, _ = CodebookStore(big.codebooks_root()).load(big.codebooks.version, big.codebooks.method)
        res = assign_full(spark, big, open_engine(spark, big.storage.engine), items, cbs)
        secs = time.perf_counter() - t
    spark.stop()
    return {"items": n, "seconds": round(secs, 1), "peak_rss_mib": mem.peaks, "rows_written": res.items}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--work", default="benchmarks/.work/memory")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.prepare:
        prepare(a.work, a.dim)
        return
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.work, a.dim)), flush=True)
        return
    prep = subprocess.run([sys.executable, __file__, "--prepare", "--work", a.work, "--dim", str(a.dim)],
                          capture_output=True, text=True)
    if prep.returncode:
        raise SystemExit(f"preparing the codebook failed:\n{prep.stderr[-3000:]}")
    runs = []
    for n in a.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", a.work, "--dim", str(a.dim)],
                             capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            raise SystemExit(f"size {n} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(line[0][7:]))
        print(runs[-1], flush=True)
    driver = [r["peak_rss_mib"]["driver_python_mib"] for r in runs]
    write_result("assign_memory", {
        "sizes": {"items": a.sizes, "modalities": {"text": a.dim, "audio": a.dim}, "method": "psrq", "k": 256, "layers": 3},
        "runs": runs,
        "driver_python_growth_largest_vs_smallest": round(driver[-1] / driver[0], 3),
        "note": "local mode: the JVM holds the driver and the executors; Python workers are the executors' Python side",
    })


if __name__ == "__main__":
    main()
