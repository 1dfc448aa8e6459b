"""Write probes: before a job starts Spark work, each location it will write to is
created and a small file is written and removed there. A location that cannot take it
stops the job with one line naming the configuration key and the path."""
from __future__ import annotations

import os
import uuid

from pyarrow import fs as pafs

from psrq.config import TablesConf
from psrq.errors import StorageError
from psrq.storage.fs import resolve

# every Delta table of storage.tables, as output keys (a job that writes them all: the demo)
ALL_TABLES = tuple(f"tables.{t}" for t in TablesConf.model_fields)


def probe_writable(locations: dict[str, str]) -> None:
    """locations: configuration key -> local path or URI. A `tables.<name>` key (one Delta
    table the job writes) is probed only when the table's folder exists: a new table's is
    created by its first commit, under storage.root, which is probed itself."""
    for key, location in locations.items():
        try:
            fs, path = resolve(location)
            if key.startswith("tables."):
                if fs.get_file_info(path).type == pafs.FileType.NotFound:
                    continue
            else:
                fs.create_dir(path, recursive=True)
            probe = f"{path.rstrip('/')}/.psrq-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
        except Exception as exc:  # noqa: BLE001 - any filesystem error means "not writable here"
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise StorageError(f"{key}: cannot write to {location} ({reason}); nothing was started") from None


def output_locations(cfg, keys: tuple[str, ...]) -> dict[str, str]:
    """The configured locations a job writes, by key: storage.root, storage.codebooks,
    samples.path, train.checkpoint_dir, export.path, and tables.<name> for each Delta table it
    writes (storage.tables.<name> under storage.root)."""
    values = {"storage.root": cfg.root(), "storage.codebooks": cfg.codebooks_root(),
              "samples.path": cfg.samples_root(), "train.checkpoint_dir": cfg.checkpoint_root(),
              "export.path": cfg.export_root()}
    unknown = [k for k in keys if k not in values and not k.startswith("tables.")]
    if unknown:
        raise ValueError(f"unknown output keys {unknown}")
    return {k: cfg.table_path(k.split(".", 1)[1]) if k.startswith("tables.") else values[k] for k in keys}
