"""Non-learned floors: what a ranker must beat to be worth training.

Each floor scores the evaluated rows from the train split alone (a row's own label never
reaches its score):
- global_rate: the train split's positive rate (AUC 0.5; the Logloss floor);
- item_popularity: the item's train events n mapped into (0, 1) by (n + 1) / (n + 1 + c),
  c chosen so that an item with the mean count scores the global rate (its AUC is
  popularity's; its Logloss only that of this mapping);
- item_rate: the item's train positive rate, smoothed toward the global rate by `prior`
  pseudo-events (items without train events get the global rate);
- user_rate: the same per user.
They are recorded in eval_metrics like a model (model `floor:<name>`), with the same
metrics, so reports can show each model beside the best floor."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from psrq.evaluation.auc import EvaluationError
from psrq.evaluation.metrics import EPS, evaluate_predictions
from psrq.evaluation.record import Evaluated, FloorResult, Metrics, eval_record
from psrq.job import JobContext
from psrq.samples.layout import SamplesManifest
from psrq.schemas import EVAL_METRICS
from psrq.storage import AppTxn, fs
from psrq.tracking.stages import floors_runs
from psrq.tracking.store import tracked
from psrq.training.identity import EvalIdentity

log = logging.getLogger(__name__)
FLOORS = ("global_rate", "item_popularity", "item_rate", "user_rate")
PRIOR = 20.0  # pseudo-events at the global rate in the smoothed rates


def floor_scores(train: DataFrame, rows: DataFrame, prior: float = PRIOR) -> DataFrame:
    """rows (user_id, item_id, label, is_cold) with one score column per floor, from `train`
    (user_id, item_id, label) only."""
    t = train.agg(F.avg(F.col("label").cast("double")).alias("g"), F.count(F.lit(1)).alias("n"),
                  F.countDistinct("item_id").alias("items")).collect()[0]
    if not t["n"]:
        raise EvaluationError("the non-learned floors need train rows: the train split is empty")
    g, mean_events = float(t["g"]), t["n"] / t["items"]
    c = (mean_events + 1) * (1 - g) / max(g, EPS)  # the mean count maps to g
    items = train.groupBy("item_id").agg(F.count(F.lit(1)).alias("_in"), F.sum("label").alias("_ipos"))
    users = train.groupBy("user_id").agg(F.count(F.lit(1)).alias("_un"), F.sum("label").alias("_upos"))
    out = (rows.select("user_id", "item_id", "label", "is_cold")
           .join(items, "item_id", "left").join(users, "user_id", "left")
           .fillna(0, ["_in", "_ipos", "_un", "_upos"]))

    def clip(p: Column) -> Column:
        return F.least(F.greatest(p, F.lit(EPS)), F.lit(1 - EPS))

    def rate(pos: str, n: str) -> Column:
        return (F.col(pos) + F.lit(prior * g)) / (F.col(n) + F.lit(prior))

    return out.select(
        "user_id", "item_id", "label", "is_cold",
        F.lit(g).alias("global_rate"),
        clip((F.col("_in") + 1) / (F.col("_in") + 1 + F.lit(c))).alias("item_popularity"),
        rate("_ipos", "_in").alias("item_rate"),
        rate("_upos", "_un").alias("user_rate"))


def evaluate_floors(train: DataFrame, rows: DataFrame, gauc: bool = True, prior: float = PRIOR) -> dict[str, dict]:
    """Every floor's metrics on `rows` (the same metrics as a model's)."""
    scored = floor_scores(train, rows, prior).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return {name: evaluate_predictions(scored.withColumn("score", F.col(name)), gauc) for name in FLOORS}
    finally:
        scored.unpersist()


@tracked(floors_runs)
def floors_stage(job: JobContext) -> dict[str, FloorResult]:
    """The floors of evaluate.split (the train split's statistics), recorded in eval_metrics
    once per samples build and split: an evaluation that finds them reports the record."""
    cfg, spark = job.cfg, job.session
    ec = cfg.evaluate
    man = SamplesManifest.read(cfg.samples_root())
    ids = {name: EvalIdentity(train_key="floor", model=f"floor:{name}", step=0, weights=f"prior={PRIOR}", split=ec.split,
                              samples=man.key).eval_id for name in FLOORS}
    engine = job.engine
    metrics_path = cfg.table_path("eval_metrics")
    if engine.exists(metrics_path):
        done = {r["eval_id"]: r.asDict() for r in
                engine.read(metrics_path).filter(F.col("eval_id").isin(list(ids.values()))).collect()}
        if len(done) == len(ids):
            log.info("floors of %s already recorded in %s", ec.split, metrics_path)
            return {name: FloorResult(**Metrics.of(done[i]).recorded(), status="already done", eval_id=i)
                    for name, i in ids.items()}

    def split(name: str) -> DataFrame:
        return spark.read.parquet(fs.spark_uri(man.split_path(name)))

    metrics = evaluate_floors(split("train"), split(ec.split), ec.gauc)
    now = datetime.now(timezone.utc)
    records = [eval_record(cfg, man, Evaluated(ids[name], f"floor:{name}", 0, "", 0, "floor", f"prior={PRIOR}",
                                               {"floor": name, "prior": PRIOR, "from": "train split"}, ""), m, now)
               for name, m in metrics.items()]
    txn = AppTxn(f"psrq.floors.{man.key}.{ec.split}", cfg.run.run_id)
    engine.write(spark.createDataFrame(records, EVAL_METRICS), metrics_path, "append", txn,
                 description=f"floors of {ec.split} ({man.key})")
    return {name: FloorResult(**Metrics.of(m).recorded(), status="evaluated", eval_id=ids[name]) for name, m in metrics.items()}
