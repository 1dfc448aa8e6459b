"""Stage: assign semantic IDs to items with a codebook version and write `semantic_ids`."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from psrq.config import Config
from psrq.data.validation import check_item_ids, require_item_columns
from psrq.errors import ArtifactError, InputValidationError, Problem
from psrq.job import JobContext
from psrq.quant.spaces import CodebookSet
from psrq.quant.spark_encode import encode_items, pack_codes, raise_on_problems
from psrq.results import StageResult
from psrq.schemas import ITEM_ID, codes_column, semantic_ids_schema
from psrq.storage import AppTxn, DeltaEngine
from psrq.storage.base import WriteResult, version_of

log = logging.getLogger(__name__)


@dataclass
class AssignResult(StageResult):
    """What an assignment wrote to semantic_ids (the whole catalogue, or a merge of some items)."""

    path: str               # the semantic_ids table
    version: int            # its version after the write
    skipped: bool           # this run had already committed it
    items: int              # items assigned (all of the version's, for a skipped re-run)
    codebook_version: str
    current: Optional[str]  # the version marked current after it (None: not marked)
    seconds: float


def check_compatible(cbs: CodebookSet, cfg: Config, items: DataFrame) -> None:
    """The codebook must have been fitted for the configured modalities and dimensions."""
    want = cfg.dataset.modality_columns()
    if list(cbs.modalities.items()) != list(want.items()):  # order matters: it lays out the joint space
        raise ArtifactError(
            f"codebook {cbs.version} was fitted for modalities {cbs.modalities}, "
            f"but the dataset configures {want}: fit a new codebook version for this table"
        )
    require_item_columns(items, [m["column"] for m in want.values()])
    check_item_ids(items)  # a duplicate would get two IDs; assign does not rely on validate_inputs


def with_dedup(new: DataFrame, existing: Optional[DataFrame]) -> DataFrame:
    """dedup = 0, 1, ... among items sharing a full primary code; new items continue after
    the largest suffix already taken in `existing` (rows that stay in the table)."""
    rank = F.row_number().over(Window.partitionBy("code_key").orderBy(ITEM_ID)) - 1
    new = new.withColumn("dedup", rank.cast("int"))
    if existing is None:
        return new
    taken = existing.groupBy("code_key").agg((F.max("dedup") + 1).alias("_base"))
    return (new.join(taken, "code_key", "left")
            .withColumn("dedup", (F.col("dedup") + F.coalesce(F.col("_base"), F.lit(0))).cast("int"))
            .drop("_base"))


def semantic_rows(encoded: DataFrame, cbs: CodebookSet, existing: Optional[DataFrame]) -> DataFrame:
    schema = semantic_ids_schema(cbs.spaces)
    rows = with_dedup(encoded.select(ITEM_ID, *[codes_column(s) for s in cbs.spaces], "code_key"), existing)
    rows = rows.withColumn("codebook_version", F.lit(cbs.version)).withColumn("assigned_at", F.current_timestamp())
    return rows.select(*schema.fieldNames())


def assign(job: JobContext) -> AssignResult:
    """The job: every item of the items table with the configured codebook version
    (codebooks.version, else the newest of the method), see assign_full."""
    cfg, spark = job.cfg, job.session
    engine = job.engine
    cbs, _ = job.codebooks.load(cfg.codebooks.version, cfg.codebooks.method)
    return assign_full(spark, cfg, engine, engine.read(cfg.table_path("items")), cbs)


def assign_full(spark: SparkSession, cfg: Config, engine: DeltaEngine, items: DataFrame, cbs: CodebookSet,
                txn: Optional[AppTxn] = None, encoded: Optional[DataFrame] = None) -> AssignResult:
    """`items` is the whole catalogue: the rows of this codebook version in semantic_ids are
    replaced by theirs (other versions' rows stay beside them), keyed for idempotence by
    `txn` (default: the codebook version and run.run_id), then the version is marked current
    unless codebooks.mark_current=false."""
    txn = txn or AppTxn(f"psrq.assign_ids.{cbs.version}", cfg.run.run_id)
    out_path = cfg.table_path("semantic_ids")
    check_compatible(cbs, cfg, items)  # first: a re-run with other settings is refused, not reported done
    if encoded is None and committed(engine, out_path, txn):  # a re-run: nothing to encode
        log.info("semantic_ids: codebook %s already written by run %s (%s): nothing encoded", cbs.version, txn.version,
                 txn.app_id)
        n = engine.read(out_path).filter(F.col("codebook_version") == cbs.version).count()
        res = WriteResult(out_path, version_of(engine, out_path), skipped=True)
        return _summary(out_path, res, n, cbs, _mark(spark, cfg, engine, cbs), time.time())
    with _encoding(spark, cfg, items, cbs, encoded) as (encoded, n, t0):
        require_items(cfg, engine, out_path, cbs, n)
        rows = semantic_rows(encoded, cbs, None)
        # sorted by code_key: file and row-group statistics make reverse lookups cheap
        rows = (rows.repartitionByRange(max(1, spark.sparkContext.defaultParallelism), "code_key")
                .sortWithinPartitions("code_key", ITEM_ID))
        res = engine.replace_where(rows, out_path, "codebook_version", cbs.version, txn, description=f"assign_ids {cbs.version}")
    return _summary(out_path, res, n, cbs, _mark(spark, cfg, engine, cbs), t0)


def _mark(spark, cfg: Config, engine: DeltaEngine, cbs: CodebookSet) -> Optional[str]:
    if not cfg.codebooks.mark_current:
        return None
    from psrq.catalog.current import mark_current

    return mark_current(spark, engine, cfg, cbs.version).codebook_version


def committed(engine: DeltaEngine, path: str, txn: AppTxn) -> bool:
    """The table already recorded this app transaction (a re-run of a committed write)."""
    if not engine.exists(path):
        return False
    done = engine.transaction_version(path, txn.app_id)
    return done is not None and done >= txn.version


def require_items(cfg: Config, engine: DeltaEngine, out_path: str, cbs: CodebookSet, n: int) -> None:
    """An empty catalogue would replace every semantic ID of the version: refused (before
    anything is written) unless validation.allow_empty says it is really empty."""
    if n or cfg.validation.allow_empty:
        return
    held = (engine.read(out_path).filter(F.col("codebook_version") == cbs.version).count()
            if engine.exists(out_path) else 0)
    raise InputValidationError("items", [Problem("*", f"the table is empty: assigning it would leave codebook "
                                                      f"{cbs.version} with no semantic IDs (it has {held:,} now); "
                                                      "nothing was written (validation.allow_empty=true if the "
                                                      "catalogue is really empty)")])


def assign_incremental(spark: SparkSession, cfg: Config, engine: DeltaEngine, items: DataFrame, cbs: CodebookSet,
                       txn: Optional[AppTxn] = None, encoded: Optional[DataFrame] = None) -> AssignResult:
    """`items` is a subset (new or changed items): their rows are merged by (item_id,
    codebook_version), their dedup suffixes continuing after those the other items keep;
    keyed by `txn` when given (the caller knows what makes its subset's run unique)."""
    out_path = cfg.table_path("semantic_ids")
    with _encoding(spark, cfg, items, cbs, encoded) as (encoded, n, t0):
        existing = None
        if engine.exists(out_path):
            existing = (engine.read(out_path).filter(F.col("codebook_version") == cbs.version)
                        .join(encoded.select(ITEM_ID), ITEM_ID, "left_anti"))
        rows = semantic_rows(encoded, cbs, existing)
        res = engine.merge(rows, out_path, [ITEM_ID, "codebook_version"], txn, description=f"assign_ids {cbs.version} (merge)")
    return _summary(out_path, res, n, cbs, None, t0)


@contextmanager
def _encoding(spark: SparkSession, cfg: Config, items: DataFrame, cbs: CodebookSet, encoded: Optional[DataFrame]):
    """(encoded items, their count, start time). Bad embeddings stop the job before anything
    is written. `encoded`: `items` already encoded with `cbs` and checked by the caller
    (kept cached by it), so the embeddings are not read and encoded a second time."""
    check_compatible(cbs, cfg, items)
    t0 = time.time()
    owned = encoded is None
    frame = encode_items(spark, items, cbs).persist(StorageLevel.MEMORY_AND_DISK) if encoded is None else encoded
    try:
        n = frame.count()  # the one pass over the embeddings (a cached frame when given)
        if owned:
            raise_on_problems(frame, cbs)
        log.info("encoded %d items with codebook %s in %.1fs", n, cbs.version, time.time() - t0)
        yield frame, n, t0
    finally:
        if owned:
            frame.unpersist()


def _summary(path: str, res: WriteResult, n: int, cbs: CodebookSet, current: Optional[str], t0: float) -> AssignResult:
    log.info("semantic_ids: version %d%s", res.version, " (skipped: already written by this run)" if res.skipped else "")
    return AssignResult(path, res.version, res.skipped, n, cbs.version, current, round(time.time() - t0, 2))


def lookup(engine: DeltaEngine, path: str, codes: list[int], k: int, codebook_version: str) -> DataFrame:
    """Items whose primary full code is `codes` under one codebook version (reverse lookup)."""
    key = int(pack_codes(np.asarray([codes], dtype=np.int64), k)[0])
    return engine.read(path).filter((F.col("codebook_version") == codebook_version) & (F.col("code_key") == key))
