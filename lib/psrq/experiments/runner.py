"""Run an experiment matrix over seeds: per cell and seed, train and evaluate (Spark),
recording one row per (experiment, dataset, cell, seed, training identity) in the
experiment_results Delta table, and one row per non-learned floor (cells `floor:<name>`,
psrq.evaluation.floors) on the same test rows. Finished rows are skipped, so a killed run
resumes where it stopped; a cell whose settings changed (a tuned configuration) is a new
training identity and runs again, and the reports read each cell's newest row.

Data and semantic IDs are prepared once per dataset and quantizer (the samples' manifest
marks them done), or the pipeline's own are read where they are what a cell would build
(psrq.experiments.reuse: your own data's codebooks, IDs and samples); codebooks are fitted
once per quantizer (codebooks.seed), rankers once per seed (train.seed): the seeds measure
the ranker's variance, not the quantizer's."""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from psrq.config import Config
from psrq.errors import StorageError
from psrq.evaluation.metrics import format_metric
from psrq.experiments.matrix import INPUT_TABLES, Experiment, cell_config, dataset_config
from psrq.experiments.report import FLOOR
from psrq.experiments.reuse import PipelineArtifacts
from psrq.job import JobContext
from psrq.schemas import EXPERIMENT_RESULTS
from psrq.storage import AppTxn, fs

log = logging.getLogger(__name__)
RESULTS_TABLE = "experiment_results"


def results_path(dcfg: Config) -> str:
    return f"{dcfg.root().rstrip('/')}/{RESULTS_TABLE}"


def read_results(djob: JobContext, latest: bool = True):
    """The results table of djob's dataset configuration (dataset_config) as pandas (empty
    frame when nothing ran yet); latest: each (experiment, cell, seed)'s newest row only
    (what the reports show)."""
    import pandas as pd

    dcfg, engine = djob.cfg, djob.engine
    path = results_path(dcfg)
    if not engine.exists(path):
        return pd.DataFrame(columns=EXPERIMENT_RESULTS.fieldNames())
    res: pd.DataFrame = engine.read(path).toPandas()
    if latest and len(res):
        res = res.sort_values("finished_at").drop_duplicates(["experiment", "dataset", "cell", "seed"], keep="last")
    return res.reset_index(drop=True)


def importer(kind: str):
    """The import stage of a data set read from files (dataset.kind movielens or lastfm)."""
    if kind == "movielens":
        from psrq.data.import_movielens import import_movielens

        return import_movielens
    from psrq.data.import_lastfm import import_lastfm

    return import_lastfm


def prepare_data(djob: JobContext) -> None:
    """The dataset's items and interactions tables (idempotent); djob: with the dataset's
    configuration (dataset_config)."""
    dcfg, engine = djob.cfg, djob.engine
    kind = dcfg.dataset.kind
    if kind == "synthetic":
        from psrq.data.generate import generate

        generate(djob)
    elif kind in ("movielens", "lastfm"):
        if not engine.exists(dcfg.table_path("interactions")):
            importer(kind)(djob)
        if dcfg.embed_text.output_column not in engine.read(dcfg.table_path("items")).columns:
            from psrq.data.embed_text import embed_text_stage

            embed_text_stage(djob)
    else:
        missing = [t for t in INPUT_TABLES if not engine.exists(dcfg.table_path(t))]
        if missing:
            raise StorageError(f"dataset {dcfg.dataset.name}: no {' and no '.join(missing)} table at "
                               f"{', '.join(dcfg.table_path(t) for t in missing)} (write your tables under storage.root: "
                               "docs/DATA.md)")


def prepare_method(job: JobContext, pipeline: PipelineArtifacts | None = None) -> Config:
    """job.cfg (a cell) with its samples ready: reading the pipeline's own codebooks, IDs and
    samples where they are what the cell would build (psrq.experiments.reuse), else its
    codebooks, semantic IDs and samples for codebooks.method under experiments.root, built
    once per quantizer."""
    from psrq.samples.build import build_samples
    from psrq.samples.layout import SamplesManifest

    c = job.cfg
    if pipeline is not None and (reused := pipeline.samples_for(job)) is not None:
        return reused
    if fs.exists(fs.join(c.samples_root(), SamplesManifest.FILE)):
        return c
    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage

    log.info("preparing %s: fit, assign, build samples", c.codebooks.method)
    fit_stage(job)
    assign(job)
    # the quantizer's cells share these samples: QARM's codes for whichever of them trains QARM
    build_samples(job.with_cfg(c.with_overrides({"samples.qarm.codes": True})))
    return c


