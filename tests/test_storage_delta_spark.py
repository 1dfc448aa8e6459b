"""The same storage API through delta-spark: runs only where the Delta jars load
(set PSRQ_TEST_DELTA_PACKAGES=io.delta:delta-spark_2.13:4.0.0 with Maven reachable)."""
import pytest

from psrq.storage import AppTxn
from psrq.storage.delta_spark import DeltaSparkEngine, delta_jars_loaded


@pytest.fixture(scope="module")
def spark_engine(spark):
    if not delta_jars_loaded(spark):
        pytest.skip("Delta JVM jars are not on the classpath (Maven is unreachable here); "
                    "set PSRQ_TEST_DELTA_PACKAGES=io.delta:delta-spark_2.13:4.0.0 to run these")
    return DeltaSparkEngine(spark)


def test_write_merge_time_travel_and_idempotence(spark, spark_engine, tmp_path):
    path = str(tmp_path / "t")
    df = spark.range(10).selectExpr("id as item_id", "cast(id as double) as v")
    assert spark_engine.write(df, path, "create", AppTxn("job", 1)).version == 0
    assert spark_engine.write(df, path, "append", AppTxn("job", 1)).skipped
    src = spark.range(5, 15).selectExpr("id as item_id", "-1.0d as v")
    spark_engine.merge(src, path, ["item_id"])
    cur = {r.item_id: r.v for r in spark_engine.read(path).collect()}
    assert len(cur) == 15 and cur[7] == -1.0 and cur[2] == 2.0
    assert spark_engine.read(path, 0).count() == 10
    assert len(spark_engine.history(path)) == 2
