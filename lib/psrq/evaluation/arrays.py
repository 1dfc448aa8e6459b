"""The evaluation's metrics on in-memory arrays (validation during training): the same
definitions as the Spark path (psrq.evaluation.metrics), the same exact AUC."""
from __future__ import annotations

import numpy as np

from psrq.evaluation.auc import EvaluationError, auc

EPS = 1e-7             # log loss clips probabilities to [EPS, 1 - EPS]
CALIBRATION_BINS = 10  # expected calibration error over equal-width score bins


def calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the row-weighted mean over score bins of
    |mean score - positive rate| (0: the probabilities are the observed rates)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    b = np.clip((s * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, weights=s, minlength=bins) - np.bincount(b, weights=y, minlength=bins))
    return float(gap.sum() / max(n.sum(), 1))


def _auc_or_none(scores, labels):
    try:
        return auc(scores, labels)
    except EvaluationError:  # one label only: no AUC, not a failure
        return None


def metrics(scores: np.ndarray, labels: np.ndarray, cold: np.ndarray) -> dict:
    """rows, All AUC, Cold AUC (None where a label is missing), Logloss, calibration error."""
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    c = np.asarray(cold) == 1
    return {"rows": int(len(y)), "auc": _auc_or_none(p, y), "cold_auc": _auc_or_none(p[c], y[c]),
            "logloss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else None,
            "calibration_error": calibration_error(p, y)}