def run_experiment(job: JobContext, exp: Experiment, seeds: list[int], progress=print) -> list[dict]:
    from psrq.evaluation.floors import floors_stage
    from psrq.evaluation.stage import evaluate_stage
    from psrq.samples.layout import SamplesManifest
    from psrq.tracking.runs import cell_run, numbers
    from psrq.training.identity import TrainIdentity
    from psrq.training.stage import train_stage

    spark, dcfg = job.session, dataset_config(job.cfg)
    djob = job.with_cfg(dcfg)
    prepare_data(djob)
    pipeline = PipelineArtifacts(job.cfg, progress)
    engine = djob.engine
    done = read_results(djob, latest=False)
    done = set(zip(done.experiment, done.cell, done.seed.astype(int), done.train_identity)) if len(done) else set()
    plan = []
    for cell in exp.cells:
        for seed in seeds:
            # the samples name the identity: the pipeline's, or built once per quantizer
            c = prepare_method(job.with_cfg(cell_config(dcfg, exp.cells[cell], seed)), pipeline)
            key = TrainIdentity.of(c.train, SamplesManifest.read(c.samples_root())).key
            if (exp.name, cell, seed, key) not in done:
                plan.append((cell, seed, c, key))
    progress(f"[{exp.name} on {dcfg.dataset.name}] {len(exp.cells) * len(seeds) - len(plan)} of "
             f"{len(exp.cells) * len(seeds)} cells done, {len(plan)} to run")

    def record(row: dict, what: str) -> None:
        engine.write(spark.createDataFrame([row], EXPERIMENT_RESULTS), results_path(dcfg), "append",
                     AppTxn(f"psrq.experiments.{exp.name}.{what}", 0), description=f"{exp.name}/{what}")

    rows = []
    for i, (cell, seed, c, key) in enumerate(plan, 1):
        t0 = time.time()
        tracked = cell_run(exp.name, cell, seed, key, {**exp.cells[cell], "model": c.train.model})
        with djob.tracker.parent(tracked):  # the cell's training and evaluation are its children
            trained = train_stage(job.with_cfg(c))
            t_train = time.time() - t0
            ev = evaluate_stage(job.with_cfg(c))
            m = ev.metrics
            tracked.metrics = numbers(m.recorded())
        row = {"experiment": exp.name, "dataset": dcfg.dataset.name, "cell": cell, "seed": seed, "model": c.train.model,
               "method": c.codebooks.method, "codebook_version": ev.codebook_version, "eval_id": ev.eval_id, **m.recorded(),
               "train_seconds": round(t_train, 1), "finished_at": datetime.now(timezone.utc),
               "train_identity": trained.identity, "steps": trained.steps, "best_step": trained.best_step,
               "curve": json.dumps(trained.curve)}
        record(row, f"{cell}.{seed}.{trained.identity}")
        rows.append(row)
        progress(f"[{exp.name} on {dcfg.dataset.name}] {i}/{len(plan)} {cell} seed {seed}: AUC {m.auc:.4f}, "
                 f"cold AUC {format_metric(m.cold_auc)}, logloss {m.logloss:.4f} ({trained.steps} steps, "
                 f"best at {trained.best_step}, {time.time() - t0:.0f}s)")
    ours = prepare_method(job.with_cfg(cell_config(dcfg, exp.cells[exp.ours], seeds[0])), pipeline)
    rows += run_floors(job.with_cfg(ours), exp, done, record, floors_stage)
    return rows


def run_floors(job: JobContext, exp: Experiment, done: set, record, floors_stage) -> list[dict]:
    """The floors' rows, once per experiment: they score the same test rows from the train
    split (job.cfg: the cell of `ours`; every quantizer's samples hold the same events)."""
    c = job.cfg
    from psrq.evaluation.floors import FLOORS

    if all((exp.name, f"{FLOOR}{name}", 0, "floor") in done for name in FLOORS):
        return []
    rows = []
    for name, m in floors_stage(job).items():
        if (exp.name, f"{FLOOR}{name}", 0, "floor") in done:
            continue
        row = {"experiment": exp.name, "dataset": c.dataset.name, "cell": f"{FLOOR}{name}", "seed": 0,
               "model": f"{FLOOR}{name}", "method": "-", "codebook_version": "-", "eval_id": m.eval_id,
               **m.recorded(), "train_seconds": 0.0, "finished_at": datetime.now(timezone.utc),
               "train_identity": "floor", "steps": None, "best_step": None, "curve": None}
        record(row, f"floor.{name}")
        rows.append(row)
    return rows
