"""The same storage API through delta-spark, with the Delta jars setup resolved by Maven on
the shared session's class path (no skip: `make setup` always resolves them)."""
import pytest

from psrq.storage import AppTxn, DeltaRsEngine, open_engine
from psrq.storage.delta_spark import DeltaSparkEngine, delta_jars_loaded


@pytest.fixture(scope="module")
def spark_engine(spark):
    assert delta_jars_loaded(spark), "the Delta jars resolved by setup are not on the test session's class path"
    return DeltaSparkEngine(spark)


def test_auto_picks_delta_spark_when_the_jars_are_loaded(spark):
    assert open_engine(spark, "auto").name == "delta-spark"


def test_write_merge_time_travel_and_idempotence(spark, spark_engine, tmp_path):
    path = str(tmp_path / "t")
    df = spark.range(10).selectExpr("id as item_id", "cast(id as double) as v")
    assert spark_engine.write(df, path, "create", AppTxn("job", 1)).version == 0
    assert spark_engine.write(df, path, "append", AppTxn("job", 1)).skipped
    assert spark_engine.transaction_version(path, "job") == 1
    src = spark.range(5, 15).selectExpr("id as item_id", "-1.0d as v")
    assert spark_engine.merge(src, path, ["item_id"]).version == 1
    cur = {r.item_id: r.v for r in spark_engine.read(path).collect()}
    assert len(cur) == 15 and cur[7] == -1.0 and cur[2] == 2.0
    # time travel to the first commit
    old = {r.item_id: r.v for r in spark_engine.read(path, 0).collect()}
    assert old == {i: float(i) for i in range(10)}
    assert [h["operation"] for h in spark_engine.history(path)] == ["MERGE", "WRITE"]


def test_both_engines_read_each_others_tables(spark, spark_engine, tmp_path):
    rs = DeltaRsEngine(spark)
    by_spark, by_rs = str(tmp_path / "by_spark"), str(tmp_path / "by_rs")
    df = spark.range(7).selectExpr("id as item_id", "id * 2 as v")
    spark_engine.write(df, by_spark, "create")
    rs.write(df, by_rs, "create")
    assert sorted(r.v for r in rs.read(by_spark).collect()) == [0, 2, 4, 6, 8, 10, 12]
    assert sorted(r.v for r in spark_engine.read(by_rs).collect()) == [0, 2, 4, 6, 8, 10, 12]
    rs.write(spark.range(3).selectExpr("id as item_id", "id as v"), by_spark, "append", AppTxn("night", 5))
    assert spark_engine.read(by_spark).count() == 10 and spark_engine.version(by_spark) == 1
    assert spark_engine.transaction_version(by_spark, "night") == 5


def test_replace_where_through_delta_spark(spark, spark_engine, tmp_path):
    path = str(tmp_path / "versions")
    spark_engine.write(spark.range(6).selectExpr("id as item_id", "'v1' as version"), path, "create")
    spark_engine.replace_where(spark.range(4).selectExpr("id as item_id", "'v2' as version"), path, "version", "v2")
    spark_engine.replace_where(spark.range(2).selectExpr("id + 100 as item_id", "'v2' as version"), path, "version", "v2",
                               AppTxn("assign.v2", 1))
    assert spark_engine.replace_where(spark.range(1).selectExpr("id as item_id", "'v2' as version"), path, "version", "v2",
                                      AppTxn("assign.v2", 1)).skipped
    got = spark_engine.read(path).toPandas().groupby("version").item_id.apply(sorted).to_dict()
    assert got == {"v1": list(range(6)), "v2": [100, 101]}
