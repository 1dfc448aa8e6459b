"""Delta tables without the Delta jars: Spark tasks write Parquet files, the driver commits
them with delta-rs (`deltalake`) in one transaction.

Only file metadata (path, size, stats) travels to the driver, so driver memory does not
grow with the data. A job that dies before its commit leaves the table at its previous
version: the files it wrote are not in the log, so no reader sees them.
"""
from __future__ import annotations

import json
import re
import time
from functools import partial
from typing import Optional

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from psrq.errors import StorageError
from psrq.storage import fs
from psrq.storage.base import AppTxn, WriteMode, WriteResult, version_of
from psrq.storage.parquet_files import FILE_META_SCHEMA, write_task_file

DATA_DIR = "data"
_ATTEMPTS = 5


class _Conflict(Exception):
    """A concurrent commit of another writer won the version this one was committing."""


def _arrow_schema(df: DataFrame) -> pa.Schema:
    return to_arrow_schema(df.schema, timestamp_utc=True)


def _write_partition(batches, table_uri: str, schema: pa.Schema, max_rows_per_file: int, options: fs.FsOptions):
    ctx = TaskContext.get()
    part = ctx.partitionId() if ctx else 0
    yield from write_task_file(batches, table_uri, DATA_DIR, schema, part, max_rows_per_file, options=options)


