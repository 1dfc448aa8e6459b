"""Delta storage: one API (DeltaEngine), two engines.

- delta-spark: when the Delta jars are on the Spark classpath (clusters).
- delta-rs: everywhere else; Spark writes the files, `deltalake` commits them.

Only `fs` (pyarrow) is imported eagerly: the training ranks and the torch/numpy cores read
through `psrq.storage.fs` and must not need pyspark or deltalake (a GPU node's rank image
may have neither); the engines are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from psrq.errors import ConfigError
from psrq.storage import fs

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from psrq.storage.base import AppTxn, DeltaEngine, WriteResult
    from psrq.storage.delta_rs import DeltaRsEngine
    from psrq.storage.delta_spark import DeltaSparkEngine

__all__ = ["fs", "AppTxn", "DeltaEngine", "WriteResult", "open_engine", "DeltaRsEngine", "DeltaSparkEngine"]

_LAZY = {"AppTxn": "base", "DeltaEngine": "base", "WriteResult": "base",
         "DeltaRsEngine": "delta_rs", "DeltaSparkEngine": "delta_spark"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"psrq.storage.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_engine(spark: SparkSession, engine: str = "auto") -> DeltaEngine:
    """engine: auto (delta-spark when its jars are loaded, else delta-rs), delta-rs, delta-spark.
    The same session, engine and filesystem options give the same engine object."""
    from psrq.storage.delta_rs import DeltaRsEngine
    from psrq.storage.delta_spark import DeltaSparkEngine, delta_jars_loaded

    if engine not in ("auto", "delta-rs", "delta-spark"):
        raise ConfigError(f"storage.engine: unknown engine {engine!r} (auto, delta-rs, delta-spark)")
    if engine == "auto":
        engine = "delta-spark" if delta_jars_loaded(spark) else "delta-rs"
    # the session keeps the engines opened on it: a job's stages share one, keyed by the
    # engine and the filesystem options it was opened with
    opened = spark.__dict__.setdefault("_psrq_engines", {})
    key = (engine, fs.current())
    if key not in opened:
        opened[key] = DeltaSparkEngine(spark) if engine == "delta-spark" else DeltaRsEngine(spark)
    return opened[key]
