"""The base of every stage's result. Code reads a result's attributes; `as_dict()` is the
JSON document a job's `--json` prints (psrq.cli), and what a stage that keeps its result on
storage writes (training's result.json)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, TypeVar

R = TypeVar("R", bound="StageResult")


@dataclass
class StageResult:
    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[R], stored: dict[str, Any]) -> R:
        """A result read back from its JSON document; keys it does not know are left out."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})


@dataclass
class TableSummary:
    """A Delta table a stage wrote or read."""

    path: str
    version: int
    rows: Optional[int]  # None: not counted (a table this run found already written)


@dataclass
class TrackedResult(StageResult):
    """A stage recorded as an MLflow run: psrq.tracking.store.tracked sets its reference."""

    tracking: Optional[dict] = field(default=None, kw_only=True)
