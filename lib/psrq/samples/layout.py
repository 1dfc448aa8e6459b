"""Training samples from one user's events (pure numpy/pyarrow; the Spark adapter is in
psrq.samples.build).

Every event becomes a sample: its label, its target item (vocabulary index and semantic
codes), and the user's last N positive events *strictly before* it (an equal timestamp is
not before), oldest first, as item indices and code sequences. Codes are stored shifted by
one so that 0 is padding: a code c is written as c + 1 everywhere in the samples.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD = 0
OOV = 1  # vocabulary index of items not seen in training
FIRST_INDEX = 2
VOCAB_ORDER = "train_frequency"  # item indices by descending train count (manifest "vocab_order")


def event_histories(ts: np.ndarray, labels: np.ndarray, n: int,
                    users: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by user, then time (one user when `users` is None). Returns (idx (m, n):
    positions of the user's last n positives strictly before each event, oldest first, -1 as
    padding; lengths (m,))."""
    m = len(ts)
    rows = np.arange(m)
    other_user = np.zeros(m, dtype=bool) if users is None else np.r_[False, users[1:] != users[:-1]]
    # the first row of each (user, time) run and of each user: the positives before a run's
    # first row are the ones strictly before its events
    run = np.maximum.accumulate(np.where(np.r_[True, (ts[1:] != ts[:-1]) | other_user[1:]], rows, 0))
    first = np.maximum.accumulate(np.where(np.r_[True, other_user[1:]], rows, 0))
    positives = np.r_[0, np.cumsum(labels == 1)]  # positives[i]: positives among rows [0, i)
    before = positives[run]
    length = np.minimum(before - positives[first], n)
    pos = np.flatnonzero(labels == 1)
    if len(pos) == 0:
        return np.full((m, n), -1, dtype=np.int64), length
    grid = (before - length)[:, None] + np.arange(n)[None, :]
    valid = np.arange(n)[None, :] < length[:, None]
    return np.where(valid, pos[np.minimum(grid, len(pos) - 1)], -1), length


def quantile_rank(p: float, n: int) -> int:
    """Where the p-quantile of n event times sits: the ceil(p·n)-th smallest (at least the
    first), p taken as the decimal it is written as (0.8 of 10 is the 8th, not the 9th by a
    float's rounding). The splits begin at these ranks (psrq.samples.build.split_cutoffs), and
    what must stay before a split (psrq.data.lastfm's tag profiles) is cut at the same rank."""
    return max(1, math.ceil(Fraction(str(p)) * n))


def split_of(ts: np.ndarray, valid_from: int, test_from: int) -> np.ndarray:
    return np.where(ts >= test_from, "test", np.where(ts >= valid_from, "valid", "train"))


def row_bytes(schema: pa.Schema, n: int, layers: int, codebook_version: str) -> float:
    """Uncompressed Arrow bytes of one sample row, from the layout alone (no pass over the
    data): every list has a fixed length (a target's codes: `layers`; a history: n entries,
    of `layers` codes each for code lists) and a 4-byte offset, the one string is the
    codebook version, and a nullable column adds its validity bit."""
    total = 0.0
    for f in schema:
        t = f.type
        if pa.types.is_list(t):
            length = (n if f.name.startswith("hist_") else 1) * (layers if f.name.endswith("_codes") else 1)
            total += 4 + length * t.value_type.bit_width / 8
        elif pa.types.is_string(t):
            total += 4 + len(codebook_version.encode())
        else:
            total += t.bit_width / 8
        total += f.nullable / 8
    return total


def fixed_lists(values: np.ndarray, dtype) -> pa.Array:
    """A (rows, width) matrix as a list column of `width` values per row (the samples' lists)."""
    m, width = values.shape
    offsets = pa.array(np.arange(0, (m + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1).astype(dtype)))


def _matrix(col: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.flatten()).reshape(-1, width)


CONTEXT = "_context"  # a row that only feeds the histories of the user's later events
ORDER = ("user_id", "ts", "item_id")  # the order the histories are read in: by time, equal times by item


def user_samples(events: pa.Table, spaces: list[str], layers: int, n: int, valid_from: int, test_from: int,
                 codebook_version: str) -> pa.Table:
    """events: one user's rows with user_id, item_id, label, ts (timestamp[us]), item_idx,
    is_cold, <space>_codes (raw codes, `layers` each) and, optionally, content_idx."""
    order = np.lexsort((np.asarray(events.column("item_id")), np.asarray(events.column("ts").cast(pa.int64()))))
    return sorted_samples(events.take(pa.array(order)), spaces, layers, n, valid_from, test_from, codebook_version)


