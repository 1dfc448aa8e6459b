"""The storage API shared by both Delta engines."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Protocol

from pyspark.sql import DataFrame

WriteMode = Literal["create", "append", "overwrite"]


@dataclass(frozen=True)
class AppTxn:
    """Delta app transaction: a write tagged (app_id, version) is skipped when the table
    already recorded that version (or a later one) for app_id. Makes job re-runs no-ops."""

    app_id: str
    version: int


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int  # table version after the operation
    skipped: bool = False  # True when the app transaction had already been committed
    files_added: int = 0
    files_removed: int = 0
    rows_written: int = 0
    metrics: dict = field(default_factory=dict)


def version_of(engine: "DeltaEngine", path: str) -> int:
    """The version of a table that exists (one just written, or found committed)."""
    version = engine.version(path)
    if version is None:
        from psrq.errors import StorageError

        raise StorageError(f"no Delta table at {path}")
    return version


class DeltaEngine(Protocol):
    name: str

    def exists(self, path: str) -> bool: ...

    def version(self, path: str) -> Optional[int]: ...

    def write(
        self, df: DataFrame, path: str, mode: WriteMode, txn: Optional[AppTxn] = None, description: str = ""
    ) -> WriteResult: ...

    def merge(
        self, df: DataFrame, path: str, keys: list[str], txn: Optional[AppTxn] = None, description: str = ""
    ) -> WriteResult: ...

    def replace_where(
        self, df: DataFrame, path: str, column: str, value: str, txn: Optional[AppTxn] = None, description: str = ""
    ) -> WriteResult:
        """Replace the rows whose `column` equals `value` with `df` (every row of which must
        have that value) in one commit; other rows stay as they are."""
        ...

    def read(self, path: str, version: Optional[int] = None) -> DataFrame: ...

    def history(self, path: str) -> list[dict]: ...

    def transaction_version(self, path: str, app_id: str) -> Optional[int]: ...
