"""Arrow embedding columns (array<float> or float32 binary) to numpy, and their checks.

Pure numpy/pyarrow: used inside Spark tasks and testable without Spark.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


def _as_array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def embeddings_to_numpy(column, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (matrix float32 [n, dim], ok mask). Rows that are null or of another
    dimension are zero in the matrix and False in the mask. Values are not checked for
    NaN/Inf here (see embedding_problems)."""
    arr = _as_array(column)
    n = len(arr)
    out = np.zeros((n, dim), dtype=np.float32)
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        lengths = np.asarray(pa.compute.binary_length(arr).fill_null(-1), dtype=np.int64)
        ok = lengths == 4 * dim
        if ok.any():
            raw = arr.filter(pa.array(ok)).to_pylist()
            out[ok] = np.frombuffer(b"".join(raw), dtype="<f4").reshape(-1, dim)
        return out, ok
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise TypeError(f"embedding column must be array<float> or binary, not {arr.type}")
    if pa.types.is_fixed_size_list(arr.type):
        lengths = np.full(n, arr.type.list_size, dtype=np.int64)
        offsets = np.arange(n + 1, dtype=np.int64) * arr.type.list_size + arr.offset * arr.type.list_size
    else:
        offsets = np.asarray(arr.offsets, dtype=np.int64)  # honours slicing, unlike .values
        lengths = np.diff(offsets)
    valid = np.asarray(arr.is_valid(), dtype=bool)
    ok = valid & (lengths == dim)
    if ok.any():
        values = np.asarray(arr.values.cast(pa.float32()).fill_null(np.nan), dtype=np.float32)
        if ok.all() and offsets[0] + n * dim == offsets[-1]:
            out[:] = values[offsets[0] : offsets[-1]].reshape(n, dim)
        else:
            idx = offsets[:-1][ok][:, None] + np.arange(dim)
            out[ok] = values[idx]
    return out, ok


@dataclass
class EmbeddingReport:
    """Counts and a few example ids per problem kind, mergeable across partitions."""

    n_rows: int = 0
    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def add(self, kind: str, ids: np.ndarray, max_examples: int = 5) -> None:
        if len(ids) == 0:
            return
        self.counts[kind] = self.counts.get(kind, 0) + int(len(ids))
        ex = self.examples.setdefault(kind, [])
        ex.extend(int(i) for i in ids[: max(0, max_examples - len(ex))])


PROBLEM_TEXT = {
    "null": "have a null embedding",
    "wrong_dim": "have an embedding of the wrong dimension (expected {dim})",
    "non_finite": "have NaN or Inf values in the embedding",
    "all_zero": "have an all-zero embedding",
}


def classify(column, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix of an embedding column and each row's problem kind ('' when the row is fine),
    the first that applies of: null, wrong_dim, non_finite, all_zero."""
    arr = _as_array(column)
    matrix, ok = embeddings_to_numpy(arr, dim)
    valid = np.asarray(arr.is_valid(), dtype=bool)
    kinds = np.select([~valid, ~ok, ~np.isfinite(matrix).all(axis=1), ~matrix.any(axis=1)],
                      ["null", "wrong_dim", "non_finite", "all_zero"], "")
    return matrix, kinds


def checked_matrix(ids: np.ndarray, column, dim: int,
                   report: EmbeddingReport | None = None) -> tuple[np.ndarray, EmbeddingReport]:
    """Matrix of one batch of an embedding column, and its problems accumulated in `report`."""
    report = report or EmbeddingReport()
    ids = np.asarray(ids)
    matrix, kinds = classify(column, dim)
    report.n_rows += len(ids)
    for kind in PROBLEM_TEXT:
        report.add(kind, ids[kinds == kind])
    return matrix, report


def embedding_problems(ids: np.ndarray, column, dim: int, report: EmbeddingReport | None = None) -> EmbeddingReport:
    """Check one batch of an embedding column; accumulate into `report`."""
    return checked_matrix(ids, column, dim, report)[1]
