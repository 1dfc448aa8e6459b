"""What a job's stage runs with: one object instead of a session, a configuration and a
storage engine opened by hand in every job."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Optional

from psrq.config import Config

if TYPE_CHECKING:  # pyspark stays out of the jobs that run without Spark
    from pyspark.sql import SparkSession

    from psrq.storage import DeltaEngine


@dataclass
class JobContext:
    """name: the job (jobs/<name>.py); spark: None for a job that runs without Spark.
    progress: draw progress bars (only when stderr is a terminal: a log gets no carriage
    returns)."""

    name: str
    cfg: Config
    spark: Optional["SparkSession"] = None
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())

    @cached_property
    def engine(self) -> "DeltaEngine":
        """The configured storage engine (storage.engine), opened once: the stages the job
        calls get the same one from open_engine."""
        from psrq.storage import open_engine

        if self.spark is None:
            raise RuntimeError(f"job {self.name} runs without Spark: it has no storage engine")
        return open_engine(self.spark, self.cfg.storage.engine)
