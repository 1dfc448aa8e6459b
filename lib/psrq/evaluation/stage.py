"""Stage: evaluate a trained ranker on a split of the samples, in Spark.

checkpoint (found by the training run's identity) -> broadcast -> scores on the executors ->
predictions Delta table -> exact All AUC, Cold AUC, Logloss, GAUC from the table -> one row
in the eval_metrics Delta table. An evaluation's identity is the training's identity, the
checkpoint's step and a hash of its weights, the split and the samples build: its eval_id
names the predictions table and the record. The same identity evaluated again reports the
recorded metrics with status "already done"; any other state of the model is a new
evaluation with its own predictions and record."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from pyspark.sql import functions as F

from psrq.evaluation.auc import EvaluationError
from psrq.evaluation.calibration import EPS, fit_platt
from psrq.evaluation.metrics import evaluate_predictions
from psrq.evaluation.record import RECORDED, Evaluated, Metrics, eval_record
from psrq.evaluation.scoring import bundle_from_checkpoint, score
from psrq.job import JobContext
from psrq.models.registry import needs_content
from psrq.results import TrackedResult
from psrq.samples.content import CONTENT_FILE, read_content_bytes
from psrq.samples.layout import SamplesManifest
from psrq.schemas import EVAL_METRICS
from psrq.storage import AppTxn, fs
from psrq.tracking.stages import eval_runs
from psrq.tracking.store import tracked
from psrq.training.checkpoints import CHECKPOINT, check_compatible, load_checkpoint
from psrq.training.identity import EvalIdentity, weights_hash
from psrq.training.run import checkpoint_meta, content_file, identity_and_folder, model_args

log = logging.getLogger(__name__)


@dataclass
class EvalResult(TrackedResult):
    """What evaluate_stage reports: its eval_metrics row (less the configuration; the time as
    ISO 8601) with the metrics as one field, and how it ran."""

    eval_id: str
    run_id: int
    evaluated_at: str
    dataset: str
    model: str
    seed: int
    split: str
    codebook_version: str
    checkpoint: str
    checkpoint_step: int
    train_identity: str
    weights: str
    samples: str
    data_versions: str  # JSON: the source Delta tables' versions
    predictions: str    # the predictions table
    status: str         # evaluated | already done
    metrics: Metrics
    calibration: Optional[dict]   # evaluate.calibrate's fit, if any
    content_file: Optional[str]


def _summary(record: dict, status: str, content: bool) -> EvalResult:
    at = record["evaluated_at"]
    kept = {f.name for f in fields(EvalResult)} - set(RECORDED) - {"evaluated_at", "status", "metrics", "tracking"}
    return EvalResult(
        **{k: v for k, v in record.items() if k in kept},
        evaluated_at=at.isoformat() if hasattr(at, "isoformat") else at, status=status, metrics=Metrics.of(record),
        calibration=json.loads(record.get("config") or "{}").get("calibration"),
        content_file=CONTENT_FILE if content else None)


def calibrated(spark, man: SamplesManifest, bc, ec, preds):
    """evaluate.calibrate=platt: a and b fitted on (at most evaluate.calibration_rows of) the
    valid split's scores, applied to `preds`; returns them and what was fitted (or None)."""
    if ec.calibrate == "none":
        return preds, None
    if ec.split == "valid":
        raise EvaluationError("evaluate.calibrate fits on the valid split: evaluate it on evaluate.split=test")
    rows = man.splits["valid"]["rows"]
    valid = score(spark.read.parquet(fs.spark_uri(man.split_path("valid"))), bc, ec.batch_rows).select("score", "label")
    if rows > ec.calibration_rows:
        valid = valid.sample(False, ec.calibration_rows / rows, seed=0)
    t = valid.toArrow()
    a, b = fit_platt(np.asarray(t.column("score")), np.asarray(t.column("label")))
    p = F.least(F.greatest("score", F.lit(EPS)), F.lit(1 - EPS))
    z = F.log(p) - F.log1p(-p)  # psrq.evaluation.calibration.logit, in Spark
    log.info("Platt scaling fitted on %d valid rows: a=%.4f, b=%.4f", t.num_rows, a, b)
    return (preds.withColumn("score", 1 / (1 + F.exp(-(F.lit(a) * z + F.lit(b))))),
            {"method": "platt", "a": a, "b": b, "valid_rows": t.num_rows})


