"""Spark adapter: encode every item on the executors with broadcast codebooks.

Each task turns Arrow batches into numpy matrices and encodes them with matrix products;
rows with bad embeddings are flagged (not encoded) so the caller can refuse the whole job
before anything is written. Only counts and a few example ids reach the driver."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from psrq.data.embeddings import PROBLEM_TEXT, classify
from psrq.errors import InputValidationError, Problem
from psrq.quant.spaces import JOINT, CodebookSet
from psrq.schemas import ITEM_ID, codes_column

PROBLEMS = {**PROBLEM_TEXT, "wrong_dim": "have an embedding whose dimension differs from the codebook's ({dim})"}


def primary_space(cbs: CodebookSet) -> str:
    return JOINT if cbs.joint else cbs.spaces[0]


def pack_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """Full code tuple -> one int64 (base-K digits)."""
    if k ** codes.shape[1] >= 2**63:
        raise ValueError(f"K={k} with {codes.shape[1]} layers does not fit a 64-bit code key")
    key = np.zeros(len(codes), dtype=np.int64)
    for l in range(codes.shape[1]):
        key = key * k + codes[:, l]
    return key


def encoded_schema(cbs: CodebookSet) -> T.StructType:
    return T.StructType(
        [T.StructField(ITEM_ID, T.LongType(), False), T.StructField("problem", T.StringType(), True),
         T.StructField("problem_column", T.StringType(), True)]
        + [T.StructField(codes_column(s), T.ArrayType(T.ShortType(), False), True) for s in cbs.spaces]
        + [T.StructField("code_key", T.LongType(), True), T.StructField("error", T.FloatType(), True)]
    )


def _short_lists(codes: np.ndarray, mask: np.ndarray) -> pa.Array:
    n, L = codes.shape
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.where(mask, L, 0))
    values = pa.array(codes[mask].reshape(-1).astype(np.int16))
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~mask))


def encode_batch(cbs: CodebookSet, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Pure: one Arrow batch of items -> codes, code key, reconstruction error, problems."""
    n = batch.num_rows
    ids = np.asarray(batch.column(ITEM_ID))
    problem = np.array([None] * n, dtype=object)
    problem_col = np.array([None] * n, dtype=object)
    embs = {}
    for m, info in cbs.modalities.items():
        x, kinds = classify(batch.column(info["column"]), info["dim"])
        bad = (kinds != "") & (problem == None)  # noqa: E711 - elementwise on an object array
        problem[bad], problem_col[bad] = kinds[bad], info["column"]
        embs[m] = x
    good = problem == None  # noqa: E711
    out = {ITEM_ID: pa.array(ids), "problem": pa.array(problem, pa.string()),
           "problem_column": pa.array(problem_col, pa.string())}
    primary = primary_space(cbs)
    key = np.zeros(n, dtype=np.int64)
    err = np.zeros(n, dtype=np.float32)
    if good.any():
        inputs = cbs.inputs({m: x[good] for m, x in embs.items()})
    for s in cbs.spaces:
        q = cbs.quantizers[s]
        codes = np.zeros((n, q.n_layers), dtype=np.int32)
        if good.any():
            codes[good] = q.encode(inputs[s])
            if s == primary:
                key[good] = pack_codes(codes[good], cbs.spec.k)
                recon = q.decode(codes[good])
                err[good] = ((inputs[s] - recon) ** 2).sum(1)
        out[codes_column(s)] = _short_lists(codes, good)
    out["code_key"] = pa.array(key, mask=~good)
    out["error"] = pa.array(err, mask=~good)
    return pa.RecordBatch.from_pydict(out)


def encode_items(spark: SparkSession, items: DataFrame, cbs: CodebookSet) -> DataFrame:
    """Lazy frame of encoded items (schema `encoded_schema`). The codebooks travel to the
    executors once, as a broadcast of the fitted quantizers (settings and arrays; their
    classes are imported there, never looked up by name)."""
    payload = spark.sparkContext.broadcast(cbs)

    def task(batches):
        local = payload.value
        for batch in batches:
            if batch.num_rows:
                yield encode_batch(local, batch)

    cols = [ITEM_ID] + [info["column"] for info in cbs.modalities.values()]
    return items.select(*cols).mapInArrow(task, encoded_schema(cbs))


def raise_on_problems(encoded: DataFrame, cbs: CodebookSet, table: str = "items") -> None:
    """One small aggregation over the (cached) encoded frame."""
    from pyspark.sql import functions as F

    rows = (
        encoded.filter(F.col("problem").isNotNull())
        .groupBy("problem_column", "problem")
        .agg(F.count("*").alias("n"), F.slice(F.sort_array(F.collect_list(ITEM_ID)), 1, 5).alias("ex"))
        .collect()
    )
    if rows:
        dims = {i["column"]: i["dim"] for i in cbs.modalities.values()}
        raise InputValidationError(
            table,
            [Problem(r["problem_column"], PROBLEMS[r["problem"]].format(dim=dims[r["problem_column"]]), r["n"], list(r["ex"]))
             for r in sorted(rows, key=lambda r: (r["problem_column"], r["problem"]))],
        )