def sorted_samples(ev: pa.Table, spaces: list[str], layers: int, n: int, valid_from: int, test_from: int,
                   codebook_version: str) -> pa.Table:
    """The samples of rows sorted by ORDER (any number of users); rows with CONTEXT true
    feed the histories and get no sample of their own."""
    ts = np.asarray(ev.column("ts").cast(pa.int64()))
    labels = np.asarray(ev.column("label"))
    idx, length = event_histories(ts, labels, n, np.asarray(ev.column("user_id")))
    pad = idx < 0
    safe = np.where(pad, 0, idx)
    item_idx = np.asarray(ev.column("item_idx"), dtype=np.int32)
    out = {
        "user_id": ev.column("user_id"),
        "item_id": ev.column("item_id"),
        "item_idx": pa.array(item_idx),
        "label": ev.column("label"),
        "ts": ev.column("ts"),
        "split": pa.array(split_of(ts, valid_from, test_from)),
        "is_cold": pa.array(np.asarray(ev.column("is_cold"), dtype=np.int32)),
        "hist_len": pa.array(length.astype(np.int32)),
        "hist_item_idx": fixed_lists(np.where(pad, PAD, item_idx[safe]), np.int32),
    }
    if "content_idx" in ev.column_names:
        cidx = np.asarray(ev.column("content_idx"), dtype=np.int32)
        out["content_idx"] = pa.array(cidx)
        out["hist_content_idx"] = fixed_lists(np.where(pad, PAD, cidx[safe]), np.int32)
    for s in spaces:
        codes = _matrix(ev.column(f"{s}_codes"), layers).astype(np.int16) + 1
        out[f"target_{s}_codes"] = fixed_lists(codes, np.int16)
        hist = np.where(pad[:, :, None], PAD, codes[safe])  # (m, n, layers)
        out[f"hist_{s}_codes"] = fixed_lists(hist.reshape(len(ts), n * layers), np.int16)
    last = np.where(length > 0, ts[safe[np.arange(len(ts)), np.maximum(length - 1, 0)]], 0)
    out["hist_last_ts"] = pa.array(last, type=pa.int64(), mask=length == 0).cast(pa.timestamp("us", tz="UTC"))
    out["codebook_version"] = pa.array([codebook_version] * len(ts))
    table = pa.table(out)
    if CONTEXT in ev.column_names:
        table = table.filter(pc.invert(ev.column(CONTEXT)))
    return table


def _last_run(ev: pa.Table) -> int:
    """Where the last run of equal (user_id, ts) begins in rows sorted by ORDER."""
    users, ts = (np.asarray(ev.column(c).cast(pa.int64())) for c in ("user_id", "ts"))
    differ = np.flatnonzero((users != users[-1]) | (ts != ts[-1])) if len(ts) else np.zeros(0, dtype=int)
    return int(differ[-1]) + 1 if len(differ) else 0


def _context(done: pa.Table, user, n: int) -> pa.Table:
    """`user`'s last n positives among the rows done, as context rows."""
    mine = done.filter(pc.and_(pc.equal(done.column("user_id"), user), pc.equal(done.column("label"), 1)))
    mine = mine.slice(max(mine.num_rows - n, 0))
    return mine.set_column(mine.schema.get_field_index(CONTEXT), CONTEXT, pa.array(np.ones(mine.num_rows, dtype=bool)))


def stream_samples(batches: Iterable[pa.RecordBatch], samples: Callable[[pa.Table], pa.Table], n: int) -> Iterator[pa.Table]:
    """The samples of a stream of events sorted by ORDER (a partition, as Spark hands it over
    in Arrow batches), with `samples` = sorted_samples with its settings bound. A user's
    events may run over many batches: the rows of the last (user, time) run of a batch wait
    for the next one (a history needs the positives strictly before it), and carry with
    them that user's last n positives as context rows. So one step holds a batch, at most n
    context rows and one run of equal times, however many events a user has."""
    carry = None
    for batch in batches:
        t = pa.Table.from_batches([batch])
        t = t.append_column(CONTEXT, pa.array(np.zeros(t.num_rows, dtype=bool)))
        table = pa.concat_tables([carry, t]) if carry is not None else t
        cut = _last_run(table)
        if cut == 0:  # one run so far: wait for its end
            carry = table
            continue
        done, rest = table.slice(0, cut), table.slice(cut)
        yield samples(done)
        carry = pa.concat_tables([_context(done, rest.column("user_id")[0], n), rest])
    if carry is not None:
        yield samples(carry)


