"""What a stage runs with: one object instead of a session, a configuration and a storage
engine opened by hand in every stage. Every stage takes it first: `build_samples(job)`.
The storage engine is opened here and nowhere else (psrq.storage.open_engine)."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Optional

from psrq.config import Config

if TYPE_CHECKING:  # pyspark stays out of the jobs that run without Spark
    from pyspark.sql import SparkSession

    from psrq.quant.artifact import CodebookStore
    from psrq.storage import DeltaEngine
    from psrq.tracking.store import Tracker


@dataclass
class JobContext:
    """name: the job (jobs/<name>.py); spark: None for a job that runs without Spark.
    progress: draw progress bars (only when stderr is a terminal: a log gets no carriage
    returns)."""

    name: str
    cfg: Config
    spark: Optional["SparkSession"] = None
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())

    @classmethod
    def of(cls, spark: Optional["SparkSession"], cfg: Config, progress: bool = False) -> "JobContext":
        """A context for calling stages from code (a notebook, a test, a benchmark)."""
        return cls("library", cfg, spark, progress)

    def with_cfg(self, cfg: Config) -> "JobContext":
        """The same job and session with another configuration (a model's tuned settings, a
        dataset's experiment tree); its engine follows that configuration's storage.engine."""
        return dataclasses.replace(self, cfg=cfg)

    @property
    def session(self) -> "SparkSession":
        """The Spark session, for the stages that need one."""
        if self.spark is None:
            raise RuntimeError(f"job {self.name} runs without Spark: its stages need a session")
        return self.spark

    @cached_property
    def codebooks(self) -> "CodebookStore":
        """The codebook versions under storage.codebooks (its filesystem resolved once)."""
        from psrq.quant.artifact import CodebookStore

        return CodebookStore(self.cfg.codebooks_root())

    @property
    def tracker(self) -> "Tracker":
        """Where this job's runs are recorded (tracking.uri); one per store and experiment in
        a process, so the contexts of one job share it."""
        from psrq.tracking.store import tracker_for

        return tracker_for(self.cfg)

    @cached_property
    def engine(self) -> "DeltaEngine":
        """The configured storage engine (storage.engine), opened once per session and
        engine kind (open_engine keeps it on the session)."""
        from psrq.storage import open_engine

        return open_engine(self.session, self.cfg.storage.engine)
