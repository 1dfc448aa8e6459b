"""Stage: import MovieLens-100k (psrq.data.movielens) into the items and interactions Delta
tables. Text embeddings come after, from jobs/embed_text.py on the `text` column."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from psrq.data.movielens import read_interactions, read_items
from psrq.job import JobContext
from psrq.results import StageResult, TableSummary
from psrq.schemas import INTERACTIONS, MOVIELENS_ITEMS
from psrq.storage import AppTxn
from psrq.storage.base import version_of

log = logging.getLogger(__name__)


@dataclass
class ImportResult(StageResult):
    """The two tables as imported, and the share of positive events."""

    items: TableSummary
    interactions: TableSummary
    positive_rate: float


def import_movielens(job: JobContext) -> ImportResult:
    cfg, spark = job.cfg, job.session
    mc = cfg.movielens
    items = read_items(mc.path)
    items["genre_emb"] = [v.tolist() for v in items.genre_emb]
    items["updated_at"] = datetime(1998, 4, 23, tzinfo=timezone.utc)  # the data set's release
    inter = read_interactions(mc.path, mc.positive_from)
    engine = job.engine
    out: dict[str, TableSummary] = {}
    for name, pdf, schema in (("items", items, MOVIELENS_ITEMS), ("interactions", inter, INTERACTIONS)):
        df = spark.createDataFrame(pdf[schema.fieldNames()], schema).repartition(spark.sparkContext.defaultParallelism)
        txn = AppTxn(f"psrq.import_movielens.{name}", cfg.run.run_id)
        engine.write(df, cfg.table_path(name), "overwrite", txn, description=f"MovieLens-100k {name} from {mc.path}")
        out[name] = TableSummary(cfg.table_path(name), version_of(engine, cfg.table_path(name)), len(pdf))
    res = ImportResult(out["items"], out["interactions"], round(float(inter.label.mean()), 4))
    log.info("movielens: %s", res)
    return res
