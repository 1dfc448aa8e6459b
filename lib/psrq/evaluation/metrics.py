"""All AUC, Cold AUC, Logloss and user-grouped AUC over a predictions DataFrame, in Spark:
only per-partition summaries and per-user aggregates' totals reach the driver."""
from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from psrq.evaluation.arrays import CALIBRATION_BINS, EPS
from psrq.evaluation.auc import AucPiece, EvaluationError, auc_piece, combine

log = logging.getLogger(__name__)
_PIECE = T.StructType([T.StructField("subset", T.IntegerType()), T.StructField("low", T.DoubleType()),
                       T.StructField("pos", T.LongType()), T.StructField("neg", T.LongType()),
                       T.StructField("twice_local", T.LongType())])


def _pieces(batches, subsets: int):
    """A score range's distinct scores -> one AUC piece per subset of the rows."""
    batches = list(batches)
    if not batches:
        return
    t = pa.Table.from_batches(batches)
    scores = np.asarray(t.column("s"), dtype=np.float64)
    out = []
    for i in range(subsets):
        pos, cnt = (np.asarray(t.column(f"{c}{i}"), dtype=np.int64) for c in ("pos", "n"))
        some = cnt > 0
        p = auc_piece(scores[some], pos[some], cnt[some] - pos[some])
        if p is not None:
            out.append({"subset": i, **p.__dict__})
    if out:
        yield pa.RecordBatch.from_pylist(out, schema=pa.schema([("subset", pa.int32()), ("low", pa.float64()),
                                                                ("pos", pa.int64()), ("neg", pa.int64()),
                                                                ("twice_local", pa.int64())]))


def exact_aucs(preds: DataFrame, subsets: dict[str, Column], score: str = "score", label: str = "label",
               partitions: int | None = None) -> dict[str, float | EvaluationError]:
    """Rank-based AUC with ties counted as one half (scikit-learn's roc_auc_score) of each
    subset of the rows (a boolean column: F.lit(True) for all of them), all from one grouping
    by score: each distinct score's positives and rows per subset, range-partitioned by score,
    one piece per partition and subset. A subset without both labels gets its EvaluationError
    (named by its key), not a value."""
    names = list(subsets)
    y = F.col(label).cast("long")
    counts = []
    for i, name in enumerate(names):
        inside = F.when(subsets[name], F.lit(1)).otherwise(F.lit(0)).cast("long")
        counts += [F.sum(y * inside).alias(f"pos{i}"), F.sum(inside).alias(f"n{i}")]
    grouped = preds.groupBy(F.col(score).cast("double").alias("s")).agg(*counts)
    n_parts = partitions or preds.sparkSession.sparkContext.defaultParallelism
    rows = grouped.repartitionByRange(n_parts, "s").mapInArrow(partial(_pieces, subsets=len(names)), _PIECE).collect()
    out: dict[str, float | EvaluationError] = {}
    for i, name in enumerate(names):
        try:
            out[name] = combine([AucPiece(r.low, r.pos, r.neg, r.twice_local) for r in rows if r.subset == i], name)
        except EvaluationError as exc:
            out[name] = exc
    return out


def exact_auc(preds: DataFrame, score: str = "score", label: str = "label", what: str = "predictions",
              partitions: int | None = None) -> float:
    """Rank-based AUC with ties counted as one half, equal to scikit-learn's roc_auc_score."""
    got = exact_aucs(preds, {what: F.lit(True)}, score, label, partitions)[what]
    if isinstance(got, EvaluationError):
        raise got
    return got