@tracked(eval_runs)
def evaluate_stage(job: JobContext) -> EvalResult:
    cfg, spark = job.cfg, job.session
    ec, tc = cfg.evaluate, cfg.train
    man = SamplesManifest.read(cfg.samples_root())
    ident, ckpt_dir = identity_and_folder(cfg, man)
    ckpt = load_checkpoint(ckpt_dir, best=True)  # the best validation's weights
    if ckpt is None:
        raise EvaluationError(f"no trained {tc.model} (seed {tc.seed}) with these training settings for the samples at "
                              f"{cfg.samples_root()} (run {ident.key}, looked in {ckpt_dir}): run jobs/train_ranker.py "
                              "with the same settings first")
    check_compatible(ckpt, checkpoint_meta(ident), f"{ckpt_dir}/{CHECKPOINT} ")
    eid = EvalIdentity(train_key=ident.key, model=tc.model, step=int(ckpt["step"]), weights=weights_hash(ckpt["model"]),
                       split=ec.split, samples=man.key, calibration=ec.calibrate)
    eval_id = eid.eval_id
    engine = job.engine
    metrics_path = cfg.table_path("eval_metrics")
    reads_content = needs_content(tc.model, tc.model_options)
    if engine.exists(metrics_path):
        done = engine.read(metrics_path).filter(F.col("eval_id") == eval_id).limit(1).collect()
        if done:
            log.info("evaluation %s already recorded in %s: reporting it", eval_id, metrics_path)
            return _summary(done[0].asDict(), "already done", reads_content)
    content = read_content_bytes(content_file(cfg.samples_root(), man)) if reads_content else None
    bundle = bundle_from_checkpoint(ckpt, eval_id, model_args(cfg, man), content)
    bc = spark.sparkContext.broadcast(bundle)
    split_path = man.split_path(ec.split)
    pred_path = f"{cfg.table_path('predictions').rstrip('/')}/{eval_id}"
    # one app transaction per evaluation identity: a crash after the predictions commit
    # re-uses them (they are this identity's), never another model state's
    txn = AppTxn(f"psrq.evaluate.{eval_id}", cfg.run.run_id)
    log.info("scoring %s rows of %s with %s (step %d, weights %s)", f"{man.splits[ec.split]['rows']:,}", ec.split,
             tc.model, eid.step, eid.weights)
    try:
        preds, calibration = calibrated(spark, man, bc, ec, score(spark.read.parquet(fs.spark_uri(split_path)), bc,
                                                                   ec.batch_rows))
        engine.write(preds, pred_path, "overwrite", txn, description=f"predictions of {eval_id}")
    finally:
        bc.unpersist()
    metrics = evaluate_predictions(engine.read(pred_path), ec.gauc)
    settings: dict = {s: getattr(cfg, s).model_dump(mode="json") for s in ("dataset", "codebooks", "samples", "train",
                                                                           "evaluate")}
    if calibration:
        settings["calibration"] = calibration
    what = Evaluated(eval_id, tc.model, tc.seed, ckpt_dir, eid.step, ident.key, eid.weights, settings, pred_path)
    record = eval_record(cfg, man, what, metrics, datetime.now(timezone.utc))
    engine.write(spark.createDataFrame([record], EVAL_METRICS), metrics_path, "append", txn,
                 description=f"metrics of {eval_id}")
    cold = (f"{metrics['cold_auc']:.4f}" if metrics["cold_auc"] is not None
            else "n/a (no cold rows)" if not metrics["cold_rows"] else "n/a (the cold rows have one label)")
    log.info("%s on %s: AUC %.4f, cold AUC %s, logloss %.4f", tc.model, ec.split, metrics["auc"], cold, metrics["logloss"])
    return _summary(record, "evaluated", reads_content)
