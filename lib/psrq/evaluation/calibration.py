"""Platt scaling (pure numpy): probabilities recalibrated as sigmoid(a·logit(p) + b), with a
and b fitted by Newton's method to the Logloss of a held-out split (the valid split, never
the one evaluated). A monotone map: AUCs are unchanged, Logloss and calibration error move."""
from __future__ import annotations

import numpy as np

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the logit


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(scores: np.ndarray, labels: np.ndarray, steps: int = 50, l2: float = 1e-6) -> tuple[float, float]:
    """(a, b) minimising the mean Logloss of sigmoid(a·logit(score) + b) on these rows (a tiny
    ridge keeps one-class or separable rows finite). Starts from the identity map (1, 0)."""
    z, y = logit(scores), np.asarray(labels, dtype=np.float64)
    if len(z) == 0:
        raise ValueError("no rows to fit the calibration on")
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / len(z) + l2 * (w - [1.0, 0.0])
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(z) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def apply_platt(scores: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(a * logit(scores) + b)))
