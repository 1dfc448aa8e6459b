"""Stage: check the items and interactions tables against their contracts."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import functions as F

from psrq.data.validation import validate_interactions, validate_items
from psrq.job import JobContext
from psrq.results import StageResult, TableSummary
from psrq.storage.base import version_of

log = logging.getLogger(__name__)


@dataclass
class InteractionsSummary(TableSummary):
    users: int
    positive_rate: float
    first_event: str
    last_event: str


@dataclass
class ColdItems:
    threshold: int  # fewer interactions than this over the whole table
    count: int
    fraction: float


@dataclass
class InputSummary(StageResult):
    """What validate_inputs found in the two tables (both meet their contracts)."""

    items: TableSummary
    interactions: InteractionsSummary
    cold_items: ColdItems


def validate_inputs(job: JobContext, cold_threshold: int = 30) -> InputSummary:
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
    summary = InputSummary(
        TableSummary(items_path, version_of(engine, items_path), n_items),
        InteractionsSummary(inter_path, version_of(engine, inter_path), stats["n"], users=stats["users"],
                            positive_rate=round(stats["positive_rate"], 4), first_event=str(stats["first"]),
                            last_event=str(stats["last"])),
        ColdItems(cold_threshold, n_items - warm, round((n_items - warm) / n_items, 4)))
    log.info("validated items (%d rows) and interactions (%d rows)", n_items, stats["n"])
    return summary
