"""One row of eval_metrics (psrq.schemas.EVAL_METRICS), built in one place for a trained
model and for a non-learned floor: what was evaluated, on which samples and split, and its
metrics."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import NotRequired, Optional, TypedDict


class Metrics(TypedDict):
    """What eval_metrics keeps of an evaluation's metrics (psrq.evaluation.metrics.evaluate_predictions):
    None where a metric is undefined (no cold rows, one label, GAUC off)."""

    rows: int
    cold_rows: int
    auc: float
    cold_auc: Optional[float]
    logloss: float
    gauc: Optional[float]
    calibration_error: Optional[float]


RECORDED = tuple(Metrics.__annotations__)


class FloorResult(Metrics):
    """A floor's evaluation as psrq.evaluation.floors.floors_stage reports it."""

    status: str  # evaluated | already done
    eval_id: str
    tracking: NotRequired[Optional[dict]]  # the MLflow run (psrq.tracking.store)


@dataclass(frozen=True)
class Evaluated:
    """What an evaluation scored: a trained model's weights (its checkpoint and step, its
    training's identity, a hash of the weights), or a floor (empty checkpoint)."""

    eval_id: str
    model: str
    seed: int
    checkpoint: str
    checkpoint_step: int
    train_identity: str
    weights: str
    config: dict        # recorded as JSON: the settings that made it
    predictions: str    # its predictions table ("" for a floor)


def eval_record(cfg, man, what: Evaluated, metrics: dict, at: datetime) -> dict:
    """The eval_metrics row of `what` scored on cfg's evaluate.split of the samples `man`."""
    return {**asdict(what), "run_id": cfg.run.run_id, "evaluated_at": at, "dataset": cfg.dataset.name,
            "split": cfg.evaluate.split, "codebook_version": man.codebook_version, "samples": man.key,
            "data_versions": json.dumps(man.source_versions, sort_keys=True),
            "config": json.dumps(what.config, sort_keys=True), **{k: metrics.get(k) for k in RECORDED}}
