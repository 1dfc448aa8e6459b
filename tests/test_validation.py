"""Each bad input gets an error naming table, column, row count and example ids."""
import pytest

from psrq.errors import InputValidationError
from psrq.validation import validate_interactions, validate_items

MODS = {"text_emb": 3, "audio_emb": 2}
ITEMS_DDL = "item_id long, text_emb array<float>, audio_emb array<float>"
INTER_DDL = "user_id long, item_id long, label int, ts string"


def items(spark, rows):
    return spark.createDataFrame(rows, ITEMS_DDL)


def good_items(spark, n=6):
    return items(spark, [(i, [1.0, 0.5, float(i)], [0.2, 1.0]) for i in range(n)])


def problems(exc_info):
    return {(p.column, p.message.split(" (")[0]): p for p in exc_info.value.problems}


def test_good_items_pass(spark):
    validate_items(good_items(spark), MODS)


def test_nan_inf_wrong_dim_zero_and_null_embeddings(spark):
    df = items(spark, [
        (1, [1.0, 2.0, 3.0], [1.0, 1.0]),
        (2, [float("nan"), 2.0, 3.0], [1.0, 1.0]),
        (3, [1.0, 2.0], [1.0, 1.0]),
        (4, [1.0, 2.0, 3.0], [float("inf"), 1.0]),
        (5, [0.0, 0.0, 0.0], [1.0, 1.0]),
        (6, None, [1.0, 1.0]),
        (7, [1.0, 2.0, 3.0, 4.0], [1.0, 1.0]),
    ])
    with pytest.raises(InputValidationError) as e:
        validate_items(df, MODS)
    p = problems(e)
    assert p[("text_emb", "have NaN or Inf values in the embedding")].examples == [2]
    assert p[("text_emb", "have an embedding of the wrong dimension")].n_rows == 2
    assert sorted(p[("text_emb", "have an embedding of the wrong dimension")].examples) == [3, 7]
    assert p[("audio_emb", "have NaN or Inf values in the embedding")].examples == [4]
    assert p[("text_emb", "have an all-zero embedding")].examples == [5]
    assert p[("text_emb", "have a null embedding")].examples == [6]
    msg = str(e.value)
    assert "table 'items'" in msg and "nothing was written" in msg and "expected 3" in msg


def test_null_and_duplicate_item_ids(spark):
    df = items(spark, [(1, [1.0, 1.0, 1.0], [1.0, 1.0]), (1, [1.0, 1.0, 1.0], [1.0, 1.0]),
                       (None, [1.0, 1.0, 1.0], [1.0, 1.0]), (2, [1.0, 1.0, 1.0], [1.0, 1.0])])
    with pytest.raises(InputValidationError) as e:
        validate_items(df, MODS)
    p = problems(e)
    assert p[("item_id", "have a null item_id")].n_rows == 1
    assert p[("item_id", "item_id values occur more than once")].examples == [1]


def test_missing_modality_column_and_wrong_type(spark):
    with pytest.raises(InputValidationError, match="(?s)column 'audio_emb'.*is missing.*modality"):
        validate_items(good_items(spark).drop("audio_emb"), MODS)
    df = good_items(spark).selectExpr("item_id", "text_emb", "'x' as audio_emb")
    with pytest.raises(InputValidationError, match="(?s)audio_emb.*array<float> or float32 binary, not string"):
        validate_items(df, MODS)


def test_binary_embeddings_are_checked_too(spark):
    import numpy as np

    good = np.ones(2, dtype="<f4").tobytes()
    nan = np.array([np.nan, 1], dtype="<f4").tobytes()
    df = spark.createDataFrame([(1, good), (2, nan), (3, b"\x00")], "item_id long, audio_emb binary")
    with pytest.raises(InputValidationError) as e:
        validate_items(df, {"audio_emb": 2})
    p = problems(e)
    assert p[("audio_emb", "have NaN or Inf values in the embedding")].examples == [2]
    assert p[("audio_emb", "have an embedding of the wrong dimension")].examples == [3]


def test_empty_tables(spark):
    with pytest.raises(InputValidationError, match="(?s)items.*the table is empty"):
        validate_items(good_items(spark).limit(0), MODS)
    empty = spark.createDataFrame([], INTER_DDL)
    with pytest.raises(InputValidationError, match="(?s)interactions.*the table is empty"):
        validate_interactions(empty)


def inter(spark, rows):
    return spark.createDataFrame(rows, INTER_DDL)


def test_good_interactions_are_normalised(spark):
    df = validate_interactions(inter(spark, [(1, 0, 1, "2026-01-02 10:00:00"), (2, 1, 0, "2026-01-03")]),
                               good_items(spark))
    assert [f.dataType.simpleString() for f in df.schema] == ["bigint", "bigint", "int", "timestamp"]
    assert df.count() == 2


def test_epoch_second_timestamps_are_accepted(spark):
    df = spark.createDataFrame([(1, 0, 1, 1767225600)], "user_id long, item_id long, label int, ts long")
    assert str(validate_interactions(df).first().ts) == "2026-01-01 00:00:00"


def test_bad_labels_timestamps_nulls_and_unknown_items(spark):
    df = inter(spark, [
        (1, 0, 1, "2026-01-02"),
        (1, 1, 2, "2026-01-02"),
        (2, 2, -1, "2026-01-02"),
        (3, 3, 1, "yesterday-ish"),
        (None, 4, 0, "2026-01-02"),
        (4, 99, 1, "2026-01-02"),
        (5, 5, None, "2026-01-02"),
    ])
    with pytest.raises(InputValidationError) as e:
        validate_interactions(df, good_items(spark))
    p = problems(e)
    lab = p[("label", "have a label other than 0/1")]
    assert lab.n_rows == 3 and "(user_id=1, item_id=1)" in lab.examples
    assert p[("ts", "have a null or unparseable timestamp")].examples == ["(user_id=3, item_id=3)"]
    assert p[("user_id", "have a null user_id")].n_rows == 1
    assert p[("item_id", "point at items that are not in the items table")].examples == [99]
    assert "table 'interactions'" in str(e.value)


def test_fractional_labels_are_not_silently_truncated(spark):
    df = spark.createDataFrame([(1, 0, 0.5, "2026-01-02")], "user_id long, item_id long, label double, ts string")
    with pytest.raises(InputValidationError, match="label other than 0/1"):
        validate_interactions(df)


def test_missing_interaction_column(spark):
    with pytest.raises(InputValidationError, match="(?s)column 'label'.*is missing"):
        validate_interactions(inter(spark, [(1, 0, 1, "2026-01-02")]).drop("label"))
