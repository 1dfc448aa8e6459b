"""All AUC, Cold AUC, Logloss and user-grouped AUC over a predictions DataFrame, in Spark:
only per-partition summaries and per-user aggregates' totals reach the driver."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from psrq.evaluation.arrays import CALIBRATION_BINS, EPS
from psrq.evaluation.auc import AucPiece, EvaluationError, auc, auc_piece, combine

log = logging.getLogger(__name__)
# what eval_metrics keeps of a result
RECORDED = ("rows", "cold_rows", "auc", "cold_auc", "logloss", "gauc", "calibration_error")
_PIECE = T.StructType([T.StructField("low", T.DoubleType()), T.StructField("pos", T.LongType()),
                       T.StructField("neg", T.LongType()), T.StructField("twice_local", T.LongType())])


def _pieces(batches):
    scores, pos, cnt = [], [], []
    for b in batches:
        scores.append(np.asarray(b.column("s"), dtype=np.float64))
        pos.append(np.asarray(b.column("pos"), dtype=np.int64))
        cnt.append(np.asarray(b.column("n"), dtype=np.int64))
    if scores:
        p = auc_piece(np.concatenate(scores), np.concatenate(pos), np.concatenate(cnt) - np.concatenate(pos))
        if p is not None:
            yield pa.RecordBatch.from_pylist([p.__dict__], schema=pa.schema([("low", pa.float64()), ("pos", pa.int64()),
                                                                             ("neg", pa.int64()), ("twice_local", pa.int64())]))


def exact_auc(preds: DataFrame, score: str = "score", label: str = "label", what: str = "predictions",
              partitions: int | None = None) -> float:
    """Rank-based AUC with ties counted as one half, equal to scikit-learn's roc_auc_score."""
    grouped = preds.groupBy(F.col(score).cast("double").alias("s")).agg(
        F.sum(F.col(label).cast("long")).alias("pos"), F.count(F.lit(1)).alias("n"))
    n_parts = partitions or preds.sparkSession.sparkContext.defaultParallelism
    rows = grouped.repartitionByRange(n_parts, "s").mapInArrow(_pieces, _PIECE).collect()
    return combine([AucPiece(r.low, r.pos, r.neg, r.twice_local) for r in rows], what)


def logloss(preds: DataFrame, score: str = "score", label: str = "label") -> float:
    p = F.least(F.greatest(F.col(score).cast("double"), F.lit(EPS)), F.lit(1 - EPS))
    y = F.col(label).cast("double")
    return float(preds.select(F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p)))).first()[0])


def calibration_error(preds: DataFrame, score: str = "score", label: str = "label", bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error over equal-width score bins (psrq.evaluation.arrays)."""
    s = F.col(score).cast("double")
    b = F.least(F.greatest(F.floor(s * bins), F.lit(0)), F.lit(bins - 1))
    per_bin = preds.groupBy(b.alias("b")).agg(F.sum(s).alias("s"), F.sum(F.col(label).cast("double")).alias("y"),
                                              F.count(F.lit(1)).alias("n"))
    r = per_bin.agg(F.sum(F.abs(F.col("s") - F.col("y"))).alias("gap"), F.sum("n").alias("n")).first()
    return float(r["gap"] / r["n"]) if r["n"] else 0.0


def grouped_auc(preds: DataFrame, group: str = "user_id", score: str = "score", label: str = "label") -> tuple[float | None, int]:
    """Impression-weighted mean of per-user AUCs over users with both labels (GAUC), and
    how many users count."""
    schema = T.StructType([T.StructField("auc", T.DoubleType()), T.StructField("n", T.LongType())])

    def per_user(t: pa.Table) -> pa.Table:
        y = np.asarray(t.column(label))
        if y.min() == y.max():
            return pa.table({"auc": pa.array([], pa.float64()), "n": pa.array([], pa.int64())})
        return pa.table({"auc": [auc(np.asarray(t.column(score)), y)], "n": [len(y)]})

    r = (preds.select(group, score, label).groupBy(group).applyInArrow(per_user, schema)
         .agg(F.sum(F.col("auc") * F.col("n")).alias("w"), F.sum("n").alias("n"), F.count("*").alias("users")).first())
    return (None, 0) if not r["users"] else (float(r["w"] / r["n"]), int(r["users"]))


def evaluate_predictions(preds: DataFrame, gauc: bool = True) -> dict:
    """preds: label, score (probability), is_cold, user_id."""
    preds = preds.select("user_id", "label", "score", "is_cold")
    counts = preds.agg(F.count(F.lit(1)).alias("rows"), F.sum("label").alias("positives"),
                       F.sum("is_cold").alias("cold_rows")).first()
    out = {"rows": int(counts["rows"]), "positives": int(counts["positives"] or 0), "cold_rows": int(counts["cold_rows"] or 0)}
    out["auc"] = exact_auc(preds)
    out["logloss"] = logloss(preds)
    out["calibration_error"] = calibration_error(preds)
    try:
        out["cold_auc"] = exact_auc(preds.filter(F.col("is_cold") == 1), what="cold predictions")
    except EvaluationError as exc:  # a split can lack cold positives: report, do not fail the run
        log.warning("Cold AUC: %s", exc)
        out["cold_auc"] = None
    if gauc:
        out["gauc"], out["gauc_users"] = grouped_auc(preds)
    return out


def format_metric(value: float | None) -> str:
    """A metric as jobs print it: 4 decimals, or n/a where it could not be computed (a
    split without cold positives, say)."""
    return "n/a" if value is None else f"{value:.4f}"