def qarm_codes(cfg) -> bool:
    """Whether a build with `cfg` (psrq.config.Config) writes QARM's content codes:
    samples.qarm.codes, or, unset, whether train.model is qarm; never without content."""
    want = cfg.samples.qarm.codes
    return cfg.samples.content.dim > 0 and (cfg.train.model == "qarm" if want is None else bool(want))


def build_settings(cfg) -> dict:
    """The samples settings (psrq.config.SamplesConf of `cfg`) a build depends on: all but
    where it is written, with qarm.codes resolved. The manifest records them; the
    experiments compare them before reusing a build (serves_settings)."""
    out = {k: v for k, v in cfg.samples.model_dump(mode="json").items() if k != "path"}
    out["qarm"]["codes"] = qarm_codes(cfg)
    return out


def settings_differ(built: dict, want: dict) -> dict[str, tuple]:
    """Where a build (its manifest's `settings`) is not the build `want`s: dotted setting ->
    (built, wanted). QARM codes built and not wanted do not count (a manifest from before
    qarm.codes always has them)."""
    def flat(d: dict, pre: str = "") -> dict:
        return {k: v for key, val in d.items()
                for k, v in (flat(val, f"{pre}{key}.").items() if isinstance(val, dict) else [(pre + key, val)])}

    b, w = flat(built), flat(want)
    b.setdefault("qarm.codes", True)
    if b["qarm.codes"] and not w.get("qarm.codes"):
        b["qarm.codes"] = w.get("qarm.codes")
    return {k: (b.get(k), w.get(k)) for k in sorted(b.keys() | w.keys()) if b.get(k) != w.get(k)}


@dataclass(frozen=True)
class SamplesManifest:
    """What build_samples hands to training and evaluation (`manifest.json` beside the
    splits, written last). `raw` keeps the whole document for reports."""

    path: str
    codebook_version: str
    k: int
    layers: int
    spaces: tuple
    history_len: int
    vocab_size: int
    splits: dict          # split -> {"path", "rows", "row_group_bytes", "files"}
    source_versions: dict
    split_from_us: dict
    content: Optional[dict]
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    FILE = "manifest.json"

    @classmethod
    def read(cls, path: str) -> "SamplesManifest":
        from psrq.errors import TrainingError
        from psrq.storage import fs

        f = fs.join(path, cls.FILE)
        try:
            text = fs.read_text(f)
        except FileNotFoundError:
            raise TrainingError(f"no samples at {path} (missing {cls.FILE}): run jobs/build_samples.py first") from None
        try:
            return cls.of(path, json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"the samples manifest {f} is unreadable or incomplete ({exc!r}): rebuild the samples") from exc

    @classmethod
    def of(cls, path: str, m: dict) -> "SamplesManifest":
        """The manifest document `m` of the samples at `path`."""
        from psrq.storage import fs

        # split paths are relative to the manifest's folder (absolute in manifests before 2026-12)
        splits = {s: {**o, "path": o["path"] if "://" in o["path"] or o["path"].startswith("/")
                      else fs.join(path, o["path"])} for s, o in m["splits"].items()}
        return cls(path=path, codebook_version=m["codebook_version"], k=int(m["k"]), layers=int(m["layers"]),
                   spaces=tuple(m["spaces"]), history_len=int(m["history_len"]), vocab_size=int(m["vocab_size"]),
                   splits=splits, source_versions=m["source_versions"], split_from_us=m["split_from_us"],
                   content=m.get("content"), raw=m)

    def as_dict(self) -> dict:
        """The manifest document, with the folder and the splits' locations resolved (a job's --json)."""
        return {**self.raw, "path": self.path, "splits": self.splits}

    @property
    def key(self) -> str:
        """One build of the samples (its splits as the manifest names them: where the folder
        lies is no part of it)."""
        return hashlib.sha256(json.dumps({"codebook_version": self.codebook_version, "vocab_size": self.vocab_size,
                                          "splits": self.raw.get("splits", self.splits),
                                          "source_versions": self.source_versions,
                                          "split_from_us": self.split_from_us}, sort_keys=True).encode()).hexdigest()[:10]

    def row_counts(self) -> str:
        """The splits' rows, for a line of output."""
        return ", ".join(f"{s} {o['rows']:,}" for s, o in self.splits.items())

    def split_path(self, split: str) -> str:
        return self.splits[split]["path"]

    @property
    def modalities(self) -> list[str]:
        return [s for s in self.spaces if s != "joint"]
