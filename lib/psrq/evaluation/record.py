"""One row of eval_metrics (psrq.schemas.EVAL_METRICS), built in one place for a trained
model and for a non-learned floor: what was evaluated, on which samples and split, and its
metrics."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Optional

from psrq.results import TrackedResult


@dataclass
class Metrics:
    """What eval_metrics keeps of an evaluation's metrics (psrq.evaluation.metrics.evaluate_predictions):
    None where a metric is undefined (no cold rows, one label, GAUC off)."""

    rows: int
    cold_rows: int
    auc: float
    cold_auc: Optional[float]
    logloss: float
    gauc: Optional[float]
    calibration_error: Optional[float]

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "Metrics":
        """The recorded metrics of a mapping that has them (an eval_metrics row, a metrics dict)."""
        return cls(**{k: values.get(k) for k in RECORDED})  # type: ignore[arg-type]  # the row is EVAL_METRICS

    def recorded(self) -> dict[str, Any]:
        """The metrics alone, by name (a floor's result has more fields)."""
        return {k: getattr(self, k) for k in RECORDED}


RECORDED = tuple(f.name for f in fields(Metrics))


@dataclass
class FloorResult(Metrics, TrackedResult):
    """A floor's evaluation as psrq.evaluation.floors.floors_stage reports it: its metrics,
    and how it ran."""

    status: str  # evaluated | already done
    eval_id: str


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


def eval_record(cfg, man, what: Evaluated, metrics: Mapping[str, Any], at: datetime) -> dict:
    """The eval_metrics row of `what` scored on cfg's evaluate.split of the samples `man`."""
    return {**asdict(what), "run_id": cfg.run.run_id, "evaluated_at": at, "dataset": cfg.dataset.name,
            "split": cfg.evaluate.split, "codebook_version": man.codebook_version, "samples": man.key,
            "data_versions": json.dumps(man.source_versions, sort_keys=True),
            "config": json.dumps(what.config, sort_keys=True), **{k: metrics.get(k) for k in RECORDED}}
