"""Readers of the samples Parquet, sharded by row group: each rank reads its own row groups
(round-robin), so every row is read exactly once per epoch across ranks. Two readers with
one interface (iterables of dict[str, np.ndarray] batches of `batch_size` rows, the last
one smaller): `arrow` (pyarrow, reads row groups directly) and `petastorm`
(make_batch_reader with the same sharding)."""
from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Generator, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from psrq.errors import PsrqError
from psrq.storage import fs

# Petastorm calls pyarrow's legacy dataset API on every reader it opens, each call a
# FutureWarning (a dozen per rank per reader); silenced here, at their source, in every
# process that reads samples. Our own code's warnings are untouched.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")

log = logging.getLogger(__name__)


class ShardError(PsrqError):
    """A rank would get no data, or the data cannot be sharded as asked."""


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int
    rows: int


def row_groups(path: str) -> list[RowGroup]:
    """path: a local folder or a URI (psrq.storage.fs)."""
    files = [fs.join(path, name) for name in fs.listdir(path) if name.endswith(".parquet")]
    if not files:
        raise ShardError(f"no Parquet files under {path}")
    out = []
    for f in files:
        md = parquet_file(f).metadata
        out += [RowGroup(f, i, md.row_group(i).num_rows) for i in range(md.num_row_groups) if md.row_group(i).num_rows]
    return out


def shard(groups: list[RowGroup], rank: int, world: int) -> list[RowGroup]:
    """Round-robin by row group; an empty shard is an error (a rank with no data would hang
    a collective or silently drop out)."""
    if len(groups) < world:
        raise ShardError(
            f"{len(groups)} row group(s) for {world} processes: rank {len(groups)} and above would read nothing; "
            "build samples with smaller row groups (samples.row_group_mb) or train with fewer processes"
        )
    return groups[rank::world]


def parquet_file(location: str) -> pq.ParquetFile:
    filesystem, path = fs.resolve(location)
    return pq.ParquetFile(filesystem.open_input_file(path))


def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        n = len(arr)
        flat = np.asarray(arr.flatten())
        return flat.reshape(n, -1) if n else flat.reshape(0, 0)
    if pa.types.is_timestamp(arr.type):
        return np.asarray(arr.cast(pa.int64()))
    return arr.to_numpy(zero_copy_only=False)


def rebatch(tables, batch_size: int):
    """Arrow tables of any size -> dicts of numpy arrays of exactly batch_size rows (the
    last batch of the shard smaller)."""
    pending: list[pa.Table] = []
    rows = 0
    for t in tables:
        pending.append(t)
        rows += t.num_rows
        while rows >= batch_size:
            whole = pa.concat_tables(pending)
            yield {c: column_to_numpy(whole.column(c).slice(0, batch_size)) for c in whole.column_names}
            rest = whole.slice(batch_size)
            pending, rows = ([rest] if rest.num_rows else []), rest.num_rows
    if rows:
        whole = pa.concat_tables(pending)
        yield {c: column_to_numpy(whole.column(c)) for c in whole.column_names}


class ArrowReader:
    def __init__(self, path: str, columns: list[str], batch_size: int, rank: int = 0, world: int = 1):
        self.groups = shard(row_groups(path), rank, world)
        self.columns, self.batch_size = list(columns), batch_size

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups)

    def __iter__(self):
        def tables():
            for g in self.groups:
                yield parquet_file(g.file).read_row_group(g.index, columns=self.columns)

        return rebatch(tables(), self.batch_size)


class PetastormReader:
    def __init__(self, path: str, columns: list[str], batch_size: int, rank: int = 0, world: int = 1, workers: int = 1,
                 queue: int = 4):
        self.groups = shard(row_groups(path), rank, world)  # the same check; petastorm shards the same way
        self.path, self.columns, self.batch_size = path, list(columns), batch_size
        self.rank, self.world, self.workers, self.queue = rank, world, workers, queue

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups)

    def __iter__(self):
        from petastorm import make_batch_reader
        from petastorm.workers_pool import EmptyResultError

        url, filesystem = fs.petastorm_location(self.path)

        def tables():
            # Petastorm shards, schedules and prefetches the row groups (its worker pool reads
            # them ahead into a queue); its own batches would then go through pandas and a
            # per-row np.vstack for every list column (ArrowReaderWorkerResultsQueueReader),
            # which bounded it at a quarter of the Arrow reader's rows/s. The pool's results
            # are already the row groups as Arrow tables: they go to the same columnar
            # conversion as the Arrow reader's. One worker: a deterministic row-group order,
            # which resuming a killed run relies on.
            with make_batch_reader(url, schema_fields=self.columns, cur_shard=self.rank, shard_count=self.world,
                                   num_epochs=1, shuffle_row_groups=False, workers_count=self.workers,
                                   results_queue_size=self.queue, filesystem=filesystem) as reader:
                pool = reader._workers_pool  # noqa: SLF001 - petastorm is pinned; tested
                while True:
                    try:
                        table = pool.get_results()
                    except EmptyResultError:
                        return
                    yield table.select(self.columns)

        return rebatch(tables(), self.batch_size)


READERS = {"arrow": ArrowReader, "petastorm": PetastormReader}


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def prefetched(batches: Iterable[dict], depth: int, join_seconds: float = 60.0) -> Generator[dict, None, None]:
    """The batches, in their order, read ahead on a background thread (`depth` waiting, one
    more being read), so that reading and converting the next batches overlaps the step (on
    a GPU the step mostly waits on the device). depth 0: read in the caller's thread. A
    reader's error is raised here, in the caller; closing this generator (a run that stops
    before its data ends) stops the thread and closes the reader in it."""
    if depth <= 0:
        yield from batches
        return
    source = iter(batches)  # here: a reader that cannot start fails in the caller, not in the thread
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in source:
                if not put(batch):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(exc))
        finally:
            close = getattr(source, "close", None)
            try:
                if close is not None:
                    close()
            except Exception as exc:  # noqa: BLE001 - the batches were delivered; say so, do not fail the run
                log.warning("closing the reader after prefetching failed: %r", exc)

    thread = threading.Thread(target=produce, name="psrq-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(join_seconds)
        if thread.is_alive():  # a read that does not return (storage retrying): the daemon thread is left to it
            log.warning("the prefetching thread is still reading after %.0f s; left to finish on its own", join_seconds)


def make_reader(kind: str, path: str, columns: list[str], batch_size: int, rank: int = 0, world: int = 1):
    if kind not in READERS:
        raise ShardError(f"unknown reader {kind!r} (arrow, petastorm)")
    return READERS[kind](path, columns, batch_size, rank, world)
