"""The Delta storage layer on the delta-rs engine (Spark writes files, delta-rs commits)."""
import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from psrq.errors import StorageError
from psrq.storage import AppTxn


def frame(spark, ids, value=1.0):
    return spark.createDataFrame([(int(i), [float(value), float(i)], f"s{i}") for i in ids],
                                 "item_id long, emb array<float>, name string")


def rows(engine, path, version=None):
    return sorted((r.item_id, tuple(r.emb), r.name) for r in engine.read(path, version).collect())


def test_create_append_overwrite_and_time_travel(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    assert not engine.exists(path) and engine.version(path) is None
    r0 = engine.write(frame(spark, range(120)), path, "create")
    assert (r0.version, r0.rows_written, r0.skipped) == (0, 120, False)
    assert r0.files_added >= 3  # max_rows_per_file=50: several files per table
    with pytest.raises(StorageError, match="already exists"):
        engine.write(frame(spark, range(3)), path, "create")
    r1 = engine.write(frame(spark, range(120, 130)), path, "append")
    assert r1.version == 1 and len(rows(engine, path)) == 130
    r2 = engine.write(frame(spark, range(5), value=9.0), path, "overwrite")
    assert r2.version == 2 and r2.files_removed == r0.files_added + r1.files_added
    assert rows(engine, path) == [(i, (9.0, float(i)), f"s{i}") for i in range(5)]
    # older versions stay readable
    assert len(rows(engine, path, 0)) == 120 and len(rows(engine, path, 1)) == 130
    ops = [h["operation"] for h in engine.history(path)]
    assert len(ops) == 3
    # the log carries real file statistics (what lets readers skip files by key)
    acts = pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in acts) == 5
    assert min(a["min.item_id"] for a in acts) == 0 and max(a["max.item_id"] for a in acts) == 4


def test_merge_upserts_by_key_and_rewrites_only_touched_files(spark, engine, tmp_path):
    path = str(tmp_path / "m")
    engine.write(frame(spark, range(200)).repartition(4, "item_id"), path, "create")
    before = set(DeltaTable(path).file_uris())
    src = frame(spark, [3, 7, 250, 251], value=5.0)
    res = engine.merge(src, path, ["item_id"])
    assert res.version == 1
    got = dict((i, (e, n)) for i, e, n in rows(engine, path))
    assert len(got) == 202
    for i in (3, 7, 250, 251):
        assert got[i][0] == (5.0, float(i))
    assert got[4][0] == (1.0, 4.0)  # untouched row keeps its value
    after = set(DeltaTable(path).file_uris())
    assert 0 < res.files_removed < len(before)  # copy-on-write of the touched files only
    assert len(before & after) == len(before) - res.files_removed
    assert len(rows(engine, path, 0)) == 200


def test_merge_rejects_duplicate_source_keys_and_missing_columns(spark, engine, tmp_path):
    path = str(tmp_path / "d")
    engine.write(frame(spark, range(10)), path, "create")
    with pytest.raises(StorageError, match="duplicate keys"):
        engine.merge(frame(spark, [1, 1]), path, ["item_id"])
    with pytest.raises(StorageError, match="lacks columns.*name"):
        engine.merge(frame(spark, [1]).drop("name"), path, ["item_id"])
    assert engine.version(path) == 0


def test_append_with_another_schema_is_refused(spark, engine, tmp_path):
    path = str(tmp_path / "s")
    engine.write(frame(spark, range(4)), path, "create")
    with pytest.raises(StorageError, match=r"schema of the data does not match the Delta table at .* \(the table lacks column\(s\) \['extra'\]: it was written by an earlier version"):
        engine.write(frame(spark, range(4)).withColumn("extra", F.lit(1)), path, "append")
    assert engine.version(path) == 0


