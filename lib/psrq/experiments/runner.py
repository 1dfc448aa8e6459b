"""Run an experiment matrix over seeds: per cell and seed, train and evaluate (Spark),
recording one row per (experiment, dataset, cell, seed) in the experiment_results Delta
table. Finished rows are skipped, so a killed run resumes where it stopped.

Data and semantic IDs are prepared once per dataset and quantizer (the samples' manifest
marks them done); codebooks are fitted once per quantizer (codebooks.seed), rankers once
per seed (train.seed): the seeds measure the ranker's variance, not the quantizer's."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from pyspark.sql import types as T

from psrq.cli import format_metric
from psrq.config import Config
from psrq.experiments.matrix import Experiment, cell_config, dataset_config
from psrq.storage import AppTxn, fs, open_engine

log = logging.getLogger(__name__)
RESULTS_TABLE = "experiment_results"
RESULTS = T.StructType([
    T.StructField("experiment", T.StringType(), False), T.StructField("dataset", T.StringType(), False),
    T.StructField("cell", T.StringType(), False), T.StructField("seed", T.LongType(), False),
    T.StructField("model", T.StringType(), False), T.StructField("method", T.StringType(), False),
    T.StructField("codebook_version", T.StringType(), False), T.StructField("eval_id", T.StringType(), False),
    T.StructField("rows", T.LongType(), False), T.StructField("cold_rows", T.LongType(), False),
    T.StructField("auc", T.DoubleType(), False), T.StructField("cold_auc", T.DoubleType(), True),
    T.StructField("logloss", T.DoubleType(), False), T.StructField("gauc", T.DoubleType(), True),
    T.StructField("train_seconds", T.DoubleType(), False), T.StructField("finished_at", T.TimestampType(), False),
])


def results_path(dcfg: Config) -> str:
    return f"{dcfg.storage.root.rstrip('/')}/{RESULTS_TABLE}"


def read_results(spark, dcfg: Config):
    """The results table as pandas (empty frame when nothing ran yet)."""
    import pandas as pd

    engine = open_engine(spark, dcfg.storage.engine)
    path = results_path(dcfg)
    if not engine.exists(path):
        return pd.DataFrame(columns=RESULTS.fieldNames())
    return engine.read(path).toPandas()


def prepare_data(spark, dcfg: Config) -> None:
    """The dataset's items and interactions tables (idempotent)."""
    engine = open_engine(spark, dcfg.storage.engine)
    kind = dcfg.dataset.kind
    if kind == "synthetic":
        from psrq.stages.generate import generate

        generate(spark, dcfg)
    elif kind == "movielens":
        if not engine.exists(dcfg.table_path("interactions")):
            from psrq.stages.movielens import import_movielens

            import_movielens(spark, dcfg)
        if dcfg.embed_text.output_column not in engine.read(dcfg.table_path("items")).columns:
            from psrq.stages.embed_text import embed_text_stage

            embed_text_stage(spark, dcfg)
    elif not engine.exists(dcfg.table_path("interactions")):
        raise FileNotFoundError(f"dataset {dcfg.dataset.name}: no interactions table at {dcfg.table_path('interactions')}")


def prepare_method(spark, c: Config) -> dict:
    """Codebooks, semantic IDs and samples for c.codebooks.method, unless already built."""
    from psrq.samples import SamplesManifest
    from psrq.stages.samples import build_samples

    if fs.exists(fs.join(c.samples_root(), SamplesManifest.FILE)):
        return SamplesManifest.read(c.samples.path).raw
    from psrq.stages.assign import assign
    from psrq.stages.codebooks import fit_stage

    log.info("preparing %s: fit, assign, build samples", c.codebooks.method)
    fit_stage(spark, c)
    assign(spark, c)
    return build_samples(spark, c)


def run_experiment(spark, cfg: Config, exp: Experiment, seeds: list[int], progress=print) -> list[dict]:
    from psrq.evaluation.stage import evaluate_stage
    from psrq.training.stage import train_stage

    dcfg = dataset_config(cfg)
    prepare_data(spark, dcfg)
    engine = open_engine(spark, dcfg.storage.engine)
    done = read_results(spark, dcfg)
    done = set(zip(done.experiment, done.cell, done.seed.astype(int))) if len(done) else set()
    todo = [(cell, seed) for cell in exp.cells for seed in seeds if (exp.name, cell, seed) not in done]
    progress(f"[{exp.name} on {dcfg.dataset.name}] {len(exp.cells) * len(seeds) - len(todo)} of "
             f"{len(exp.cells) * len(seeds)} cells done, {len(todo)} to run")
    rows = []
    for i, (cell, seed) in enumerate(todo, 1):
        c = cell_config(dcfg, exp.cells[cell], seed)
        t0 = time.time()
        prepare_method(spark, c)
        trained = train_stage(c, spark, progress=False)
        t_train = time.time() - t0
        ev = evaluate_stage(spark, c)
        m = ev["metrics"]
        row = {"experiment": exp.name, "dataset": dcfg.dataset.name, "cell": cell, "seed": seed, "model": c.train.model,
               "method": c.codebooks.method, "codebook_version": ev["codebook_version"], "eval_id": ev["eval_id"],
               "rows": m["rows"], "cold_rows": m["cold_rows"], "auc": m["auc"], "cold_auc": m["cold_auc"],
               "logloss": m["logloss"], "gauc": m.get("gauc"), "train_seconds": round(t_train, 1),
               "finished_at": datetime.now(timezone.utc)}
        engine.write(spark.createDataFrame([row], RESULTS), results_path(dcfg), "append",
                     AppTxn(f"psrq.experiments.{exp.name}.{cell}.{seed}", 0), description=f"{exp.name}/{cell}/seed {seed}")
        rows.append(row)
        progress(f"[{exp.name} on {dcfg.dataset.name}] {i}/{len(todo)} {cell} seed {seed}: AUC {m['auc']:.4f}, "
                 f"cold AUC {format_metric(m['cold_auc'])}, logloss {m['logloss']:.4f} ({trained['steps']} steps, {time.time() - t0:.0f}s)")
    return rows
