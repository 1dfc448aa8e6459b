"""Task side of a distributed Delta write: each Spark task writes its rows to one Parquet
file under the table folder and returns only the file's path, size and statistics.

Files become part of the table only when the driver commits them; a task that fails, a
speculative duplicate, or a job killed before its commit leaves unreferenced files that
readers never see (and `vacuum` removes)."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from psrq.storage.fs import FsOptions, resolve

FILE_META_SCHEMA = "path string, size long, num_records long, modification_time long, stats string"

_STAT_TYPES = (pa.types.is_integer, pa.types.is_floating)


def file_stats(table: pa.Table) -> str:
    """Delta `stats` JSON: numRecords, and min/max/nullCount of numeric top-level columns
    (what lets readers skip files by key)."""
    stats = {"numRecords": table.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for name, col in zip(table.column_names, table.columns):
        if not any(t(col.type) for t in _STAT_TYPES):
            continue
        stats["nullCount"][name] = col.null_count
        if col.null_count < len(col):
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if pa.types.is_floating(col.type) and (lo != lo or hi != hi):  # NaN: no usable bound
                continue
            stats["minValues"][name], stats["maxValues"][name] = lo, hi
    return json.dumps(stats)


def write_task_file(
    batches: Iterator[pa.RecordBatch],
    table_uri: str,
    subdir: str,
    schema: pa.Schema,
    partition_id: int,
    max_rows_per_file: int = 1_000_000,
    row_group_rows: int = 65_536,
    options: FsOptions | None = None,
) -> Iterator[pa.RecordBatch]:
    """Write the task's batches to Parquet file(s); yield one metadata row per file.
    options: the driver's filesystem options (a task's process has not configured any)."""
    fs, root = resolve(table_uri, options)
    fs.create_dir(f"{root}/{subdir}", recursive=True)
    writer = sink = rel = None
    rows_in_file = 0
    stats_acc: dict = {}

    def close():
        nonlocal writer, sink
        if writer is None:
            return None
        writer.close()
        sink.close()  # the writer does not close a stream it was given: flush it here
        writer = sink = None
        info = fs.get_file_info(f"{root}/{rel}")
        return pa.RecordBatch.from_pydict(
            {
                "path": [rel],
                "size": [info.size],
                "num_records": [rows_in_file],
                "modification_time": [int(time.time() * 1000)],
                "stats": [json.dumps(stats_acc)],
            }
        )

    for batch in batches:
        start = 0
        while start < batch.num_rows:  # split batches so no file exceeds max_rows_per_file
            if writer is None:
                rel = f"{subdir}/part-{partition_id:05d}-{uuid.uuid4().hex}.parquet"
                sink = fs.open_output_stream(f"{root}/{rel}")
                writer = pq.ParquetWriter(sink, schema, compression="zstd")
                rows_in_file, stats_acc = 0, {}
            take = min(batch.num_rows - start, max_rows_per_file - rows_in_file)
            table = _conform(pa.Table.from_batches([batch.slice(start, take)]), schema)
            writer.write_table(table, row_group_size=row_group_rows)
            rows_in_file += take
            start += take
            stats_acc = _merge_stats(stats_acc, json.loads(file_stats(table)))
            if rows_in_file >= max_rows_per_file:
                yield close()
    meta = close()
    if meta is not None:
        yield meta


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast to the table schema; a null where the schema says not-null is an error (pyarrow
    would write it silently)."""
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ValueError(f"column '{field.name}' holds nulls but the table declares it not-null")
    return table.select(schema.names).cast(schema)


def _merge_stats(a: dict, b: dict) -> dict:
    if not a:
        return b
    out = {"numRecords": a["numRecords"] + b["numRecords"], "minValues": {}, "maxValues": {}, "nullCount": {}}
    for k in set(a["nullCount"]) | set(b["nullCount"]):
        out["nullCount"][k] = a["nullCount"].get(k, 0) + b["nullCount"].get(k, 0)
    for side, pick in (("minValues", min), ("maxValues", max)):
        for k in set(a[side]) | set(b[side]):
            vals = [v for v in (a[side].get(k), b[side].get(k)) if v is not None]
            out[side][k] = pick(vals)
    # a column whose bound is missing on one side (all null, NaN) has no safe bound overall
    for side in ("minValues", "maxValues"):
        for k in list(out[side]):
            if k not in a[side] and a["numRecords"] - a["nullCount"].get(k, 0) > 0:
                del out[side][k]
            elif k not in b[side] and b["numRecords"] - b["nullCount"].get(k, 0) > 0:
                del out[side][k]
    return out
