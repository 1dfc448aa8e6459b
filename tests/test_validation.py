"""Each bad input gets an error naming table, column, row count and example ids."""
import pytest

from psrq.data.validation import validate_interactions, validate_items
from psrq.errors import InputValidationError
from psrq.job import JobContext

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


def test_ids_of_the_wrong_type_are_named_not_cast(spark):
    from psrq.data.validation import require_item_columns

    df = spark.createDataFrame([("a1", [1.0, 0.5, 1.0], [0.2, 1.0])], "item_id string, text_emb array<float>, audio_emb array<float>")
    with pytest.raises(InputValidationError, match="(?s)table 'items'.*item_id.*integer column \\(long\\), not string"):
        require_item_columns(df, list(MODS))
    strings = spark.createDataFrame([(1, "7", 1, "2026-01-02")], "user_id long, item_id string, label int, ts string")
    with pytest.raises(InputValidationError, match="(?s)table 'interactions'.*item_id.*integer column \\(long\\), not string"):
        validate_interactions(strings)


def test_timestamps_outside_the_plausible_window(spark):
    from psrq.data.validation import TimeWindow

    df = inter(spark, [(1, 0, 1, "2026-01-02"), (2, 1, 0, "1960-05-01"), (3, 2, 1, "9999-12-31")])
    with pytest.raises(InputValidationError) as e:
        validate_interactions(df, window=TimeWindow("1990-01-01", 1))
    p = problems(e)
    bad = next(v for (c, m), v in p.items() if c == "ts" and "plausible window [1990-01-01" in m)
    assert bad.n_rows == 2 and sorted(bad.examples) == ["(user_id=2, item_id=1)", "(user_id=3, item_id=2)"]
    # the window is configurable: 1960 is fine for a catalogue of old recordings
    assert validate_interactions(df.filter("user_id < 3"), window=TimeWindow("1950-01-01", 1)).count() == 2


def test_assign_refuses_duplicate_ids_without_validate_inputs(spark, tmp_path):
    """assign_ids checks the ids itself: 3 duplicated ids never become 503 rows for 500 items."""
    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage
    from psrq.data.generate import generate
    from psrq.storage import open_engine

    from conftest import small_config

    cfg = small_config(tmp_path, "codebooks.k=8", "codebooks.sample_size=300")
    generate(JobContext.of(spark, cfg))
    fit_stage(JobContext.of(spark, cfg))
    engine = open_engine(spark, "delta-rs")
    items = engine.read(cfg.table_path("items"))
    engine.write(items.unionByName(items.filter("item_id < 3")), cfg.table_path("items"), "overwrite")
    with pytest.raises(InputValidationError, match="(?s)item_id values occur more than once.*e.g. 0, 1, 2"):
        assign(JobContext.of(spark, cfg))
    assert not engine.exists(cfg.table_path("semantic_ids"))
