"""Evaluation at scale: exact All AUC, Cold AUC and Logloss over >= 10M predictions in
Spark (psrq.evaluation.metrics, nothing collected to the driver) vs the driver-side way
(collect the predictions, scikit-learn's roc_auc_score and log_loss) on the same data, in
one run, with the peak memory of the driver Python process for each. The Spark side twice:
as evaluate_predictions computes them (one binned summary with Logloss and calibration, and
both AUCs from one grouping by score) and one metric per pass (All AUC, Cold AUC on the
filtered rows, Logloss).

The predictions are synthetic (score = noisy function of the label, rounded to 4 decimals,
so ties are many), written once as Parquet under data/bench/predictions.

    python benchmarks/bench_evaluate.py [--rows 10000000]
"""
import argparse
import time
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from psrq.config import load_config
from psrq.evaluation.metrics import evaluate_predictions, exact_auc, logloss
from psrq.spark import build_spark

from common import PeakMemory, write_result


def predictions(spark, rows: int, path: Path):
    if not (path / "_SUCCESS").exists() or spark.read.parquet(str(path)).count() != rows:
        label = (F.rand(1) < 0.3).cast("int")
        df = (spark.range(rows).withColumn("label", label)
              .withColumn("score", F.round(F.least(F.greatest(F.col("label") * 0.15 + F.randn(2) * 0.2 + 0.4, F.lit(0.0)), F.lit(1.0)), 4))
              .withColumn("is_cold", (F.rand(3) < 0.2).cast("int"))
              .withColumn("user_id", (F.col("id") % 100_000)))
        df.write.mode("overwrite").parquet(str(path))
    return spark.read.parquet(str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    args = ap.parse_args()
    cfg = load_config("local", "synthetic_small", [])
    spark = build_spark(cfg.spark)
    preds = predictions(spark, args.rows, Path("data/bench/predictions").resolve())

    evaluate_predictions(preds.limit(10_000), gauc=False)  # warms the JVM for both Spark ways alike
    with PeakMemory() as mem_spark:
        t0 = time.perf_counter()
        m = evaluate_predictions(preds, gauc=False)
        spark_auc, spark_cold, spark_ll = m["auc"], m["cold_auc"], m["logloss"]
        t_spark = time.perf_counter() - t0
    t0 = time.perf_counter()
    passes = {"auc": exact_auc(preds), "cold_auc": exact_auc(preds.filter(F.col("is_cold") == 1)), "logloss": logloss(preds)}
    t_passes = time.perf_counter() - t0

    from sklearn.metrics import log_loss, roc_auc_score

    with PeakMemory() as mem_driver:
        t0 = time.perf_counter()
        t = preds.select("label", "score", "is_cold").toArrow()  # what a driver-side metric needs first
        y, s, c = (np.asarray(t.column(n)) for n in ("label", "score", "is_cold"))
        t_collect = time.perf_counter() - t0
        sk_auc = roc_auc_score(y, s)
        sk_cold = roc_auc_score(y[c == 1], s[c == 1])
        sk_ll = log_loss(y, np.clip(s, 1e-7, 1 - 1e-7))
        t_driver = time.perf_counter() - t0
    assert abs(spark_auc - sk_auc) < 1e-9 and abs(spark_cold - sk_cold) < 1e-9 and abs(spark_ll - sk_ll) < 1e-6
    assert abs(passes["auc"] - spark_auc) < 1e-12 and abs(passes["cold_auc"] - spark_cold) < 1e-12
    write_result("evaluate", {
        "rows": args.rows, "partitions": spark.sparkContext.defaultParallelism,
        "spark_exact": {"seconds": round(t_spark, 2), "auc": spark_auc, "cold_auc": spark_cold, "logloss": spark_ll,
                        "calibration_error": m["calibration_error"], "peak_mib": mem_spark.peaks},
        "spark_one_metric_per_pass": {"seconds": round(t_passes, 2), **passes},
        "fused_over_one_per_pass_time": round(t_spark / t_passes, 2),
        "driver_sklearn": {"seconds": round(t_driver, 2), "collect_seconds": round(t_collect, 2), "auc": sk_auc,
                           "cold_auc": sk_cold, "logloss": sk_ll, "peak_mib": mem_driver.peaks},
        "spark_over_driver_time": round(t_spark / t_driver, 2),
        "driver_python_peak_ratio": round(mem_driver.peaks["driver_python_mib"] / mem_spark.peaks["driver_python_mib"], 2),
        "agree": "AUC and Cold AUC equal to 1e-9, Logloss to 1e-6",
    })


if __name__ == "__main__":
    main()
