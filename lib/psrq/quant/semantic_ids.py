"""Spark adapter of fitting, and a Spark ML-style facade for users who live in Spark.

    model = SemanticIds(method="psrq", k=256, layers=3,
                        modalities={"text": ("text_emb", 768), "audio": ("audio_emb", 768)}).fit(items)
    with_codes = model.transform(items)   # + text_codes, audio_codes, joint_codes, code_key

`fit` samples the frame in Spark (a seeded hash of item_id: the sample does not depend on
partitioning), brings only the sample to the driver and fits one quantizer per space
(psrq.quant.spaces); `transform` is lazy and encodes on the executors (psrq.quant.spark_encode).
The settings are codebooks' settings (psrq.config.CodebooksConf), so the fit job and this
facade fit the same codebooks from the same rows."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from psrq.config import CodebooksConf
from psrq.data.embeddings import PROBLEM_TEXT, checked_matrix
from psrq.errors import InputValidationError, Problem, QuantizerError
from psrq.quant.base import QuantSpec
from psrq.quant.kmeans import KMeansSpec
from psrq.quant.spaces import CodebookSet, fit_codebooks
from psrq.quant.spark_encode import encode_batch, encoded_schema
from psrq.schemas import ITEM_ID, codes_column


def quant_spec(cc: CodebooksConf, method: str | None = None) -> QuantSpec:
    """The quantizer settings of a codebooks configuration (every k-means setting included)."""
    method = method or cc.method
    km = KMeansSpec(cc.k, cc.kmeans.iters, cc.seed, cc.kmeans.max_points_per_centroid, cc.kmeans.backend, cc.kmeans.init,
                    cc.kmeans.device)
    return QuantSpec(method=method, k=cc.k, layers=cc.layers, prefix=cc.prefix, prefix_weight=cc.prefix_weight,
                     kmeans=km, **cc.rqvae.model_dump())


ORDER = "_h"  # the sample's seeded hash: the rows' order on the driver


def sample_rows(cc: CodebooksConf, n_items: int) -> int:
    """How many items the fit sample holds (about, with sample_fraction)."""
    if cc.sample_fraction is not None:
        return math.ceil(cc.sample_fraction * n_items)
    return min(cc.sample_size, n_items)


def sample_items(items: DataFrame, cc: CodebooksConf, n_items: int) -> DataFrame:
    """A seeded sample that does not depend on partitioning: rows ranked by a hash of
    (seed, item_id) (kept as ORDER, for sample_matrices to order them by); a hash threshold
    keeps ~1.2x the wanted ids before their top-k, and only then are the embeddings read for
    them (a top-k over whole rows held sample x width bytes in one task: 400 MB of 1536-d
    floats at 65,536 items, which a 2 GB executor did not survive)."""
    h = F.xxhash64(F.lit(cc.seed), F.col(ITEM_ID)).bitwiseAND(F.lit(0x7FFFFFFF).cast("long")) / F.lit(float(0x80000000))
    if cc.sample_fraction is not None:
        return items.withColumn(ORDER, h).filter(F.col(ORDER) < cc.sample_fraction)
    want = sample_rows(cc, n_items)
    frac = min(1.0, 1.2 * want / max(n_items, 1) + 1e-3)
    ids = items.select(ITEM_ID, h.alias(ORDER)).filter(F.col(ORDER) < frac).orderBy(ORDER, ITEM_ID).limit(want)
    return items.join(F.broadcast(ids), ITEM_ID, "inner")


# The most one task's result may hold when the sample comes to the driver: Spark's driver
# holds each task's result whole on its heap (the JVM's, 1 GB unless spark-submit sets
# --driver-memory), and two results of 200 MB each ran it out of memory at 10^6 items
RESULT_PIECE_BYTES = 32 * 2**20


def result_pieces(rows: int, modalities: dict) -> int:
    """Partitions that bring `rows` sample rows to the driver in pieces of at most
    RESULT_PIECE_BYTES (float32 embeddings, the id and the hash)."""
    row_bytes = 16 + 4 * sum(int(m["dim"]) for m in modalities.values())
    return max(1, math.ceil(rows * row_bytes / RESULT_PIECE_BYTES))


def sample_matrices(sample: DataFrame, modalities: dict, table: str,
                    expected_rows: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bring the sample to the driver as Arrow, in the order of its seeded hash (ORDER, when
    it has one: the same rows in the same order whatever the partitioning); refuse bad rows
    with the items' error. expected_rows: about how many rows the sample holds; they then
    arrive in pieces of bounded size (result_pieces), never as one task's result."""
    ordered = ORDER in sample.columns
    sample = sample.select(ITEM_ID, *[m["column"] for m in modalities.values()], *([ORDER] if ordered else []))
    if expected_rows is not None:
        sample = sample.repartition(result_pieces(expected_rows, modalities))
    arrow = sample.toArrow()
    ids = np.asarray(arrow.column(ITEM_ID))
    # the rows by (hash, item): each matrix reordered as it is made, not the whole table at once
    rows = np.lexsort((ids, np.asarray(arrow.column(ORDER)))) if ordered else np.arange(len(ids))
    embs, problems = {}, []
    for name, info in modalities.items():
        matrix, report = checked_matrix(ids, arrow.column(info["column"]), info["dim"])
        embs[name] = matrix[rows]
        for kind, n in report.counts.items():
            problems.append(Problem(info["column"], PROBLEM_TEXT[kind].format(dim=info["dim"]), n, report.examples[kind]))
    if problems:
        raise InputValidationError(table, problems)
    return ids[rows], embs


