"""Stage: the nightly catalogue reindex.

1. New and changed items: `updated_at` after the last successful night's watermark (kept in
   the `reindex_state` Delta table), plus items that have no semantic ID yet.
2. Encode them with the current codebook and measure drift against the fit: the share whose
   reconstruction error exceeds the fit's 95th percentile (about 5% when they look like the
   fit sample), and the total-variation shift of their layer-1 code distribution.
3. No drift: merge their IDs into `semantic_ids`. Drift: fit a new codebook version, assign
   the whole catalogue with it beside the old version's rows, and mark it current (unless
   codebooks.mark_current=false: then the old version stays in use until it is marked).
4. Record the night in `reindex_state`: its plan (the items version read, the codebook, the
   changed count, the drift and the decision) before any other write, its outcome last.

Every write carries an app transaction keyed by the night, so running the same night twice
changes nothing. A night killed midway resumes its recorded plan: the same items version,
codebook and decision; committed steps are skipped, a codebook version already fitted by
that night is reused, and the outcome row records what the night really did.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from psrq.catalog.assign import assign_full, assign_incremental
from psrq.catalog.current import current_version, mark_current
from psrq.catalog.fit import fit_stage
from psrq.config import Config
from psrq.errors import InputValidationError, Problem
from psrq.job import JobContext
from psrq.quant.artifact import CodebookManifest
from psrq.quant.spark_encode import encode_items, primary_space, raise_on_problems
from psrq.results import StageResult
from psrq.schemas import ITEM_ID, REINDEX_STATE, UPDATED_AT
from psrq.storage import AppTxn
from psrq.storage.base import version_of

log = logging.getLogger(__name__)
APP = "psrq.reindex_catalog"


def drift(errors: np.ndarray, layer1: np.ndarray, fit_diag: dict, k: int) -> dict:
    """Pure: drift of new items against the fit's diagnostics."""
    if len(errors) == 0:
        return {"error_share": 0.0, "layer1_shift": 0.0}
    share = float((errors > fit_diag["error_p95"]).mean())
    fit_hist = np.asarray(fit_diag["layer1_hist"], dtype=np.float64)
    new_hist = np.bincount(layer1, minlength=k).astype(np.float64)
    shift = 0.5 * float(np.abs(new_hist / max(new_hist.sum(), 1) - fit_hist / max(fit_hist.sum(), 1)).sum())
    return {"error_share": share, "layer1_shift": shift}


def _reuse_or_fit(job: JobContext, night: int) -> str:
    """A codebook version fitted by this night already (a resumed run) is reused."""
    cfg = job.cfg
    for v, m in reversed(job.codebooks.manifests(cfg.codebooks.method).items()):
        if m.get("created_by", {}).get("reindex_night") == night:
            log.info("reusing codebook %s fitted earlier by night %d", v, night)
            return v
    return fit_stage(job, created_by={"job": "reindex_catalog", "reindex_night": night}).version


@dataclass
class NightPlan:
    """What a night will do, recorded (status "planned") before any other write of the night,
    measured on the items version it read; its outcome row repeats it with what it did."""

    night: int
    watermark: Optional[datetime]   # the newest updated_at the night saw: the next night starts after it
    items_version: int
    codebook_version: str
    n_changed: int
    error_share: float
    layer1_shift: float
    refit: bool

    def row(self, spark, status: str):
        values = {**asdict(self), "status": status, "finished_at": datetime.now(timezone.utc)}
        return spark.createDataFrame([{k: values[k] for k in REINDEX_STATE.fieldNames()}], REINDEX_STATE)


@dataclass
class NightResult(StageResult):
    """What a night did: its outcome (the plan with the codebook it ended on) and the
    semantic_ids version it left; a night already reindexed reports neither."""

    night: int
    status: str       # done | already done
    skipped: bool
    outcome: Optional[NightPlan] = None
    semantic_ids_version: Optional[int] = None


