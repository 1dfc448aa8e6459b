"""The tracked runs of each stage's result, with what they read from storage besides it
(the samples manifest's source versions, the Delta versions an evaluation wrote)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from psrq.tracking.runs import TrackedRun, eval_run, export_run, fit_run, floor_run, train_run

if TYPE_CHECKING:
    from psrq.catalog.fit import FitResult
    from psrq.evaluation.record import FloorResult
    from psrq.evaluation.stage import EvalResult
    from psrq.job import JobContext
    from psrq.results import TrackedResult
    from psrq.serving.stage import ExportResult
    from psrq.training.stage import TrainResult

Pairs = list[tuple[TrackedRun, "TrackedResult"]]  # (run, the result that gets its reference)


def _source_versions(job: "JobContext") -> dict:
    from psrq.samples.layout import SamplesManifest

    return SamplesManifest.read(job.cfg.samples_root()).source_versions


def fit_runs(job: "JobContext", result: "FitResult") -> Pairs:
    from psrq.storage import fs

    return [(fit_run(result.manifest, fs.join(job.cfg.codebooks_root(), result.version)), result)]


def train_runs(job: "JobContext", result: "TrainResult") -> Pairs:
    return [(train_run(result, _source_versions(job)), result)]


def eval_runs(job: "JobContext", result: "EvalResult") -> Pairs:
    cfg = job.cfg
    written = {"predictions": job.engine.version(result.predictions),
               "eval_metrics": job.engine.version(cfg.table_path("eval_metrics"))}
    return [(eval_run(result, written), result)]


def floors_runs(job: "JobContext", result: dict[str, "FloorResult"]) -> Pairs:
    from psrq.samples.layout import SamplesManifest

    man = SamplesManifest.read(job.cfg.samples_root())
    return [(floor_run(name, f, job.cfg.evaluate.split, man.key, man.source_versions), f) for name, f in result.items()]


def export_runs(job: "JobContext", result: "ExportResult") -> Pairs:
    from psrq.serving.stage import MLFLOW_MODEL
    from psrq.storage import fs

    model = fs.join(result.path, result.manifest.get("mlflow_model", MLFLOW_MODEL))
    return [(export_run(result, model if fs.exists(fs.join(model, "MLmodel")) else None), result)]