def fit_sample(items: DataFrame, cc: CodebooksConf, modalities: dict, n_items: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The fit sample on the driver (sample_items, then sample_matrices), refused when it
    holds fewer items than K."""
    ids, embs = sample_matrices(sample_items(items, cc, n_items), modalities, "items", sample_rows(cc, n_items))
    if len(ids) < cc.k:
        raise QuantizerError(f"K={cc.k} is larger than the sample ({len(ids)} items of {n_items}): "
                             "lower codebooks.k or sample more")
    return ids, embs


class SemanticIds:
    """Estimator: settings in, `fit(frame)` -> SemanticIdsModel. modalities: name ->
    (embedding column, dimension), in the order the joint space concatenates them; every
    other keyword is a codebooks setting (method, k, layers, seed, sample_size, kmeans={...})."""

    def __init__(self, modalities: dict[str, tuple[str, int]], **codebooks):
        self.modalities = {m: {"column": col, "dim": int(dim)} for m, (col, dim) in modalities.items()}
        self.conf = CodebooksConf(**codebooks)

    def fit(self, items: DataFrame) -> "SemanticIdsModel":
        _, embs = fit_sample(items, self.conf, self.modalities, items.count())
        return SemanticIdsModel(fit_codebooks(quant_spec(self.conf), embs, self.modalities, self.conf.normalisation,
                                              self.conf.joint))


class SemanticIdsModel:
    """Transformer: `transform(frame)` adds `<space>_codes` (array<smallint>) per space and
    `code_key` (the full code of the primary space as one bigint); both null on a row whose
    embedding is missing, non-finite or of the wrong dimension. Lazy: nothing runs until an action."""

    def __init__(self, codebooks: CodebookSet):
        self.codebooks = codebooks

    @property
    def output_columns(self) -> list[str]:
        return [codes_column(s) for s in self.codebooks.spaces] + ["code_key"]

    def transform(self, frame: DataFrame) -> DataFrame:
        cbs, added = self.codebooks, self.output_columns
        clash = sorted(set(added) & set(frame.columns))
        if clash:
            raise QuantizerError(f"transform would overwrite the frame's columns {clash}: drop or rename them first")
        fields = {f.name: f for f in encoded_schema(cbs).fields}
        schema = T.StructType([*frame.schema.fields, *(fields[c] for c in added)])
        payload = frame.sparkSession.sparkContext.broadcast(cbs)
        inputs = [ITEM_ID] + [info["column"] for info in cbs.modalities.values()]

        def task(batches):
            local = payload.value
            for batch in batches:
                if batch.num_rows:
                    enc = encode_batch(local, batch.select(inputs))
                    yield pa.RecordBatch.from_arrays([*batch.columns, *(enc.column(c) for c in added)],
                                                     names=[*batch.schema.names, *added])

        return frame.mapInArrow(task, schema)
