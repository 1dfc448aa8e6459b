"""Spark adapter of the synthetic generator: blocks are spread over tasks, each task
generates its blocks with numpy; nothing but summaries reaches the driver."""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from psrq.config import Config, SyntheticConf
from psrq.data import synthetic as syn
from psrq.schemas import INTERACTIONS, ITEM_TRUTH, items_schema

_LATENTS = T.StructType(
    [T.StructField("item_id", T.LongType(), False)]
    + [T.StructField(f"z_{m}", T.ArrayType(T.FloatType(), False), False) for m in syn.MODALITIES]
)
_IMPRESSIONS = T.StructType(
    [
        T.StructField("user_id", T.LongType(), False),
        T.StructField("item_id", T.LongType(), False),
        T.StructField("ts_us", T.LongType(), False),
        T.StructField("w_text", T.FloatType(), False),
    ]
    + [T.StructField(f"taste_{m}", T.ArrayType(T.FloatType(), False), False) for m in syn.MODALITIES]
)


def _list(matrix: np.ndarray) -> pa.Array:
    n, d = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=pa.float32()))


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us, type=pa.timestamp("us", tz="UTC"))


# Rows one task generates at least: the task count follows the data's size (a small
# catalogue is one task; Spark's per-task cost would dwarf its work), at most 4 per core.
# Blocks are seeded one by one, so how they are grouped into tasks changes no value.
ROWS_PER_TASK = 100_000


def _blocks(spark: SparkSession, total: int, size: int, rows_per_unit: float = 1.0) -> DataFrame:
    n = syn.n_blocks(total, size)
    by_size = int(total * rows_per_unit) // ROWS_PER_TASK + 1
    slices = max(1, min(n, by_size, spark.sparkContext.defaultParallelism * 4))
    return spark.range(0, n, numPartitions=slices).withColumnRenamed("id", "block")


def _items_task(batches, cfg: SyntheticConf, dims: dict, columns: dict):
    world = syn.make_world(cfg, dims)
    for batch in batches:
        for b in batch.column("block").to_pylist():
            it = syn.item_block(b, cfg, world)
            data = {"item_id": pa.array(it["item_id"])}
            for m in syn.MODALITIES:
                data[columns[m]] = _list(it[f"{m}_emb"])
            data["updated_at"] = _ts(it["updated_at_us"])
            for k in ("genre", "text_subgenre", "audio_style", "popularity_rank"):
                data[k] = pa.array(it[k])
            yield pa.RecordBatch.from_pydict(data)


def _latents_task(batches, cfg: SyntheticConf, dims: dict):
    world = syn.make_world(cfg, dims)
    for batch in batches:
        for b in batch.column("block").to_pylist():
            it = syn.item_block(b, cfg, world, with_embeddings=False)
            yield pa.RecordBatch.from_pydict(
                {"item_id": pa.array(it["item_id"]), **{f"z_{m}": _list(it[f"z_{m}"]) for m in syn.MODALITIES}}
            )


def _impressions_task(batches, cfg: SyntheticConf, dims: dict):
    world = syn.make_world(cfg, dims)
    for batch in batches:
        for b in batch.column("block").to_pylist():
            us = syn.user_block(b, cfg, world)
            imp = syn.impressions(us, cfg, world)
            ix = imp["user_idx"]
            yield pa.RecordBatch.from_pydict(
                {
                    "user_id": pa.array(us["user_id"][ix]),
                    "item_id": pa.array(imp["item_id"]),
                    "ts_us": pa.array(imp["ts_us"]),
                    "w_text": pa.array(us["w_text"][ix]),
                    **{f"taste_{m}": _list(us[f"taste_{m}"][ix]) for m in syn.MODALITIES},
                }
            )


def _label_task(batches, cfg: SyntheticConf):
    for batch in batches:
        cols = {n: batch.column(n) for n in batch.schema.names}
        mats = {n: np.asarray(cols[n].flatten(), dtype=np.float32).reshape(batch.num_rows, -1)
                for n in ("taste_text", "taste_audio", "z_text", "z_audio")}
        uid, iid, ts = (np.asarray(cols[n]) for n in ("user_id", "item_id", "ts_us"))
        aff = syn.affinity(np.asarray(cols["w_text"]), mats["taste_text"], mats["taste_audio"], mats["z_text"], mats["z_audio"])
        y = syn.labels(aff, cfg.seed, uid, iid, ts, cfg.label_sharpness)
        yield pa.RecordBatch.from_pydict(
            {"user_id": pa.array(uid), "item_id": pa.array(iid), "label": pa.array(y), "ts": _ts(ts)}
        )


def synthetic_frames(spark: SparkSession, cfg: Config) -> dict[str, DataFrame]:
    """Lazy DataFrames for items, item_truth and interactions."""
    syn_cfg = cfg.synthetic
    mods = cfg.dataset.modalities
    missing = [m for m in syn.MODALITIES if m not in mods]
    if missing:
        from psrq.errors import ConfigError

        raise ConfigError(f"dataset.modalities: the synthetic generator needs {list(syn.MODALITIES)}; missing {missing}")
    dims = {m: mods[m].dim for m in syn.MODALITIES}
    columns = {m: mods[m].column for m in syn.MODALITIES}
    item_cols = items_schema([columns[m] for m in syn.MODALITIES])
    full = T.StructType(item_cols.fields + ITEM_TRUTH.fields[1:])
    items_all = _blocks(spark, syn_cfg.n_items, syn_cfg.block_size).mapInArrow(
        partial(_items_task, cfg=syn_cfg, dims=dims, columns=columns), full
    )
    latents = _blocks(spark, syn_cfg.n_items, syn_cfg.block_size).mapInArrow(
        partial(_latents_task, cfg=syn_cfg, dims=dims), _LATENTS
    )
    imps = _blocks(spark, syn_cfg.n_users, syn_cfg.block_size, syn_cfg.mean_events_per_user).mapInArrow(
        partial(_impressions_task, cfg=syn_cfg, dims=dims), _IMPRESSIONS
    )
    # a sort-merge join: Spark sizes a mapInArrow output by its input (a few block numbers), so it
    # would broadcast the catalogue's latents, which at 10^6 items no longer fit the driver
    interactions = imps.join(latents.hint("merge"), "item_id").mapInArrow(partial(_label_task, cfg=syn_cfg),
                                                                          INTERACTIONS)
    return {
        "items": items_all.select(*item_cols.fieldNames()),
        "item_truth": items_all.select(*ITEM_TRUTH.fieldNames()),
        "interactions": interactions,
    }