def _stored_plan(engine, state_path: str, night: int) -> NightPlan | None:
    if not engine.exists(state_path):
        return None
    rows = (engine.read(state_path).filter((F.col("night") == night) & (F.col("status") == "planned"))
            .limit(1).collect())
    return NightPlan(**{f.name: rows[0][f.name] for f in fields(NightPlan)}) if rows else None


def reindex(job: JobContext) -> NightResult:
    """The night run.run_id (the module's doc): resumes its recorded plan, or plans it."""
    cfg, spark = job.cfg, job.session
    night = cfg.run.run_id
    engine = job.engine
    state_path, sid_path = cfg.table_path("reindex_state"), cfg.table_path("semantic_ids")
    done = engine.transaction_version(state_path, APP)
    if done is not None and done >= night:
        log.info("night %d already reindexed: nothing to do", night)
        return NightResult(night, "already done", skipped=True)
    plan = _stored_plan(engine, state_path, night)
    if plan is not None:
        log.info("night %d resumes its recorded plan: items v%d, codebook %s, %d changed, refit %s",
                 night, plan.items_version, plan.codebook_version, plan.n_changed, plan.refit)
    items_path = cfg.table_path("items")
    items_version = plan.items_version if plan else version_of(engine, items_path)
    items = engine.read(items_path, items_version)
    cutoff = _checked_cutoff(cfg, items, items_version, night)
    # tonight's codebook: the plan's; else codebooks.version, the one marked current, or (a
    # first night, before anything was marked) the latest fitted of the method
    cb_version = plan.codebook_version if plan else (cfg.codebooks.version or current_version(engine, cfg))
    cbs, manifest = job.codebooks.load(cb_version, cfg.codebooks.method)
    sid_done = (engine.transaction_version(sid_path, APP) or -1) >= night if engine.exists(sid_path) else False
    if plan is not None and sid_done:
        # killed after semantic_ids moved, before the outcome: only the records are missing
        version = _reuse_or_fit(job, night) if plan.refit else cbs.version
        if plan.refit and cfg.codebooks.mark_current:
            mark_current(spark, engine, cfg, version)
        return _finish(spark, engine, state_path, plan, version_of(engine, sid_path), version)
    changed = _changed(engine, cfg, items, cbs, state_path)
    # one task per core: the changed items come out of a shuffle (spark.shuffle_partitions: the cluster
    # profile's 400), and adaptive execution does not merge the partitions of a cached frame
    encoded = encode_items(spark, changed.coalesce(spark.sparkContext.defaultParallelism), cbs)
    encoded = encoded.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if plan is None:
            plan = _plan(spark, cfg, engine, encoded, cbs, manifest, NightPlan(night, cutoff, items_version, cbs.version,
                                                                                 0, 0.0, 0.0, False))
        sid_version, cb_version = _apply(job, plan, items, changed, encoded, cbs)
    finally:
        encoded.unpersist()
    return _finish(spark, engine, state_path, plan, sid_version, cb_version)


def _checked_cutoff(cfg: Config, items: DataFrame, items_version: int, night: int) -> Optional[datetime]:
    """The newest updated_at of the items (None without the column), after refusing an empty
    table (nothing is recorded for it)."""
    has_ts = UPDATED_AT in items.columns
    seen = items.agg(F.count(F.lit(1)).alias("n"), (F.max(UPDATED_AT) if has_ts else F.lit(None)).alias("cutoff")).collect()[0]
    if not seen["n"] and not cfg.validation.allow_empty:
        raise InputValidationError("items", [Problem("*", f"the table is empty (version {items_version}): night {night} "
                                                          "records nothing and changes nothing "
                                                          "(validation.allow_empty=true if the catalogue is really empty)")])
    return seen["cutoff"]


