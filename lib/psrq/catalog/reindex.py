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
from datetime import datetime, timezone

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from psrq.catalog.assign import assign_full, assign_incremental
from psrq.catalog.current import current_version, mark_current
from psrq.catalog.fit import fit_stage
from psrq.config import Config
from psrq.errors import InputValidationError, Problem
from psrq.quant.artifact import load_artifact, manifests
from psrq.quant.spark_encode import encode_items, primary_space, raise_on_problems
from psrq.schemas import ITEM_ID, REINDEX_STATE, UPDATED_AT
from psrq.storage import AppTxn, open_engine

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


def _reuse_or_fit(spark, cfg: Config, night: int) -> str:
    """A codebook version fitted by this night already (a resumed run) is reused."""
    for v, m in reversed(manifests(cfg.codebooks_root(), cfg.codebooks.method).items()):
        if m.get("created_by", {}).get("reindex_night") == night:
            log.info("reusing codebook %s fitted earlier by night %d", v, night)
            return v
    return fit_stage(spark, cfg, created_by={"job": "reindex_catalog", "reindex_night": night})["version"]


def _stored_plan(engine, state_path: str, night: int) -> dict | None:
    if not engine.exists(state_path):
        return None
    rows = (engine.read(state_path).filter((F.col("night") == night) & (F.col("status") == "planned"))
            .limit(1).collect())
    return rows[0].asDict() if rows else None


def _state_row(spark, plan: dict, status: str):
    row = {**plan, "status": status, "finished_at": datetime.now(timezone.utc)}
    return spark.createDataFrame([{k: row[k] for k in REINDEX_STATE.fieldNames()}], REINDEX_STATE)


def reindex(spark: SparkSession, cfg: Config) -> dict:
    night = cfg.run.run_id
    engine = open_engine(spark, cfg.storage.engine)
    state_path, sid_path = cfg.table_path("reindex_state"), cfg.table_path("semantic_ids")
    txn, plan_txn = AppTxn(APP, night), AppTxn(f"{APP}.plan", night)
    done = engine.transaction_version(state_path, APP)
    if done is not None and done >= night:
        log.info("night %d already reindexed: nothing to do", night)
        return {"night": night, "skipped": True, "status": "already done"}

    plan = _stored_plan(engine, state_path, night)
    if plan is not None:
        log.info("night %d resumes its recorded plan: items v%d, codebook %s, %d changed, refit %s",
                 night, plan["items_version"], plan["codebook_version"], plan["n_changed"], plan["refit"])
    items_path = cfg.table_path("items")
    items_version = plan["items_version"] if plan else engine.version(items_path)
    items = engine.read(items_path, items_version)
    watermark = None
    if engine.exists(state_path):
        watermark = engine.read(state_path).filter(F.col("status") == "done").agg(F.max("watermark")).collect()[0][0]
    has_ts = UPDATED_AT in items.columns
    seen = items.agg(F.count(F.lit(1)).alias("n"), (F.max(UPDATED_AT) if has_ts else F.lit(None)).alias("cutoff")).collect()[0]
    cutoff = seen["cutoff"]
    if not seen["n"] and not cfg.validation.allow_empty:
        raise InputValidationError("items", [Problem("*", f"the table is empty (version {items_version}): night {night} "
                                                          "records nothing and changes nothing "
                                                          "(validation.allow_empty=true if the catalogue is really empty)")])

    # tonight's codebook: the plan's; else codebooks.version, the one marked current, or (a
    # first night, before anything was marked) the latest fitted of the method
    cb_version = plan["codebook_version"] if plan else (cfg.codebooks.version or current_version(engine, cfg))
    cbs, manifest = load_artifact(cfg.codebooks_root(), cb_version, cfg.codebooks.method)
    sid_done = (engine.transaction_version(sid_path, APP) or -1) >= night if engine.exists(sid_path) else False
    if plan is not None and sid_done:
        # killed after semantic_ids moved, before the outcome: only the records are missing
        version = _reuse_or_fit(spark, cfg, night) if plan["refit"] else cbs.version
        if plan["refit"] and cfg.codebooks.mark_current:
            mark_current(spark, engine, cfg, version)
        result = {"version": engine.version(sid_path), "codebook_version": version}
        return _finish(spark, engine, state_path, txn, plan, result)

    if engine.exists(sid_path):
        assigned = engine.read(sid_path).filter(F.col("codebook_version") == cbs.version).select(ITEM_ID)
        unassigned = items.join(assigned, ITEM_ID, "left_anti")
        changed = unassigned
        if has_ts and watermark is not None:
            changed = items.filter(F.col(UPDATED_AT) > F.lit(watermark)).unionByName(unassigned).dropDuplicates([ITEM_ID])
    else:
        changed = items
    encoded = encode_items(spark, changed, cbs).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_changed = encoded.count()
        raise_on_problems(encoded, cbs)
        primary = primary_space(cbs)
        stats = encoded.select("error", F.element_at(f"{primary}_codes", 1).alias("c1")).toArrow()
        d = drift(np.asarray(stats.column("error")), np.asarray(stats.column("c1"), dtype=np.int64),
                  manifest["diagnostics"][primary], cbs.spec.k)
        log.info("night %d: %d new/changed items; error share %.3f, layer-1 shift %.3f",
                 night, n_changed, d["error_share"], d["layer1_shift"])
        rc = cfg.reindex
        refit = n_changed >= rc.min_items_for_drift and (
            d["error_share"] > rc.max_error_share or d["layer1_shift"] > rc.max_layer1_shift)
        if plan is None:
            plan = {"night": night, "watermark": cutoff, "items_version": items_version, "codebook_version": cbs.version,
                    "n_changed": n_changed, "error_share": d["error_share"], "layer1_shift": d["layer1_shift"],
                    "refit": refit}
            engine.write(_state_row(spark, plan, "planned"), state_path, "append" if engine.exists(state_path) else "create",
                         plan_txn, description=f"reindex night {night}: plan")
        if plan["refit"]:
            version = _reuse_or_fit(spark, cfg, night)
            log.info("drift over threshold: reassigning the whole catalogue with codebook %s", version)
            new_cbs, _ = load_artifact(cfg.codebooks_root(), version)
            result = assign_full(spark, cfg, engine, items, new_cbs, AppTxn(APP, night))  # the plan's items version
        elif n_changed:
            result = assign_incremental(spark, cfg, engine, changed, cbs, AppTxn(APP, night), encoded=encoded)
        else:
            result = {"version": engine.version(sid_path), "codebook_version": cbs.version, "skipped": False}
    finally:
        encoded.unpersist()
    return _finish(spark, engine, state_path, txn, plan, result)


def _finish(spark, engine, state_path: str, txn: AppTxn, plan: dict, result: dict) -> dict:
    outcome = {**plan, "codebook_version": result["codebook_version"]}
    engine.write(_state_row(spark, outcome, "done"), state_path, "append", txn,
                 description=f"reindex night {plan['night']}: outcome")
    return {**outcome, "semantic_ids_version": result["version"], "skipped": False, "status": "done"}


def format_night(res: dict) -> str:
    """One line for a night's result (the job's and the demo's output)."""
    if res.get("skipped"):
        return f"night {res['night']}: already done, nothing changed"
    what = "drift: refitted and reassigned the catalogue" if res["refit"] else "merged"
    return (f"night {res['night']}: {res['n_changed']:,} new/changed items, error share {res['error_share']:.3f}, "
            f"layer-1 shift {res['layer1_shift']:.3f}; {what} (codebook {res['codebook_version']}, "
            f"semantic_ids version {res['semantic_ids_version']})")
