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
