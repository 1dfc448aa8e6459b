"""What a tracked run holds, built from a stage's result (pure: no MLflow, no storage).

A run is found again by its kind and key (the stage's own identity: a fit's identity, a
training's, an evaluation's eval_id), so a stage that reports "already done" links to the run
of the time it did the work instead of adding another (psrq.tracking.store)."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psrq.evaluation.record import FloorResult
    from psrq.evaluation.stage import EvalResult
    from psrq.quant.artifact import CodebookManifest
    from psrq.results import StageResult
    from psrq.serving.stage import ExportResult
    from psrq.training.stage import TrainResult

MAX_METRICS = 500  # a codebook's diagnostics flatten to hundreds of figures; more is noise in a UI
MAX_PARAM = 6000   # MLflow's limit on a parameter's value


@dataclass
class TrackedRun:
    """kind: fit, train, evaluate, floor, cell, experiment, search; key: its identity.
    curves: (metric, value, step) points (a training's validation curve). texts: artifact
    path -> content; files: artifact path -> a location the storage layer reads; model: the
    location of an MLflow model folder, logged as the run's model (an export's)."""

    kind: str
    key: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    model: str | None = None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as dotted keys (`text.layers.0.perplexity`)."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of `value` (bools and strings left out), at most MAX_METRICS."""
    out = {}
    for k, v in flatten(value, prefix).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
            if len(out) == MAX_METRICS:
                break
    return out


def params(value: dict) -> dict[str, str]:
    """Flattened settings as MLflow parameters (strings within its length limit)."""
    return {k: ("" if v is None else str(v))[:MAX_PARAM] for k, v in flatten(value).items()}


