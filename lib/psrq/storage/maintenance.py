"""Cleaning up after killed runs: files that no commit ever referenced.

A job killed before its Delta commit leaves the Parquet files its tasks wrote; no reader
sees them (reads go through the log), but they take space. A killed checkpoint write leaves
`checkpoint.pt.tmp-<pid>`; a killed codebook fit leaves a version folder without a manifest.
`orphans()` finds them and `clean()` removes them; only files older than a grace period are
touched, so a writer that is running right now keeps its files."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow.parquet as pq
from pyarrow import fs as pafs

from psrq.storage.fs import resolve

log = logging.getLogger(__name__)
LOG_DIR = "_delta_log"


@dataclass
class Orphans:
    files: list[str] = field(default_factory=list)  # full paths on their filesystem
    folders: list[str] = field(default_factory=list)  # incomplete codebook versions
    bytes: int = 0
    _where: list = field(default_factory=list, repr=False)  # (filesystem, path, is folder)

    def add(self, fs: pafs.FileSystem, info: pafs.FileInfo) -> None:
        self.files.append(info.path)
        self.bytes += info.size or 0
        self._where.append((fs, info.path, False))

    def add_folder(self, fs: pafs.FileSystem, path: str, size: int) -> None:
        self.folders.append(path)
        self.bytes += size
        self._where.append((fs, path, True))

    def summary(self) -> dict:
        return {"files": len(self.files), "folders": len(self.folders), "bytes": self.bytes,
                "paths": self.files + self.folders}


def _referenced(fs: pafs.FileSystem, table: str) -> set[str]:
    """Every data file any commit of the log added (relative to the table)."""
    seen: set[str] = set()
    for info in fs.get_file_info(pafs.FileSelector(f"{table}/{LOG_DIR}")):
        name = info.base_name
        if name.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                for line in f.read().decode().splitlines():
                    action = json.loads(line) if line.strip() else {}
                    for kind in ("add", "remove"):
                        if kind in action:
                            seen.add(unquote(action[kind]["path"]))
        elif name.endswith(".checkpoint.parquet") or ".checkpoint." in name:
            with fs.open_input_file(info.path) as f:
                adds = pq.read_table(f, columns=["add"]).column("add").to_pylist()
            seen.update(unquote(a["path"]) for a in adds if a)
    return seen


def delta_tables(root: str) -> list[str]:
    """Delta tables under root (any depth), as filesystem paths."""
    fs, base = resolve(root)
    out = []
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except FileNotFoundError:
        return []
    for info in infos:
        if info.type == pafs.FileType.Directory and info.base_name == LOG_DIR:
            out.append(info.path[: -len(LOG_DIR)].rstrip("/"))
    return sorted(out)


def orphans(storage_root: str, checkpoint_root: str | None, codebooks_root: str | None,
            min_age_s: float = 3600.0, now: float | None = None) -> Orphans:
    now = time.time() if now is None else now
    found = Orphans()

    def old(info: pafs.FileInfo) -> bool:
        return info.mtime is not None and now - info.mtime.timestamp() >= min_age_s

    fs, _ = resolve(storage_root)
    for table in delta_tables(storage_root):
        referenced = _referenced(fs, table)
        for info in fs.get_file_info(pafs.FileSelector(table, recursive=True)):
            rel = info.path[len(table) + 1:]
            if info.type != pafs.FileType.File or rel.startswith(LOG_DIR) or "/_delta_log/" in f"/{rel}":
                continue
            if rel not in referenced and old(info):
                found.add(fs, info)
    if checkpoint_root:
        cfs, cbase = resolve(checkpoint_root)
        for info in cfs.get_file_info(pafs.FileSelector(cbase, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File and ".tmp-" in info.base_name and old(info):
                found.add(cfs, info)
    if codebooks_root:
        bfs, bbase = resolve(codebooks_root)
        for info in bfs.get_file_info(pafs.FileSelector(bbase, allow_not_found=True)):
            if info.type != pafs.FileType.Directory:
                continue
            if bfs.get_file_info(f"{info.path}/manifest.json").type == pafs.FileType.File:
                continue
            files = [c for c in bfs.get_file_info(pafs.FileSelector(info.path, recursive=True))
                     if c.type == pafs.FileType.File]
            if old(info) and all(old(c) for c in files):  # a fit that died, not one running now
                found.add_folder(bfs, info.path, sum(c.size or 0 for c in files))
    return found


def clean(found: Orphans) -> None:
    for fs, path, folder in found._where:  # noqa: SLF001
        if folder:
            fs.delete_dir(path)
        else:
            fs.delete_file(path)
    log.info("removed %d orphan file(s) and %d incomplete codebook folder(s), %d bytes",
             len(found.files), len(found.folders), found.bytes)
