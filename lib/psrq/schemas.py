"""The one definition of every table's schema (Spark types)."""
from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import types as T

ITEM_ID = "item_id"
UPDATED_AT = "updated_at"

INTERACTIONS = T.StructType(
    [
        T.StructField("user_id", T.LongType(), False),
        T.StructField("item_id", T.LongType(), False),
        T.StructField("label", T.IntegerType(), False),
        T.StructField("ts", T.TimestampType(), False),
    ]
)

# Ground truth of the synthetic generator (never an input of the pipeline): lets tests and
# diagnostics check that semantic IDs recover the planted hierarchy.
ITEM_TRUTH = T.StructType(
    [
        T.StructField("item_id", T.LongType(), False),
        T.StructField("genre", T.IntegerType(), False),
        T.StructField("text_subgenre", T.IntegerType(), False),
        T.StructField("audio_style", T.IntegerType(), False),
        T.StructField("popularity_rank", T.LongType(), False),
    ]
)


def items_schema(modality_columns: Mapping[str, int] | list[str]) -> T.StructType:
    """items: item_id, one array<float> embedding column per modality, updated_at."""
    fields = [T.StructField(ITEM_ID, T.LongType(), False)]
    fields += [T.StructField(col, T.ArrayType(T.FloatType(), False), False) for col in modality_columns]
    fields.append(T.StructField(UPDATED_AT, T.TimestampType(), True))
    return T.StructType(fields)


def codes_column(space: str) -> str:
    return f"{space}_codes"


def semantic_ids_schema(spaces: list[str]) -> T.StructType:
    """semantic_ids: one row per item and codebook version. `code_key` packs the primary
    space's full code (joint when present) into one long, and the table is written sorted by
    it, so a reverse lookup (code -> items) reads only the files and row groups whose
    min/max include it. `dedup` numbers items sharing a full code (0, 1, ...)."""
    return T.StructType(
        [
            T.StructField(ITEM_ID, T.LongType(), False),
            T.StructField("codebook_version", T.StringType(), False),
        ]
        + [T.StructField(codes_column(s), T.ArrayType(T.ShortType(), False), False) for s in spaces]
        + [
            T.StructField("code_key", T.LongType(), False),
            T.StructField("dedup", T.IntegerType(), False),
            T.StructField("assigned_at", T.TimestampType(), False),
        ]
    )


CODEBOOK_CURRENT = T.StructType(
    [
        T.StructField("method", T.StringType(), False),
        T.StructField("codebook_version", T.StringType(), False),
        T.StructField("run_id", T.LongType(), False),
        T.StructField("marked_at", T.TimestampType(), False),
    ]
)

REINDEX_STATE = T.StructType(
    [
        T.StructField("night", T.LongType(), False),
        T.StructField("watermark", T.TimestampType(), True),
        T.StructField("items_version", T.LongType(), False),
        T.StructField("codebook_version", T.StringType(), False),
        T.StructField("n_changed", T.LongType(), False),
        T.StructField("error_share", T.DoubleType(), True),
        T.StructField("layer1_shift", T.DoubleType(), True),
        T.StructField("refit", T.BooleanType(), False),
        # "planned": written before any other write of the night (what it will do, measured
        # on the items version it read); "done": its outcome, written last
        T.StructField("status", T.StringType(), False),
        T.StructField("finished_at", T.TimestampType(), False),
    ]
)


ITEM_VOCAB = T.StructType(
    [T.StructField(ITEM_ID, T.LongType(), False), T.StructField("idx", T.IntegerType(), False)]
)


def samples_schema(spaces: list[str], content: bool = False) -> T.StructType:
    """samples (Parquet, Petastorm-readable): see psrq.samples.layout for the layout. Codes are
    stored as code + 1 (0 = padding); hist_<space>_codes is the N x L history, flattened.
    With content, content_idx / hist_content_idx index the catalogue (psrq.samples.content)."""
    codes = T.ArrayType(T.ShortType(), False)
    content_fields = [T.StructField("content_idx", T.IntegerType(), False),
                      T.StructField("hist_content_idx", T.ArrayType(T.IntegerType(), False), False)] if content else []
    return T.StructType(
        [
            T.StructField("user_id", T.LongType(), False),
            T.StructField("item_id", T.LongType(), False),
            T.StructField("item_idx", T.IntegerType(), False),
            T.StructField("label", T.IntegerType(), False),
            T.StructField("ts", T.TimestampType(), False),
            T.StructField("split", T.StringType(), False),
            T.StructField("is_cold", T.IntegerType(), False),
            T.StructField("hist_len", T.IntegerType(), False),
            T.StructField("hist_item_idx", T.ArrayType(T.IntegerType(), False), False),
        ]
        + content_fields
        + [f for s in spaces for f in (T.StructField(f"target_{s}_codes", codes, False),
                                       T.StructField(f"hist_{s}_codes", codes, False))]
        + [
            T.StructField("hist_last_ts", T.TimestampType(), True),
            T.StructField("codebook_version", T.StringType(), False),
        ]
    )


