"""Which codebook version's semantic IDs are in use: the `codebook_current` Delta table.

`semantic_ids` keeps the rows of several codebook versions side by side (a rollout assigns
the new version beside the old one); readers take `codebooks.version` when it is set, else
the version marked current for the method. Marking is its own commit: flipping every reader
from one version to another is one atomic step, and rolling back is marking the old one."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from pyspark.sql import functions as F

from psrq.config import Config
from psrq.errors import ArtifactError
from psrq.quant.artifact import CodebookStore
from psrq.results import StageResult
from psrq.schemas import CODEBOOK_CURRENT
from psrq.storage import AppTxn, DeltaEngine


@dataclass
class CurrentResult(StageResult):
    """A codebook version marked current for its method (jobs/mark_current.py)."""

    method: str
    codebook_version: str
    items: int      # its rows in semantic_ids
    skipped: bool   # it was current already


def current_version(engine: DeltaEngine, cfg: Config, method: Optional[str] = None) -> Optional[str]:
    path = cfg.table_path("codebook_current")
    if not engine.exists(path):
        return None
    row = (engine.read(path).filter(F.col("method") == (method or cfg.codebooks.method))
           .orderBy(F.col("marked_at").desc()).limit(1).collect())
    return row[0]["codebook_version"] if row else None


def version_in_use(engine: DeltaEngine, cfg: Config) -> str:
    """codebooks.version when set, else the version marked current; a clear error otherwise."""
    if cfg.codebooks.version:
        return cfg.codebooks.version
    current = current_version(engine, cfg)
    if current is None:
        raise ArtifactError(f"no {cfg.codebooks.method} codebook version is marked current in "
                            f"{cfg.table_path('codebook_current')}: run jobs/assign_ids.py (it marks what it assigned) "
                            "or jobs/mark_current.py codebooks.version=vNNNN, or set codebooks.version")
    return current


def mark_current(spark, engine: DeltaEngine, cfg: Config, version: str) -> CurrentResult:
    """Mark `version` current for its method, after checking that it is a complete codebook
    and that semantic_ids holds its rows."""
    store = CodebookStore(cfg.codebooks_root())
    if version not in store.versions():
        raise ArtifactError(f"codebook version {version!r} not found under {store.root}")
    method = store.manifest(version)["method"]
    sid = cfg.table_path("semantic_ids")
    n = engine.read(sid).filter(F.col("codebook_version") == version).count() if engine.exists(sid) else 0
    if n == 0:
        raise ArtifactError(f"semantic_ids has no rows of codebook {version}: assign it first "
                            f"(jobs/assign_ids.py codebooks.version={version} codebooks.mark_current=false)")
    if current_version(engine, cfg, method) == version:
        return CurrentResult(method, version, n, skipped=True)
    row = {"method": method, "codebook_version": version, "run_id": cfg.run.run_id, "marked_at": datetime.now(timezone.utc)}
    path = cfg.table_path("codebook_current")
    res = engine.write(spark.createDataFrame([row], CODEBOOK_CURRENT), path, "append" if engine.exists(path) else "create",
                       AppTxn(f"psrq.mark_current.{method}.{version}", cfg.run.run_id),
                       description=f"{version} current for {method}")
    return CurrentResult(method, version, n, skipped=res.skipped)