def test_app_transaction_makes_a_rerun_a_no_op(spark, engine, tmp_path):
    path = str(tmp_path / "i")
    txn = AppTxn("nightly", 20261123)
    first = engine.write(frame(spark, range(10)), path, "append", txn)
    again = engine.write(frame(spark, range(10)), path, "append", txn)
    assert not first.skipped and again.skipped
    assert engine.version(path) == 0 and len(rows(engine, path)) == 10
    assert engine.merge(frame(spark, [1], 7.0), path, ["item_id"], txn).skipped
    nxt = engine.write(frame(spark, range(10, 12)), path, "append", AppTxn("nightly", 20261124))
    assert not nxt.skipped and len(rows(engine, path)) == 12
    assert engine.transaction_version(path, "nightly") == 20261124


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("op", ["overwrite", "append", "merge"])
def test_crash_before_commit_leaves_the_table_unchanged(spark, engine, tmp_path, monkeypatch, op):
    path = str(tmp_path / "c")
    engine.write(frame(spark, range(60)), path, "create")
    before = rows(engine, path)

    def crash(_commit):
        raise Crash("killed before commit")

    monkeypatch.setattr(engine, "_commit", crash)
    with pytest.raises(Crash):
        if op == "merge":
            engine.merge(frame(spark, [1, 500], 3.0), path, ["item_id"])
        else:
            engine.write(frame(spark, range(1000, 1100)), path, op)
    monkeypatch.undo()
    # the task files were written, but the log does not reference them
    on_disk = sum(len(f) for _, _, f in os.walk(os.path.join(path, "data")))
    assert on_disk > len(DeltaTable(path).file_uris())
    assert engine.version(path) == 0 and rows(engine, path) == before
    # and the job can simply be run again
    engine.write(frame(spark, range(1000, 1010)), path, "append")
    assert engine.version(path) == 1 and len(rows(engine, path)) == 70


def test_missing_table_and_version_errors(spark, engine, tmp_path):
    with pytest.raises(StorageError, match="no Delta table at"):
        engine.read(str(tmp_path / "nothing"))
    path = str(tmp_path / "v")
    engine.write(frame(spark, range(3)), path, "create")
    with pytest.raises(StorageError, match="version 7"):
        engine.read(path, 7)


def test_empty_frame_creates_an_empty_table(spark, engine, tmp_path):
    path = str(tmp_path / "e")
    res = engine.write(frame(spark, [1]).limit(0), path, "create")
    assert res.version == 0 and res.files_added == 0
    df = engine.read(path)
    assert df.count() == 0 and df.columns == ["item_id", "emb", "name"]


def test_timestamps_round_trip_as_utc(spark, engine, tmp_path):
    path = str(tmp_path / "ts")
    df = spark.sql("select 1L as item_id, timestamp'2026-03-01 12:34:56.789' as ts")
    engine.write(df, path, "create")
    assert engine.read(path).first().ts == df.first().ts


def test_a_table_read_back_can_be_merged_and_appended(spark, engine, tmp_path):
    """Spark relaxes nullability on read; writing such a frame back must still work."""
    path = str(tmp_path / "n")
    df = spark.createDataFrame([(1, [1, 2])], "item_id long not null, codes array<smallint>")
    engine.write(df.selectExpr("item_id", "coalesce(codes, array()) as codes"), path, "create")
    again = engine.read(path).selectExpr("item_id + 1 as item_id", "codes")
    engine.merge(again, path, ["item_id"])
    engine.write(engine.read(path).filter("item_id = 1").selectExpr("item_id + 10 as item_id", "codes"), path, "append")
    assert sorted(r.item_id for r in engine.read(path).collect()) == [1, 2, 11]


def test_nulls_into_a_not_null_column_are_refused(spark, engine, tmp_path):
    path = str(tmp_path / "nn")
    engine.write(spark.sql("select 1L as item_id, 'a' as name").selectExpr("item_id", "coalesce(name, 'x') as name"),
                 path, "create")
    bad = spark.sql("select 2L as item_id, cast(null as string) as name")
    with pytest.raises(Exception, match="column 'name' holds nulls but the table declares it not-null"):
        engine.write(bad, path, "append")
    assert engine.version(path) == 0