# One row per evaluation (jobs/evaluate.py): what was evaluated on what, and its metrics.
EVAL_METRICS = T.StructType(
    [
        T.StructField("eval_id", T.StringType(), False),
        T.StructField("run_id", T.LongType(), False),
        T.StructField("evaluated_at", T.TimestampType(), False),
        T.StructField("dataset", T.StringType(), False),
        T.StructField("model", T.StringType(), False),
        T.StructField("seed", T.LongType(), False),
        T.StructField("split", T.StringType(), False),
        T.StructField("codebook_version", T.StringType(), False),
        T.StructField("checkpoint", T.StringType(), False),
        T.StructField("checkpoint_step", T.LongType(), False),
        T.StructField("train_identity", T.StringType(), False),  # psrq.training.identity.TrainIdentity.key
        T.StructField("weights", T.StringType(), False),         # hash of the evaluated weights
        T.StructField("samples", T.StringType(), False),
        T.StructField("data_versions", T.StringType(), False),  # JSON: source Delta table versions
        T.StructField("config", T.StringType(), False),         # JSON: the run's configuration
        T.StructField("predictions", T.StringType(), False),    # the predictions table
        T.StructField("rows", T.LongType(), False),
        T.StructField("cold_rows", T.LongType(), False),
        T.StructField("auc", T.DoubleType(), False),
        T.StructField("cold_auc", T.DoubleType(), True),
        T.StructField("logloss", T.DoubleType(), False),
        T.StructField("gauc", T.DoubleType(), True),
        T.StructField("calibration_error", T.DoubleType(), True),  # psrq.evaluation.arrays.calibration_error
    ]
)


# Predictions of one evaluation (psrq.evaluation.scoring), one row per scored sample.
PREDICTIONS = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("item_id", T.LongType(), False),
    T.StructField("label", T.IntegerType(), False),
    T.StructField("is_cold", T.IntegerType(), False),
    T.StructField("score", T.DoubleType(), False),
])


# One row per experiment cell and seed, and per floor (psrq.experiments.runner).
EXPERIMENT_RESULTS = T.StructType([
    T.StructField("experiment", T.StringType(), False), T.StructField("dataset", T.StringType(), False),
    T.StructField("cell", T.StringType(), False), T.StructField("seed", T.LongType(), False),
    T.StructField("model", T.StringType(), False), T.StructField("method", T.StringType(), False),
    T.StructField("codebook_version", T.StringType(), False), T.StructField("eval_id", T.StringType(), False),
    T.StructField("rows", T.LongType(), False), T.StructField("cold_rows", T.LongType(), False),
    T.StructField("auc", T.DoubleType(), False), T.StructField("cold_auc", T.DoubleType(), True),
    T.StructField("logloss", T.DoubleType(), False), T.StructField("gauc", T.DoubleType(), True),
    T.StructField("train_seconds", T.DoubleType(), False), T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("calibration_error", T.DoubleType(), True),
    T.StructField("train_identity", T.StringType(), False),  # psrq.training.identity.TrainIdentity.key; "floor"
    T.StructField("steps", T.LongType(), True), T.StructField("best_step", T.LongType(), True),
    T.StructField("curve", T.StringType(), True),  # JSON: the run's validations (psrq.training.early_stop)
])


# MovieLens films as imported (psrq.data.import_movielens): the text to embed and the genre vector.
MOVIELENS_ITEMS = T.StructType([
    T.StructField("item_id", T.LongType(), False),
    T.StructField("title", T.StringType(), False),
    T.StructField("genres", T.StringType(), False),
    T.StructField("text", T.StringType(), False),
    T.StructField("genre_emb", T.ArrayType(T.FloatType(), False), False),
    T.StructField("updated_at", T.TimestampType(), True),
])


# Last.fm artists as imported (psrq.data.import_lastfm): the text to embed and the tag vector.
LASTFM_ITEMS = T.StructType([
    T.StructField("item_id", T.LongType(), False),
    T.StructField("name", T.StringType(), False),
    T.StructField("text", T.StringType(), False),
    T.StructField("tag_emb", T.ArrayType(T.FloatType(), False), False),
    T.StructField("updated_at", T.TimestampType(), True),
])
