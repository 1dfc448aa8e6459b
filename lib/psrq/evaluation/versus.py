"""A model's metrics against the non-learned floors (pure): for each metric, the difference to
the floor that does best on it (AUC, Cold AUC, GAUC: the highest; Logloss and calibration
error: the lowest), so a report shows where probabilities, not only the ranking, beat what
needs no training."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HIGHER = ("auc", "cold_auc", "gauc")
LOWER = ("logloss", "calibration_error")
NAMES = {"auc": "AUC", "cold_auc": "cold AUC", "gauc": "GAUC", "logloss": "logloss", "calibration_error": "calib. error"}


def versus_floors(metrics: Mapping[str, Any], floors: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """metric -> {floor, floor_value, diff (model - floor)}, for the metrics both have."""
    out = {}
    for m in (*HIGHER, *LOWER):
        values = {name: f[m] for name, f in floors.items() if f.get(m) is not None}
        if metrics.get(m) is None or not values:
            continue
        best = (max if m in HIGHER else min)(values, key=lambda n: values[n])
        out[m] = {"floor": best, "floor_value": values[best], "diff": metrics[m] - values[best]}
    return out


def format_versus(versus: dict[str, dict]) -> str:
    """One line: each metric's difference and the floor it is taken to ('better' is + for AUCs
    and - for Logloss and calibration error)."""
    return ", ".join(f"{NAMES[m]} {v['diff']:+.4f} ({v['floor']})" for m, v in versus.items())
