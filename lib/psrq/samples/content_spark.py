"""Stage part: the catalogue index and content features next to the samples (psrq.samples.content).

The items table's embeddings are reduced on the executors; only the reduced matrix
(items x modalities x content.dim float32) and a bounded sample of behaviour pairs reach
the driver, which aligns and quantises them for QARM."""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from psrq.config import Config
from psrq.data.embeddings import embeddings_to_numpy
from psrq.samples.content import ContentFeatures, align, projection, quantise, reduce
from psrq.schemas import ITEM_ID

log = logging.getLogger(__name__)


def catalogue_index(items: DataFrame) -> DataFrame:
    """(item_id, content_idx): 1.. over every item of the catalogue, by item_id."""
    ids = items.select(ITEM_ID).distinct().orderBy(ITEM_ID)
    return ids.rdd.zipWithIndex().map(lambda r: (r[0][0], int(r[1]) + 1)).toDF(
        T.StructType([T.StructField(ITEM_ID, T.LongType(), False), T.StructField("content_idx", T.IntegerType(), False)]))


def _reduced(items: DataFrame, cfg: Config) -> DataFrame:
    mods = cfg.dataset.modalities
    dim, seed = cfg.samples.content.dim, cfg.samples.content.seed
    projs = {m: projection(mc.dim, dim, m, seed) for m, mc in mods.items()}
    out_schema = T.StructType([T.StructField("content_idx", T.IntegerType(), False)]
                              + [T.StructField(m, T.BinaryType(), False) for m in mods])

    def fn(batches):
        for b in batches:
            cols = {"content_idx": b.column("content_idx")}
            for m, mc in mods.items():
                x, _ = embeddings_to_numpy(b.column(mc.column), mc.dim)  # bad rows stay zero
                r = reduce(x, projs[m])
                cols[m] = pa.array([row.tobytes() for row in r], pa.binary())
            yield pa.RecordBatch.from_pydict(cols)

    return items.select("content_idx", *[mc.column for mc in mods.values()]).mapInArrow(fn, out_schema)


def behaviour_pairs(train: DataFrame, cat: DataFrame, max_pairs: int, seed: int) -> np.ndarray:
    """(content_idx of a positive, content_idx of the user's next positive) from the train
    split: above max_pairs, the max_pairs with the smallest seeded hash of the event; sorted,
    so that the alignment, which draws batches from them at random, gets the same array
    whatever the partitioning (collected as they came, their order followed the shuffle's
    partitions, and Spark's sample is seeded per partition)."""
    pos = train.filter(F.col("label") == 1).join(cat, ITEM_ID)
    w = Window.partitionBy("user_id").orderBy("ts", ITEM_ID)
    pairs = pos.select("user_id", "ts", ITEM_ID, F.lag("content_idx").over(w).alias("a"),
                       F.col("content_idx").alias("b")).filter(F.col("a").isNotNull() & (F.col("a") != F.col("b")))
    key = F.xxhash64(F.lit(seed), "user_id", F.unix_micros("ts"), ITEM_ID)
    t = pairs.orderBy(key, "user_id", "ts", ITEM_ID).limit(max_pairs).select("a", "b").toArrow()  # one top-k pass
    if not t.num_rows:
        return np.zeros((0, 2), np.int64)
    out = np.stack([np.asarray(t.column("a")), np.asarray(t.column("b"))], axis=1)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def fixed_width_rows(col: pa.ChunkedArray, width: int) -> np.ndarray:
    """(rows, width) float32 from a binary column of `width` little-endian floats a row,
    read straight from Arrow's data buffers (no Python object per row: a million items made
    a million bytes objects, and a joined copy of them, on the driver)."""
    parts = []
    for arr in col.chunks:
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
        if len(arr) and not (np.diff(offsets) == 4 * width).all():
            raise ValueError(f"content rows of {width} floats expected")
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]] if len(arr) else np.zeros(0, np.uint8)
        parts.append(data.view("<f4").reshape(len(arr), width))
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def build_content(cfg: Config, items: DataFrame, cat: DataFrame, train: DataFrame,
                  codes: bool = True) -> tuple[ContentFeatures, dict]:
    """The reduced content of every catalogue item and, with `codes`, QARM's codes (from
    behaviour pairs of the train split)."""
    cc, qc = cfg.samples.content, cfg.samples.qarm
    red = _reduced(items.join(cat, ITEM_ID), cfg).toArrow()
    ct = cat.toArrow()
    n = ct.num_rows + 1
    idx = np.asarray(red.column("content_idx"), dtype=np.int64)
    mods = {}
    for m in cfg.dataset.modalities:
        width = min(cc.dim, cfg.dataset.modalities[m].dim)  # psrq.samples.content.projection keeps narrower ones
        mods[m] = np.zeros((n, width), np.float32)
        mods[m][idx] = fixed_width_rows(red.column(m), width)
    del red  # the rows are in the matrices now: the driver holds one copy
    ids = np.full(n, -1, np.int64)
    ids[np.asarray(ct.column("content_idx"))] = np.asarray(ct.column(ITEM_ID))
    feats = ContentFeatures(ids, mods, {})
    info = {"items": n - 1, "dim": {m: v.shape[1] for m, v in mods.items()}, "modalities": sorted(mods), "codes": {}}
    if codes:
        pairs = behaviour_pairs(train, cat, qc.max_pairs, qc.seed)
        log.info("QARM: aligning %d items on %d behaviour pairs, then VQ + RQ codes (K=%d, L=%d)", n - 1, len(pairs),
                 qc.k, qc.layers)
        t = time.perf_counter()
        aligned = align(feats.joint(), pairs, qc.dim, qc.steps, qc.batch, qc.temperature, qc.seed)
        feats.codes = quantise(aligned, qc.k, qc.layers, qc.seed)
        log.info("QARM: codes in %.1fs", time.perf_counter() - t)
        info |= {"codes": {k: v.shape[1] for k, v in feats.codes.items()}, "qarm_k": min(qc.k, n - 1),
                 "qarm_pairs": int(len(pairs))}
    return feats, info
