"""Stage: check the items and interactions tables against their contracts."""
from __future__ import annotations

import logging

from pyspark.sql import functions as F

from psrq.data.validation import validate_interactions, validate_items
from psrq.job import JobContext

log = logging.getLogger(__name__)


def validate_inputs(job: JobContext, cold_threshold: int = 30) -> dict:
    """Validate both tables (raises InputValidationError) and summarise them."""
    cfg = job.cfg
    engine = job.engine
    items_path, inter_path = cfg.table_path("items"), cfg.table_path("interactions")
    items = engine.read(items_path)
    modalities = {m.column: m.dim for m in cfg.dataset.modalities.values()}
    validate_items(items, modalities)
    interactions = validate_interactions(engine.read(inter_path), items, window=cfg.validation.window())
    n_items = items.count()
    stats = interactions.agg(
        F.count("*").alias("n"), F.avg("label").alias("positive_rate"),
        F.countDistinct("user_id").alias("users"), F.min("ts").alias("first"), F.max("ts").alias("last"),
    ).collect()[0]
    per_item = interactions.groupBy("item_id").count()
    warm = per_item.filter(F.col("count") >= cold_threshold).count()
    summary = {
        "items": {"path": items_path, "version": engine.version(items_path), "rows": n_items},
        "interactions": {
            "path": inter_path, "version": engine.version(inter_path), "rows": stats["n"],
            "users": stats["users"], "positive_rate": round(stats["positive_rate"], 4),
            "from": str(stats["first"]), "to": str(stats["last"]),
        },
        # cold: fewer than `cold_threshold` interactions over the whole table
        "cold_items": {"threshold": cold_threshold, "count": n_items - warm, "fraction": round((n_items - warm) / n_items, 4)},
    }
    log.info("validated items (%d rows) and interactions (%d rows)", n_items, stats["n"])
    return summary
