"""Stage: import MovieLens-100k (psrq.data.movielens) into the items and interactions Delta
tables. Text embeddings come after, from jobs/embed_text.py on the `text` column."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from psrq.data.movielens import read_interactions, read_items
from psrq.job import JobContext
from psrq.schemas import INTERACTIONS, MOVIELENS_ITEMS
from psrq.storage import AppTxn

log = logging.getLogger(__name__)


def import_movielens(job: JobContext) -> dict:
    cfg, spark = job.cfg, job.session
    mc = cfg.movielens
    items = read_items(mc.path)
    items["genre_emb"] = [v.tolist() for v in items.genre_emb]
    items["updated_at"] = datetime(1998, 4, 23, tzinfo=timezone.utc)  # the data set's release
    inter = read_interactions(mc.path, mc.positive_from)
    engine = job.engine
    out: dict = {}
    for name, pdf, schema in (("items", items, MOVIELENS_ITEMS), ("interactions", inter, INTERACTIONS)):
        df = spark.createDataFrame(pdf[schema.fieldNames()], schema).repartition(spark.sparkContext.defaultParallelism)
        txn = AppTxn(f"psrq.import_movielens.{name}", cfg.run.run_id)
        engine.write(df, cfg.table_path(name), "overwrite", txn, description=f"MovieLens-100k {name} from {mc.path}")
        out[name] = {"rows": len(pdf), "version": engine.version(cfg.table_path(name))}
    out["positive_rate"] = round(float(inter.label.mean()), 4)
    log.info("movielens: %s", out)
    return out
