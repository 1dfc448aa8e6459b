"""Contract checks for the input tables, run in Spark before anything is written.

Each check reports the table, the column, how many rows break it and a few example ids;
all problems of a table are gathered into one InputValidationError.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from psrq.data.embeddings import PROBLEM_TEXT, EmbeddingReport, embedding_problems
from psrq.errors import InputValidationError, Problem
from psrq.schemas import INTERACTIONS, ITEM_ID

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class TimeWindow:
    """Plausible event times: from min_ts to max_future_days after now (UTC)."""

    min_ts: str = "1990-01-01"
    max_future_days: int = 1

    def bounds(self) -> tuple[datetime, datetime]:
        lo = datetime.fromisoformat(self.min_ts).replace(tzinfo=timezone.utc)
        return lo, datetime.now(timezone.utc) + timedelta(days=self.max_future_days)


def _require_columns(df: DataFrame, table: str, columns: list[str], what: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputValidationError(
            table,
            [Problem(c, f"is missing{what} (columns present: {', '.join(df.columns)})") for c in missing],
        )


_INTEGRAL = (T.LongType, T.IntegerType, T.ShortType, T.ByteType)


def _require_integral(df: DataFrame, table: str, columns: list[str]) -> None:
    """Ids and labels are integers: a string or a float is refused, never silently cast."""
    bad = [Problem(c, f"must be an integer column (long), not {df.schema[c].dataType.simpleString()}")
           for c in columns if not isinstance(df.schema[c].dataType, _INTEGRAL)]
    if bad:
        raise InputValidationError(table, bad)


def require_item_columns(df: DataFrame, embedding_columns, table: str = "items") -> None:
    """item_id (an integer) and every configured modality column must be there."""
    _require_columns(df, table, [ITEM_ID, *embedding_columns], " (a configured modality column)")
    _require_integral(df, table, [ITEM_ID])


def id_problems(df: DataFrame) -> list[Problem]:
    """Null and duplicate item ids: every job that reads items checks them (one pass)."""
    counts = df.groupBy(ITEM_ID).count()
    stats = counts.agg(F.sum(F.when(F.col(ITEM_ID).isNull(), F.col("count")).otherwise(0)).alias("nulls"),
                       F.sum(F.when(F.col(ITEM_ID).isNotNull() & (F.col("count") > 1), 1).otherwise(0)).alias("dups"),
                       ).collect()[0]
    problems = []
    if stats["nulls"]:
        problems.append(Problem(ITEM_ID, "have a null item_id", stats["nulls"]))
    if stats["dups"]:
        ex = [r[0] for r in counts.filter(F.col(ITEM_ID).isNotNull() & (F.col("count") > 1)).select(ITEM_ID)
              .orderBy(ITEM_ID).limit(MAX_EXAMPLES).collect()]
        problems.append(Problem(ITEM_ID, "item_id values occur more than once", stats["dups"], ex))
    return problems


def check_item_ids(df: DataFrame, table: str = "items") -> None:
    if problems := id_problems(df):
        raise InputValidationError(table, problems)


def _require_rows(df: DataFrame, table: str) -> None:
    if df.isEmpty():
        raise InputValidationError(table, [Problem("*", "the table is empty")])


def _examples(df: DataFrame, cond, cols: list[str]) -> list:
    rows = df.filter(cond).select(*cols).limit(MAX_EXAMPLES).collect()
    return [r[0] if len(cols) == 1 else "(" + ", ".join(f"{c}={r[c]}" for c in cols) + ")" for r in rows]


def _embedding_reports(df: DataFrame, modalities: Mapping[str, int]) -> dict[str, EmbeddingReport]:
    """One pass over the table on the executors; only counts and examples come back."""
    cols = list(modalities)
    dims = dict(modalities)

    def check(batches):
        reports = {c: EmbeddingReport() for c in cols}
        for batch in batches:
            ids = np.asarray(batch.column(ITEM_ID).fill_null(-1))
            for c in cols:
                embedding_problems(ids, batch.column(c), dims[c], reports[c])
        for c, r in reports.items():
            for kind, n in r.counts.items():
                yield pa.RecordBatch.from_pydict(
                    {"column": [c], "kind": [kind], "n": [n], "examples": [r.examples[kind]]}
                )

    schema = "column string, kind string, n long, examples array<long>"
    rows = df.select(ITEM_ID, *cols).mapInArrow(check, schema).collect()
    merged = {c: EmbeddingReport() for c in cols}
    for r in rows:
        merged[r["column"]].add(r["kind"], np.asarray(r["examples"]))
        merged[r["column"]].counts[r["kind"]] += r["n"] - len(r["examples"])
    return merged


def validate_items(df: DataFrame, modalities: Mapping[str, int], table: str = "items") -> None:
    """modalities: embedding column -> dimension. Raises InputValidationError."""
    require_item_columns(df, list(modalities), table)
    problems: list[Problem] = []
    for c in modalities:
        dt = df.schema[c].dataType
        ok = isinstance(dt, T.BinaryType) or (
            isinstance(dt, T.ArrayType) and isinstance(dt.elementType, (T.FloatType, T.DoubleType))
        )
        if not ok:
            problems.append(Problem(c, f"must be array<float> or float32 binary, not {dt.simpleString()}"))
    if problems:
        raise InputValidationError(table, problems)
    _require_rows(df, table)

    problems.extend(id_problems(df))
    for col, report in _embedding_reports(df, modalities).items():
        for kind in PROBLEM_TEXT:
            if kind in report.counts:
                text = PROBLEM_TEXT[kind].format(dim=modalities[col])
                problems.append(Problem(col, text, report.counts[kind], report.examples[kind]))
    if problems:
        raise InputValidationError(table, problems)


def normalise_interactions(df: DataFrame, table: str = "interactions") -> DataFrame:
    """Cast to the interactions schema: ts from timestamp, ISO string or epoch seconds.
    Unparseable timestamps become null (and are reported by validate_interactions)."""
    _require_columns(df, table, INTERACTIONS.fieldNames())
    _require_integral(df, table, ["user_id", "item_id"])  # labels: 0.0/1.0 doubles are fine, fractions are not
    ts_type = df.schema["ts"].dataType
    if isinstance(ts_type, T.StringType):
        ts = F.try_to_timestamp(F.col("ts"))
    elif isinstance(ts_type, (T.LongType, T.IntegerType, T.DoubleType, T.FloatType)):
        ts = F.timestamp_seconds(F.col("ts"))
    else:
        ts = F.col("ts").cast("timestamp")
    return df.select(
        F.col("user_id").cast("long").alias("user_id"),
        F.col("item_id").cast("long").alias("item_id"),
        F.col("label").cast("int").alias("label"),
        ts.alias("ts"),
        F.col("ts").alias("_raw_ts"),
        F.col("label").alias("_raw_label"),
    )


def validate_interactions(df: DataFrame, items: DataFrame | None = None, table: str = "interactions",
                          window: TimeWindow | None = None) -> DataFrame:
    """Validate and return the interactions in their contract schema (check_interactions)."""
    return check_interactions(df, items, table, window)[0]


def check_interactions(df: DataFrame, items: DataFrame | None = None, table: str = "interactions",
                       window: TimeWindow | None = None) -> tuple[DataFrame, int]:
    """The interactions in their contract schema and their row count, from one pass that
    counts the rows and every problem.

    items: when given, every item_id must exist there. window: the plausible event times
    (a timestamp outside it is a unit or parsing error upstream: 1970 from a zero, 9999
    from a sentinel)."""
    norm = normalise_interactions(df, table)
    key = ["user_id", "item_id"]
    window = window or TimeWindow()
    lo, hi = window.bounds()
    checks = {
        "user_id": (F.col("user_id").isNull(), "have a null user_id"),
        "item_id": (F.col("item_id").isNull(), "have a null item_id"),
        "label": (
            F.col("_raw_label").isNull() | ~F.col("label").isin(0, 1) | (F.col("label") != F.col("_raw_label")),
            "have a label other than 0/1",
        ),
        "ts": (F.col("ts").isNull(), "have a null or unparseable timestamp"),
        "ts_window": (F.col("ts").isNotNull() & ((F.col("ts") < F.lit(lo)) | (F.col("ts") > F.lit(hi))),
                      f"have a timestamp outside the plausible window [{lo:%Y-%m-%d}, {hi:%Y-%m-%d}] "
                      "(validation.min_ts, validation.max_future_days)"),
    }
    counts = norm.agg(F.count(F.lit(1)).alias("_rows"),
                      *[F.sum(F.when(cond, 1).otherwise(0)).alias(c) for c, (cond, _) in checks.items()]).collect()[0]
    if not counts["_rows"]:
        raise InputValidationError(table, [Problem("*", "the table is empty")])
    problems = []
    for c, (cond, text) in checks.items():
        if counts[c]:
            ex_cols = key if c in ("label", "ts", "ts_window") else [k for k in key if k != c] or key
            problems.append(Problem(c.removesuffix("_window"), text, counts[c], _examples(norm, cond, ex_cols)))
    if items is not None:
        unknown = norm.filter(F.col("item_id").isNotNull()).join(
            items.select(ITEM_ID), on=ITEM_ID, how="left_anti"
        )
        n_unknown = unknown.count()
        if n_unknown:
            ex = [r[0] for r in unknown.select(ITEM_ID).distinct().limit(MAX_EXAMPLES).collect()]
            problems.append(Problem("item_id", "point at items that are not in the items table", n_unknown, ex))
    if problems:
        raise InputValidationError(table, problems)
    return norm.select(*INTERACTIONS.fieldNames()), int(counts["_rows"])
