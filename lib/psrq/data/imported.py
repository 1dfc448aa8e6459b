"""What the data set importers (psrq.data.import_movielens, psrq.data.import_lastfm) share:
writing the items and interactions tables from pandas, and the result they report."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pyspark.sql import types as T

from psrq.job import JobContext
from psrq.results import StageResult, TableSummary
from psrq.schemas import INTERACTIONS
from psrq.storage import AppTxn
from psrq.storage.base import version_of


@dataclass
class ImportResult(StageResult):
    """The two tables as imported, and the share of positive events."""

    items: TableSummary
    interactions: TableSummary
    positive_rate: float


def write_imported(job: JobContext, source: str, title: str, items: pd.DataFrame, items_schema: T.StructType,
                   interactions: pd.DataFrame, origin: str) -> ImportResult:
    """Overwrite both tables, each commit described as "<title> <table> from <origin>" (its
    app transaction: psrq.import_<source>.<table> at the run id)."""
    cfg, spark, engine = job.cfg, job.session, job.engine
    out: dict[str, TableSummary] = {}
    for name, pdf, schema in (("items", items, items_schema), ("interactions", interactions, INTERACTIONS)):
        df = spark.createDataFrame(pdf[schema.fieldNames()], schema).repartition(spark.sparkContext.defaultParallelism)
        txn = AppTxn(f"psrq.import_{source}.{name}", cfg.run.run_id)
        engine.write(df, cfg.table_path(name), "overwrite", txn, description=f"{title} {name} from {origin}")
        out[name] = TableSummary(cfg.table_path(name), version_of(engine, cfg.table_path(name)), len(pdf))
    return ImportResult(out["items"], out["interactions"], round(float(interactions.label.mean()), 4))
