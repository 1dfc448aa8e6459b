"""Stage: evaluate a trained ranker on a split of the samples, in Spark.

checkpoint (of train.model, train.seed on these samples) -> broadcast -> scores on the
executors -> predictions Delta table -> exact All AUC, Cold AUC, Logloss, GAUC from the
table -> one row in the eval_metrics Delta table. Both writes carry the app transaction
(eval id, run.run_id): a re-run of the same run recomputes the metrics from the stored
predictions and commits nothing new."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from psrq.config import Config
from psrq.content import CONTENT_FILE, read_content_bytes
from psrq.evaluation.auc import EvaluationError
from psrq.evaluation.metrics import evaluate_predictions
from psrq.evaluation.scoring import bundle_from_checkpoint, score
from psrq.models.ranker import NEEDS_CONTENT
from psrq.schemas import EVAL_METRICS
from psrq.storage import AppTxn, open_engine
from psrq.training.loop import check_compatible, load_checkpoint
from psrq.training.stage import checkpoint_dir, content_file, model_args, run_meta, samples_key, samples_manifest

log = logging.getLogger(__name__)


def evaluate_stage(spark, cfg: Config) -> dict:
    ec, tc = cfg.evaluate, cfg.train
    man = samples_manifest(cfg.samples.path)
    ckpt_dir = checkpoint_dir(cfg, man)
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt is None:
        raise EvaluationError(f"no trained {tc.model} (seed {tc.seed}) for the samples at {cfg.samples.path} "
                              f"(looked in {ckpt_dir}): run jobs/train_ranker.py with the same settings first")
    meta = run_meta(cfg, man)
    check_compatible(ckpt, meta)
    content = read_content_bytes(content_file(cfg.samples.path, man)) if tc.model in NEEDS_CONTENT else None
    eval_id = f"{Path(ckpt_dir).name}-{ec.split}"
    bundle = bundle_from_checkpoint(ckpt, f"{ckpt_dir}@{ckpt['step']}", model_args(cfg, man), content)
    bc = spark.sparkContext.broadcast(bundle)
    split_path = man["splits"][ec.split]["path"]
    engine = open_engine(spark, cfg.storage.engine)
    pred_path = f"{cfg.table_path('predictions').rstrip('/')}/{eval_id}"
    txn = AppTxn(f"psrq.evaluate.{eval_id}", cfg.run.run_id)
    log.info("scoring %s rows of %s with %s (step %d)", f"{man['splits'][ec.split]['rows']:,}", ec.split, tc.model, ckpt["step"])
    try:
        engine.write(score(spark.read.parquet(split_path), bc, ec.batch_rows), pred_path, "overwrite", txn,
                     description=f"predictions of {eval_id}")
    finally:
        bc.unpersist()
    metrics = evaluate_predictions(engine.read(pred_path), ec.gauc)
    record = {
        "eval_id": eval_id, "run_id": cfg.run.run_id, "evaluated_at": datetime.now(timezone.utc), "dataset": cfg.dataset.name,
        "model": tc.model, "seed": tc.seed, "split": ec.split, "codebook_version": man["codebook_version"],
        "checkpoint": ckpt_dir, "checkpoint_step": int(ckpt["step"]), "samples": samples_key(man),
        "data_versions": json.dumps(man["source_versions"], sort_keys=True),
        "config": json.dumps({s: getattr(cfg, s).model_dump(mode="json") for s in ("dataset", "codebooks", "samples", "train", "evaluate")},
                             sort_keys=True),
        "predictions": pred_path, "rows": metrics["rows"], "cold_rows": metrics["cold_rows"], "auc": metrics["auc"],
        "cold_auc": metrics["cold_auc"], "logloss": metrics["logloss"], "gauc": metrics.get("gauc"),
    }
    engine.write(spark.createDataFrame([record], EVAL_METRICS), cfg.table_path("eval_metrics"), "append", txn,
                 description=f"metrics of {eval_id}")
    log.info("%s on %s: AUC %.4f, cold AUC %s, logloss %.4f", tc.model, ec.split, metrics["auc"], metrics["cold_auc"], metrics["logloss"])
    return {**{k: v for k, v in record.items() if k not in ("config",)}, "evaluated_at": record["evaluated_at"].isoformat(),
            "metrics": metrics, "content_file": CONTENT_FILE if content else None}