def _changed(engine, cfg: Config, items: DataFrame, cbs, state_path: str) -> DataFrame:
    """Items updated after the last night's watermark, and items without an ID of the codebook."""
    sid_path = cfg.table_path("semantic_ids")
    if not engine.exists(sid_path):
        return items
    assigned = engine.read(sid_path).filter(F.col("codebook_version") == cbs.version).select(ITEM_ID)
    unassigned = items.join(assigned, ITEM_ID, "left_anti")
    watermark = None
    if engine.exists(state_path):
        watermark = engine.read(state_path).filter(F.col("status") == "done").agg(F.max("watermark")).collect()[0][0]
    if UPDATED_AT not in items.columns or watermark is None:
        return unassigned
    return items.filter(F.col(UPDATED_AT) > F.lit(watermark)).unionByName(unassigned).dropDuplicates([ITEM_ID])


def _plan(spark, cfg: Config, engine, encoded: DataFrame, cbs, manifest: CodebookManifest, plan: NightPlan) -> NightPlan:
    """Measure the drift of the changed items, decide, and record the plan before any other write."""
    plan.n_changed = encoded.count()
    raise_on_problems(encoded, cbs)
    primary = primary_space(cbs)
    stats = encoded.select("error", F.element_at(f"{primary}_codes", 1).alias("c1")).toArrow()
    d = drift(np.asarray(stats.column("error")), np.asarray(stats.column("c1"), dtype=np.int64),
              manifest["diagnostics"][primary], cbs.spec.k)
    log.info("night %d: %d new/changed items; error share %.3f, layer-1 shift %.3f",
             plan.night, plan.n_changed, d["error_share"], d["layer1_shift"])
    rc = cfg.reindex
    plan.error_share, plan.layer1_shift = d["error_share"], d["layer1_shift"]
    plan.refit = plan.n_changed >= rc.min_items_for_drift and (
        d["error_share"] > rc.max_error_share or d["layer1_shift"] > rc.max_layer1_shift)
    state_path = cfg.table_path("reindex_state")
    engine.write(plan.row(spark, "planned"), state_path, "append" if engine.exists(state_path) else "create",
                 AppTxn(f"{APP}.plan", plan.night), description=f"reindex night {plan.night}: plan")
    return plan


def _apply(job: JobContext, plan: NightPlan, items: DataFrame, changed: DataFrame, encoded: DataFrame,
           cbs) -> tuple[int, str]:
    """Merge the changed items' IDs, or (drift) refit and reassign the whole catalogue; the
    semantic_ids version and the codebook version it leaves."""
    spark, cfg, engine = job.session, job.cfg, job.engine
    if plan.refit:
        version = _reuse_or_fit(job, plan.night)
        log.info("drift over threshold: reassigning the whole catalogue with codebook %s", version)
        new_cbs, _ = job.codebooks.load(version)
        res = assign_full(spark, cfg, engine, items, new_cbs, AppTxn(APP, plan.night))  # the plan's items version
        return res.version, res.codebook_version
    if plan.n_changed:
        res = assign_incremental(spark, cfg, engine, changed, cbs, AppTxn(APP, plan.night), encoded=encoded)
        return res.version, res.codebook_version
    return version_of(engine, cfg.table_path("semantic_ids")), cbs.version


def _finish(spark, engine, state_path: str, plan: NightPlan, sid_version: int, codebook_version: str) -> NightResult:
    outcome = replace(plan, codebook_version=codebook_version)
    engine.write(outcome.row(spark, "done"), state_path, "append", AppTxn(APP, plan.night),
                 description=f"reindex night {plan.night}: outcome")
    return NightResult(plan.night, "done", skipped=False, outcome=outcome, semantic_ids_version=sid_version)


def format_night(res: NightResult) -> str:
    """One line for a night's result (the job's and the demo's output)."""
    o = res.outcome
    if o is None:
        return f"night {res.night}: already done, nothing changed"
    what = "drift: refitted and reassigned the catalogue" if o.refit else "merged"
    return (f"night {res.night}: {o.n_changed:,} new/changed items, error share {o.error_share:.3f}, "
            f"layer-1 shift {o.layer1_shift:.3f}; {what} (codebook {o.codebook_version}, "
            f"semantic_ids version {res.semantic_ids_version})")