@pytest.mark.parametrize("op", ["append", "overwrite", "merge"])
def test_app_transaction_is_checked_at_commit(spark, engine, tmp_path, monkeypatch, op):
    """Two writers of one run both found the transaction not yet done; the first commits,
    the second loses the commit race, sees the run's transaction and reports it as done:
    exactly one commit, and the loser's files are removed."""
    path = str(tmp_path / "race")
    engine.write(frame(spark, range(10)), path, "create")
    stale = DeltaTable(path)  # the snapshot both writers checked
    txn = AppTxn("job", 7)
    engine.write(frame(spark, range(100, 105)), path, "append", txn)  # the first writer wins
    assert engine.version(path) == 1
    files_before = sum(len(f) for _, _, f in os.walk(os.path.join(path, "data")))
    checks = {"n": 0}
    real_done, real_table = engine._already_done, engine._table

    def checked_before_the_winner(p, t):
        checks["n"] += 1
        return None if checks["n"] == 1 else real_done(p, t)

    def stale_once(p, version=None):  # until its commit fails, the loser sees the snapshot it checked
        return stale if checks["n"] == 1 and version is None else real_table(p, version)

    monkeypatch.setattr(engine, "_already_done", checked_before_the_winner)
    monkeypatch.setattr(engine, "_table", stale_once)
    if op == "merge":
        res = engine.merge(frame(spark, [1, 500], 3.0), path, ["item_id"], txn)
    else:
        res = engine.write(frame(spark, range(200, 210)), path, op, txn)
    monkeypatch.undo()
    assert res.skipped and engine.version(path) == 1 and checks["n"] == 2
    assert sorted(r[0] for r in rows(engine, path)) == list(range(10)) + list(range(100, 105))
    assert sum(len(f) for _, _, f in os.walk(os.path.join(path, "data"))) == files_before


def test_a_concurrent_writer_of_another_run_is_retried_not_lost(spark, engine, tmp_path, monkeypatch):
    path = str(tmp_path / "other")
    engine.write(frame(spark, range(10)), path, "create")
    stale = DeltaTable(path)
    engine.write(frame(spark, range(100, 105)), path, "append", AppTxn("other-job", 1))
    calls = {"n": 0}
    real_table = engine._table

    def first_stale(p, version=None):
        calls["n"] += 1
        return stale if calls["n"] == 1 and version is None else real_table(p, version)

    monkeypatch.setattr(engine, "_table", first_stale)
    res = engine.write(frame(spark, range(200, 203)), path, "append", AppTxn("job", 1))
    monkeypatch.undo()
    assert not res.skipped and engine.version(path) == 2 and len(rows(engine, path)) == 18
    assert engine.transaction_version(path, "job") == 1 and engine.transaction_version(path, "other-job") == 1


def test_replace_where_rewrites_one_value_and_leaves_the_others(spark, engine, tmp_path):
    path = str(tmp_path / "versions")
    v1 = spark.range(6).selectExpr("id as item_id", "'v1' as version")
    engine.write(v1, path, "create")
    v2 = spark.range(4).selectExpr("id as item_id", "'v2' as version")
    assert engine.replace_where(v2, path, "version", "v2", AppTxn("assign.v2", 1)).version == 1
    again = spark.range(3).selectExpr("id + 100 as item_id", "'v2' as version")
    assert engine.replace_where(again, path, "version", "v2", AppTxn("assign.v2", 1)).skipped  # same run: a no-op
    res = engine.replace_where(again, path, "version", "v2", AppTxn("assign.v2", 2))
    assert res.version == 2 and res.files_removed >= 1
    got = engine.read(path).toPandas().groupby("version").item_id.apply(sorted).to_dict()
    assert got == {"v1": list(range(6)), "v2": [100, 101, 102]}
    with pytest.raises(StorageError, match="must all have version = 'v3'"):
        engine.replace_where(v1, path, "version", "v3")
