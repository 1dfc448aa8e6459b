"""Delta tables through delta-spark, for clusters where the Delta jars are loaded.

Same API as the delta-rs engine; Delta's own writer, MERGE and time travel do the work,
and `txnAppId`/`txnVersion` give the same idempotent re-runs."""
from __future__ import annotations

import json
from typing import Any, Optional

from pyspark.sql import DataFrame, SparkSession

from psrq import jvm
from psrq.errors import StorageError
from psrq.storage import fs
from psrq.storage.base import AppTxn, WriteMode, WriteResult, version_of

_SPARK_MODE = {"create": "errorifexists", "append": "append", "overwrite": "overwrite"}


def delta_jars_loaded(spark: SparkSession) -> bool:
    """True when the Delta JVM classes are on the session's classpath."""
    try:
        # jars from spark.jars / --packages live in Spark's class loader, not the system one
        jvm: Any = spark._jvm  # noqa: SLF001
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.tables.DeltaTable")
        return "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")
    except Exception:  # noqa: BLE001 - any JVM error means "not available"
        return False


class DeltaSparkEngine:
    name = "delta-spark"

    def __init__(self, spark: SparkSession):
        if not delta_jars_loaded(spark):
            raise StorageError(
                "storage.engine=delta-spark needs the Delta jars: add delta to spark.jvm_packages "
                f"(spark.jvm_packages=[delta]), or pass --packages {jvm.packages(['delta'])} to spark-submit"
            )
        from delta.tables import DeltaTable  # imported late: needs the JVM classes

        self.spark = spark
        self._DeltaTable = DeltaTable

    def _table(self, path: str):
        if not self.exists(path):
            raise StorageError(f"no Delta table at {path}")
        return self._DeltaTable.forPath(self.spark, fs.spark_uri(path))

    def exists(self, path: str) -> bool:
        return self._DeltaTable.isDeltaTable(self.spark, fs.spark_uri(path))

    def version(self, path: str) -> Optional[int]:
        # the newest commit file in the log: what Delta's own snapshot update lists, without
        # the Spark job history(1) runs (several per stage; seconds each on a busy cluster)
        commits = [int(n[:-5]) for n in fs.listdir(fs.join(path, "_delta_log"))
                   if n.endswith(".json") and n[:-5].isdigit()]
        return max(commits) if commits else None

    def transaction_version(self, path: str, app_id: str) -> Optional[int]:
        if not self.exists(path):
            return None
        # Delta Spark has no public API for the log's SetTransaction entries; delta-rs reads
        # them from the same log (local, s3, gs, azure paths).
        from deltalake import DeltaTable as LogReader

        try:
            uri, opts = fs.delta_rs_location(path)
            return LogReader(uri, storage_options=opts).transaction_version(app_id)
        except Exception:  # noqa: BLE001 - a store delta-rs cannot read: Delta's own txn check still applies
            return None

    def history(self, path: str) -> list[dict]:
        return [r.asDict(recursive=True) for r in self._table(path).history().collect()]

    def read(self, path: str, version: Optional[int] = None) -> DataFrame:
        if not self.exists(path):
            raise StorageError(f"no Delta table at {path}")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(fs.spark_uri(path))

    def _skip(self, path: str, txn: Optional[AppTxn]) -> Optional[WriteResult]:
        if txn is None:
            return None
        done = self.transaction_version(path, txn.app_id)
        if done is not None and done >= txn.version:
            return WriteResult(path, version_of(self, path), skipped=True)
        return None

    def write(self, df: DataFrame, path: str, mode: WriteMode, txn: Optional[AppTxn] = None,
              description: str = "") -> WriteResult:
        if mode not in _SPARK_MODE:
            raise StorageError(f"unknown write mode {mode!r} (create, append, overwrite)")
        skipped = self._skip(path, txn)
        if skipped:
            return skipped
        writer = df.write.format("delta").mode(_SPARK_MODE[mode]).option("userMetadata", description)
        if mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        return self._save(writer, path, txn)

    def _save(self, writer, path: str, txn: Optional[AppTxn]) -> WriteResult:
        if txn:
            writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
        try:
            writer.save(fs.spark_uri(path))
        except Exception as exc:  # noqa: BLE001 - surface the JVM message with the path
            raise StorageError(f"Delta write to {path} failed: {exc}") from exc
        return self._result(path)

    def _result(self, path: str) -> WriteResult:
        """The commit just made, with the row and file counts Delta recorded in its log entry
        (commitInfo.operationMetrics: numOutputRows, numFiles, numRemovedFiles)."""
        version = version_of(self, path)
        metrics: dict = {}
        try:
            for line in fs.read_text(fs.join(path, "_delta_log", f"{version:020d}.json")).splitlines():
                info = json.loads(line).get("commitInfo") if line.strip() else None
                if info:
                    metrics = {k: int(v) for k, v in (info.get("operationMetrics") or {}).items() if str(v).isdigit()}
        except (OSError, ValueError):  # the counts are a report; the commit stands without them
            pass
        return WriteResult(path, version, files_added=metrics.get("numFiles", metrics.get("numAddedFiles", 0)),
                           files_removed=metrics.get("numRemovedFiles", 0),
                           rows_written=metrics.get("numOutputRows", 0), metrics=metrics)

    def replace_where(self, df: DataFrame, path: str, column: str, value: str, txn: Optional[AppTxn] = None,
                      description: str = "") -> WriteResult:
        if not self.exists(path):
            return self.write(df, path, "create", txn, description)
        skipped = self._skip(path, txn)
        if skipped:
            return skipped
        literal = str(value).replace("'", "''")
        writer = (df.write.format("delta").mode("overwrite").option("replaceWhere", f"`{column}` = '{literal}'")
                  .option("userMetadata", description))
        return self._save(writer, path, txn)

    def merge(self, df: DataFrame, path: str, keys: list[str], txn: Optional[AppTxn] = None,
              description: str = "") -> WriteResult:
        if not self.exists(path):
            return self.write(df, path, "create", txn, description)
        skipped = self._skip(path, txn)
        if skipped:
            return skipped
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        conf = self.spark.conf
        if txn:  # DML statements take the app transaction from session settings
            conf.set("spark.databricks.delta.write.txnAppId", txn.app_id)
            conf.set("spark.databricks.delta.write.txnVersion", str(txn.version))
        conf.set("spark.databricks.delta.commitInfo.userMetadata", description)
        try:
            (self._table(path).alias("t").merge(df.alias("s"), cond)
             .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        finally:
            for k in ("spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion",
                      "spark.databricks.delta.commitInfo.userMetadata"):
                conf.unset(k)
        return self._result(path)