def doc(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def versions_read(source_versions: dict) -> dict[str, str]:
    """Tags naming the Delta table versions a samples build read."""
    return {f"delta.read.{name}": str(v) for name, v in source_versions.items()}


def fit_run(manifest: "CodebookManifest", codebook_dir: str) -> TrackedRun:
    """A codebook fit (the manifest of psrq.catalog.fit.fit_stage's version)."""
    result: dict[str, Any] = dict(manifest)
    source = result.get("source") or {}
    return TrackedRun(
        "fit", result["fit_identity"], f"fit {result['method']} {result['version']}",
        params=params({"method": result["method"], "spec": result.get("spec"), "seed": result.get("seed"),
                       "sample": result.get("sample"), "normalisation": result.get("normalisation"),
                       "kmeans_backend": result.get("kmeans_backend"), "run_id": result.get("run_id")}),
        metrics={**numbers(result.get("diagnostics") or {}, "diag"), "fit_seconds": float(result.get("fit_seconds", 0))},
        tags={"psrq.codebook_version": result["version"], "delta.read.items": str(source.get("delta_version")),
              "delta.read.items.table": str(source.get("table"))},
        files={"codebook/manifest.json": f"{codebook_dir}/manifest.json",
               "codebook/code_distributions.png": f"{codebook_dir}/code_distributions.png"})


def _document(result: "StageResult") -> str:
    """A result as its run's JSON artifact: how it ran this time (status, tracking) left out."""
    return doc({k: v for k, v in result.as_dict().items() if k not in ("status", "tracking")})


def train_run(result: "TrainResult", source_versions: dict) -> TrackedRun:
    """A training (psrq.training.stage.train_stage's record): the validation curve per step."""
    curves = [(k, float(v), int(point["step"])) for point in result.curve
              for k, v in point.items() if k not in ("step", "epoch") and isinstance(v, (int, float))]
    summary = {"valid": result.valid, "train_loss": result.train_loss, "steps": result.steps,
               "best_step": result.best_step, "samples_per_second": result.samples_per_second}
    return TrackedRun(
        "train", result.identity, f"train {result.model} seed {result.settings['seed']}",
        params=params(result.settings), metrics=numbers(summary), curves=curves,
        tags={"psrq.samples": result.settings["samples"], "psrq.codebook_version": result.codebook_version,
              "psrq.checkpoint": result.checkpoint, **versions_read(source_versions)},
        texts={"train_result.json": _document(result)})


def eval_run(result: "EvalResult", written: dict[str, Any]) -> TrackedRun:
    """An evaluation (psrq.evaluation.stage.evaluate_stage's summary). written: the Delta
    versions it wrote (predictions, eval_metrics)."""
    return TrackedRun(
        "evaluate", result.eval_id, f"evaluate {result.model} seed {result.seed} on {result.split}",
        params=params({k: getattr(result, k) for k in ("model", "seed", "split", "checkpoint_step", "train_identity",
                                                        "weights", "samples", "codebook_version", "calibration")}),
        metrics=numbers(result.metrics.recorded()),
        tags={"psrq.samples": result.samples, "psrq.codebook_version": result.codebook_version,
              "psrq.train_identity": result.train_identity, **versions_read(json.loads(result.data_versions or "{}")),
              **{f"delta.write.{name}": str(v) for name, v in written.items()}},
        texts={"evaluation.json": _document(result)})


def floor_run(name: str, result: "FloorResult", split: str, samples: str, source_versions: dict) -> TrackedRun:
    """One non-learned floor's evaluation (psrq.evaluation.floors.floors_stage)."""
    return TrackedRun("floor", result.eval_id, f"floor {name} on {split}",
                      params={"floor": name, "split": split, "samples": samples},
                      metrics=numbers(result.recorded()), tags={"psrq.samples": samples, **versions_read(source_versions)})


def experiment_run(name: str, dataset: str, seeds: list[int]) -> TrackedRun:
    """A parent: one experiment matrix on one dataset (its cells and floors are children; the
    report is attached when it is written). Re-running the matrix adds to the same run."""
    return TrackedRun("experiment", f"{dataset}/{name}", f"{name} on {dataset}",
                      params={"experiment": name, "dataset": dataset, "seeds": str(seeds)})


def cell_run(experiment: str, cell: str, seed: int, train_identity: str, settings: dict) -> TrackedRun:
    """A parent: one cell of a matrix at one seed (its training and evaluation are children);
    its test metrics are set when they are known."""
    return TrackedRun("cell", f"{experiment}/{cell}/{seed}/{train_identity}", f"{experiment} {cell} seed {seed}",
                      params=params({"experiment": experiment, "cell": cell, "seed": seed, **settings}),
                      tags={"psrq.train_identity": train_identity})


def search_run(dataset: str, model: str, space: dict, seeds: list[int], select_on: str) -> TrackedRun:
    """A parent: one model's tuning search (its trials are children)."""
    return TrackedRun("search", f"{dataset}/{model}/{doc([space, seeds, select_on])}", f"tune {model} on {dataset}",
                      params=params({"model": model, "dataset": dataset, "space": doc(space), "seeds": str(seeds),
                                     "select_on": select_on}))


def trial_run(model: str, setting: dict, seeds: list[int]) -> TrackedRun:
    """A parent: one setting of a search, trained once per seed (the trainings are children)."""
    return TrackedRun("trial", f"{model}/{doc([setting, seeds])}", f"trial {model} {setting}",
                      params=params({"model": model, **{f"train.{k}": v for k, v in setting.items()}}))


def export_run(result: "ExportResult", model: str | None) -> TrackedRun:
    """A ranker exported for serving (psrq.serving.stage.export_stage): `model`, the export's
    MLflow model folder, becomes the run's logged model (loadable as models:/<model id>)."""
    m = result.manifest
    return TrackedRun(
        "export", f"{result.model}-{result.train_identity}-{result.weights}", f"export {result.model} step {result.step}",
        params=params({k: m.get(k) for k in ("model", "train_identity", "step", "weights", "samples",
                                              "codebook_version", "history_len")}),
        metrics=numbers({"parity_gap": result.parity_gap, "items": result.items}),
        tags={"psrq.codebook_version": result.codebook_version, "psrq.train_identity": result.train_identity,
              "psrq.samples": result.samples, "psrq.export": result.path,
              f"delta.read.{m['vocab_table'].rstrip('/').rsplit('/', 1)[-1]}": str(m["vocab_version"])},
        texts={"export.json": doc({**m, "path": result.path})}, model=model)
