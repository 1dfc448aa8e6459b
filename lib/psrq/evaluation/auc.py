"""Exact ROC AUC as rank statistics, in pieces that add up across partitions.

AUC = P(score of a random positive > score of a random negative) + 0.5 P(tie)
    = sum over distinct scores s of pos(s) * (neg(< s) + neg(s) / 2) / (P * N).

Spark groups the predictions by score (ties fall into one row) and range-partitions the
groups, so every partition holds a contiguous score interval. Each partition reports its
counts and its *local* numerator, computed with negatives below it in the partition only;
the driver orders the few partition summaries by score and adds each partition's positives
times the negatives of all partitions before it. Sums are kept doubled, as integers, so the
result is exact (int64 holds 2 * P * N up to ~3e9 rows of each class).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psrq.errors import PsrqError


class EvaluationError(PsrqError):
    """A metric cannot be computed from these predictions."""


@dataclass(frozen=True)
class AucPiece:
    """One contiguous score interval: the lowest score, its positives and negatives, and
    2 * sum_s pos(s) * (neg_in_piece(< s) + neg(s) / 2)."""

    low: float
    pos: int
    neg: int
    twice_local: int


def auc_piece(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> AucPiece | None:
    """scores: distinct scores of the piece (any order), with their positive and negative
    counts."""
    if len(scores) == 0:
        return None
    order = np.argsort(scores, kind="stable")
    p, n = pos[order].astype(np.int64), neg[order].astype(np.int64)
    below = np.cumsum(n) - n
    return AucPiece(float(scores[order[0]]), int(p.sum()), int(n.sum()), int(np.sum(p * (2 * below + n))))


def combine(pieces: list[AucPiece | None], what: str = "predictions") -> float:
    kept = sorted((p for p in pieces if p is not None), key=lambda p: p.low)
    total_pos = sum(p.pos for p in kept)
    total_neg = sum(p.neg for p in kept)
    if total_pos == 0 or total_neg == 0:
        only = "no rows" if total_pos + total_neg == 0 else f"only label {1 if total_pos else 0} ({total_pos + total_neg:,} rows)"
        raise EvaluationError(f"AUC needs both labels, but the {what} hold {only}")
    twice, neg_before = 0, 0
    for p in kept:
        twice += p.twice_local + 2 * p.pos * neg_before
        neg_before += p.neg
    return twice / (2.0 * total_pos * total_neg)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The same statistic on one array (per user group, and as the reference the Spark
    version is tested against)."""
    s, inv = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    y = np.asarray(labels).astype(np.int64)
    pos = np.bincount(inv, weights=y, minlength=len(s)).astype(np.int64)
    cnt = np.bincount(inv, minlength=len(s))
    return combine([auc_piece(s, pos, cnt - pos)])