class DeltaRsEngine:
    name = "delta-rs"

    def __init__(self, spark: SparkSession, max_rows_per_file: int = 1_000_000, options: fs.FsOptions | None = None):
        self.spark = spark
        self.max_rows_per_file = max_rows_per_file
        # the filesystem layer's options: delta-rs, the driver's pyarrow and the tasks get the same
        self.options = options or fs.current()

    def _location(self, path: str) -> tuple[str, Optional[dict]]:
        """The table as delta-rs names it (s3a:// -> s3://) and its storage options."""
        return fs.delta_rs_location(path, self.options)

    # --- reading ---------------------------------------------------------------------
    def _table(self, path: str, version: Optional[int] = None) -> DeltaTable:
        uri, opts = self._location(path)
        try:
            return DeltaTable(uri, version=version, storage_options=opts)
        except TableNotFoundError:
            raise StorageError(f"no Delta table at {path}") from None
        except DeltaError as exc:
            why = _without_backtrace(exc)
            if version is not None:
                raise StorageError(f"cannot load version {version} of the Delta table at {path}: {why}") from None
            raise StorageError(f"cannot open the Delta table at {path}: {why}{_log_diagnosis(path)}") from None

    def exists(self, path: str) -> bool:
        uri, opts = self._location(path)
        return DeltaTable.is_deltatable(uri, storage_options=opts)

    def version(self, path: str) -> Optional[int]:
        return self._table(path).version() if self.exists(path) else None

    def transaction_version(self, path: str, app_id: str) -> Optional[int]:
        return self._table(path).transaction_version(app_id) if self.exists(path) else None

    def history(self, path: str) -> list[dict]:
        return self._table(path).history()

    def spark_schema(self, dt: DeltaTable):
        return from_arrow_schema(pa.schema(dt.schema().to_arrow()))

    def read(self, path: str, version: Optional[int] = None) -> DataFrame:
        """The table's snapshot as a Spark DataFrame, from the log's file list (never by
        listing the folder: removed and uncommitted files are there too)."""
        dt = self._table(path, version)
        schema = self.spark_schema(dt)
        files = [fs.spark_uri(u) for u in dt.file_uris()]
        if not files:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(*files)

    # --- writing ---------------------------------------------------------------------
    def _write_files(self, df: DataFrame, path: str, schema: pa.Schema) -> list[AddAction]:
        fn = partial(_write_partition, table_uri=path, schema=schema, max_rows_per_file=self.max_rows_per_file,
                     options=self.options)
        rows = df.mapInArrow(fn, FILE_META_SCHEMA).collect()
        return [AddAction(r.path, r.size, {}, r.modification_time, True, r.stats) for r in rows]

    def _commit_properties(self, txn: Optional[AppTxn], description: str, extra: dict) -> CommitProperties:
        meta = {"psrq.description": description, **{f"psrq.{k}": v for k, v in extra.items()}}
        apps = [Transaction(txn.app_id, txn.version, int(time.time() * 1000))] if txn else None
        # With an app transaction the commit must land on exactly the version after the one
        # where the transaction was checked: no silent rebase onto a concurrent commit, which
        # could be the same run's (see _commit_once)
        return CommitProperties(custom_metadata=meta, app_transactions=apps, max_commit_retries=0 if txn else None)

    def _commit(self, commit) -> None:
        """The single point where a write becomes visible (tests inject crashes here)."""
        try:
            commit()
        except CommitFailedError:
            raise  # a concurrent commit won: _commit_once decides
        except DeltaError as exc:
            raise StorageError(f"Delta commit failed: {exc}") from exc

    def _commit_once(self, path: str, txn: Optional[AppTxn], adds: list[AddAction], commit) -> Optional[WriteResult]:
        """Commit; when a concurrent writer got there first, check the app transaction again
        *after* its commit: the same run → our files are dropped and the write reports
        "already done" (skipped); another writer → None (the caller decides to retry)."""
        try:
            self._commit(commit)
            return None
        except CommitFailedError as exc:
            if txn is None or not self.exists(path):
                raise StorageError(f"Delta commit to {path} failed: {exc}") from exc
            self._drop_files(path, adds)
            done = self._already_done(path, txn)
            if done:
                return done
            raise _Conflict(str(exc)) from exc

    def _drop_files(self, path: str, adds: list[AddAction]) -> None:
        """Files written for a commit that did not happen: nobody references them."""
        filesystem, root = fs.resolve(path, self.options)
        for a in adds:
            try:
                filesystem.delete_file(f"{root.rstrip('/')}/{a.path}")
            except (FileNotFoundError, OSError):
                pass

    def _already_done(self, path: str, txn: Optional[AppTxn]) -> Optional[WriteResult]:
        if txn is None or not self.exists(path):
            return None
        done = self.transaction_version(path, txn.app_id)
        if done is not None and done >= txn.version:
            return WriteResult(table=path, version=version_of(self, path), skipped=True)
        return None

    def _check_schema(self, dt: DeltaTable, schema: pa.Schema, path: str) -> pa.Schema:
        """Column names and types must match (nullability aside: Spark relaxes it on read);
        returns the table's schema, which the new files are written with."""
        have = pa.schema(dt.schema().to_arrow())
        if [(f.name, _loose(f.type)) for f in have] != [(f.name, _loose(f.type)) for f in schema]:
            new = [n for n in schema.names if n not in have.names]
            hint = (f" (the table lacks column(s) {new}: it was written by an earlier version; move it aside or "
                    "write under another storage root to start a new one)") if new else ""
            raise StorageError(
                f"schema of the data does not match the Delta table at {path}{hint}:\n  table: {have}\n  data:  {schema}"
            )
        return have

    def write(
        self, df: DataFrame, path: str, mode: WriteMode, txn: Optional[AppTxn] = None, description: str = ""
    ) -> WriteResult:
        if mode not in ("create", "append", "overwrite"):
            raise StorageError(f"unknown write mode {mode!r} (create, append, overwrite)")
        done = self._already_done(path, txn)
        if done:
            return done
        exists = self.exists(path)
        if mode == "create" and exists:
            raise StorageError(f"a Delta table already exists at {path}; use overwrite or append")
        schema = _arrow_schema(df)
        if exists and mode == "append":
            schema = self._check_schema(self._table(path), schema, path)
        adds = self._write_files(df, path, schema)
        rows = sum(_num_records(a) for a in adds)
        props = self._commit_properties(txn, description, {"rows": rows, "mode": mode})
        for attempt in range(_ATTEMPTS):
            if exists:
                dt = self._table(path)
                tx_mode = "append" if mode == "append" else "overwrite"
                removed = 0 if mode == "append" else len(dt.file_uris())
                actions: list = list(adds)
                commit = lambda: dt.create_write_transaction(  # noqa: E731
                    actions, mode=tx_mode, schema=Schema.from_arrow(schema), commit_properties=props)
            else:
                removed = 0
                uri, opts = self._location(path)
                commit = lambda: create_table_with_add_actions(  # noqa: E731
                    uri, Schema.from_arrow(schema), adds, mode="error", storage_options=opts, commit_properties=props)
            try:
                done = self._commit_once(path, txn, adds, commit)
            except _Conflict:
                if attempt == _ATTEMPTS - 1:
                    raise StorageError(f"Delta commit to {path} kept conflicting with concurrent writers; "
                                       "re-run the job") from None
                adds = self._write_files(df, path, schema)  # ours were dropped with the conflict
                exists = True
                continue
            if done:
                return done
            return WriteResult(path, version_of(self, path), False, len(adds), removed, rows)
        raise AssertionError("unreachable")

    def _open_for_rewrite(self, df: DataFrame, path: str, txn: Optional[AppTxn], description: str):
        """(result, None, None) when nothing is left to do here (the run's transaction is
        committed, or there is no table yet and `df` creates it); else (None, table, schema)."""
        done = self._already_done(path, txn)
        if done:
            return done, None, None
        if not self.exists(path):
            return self.write(df, path, "create", txn, description), None, None
        dt = self._table(path)
        return None, dt, pa.schema(dt.schema().to_arrow())

    def _with_files(self, dt: DeltaTable, path: str) -> DataFrame:
        """The table at dt's version, each row with the file it is in (`_file`)."""
        return self.read(path, dt.version()).withColumn("_file", F.input_file_name())

    def _rewrite(self, dt: DeltaTable, path: str, schema: pa.Schema, rows: DataFrame, touched_uris: list[str],
                 txn: Optional[AppTxn], description: str, what: str) -> WriteResult:
        """One commit that removes the touched files and adds `rows`, never rebased onto a
        concurrent commit (the touched files may have changed under it)."""
        files = pa.table(dt.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pylist()
        by_name = {f["path"].rsplit("/", 1)[-1]: f for f in files}
        touched = [by_name[u.rsplit("/", 1)[-1]] for u in touched_uris]
        adds = self._write_files(rows, path, schema)
        now = int(time.time() * 1000)
        removes = [RemoveAction(f["path"], True, now, f["size_bytes"]) for f in touched]
        n = sum(_num_records(a) for a in adds)
        props = self._commit_properties(txn, description, {"rows": n, "mode": what})
        try:
            done = self._commit_once(path, txn, adds, lambda: dt.create_write_transaction(
                removes + adds, mode="append", schema=Schema.from_arrow(schema), commit_properties=props))
        except _Conflict as exc:
            raise StorageError(f"{what} on {path} conflicted with a concurrent write ({exc}); re-run the job") from None
        return done or WriteResult(path, version_of(self, path), False, len(adds), len(removes), n)

    def replace_where(
        self, df: DataFrame, path: str, column: str, value: str, txn: Optional[AppTxn] = None, description: str = ""
    ) -> WriteResult:
        """Copy-on-write replacement of one value's rows: the files holding any row with that
        value are removed and the new rows added, in one commit. Callers keep one value per
        file (every write of the table carries a single value), so no other row moves."""
        result, dt, schema = self._open_for_rewrite(df, path, txn, description)
        if result:
            return result
        source = df.select(*schema.names)
        self._check_schema(dt, _arrow_schema(source), path)
        if source.filter(F.col(column).isNull() | (F.col(column) != F.lit(value))).limit(1).count():
            raise StorageError(f"replace_where on {path}: the new rows must all have {column} = {value!r}")
        rows = self._with_files(dt, path)
        touched = [r[0] for r in rows.filter(F.col(column) == F.lit(value)).select("_file").distinct().collect()]
        if touched and rows.filter(F.col("_file").isin(touched) & (F.col(column) != F.lit(value))).limit(1).count():
            raise StorageError(f"replace_where on {path}: files mix {column} values; refusing to rewrite other rows")
        return self._rewrite(dt, path, schema, source, touched, txn, description, f"replace {column}={value}")

    def merge(
        self, df: DataFrame, path: str, keys: list[str], txn: Optional[AppTxn] = None, description: str = ""
    ) -> WriteResult:
        """Upsert by key, copy-on-write: the files holding any source key are rewritten
        without those rows plus the source rows; one commit removes the old files and adds
        the new. All of it runs on the executors."""
        if not keys:
            raise StorageError("merge needs at least one key column")
        result, dt, schema = self._open_for_rewrite(df, path, txn, description)
        if result:
            return result
        missing = [c for c in schema.names if c not in df.columns]
        if missing:
            raise StorageError(f"merge source lacks columns of the table at {path}: {missing}")
        source = df.select(*schema.names)
        self._check_schema(dt, _arrow_schema(source), path)
        dup = source.groupBy(*keys).count().filter("count > 1").limit(3).collect()
        if dup:
            raise StorageError(f"merge source has duplicate keys {keys}: e.g. {[tuple(r)[:-1] for r in dup]}")
        touched = [r[0] for r in self._with_files(dt, path).join(source.select(*keys), keys, "left_semi")
                   .select("_file").distinct().collect()]
        rewritten = source
        if touched:
            kept = (self.spark.read.schema(self.spark_schema(dt)).parquet(*[fs.spark_uri(t) for t in touched])
                    .join(source.select(*keys), keys, "left_anti"))
            rewritten = kept.unionByName(source)
        return self._rewrite(dt, path, schema, rewritten, touched, txn, description, "merge")


def _without_backtrace(exc: BaseException) -> str:
    """delta-rs' message without the Rust backtrace it appends (lines of `N: <frame>`)."""
    lines = str(exc).splitlines()
    cut = next((i for i, line in enumerate(lines) if re.match(r"^\s*(\d+: |at \S)", line) or "Stack backtrace" in line),
               len(lines))
    return " ".join(line.strip() for line in lines[:cut] if line.strip()) or type(exc).__name__


def _log_diagnosis(path: str) -> str:
    """What is wrong with the table's newest log entry, if that is the trouble (a commit cut
    short by a crash or a full disk), and the way out."""
    log_dir = fs.join(path, "_delta_log")
    commits = sorted(n for n in fs.listdir(log_dir) if n.endswith(".json") and n[:-5].isdigit())
    if not commits:
        return ""
    newest = fs.join(log_dir, commits[-1])
    try:
        for line in fs.read_text(newest).splitlines():
            if line.strip():
                json.loads(line)
    except ValueError:
        previous = int(commits[-1][:-5]) - 1
        back = (f"to go back to version {previous}" if previous >= 0
                else "and write the table again (it has no earlier version)")
        return (f". Its newest log entry {newest} is not valid JSON (a commit cut short): restore it from a copy, "
                f"or move it out of _delta_log {back}")
    except OSError:
        return ""
    return ""


def _loose(t: pa.DataType) -> pa.DataType:
    """The type with every nested field made nullable (for comparisons)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_loose(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _loose(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_loose(t.key_type), _loose(t.item_type))
    return t


def _num_records(add: AddAction) -> int:
    return int(json.loads(add.stats).get("numRecords", 0))
