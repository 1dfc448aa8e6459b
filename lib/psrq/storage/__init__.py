"""Delta storage: one API (DeltaEngine), two engines.

- delta-spark: when the Delta jars are on the Spark classpath (clusters).
- delta-rs: everywhere else; Spark writes the files, `deltalake` commits them.
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from psrq.errors import ConfigError
from psrq.storage import fs
from psrq.storage.base import AppTxn, DeltaEngine, WriteResult
from psrq.storage.delta_rs import DeltaRsEngine
from psrq.storage.delta_spark import DeltaSparkEngine, delta_jars_loaded

__all__ = ["fs", "AppTxn", "DeltaEngine", "WriteResult", "open_engine", "DeltaRsEngine", "DeltaSparkEngine"]


def open_engine(spark: SparkSession, engine: str = "auto") -> DeltaEngine:
    """engine: auto (delta-spark when its jars are loaded, else delta-rs), delta-rs, delta-spark."""
    if engine == "auto":
        engine = "delta-spark" if delta_jars_loaded(spark) else "delta-rs"
    if engine == "delta-spark":
        return DeltaSparkEngine(spark)
    if engine == "delta-rs":
        return DeltaRsEngine(spark)
    raise ConfigError(f"storage.engine: unknown engine {engine!r} (auto, delta-rs, delta-spark)")