def summary(preds: DataFrame, score: str = "score", label: str = "label", cold: str | None = None,
            bins: int = CALIBRATION_BINS) -> dict:
    """rows, positives, cold rows (with a cold column), Logloss and the expected calibration
    error (psrq.evaluation.arrays: equal-width score bins) from one aggregation: a row per
    score bin reaches the driver."""
    s = F.col(score).cast("double")
    y = F.col(label).cast("double")
    p = F.least(F.greatest(s, F.lit(EPS)), F.lit(1 - EPS))
    b = F.least(F.greatest(F.floor(s * bins), F.lit(0)), F.lit(bins - 1))
    per_bin = preds.groupBy(b.alias("b")).agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col(label).cast("long")).alias("y"), F.sum(s).alias("s"),
        F.sum(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("loss"),
        (F.sum(F.col(cold).cast("long")) if cold else F.lit(0)).alias("cold")).collect()
    rows = sum(r["n"] for r in per_bin)
    return {"rows": int(rows), "positives": int(sum(r["y"] for r in per_bin)),
            "cold_rows": int(sum(r["cold"] or 0 for r in per_bin)),
            "logloss": float(sum(r["loss"] for r in per_bin) / rows) if rows else None,
            "calibration_error": float(sum(abs(r["s"] - r["y"]) for r in per_bin) / rows) if rows else 0.0}


def logloss(preds: DataFrame, score: str = "score", label: str = "label") -> float:
    return summary(preds, score, label)["logloss"]


def grouped_auc(preds: DataFrame, group: str = "user_id", score: str = "score", label: str = "label") -> tuple[float | None, int]:
    """Impression-weighted mean of per-user AUCs over users with both labels (GAUC), and
    how many users count. In the JVM, with no user's rows gathered in one place: positives and
    negatives per (user, distinct score), the negatives below each score by a running sum over
    the user's scores (a window Spark spills), then per user the rank statistic with ties
    counted as one half (as scikit-learn's roc_auc_score)."""
    y = F.col(label).cast("long")
    per_score = preds.groupBy(group, F.col(score).cast("double").alias("_s")).agg(
        F.sum(y).alias("_pos"), F.sum(1 - y).alias("_neg"))
    below = Window.partitionBy(group).orderBy("_s").rowsBetween(Window.unboundedPreceding, -1)
    pairs = F.col("_pos") * (F.coalesce(F.sum("_neg").over(below), F.lit(0)) + 0.5 * F.col("_neg"))
    users = (per_score.select(group, "_pos", "_neg", pairs.alias("_won")).groupBy(group)
             .agg(F.sum("_won").alias("won"), F.sum("_pos").alias("p"), F.sum("_neg").alias("q"))
             .filter((F.col("p") > 0) & (F.col("q") > 0)))
    n = F.col("p") + F.col("q")
    r = users.agg(F.sum(F.col("won") / (F.col("p") * F.col("q")) * n).alias("w"), F.sum(n).alias("n"),
                  F.count("*").alias("users")).collect()[0]
    return (None, 0) if not r["users"] else (float(r["w"] / r["n"]), int(r["users"]))


def evaluate_predictions(preds: DataFrame, gauc: bool = True) -> dict:
    """preds: label, score (probability), is_cold, user_id. Three passes over them: the
    binned summary, the AUCs (all and cold rows from one grouping by score), GAUC."""
    preds = preds.select("user_id", "label", "score", "is_cold")
    out = summary(preds, cold="is_cold")
    aucs = exact_aucs(preds, {"predictions": F.lit(True), "cold predictions": F.col("is_cold") == 1})
    if isinstance(aucs["predictions"], EvaluationError):
        raise aucs["predictions"]
    out["auc"] = aucs["predictions"]
    if isinstance(aucs["cold predictions"], EvaluationError):  # a split can lack cold positives: report, do not fail
        log.warning("Cold AUC: %s", aucs["cold predictions"])
        out["cold_auc"] = None
    else:
        out["cold_auc"] = aucs["cold predictions"]
    if gauc:
        out["gauc"], out["gauc_users"] = grouped_auc(preds)
    return out


def format_metric(value: float | None) -> str:
    """A metric as jobs print it: 4 decimals, or n/a where it could not be computed (a
    split without cold positives, say)."""
    return "n/a" if value is None else f"{value:.4f}"
