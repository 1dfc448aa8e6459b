"""The demo's end-to-end wall time per stage (generate → validate → fit → assign → samples →
train MCCA → train DIN → evaluate both → the non-learned floors), on fresh folders under data/bench/demo, with the
default configuration (horovod, 2 processes).

    python benchmarks/bench_demo.py
"""
import importlib.util
import shutil
import time
from pathlib import Path

from psrq.config import load_config
from psrq.job import JobContext
from psrq.spark import build_spark

from common import write_result

ROOT = Path("data/bench/demo").resolve()


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    cfg = load_config("local", "synthetic_small", [f"storage.root={ROOT}/delta", f"storage.codebooks={ROOT}/codebooks",
                                                   f"samples.path={ROOT}/samples", f"train.checkpoint_dir={ROOT}/checkpoints"])
    spec = importlib.util.spec_from_file_location("demo", Path(__file__).resolve().parents[1] / "jobs" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    t0 = time.perf_counter()
    spark = build_spark(cfg.spark)
    t_spark = time.perf_counter() - t0
    out = demo.stage(JobContext("demo", cfg, spark, progress=False))
    total = time.perf_counter() - t0
    write_result("demo", {"stages_seconds": {"spark session": round(t_spark, 1), **out["timings"]},
                          "total_seconds": round(total, 1), "metrics": {k: vars(m) for k, m in out["evaluated"].items()},
                          "floors": {n: {k: getattr(f, k) for k in ("auc", "cold_auc", "logloss", "gauc")}
                                     for n, f in out["floors"].items()},
                          "items": out["generated"]["items"].rows_written})


if __name__ == "__main__":
    main()
