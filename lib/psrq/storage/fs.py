"""The one filesystem layer: every location in the configuration (data root, codebooks,
samples, content, checkpoints, predictions) is a local path or a URI, and every consumer
gets it from here in its own dialect with the same options:

- pyarrow (Parquet files, codebook artifacts, content, checkpoints, manifests): `resolve`;
- delta-rs: `delta_rs_location` (URI and storage_options);
- petastorm: `resolve` (a pyarrow filesystem, wrapped for fsspec where it asks for one);
- Spark: `spark_uri` (s3:// -> s3a://) and `spark_hadoop_conf` (spark.hadoop.fs.s3a.*).

Options (endpoint, region, path style) come from `storage.s3`; credentials never do: each
engine reads them from its environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, instance
roles, GOOGLE_APPLICATION_CREDENTIALS, ...), so they are never in a config or a log.

The driver sets the options once (`configure`, from psrq.spark.session); Spark tasks get
them in their closures and pass them explicitly.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Optional

from pyarrow import fs as pafs

from psrq.errors import ConfigError, StorageError

# scheme -> family. Hadoop spells S3 s3a/s3n; pyarrow and delta-rs spell it s3.
SCHEMES = {"file": "local", "s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gcs", "gcs": "gcs",
           "abfs": "abfs", "abfss": "abfs", "hdfs": "hdfs"}
SUPPORTED = "a local path, file://, s3:// (s3a://, s3n://), gs://, abfs:// (abfss://), hdfs://"


@dataclass(frozen=True)
class FsOptions:
    """What every engine is told about object storage (no secrets)."""

    endpoint: Optional[str] = None  # an S3-compatible endpoint URL; None: AWS itself
    region: Optional[str] = None
    path_style: bool = False        # bucket in the path (most S3-compatible servers), not the host
    # How delta-rs commits to S3, which has no atomic rename: "conditional_put" (S3 and
    # servers with If-None-Match writes) or "unsafe_rename" (safe with one writer per table)
    delta_rs_s3_commit: str = "conditional_put"

    @property
    def allow_http(self) -> bool:
        return bool(self.endpoint and self.endpoint.startswith("http://"))


_current = FsOptions()


def configure(options: FsOptions) -> None:
    """The process's options (the driver: from the configuration; a task: from its closure)."""
    global _current
    _current = options


def current() -> FsOptions:
    return _current


def scheme_of(location: str) -> Optional[str]:
    return location.split("://", 1)[0].lower() if "://" in location else None


def check_location(key: str, location: str) -> None:
    """A config value is a path or a URI of a supported scheme: else one line naming both."""
    scheme = scheme_of(location)
    if scheme is not None and scheme not in SCHEMES:
        raise ConfigError(f"{key}: unsupported filesystem scheme '{scheme}://' in {location!r} (supported: {SUPPORTED})")


def is_local(location: str) -> bool:
    return SCHEMES.get(scheme_of(location) or "file") == "local"


def local_path(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def resolve(location: str, options: Optional[FsOptions] = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or a URI."""
    o = options or _current
    scheme = scheme_of(location)
    family = SCHEMES.get(scheme or "file")
    if family is None:
        raise StorageError(f"unsupported filesystem scheme '{scheme}://' in {location!r} (supported: {SUPPORTED})")
    if family == "local":
        return pafs.LocalFileSystem(), os.path.abspath(local_path(location))
    rest = location.split("://", 1)[1]
    if family == "s3":
        kw = {"region": o.region} if o.region else {}
        if o.endpoint:
            kw["endpoint_override"] = o.endpoint.split("://", 1)[-1]
            kw["scheme"] = "http" if o.allow_http else "https"
        # path style is how pyarrow addresses any endpoint_override; for AWS itself virtual hosts
        return pafs.S3FileSystem(**kw), rest.rstrip("/")
    if family == "abfs":
        return _fsspec("abfs", location)
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow says what is missing (libhdfs, credentials)
        raise StorageError(f"cannot open {location}: {exc}") from exc


def _fsspec(protocol: str, location: str) -> tuple[pafs.FileSystem, str]:
    """Schemes pyarrow 14 has no filesystem for, through fsspec's implementation."""
    import fsspec

    try:
        fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{location}: the {protocol}:// filesystem needs its fsspec package (adlfs): {exc}") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(location)


def petastorm_location(location: str):
    """(URL, filesystem) for petastorm 0.12's make_batch_reader: a local folder as a file://
    URL (petastorm opens it itself); elsewhere the layer's filesystem rooted at the bucket,
    through pyarrow's legacy filesystem API (petastorm's schema reader still needs it on
    pyarrow 14), and the key as a file:// URL (petastorm would parse an s3:// URL with
    fsspec's s3fs, which this project does not install)."""
    filesystem, inner = resolve(location)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return f"file://{inner}", None
    import warnings

    from fsspec.implementations.arrow import ArrowFSWrapper
    from pyarrow.filesystem import DaskFileSystem

    class LegacyFs(DaskFileSystem):
        def isdir(self, path):
            return self.fs.isdir(str(path))

        def isfile(self, path):
            return self.fs.isfile(str(path))

    bucket, _, key = inner.partition("/")
    with warnings.catch_warnings():  # the legacy API's deprecation: known, pinned (see setup.cfg)
        warnings.simplefilter("ignore", FutureWarning)
        legacy = LegacyFs(ArrowFSWrapper(pafs.SubTreeFileSystem(bucket, filesystem)))
    return f"file:///{key}", legacy


def spark_uri(location: str) -> str:
    """The location as Spark (Hadoop) names it: s3 -> s3a; a local path absolute."""
    scheme = scheme_of(location)
    if scheme is None:
        return os.path.abspath(location)
    if scheme in ("s3", "s3n"):
        return "s3a://" + location.split("://", 1)[1]
    return location


def spark_hadoop_conf(options: Optional[FsOptions] = None) -> dict[str, str]:
    """spark.hadoop.fs.s3a.* for the options (credentials: the default provider chain)."""
    o = options or _current
    out: dict[str, str] = {}
    if o.endpoint:
        out["spark.hadoop.fs.s3a.endpoint"] = o.endpoint
        out["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(not o.allow_http).lower()
    if o.region:
        out["spark.hadoop.fs.s3a.endpoint.region"] = o.region
    if o.path_style:
        out["spark.hadoop.fs.s3a.path.style.access"] = "true"
    return out


def delta_rs_location(location: str, options: Optional[FsOptions] = None) -> tuple[str, Optional[dict]]:
    """The table URI as delta-rs names it and its storage_options (None: local)."""
    o = options or _current
    scheme = scheme_of(location)
    family = SCHEMES.get(scheme or "file")
    if family == "local":
        return os.path.abspath(local_path(location)), None
    if family != "s3":
        return location, {}
    opts = {}
    if o.endpoint:
        opts["AWS_ENDPOINT_URL"] = o.endpoint
    if o.region:
        opts["AWS_REGION"] = o.region
    if o.allow_http:
        opts["AWS_ALLOW_HTTP"] = "true"
    if o.path_style:
        opts["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    if o.delta_rs_s3_commit == "unsafe_rename":
        opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    else:
        opts["AWS_CONDITIONAL_PUT"] = "etag"
    return "s3://" + location.split("://", 1)[1], opts


# --- whole small files ---------------------------------------------------------------

def exists(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise  # local paths say so themselves; no second round trip
    except OSError as exc:  # object stores answer a missing key with a generic error
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(location) from exc
        raise


def sha256(location: str, block: int = 8 << 20) -> str:
    """The file's SHA-256, read in blocks (a checkpoint can be gigabytes)."""
    fs, path = resolve(location)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a part:
    local files through a temporary and a rename; object stores' PUT is atomic already."""
    fs, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"  # a killed writer's leftovers are told by their pid
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except OSError as exc:  # a full disk or a file-size limit: the file named, no part left
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise OSError(exc.errno, exc.strerror, location) from None
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def listdir(location: str) -> list[str]:
    """Names directly under a folder ([] when it does not exist)."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def files_under(location: str) -> list[str]:
    """Every file under a folder (none if it is missing), as paths relative to it."""
    fs, path = resolve(location)
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base):] for i in infos if i.type == pafs.FileType.File)


def delete(location: str) -> None:
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """A rename on local disk; a copy and delete on object stores (no rename there)."""
    filesystem, a = resolve(src)
    _, b = resolve(dst)
    if isinstance(filesystem, pafs.LocalFileSystem) or filesystem.get_file_info(a).type == pafs.FileType.File:
        filesystem.move(a, b)
        return
    for info in filesystem.get_file_info(pafs.FileSelector(a, recursive=True)):  # no folder rename there
        if info.type == pafs.FileType.File:
            filesystem.copy_file(info.path, b + info.path[len(a):])
    filesystem.delete_dir(a)


def torch_save(obj, location: str) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(location, buf.getvalue())


def torch_load(location: str):
    import torch

    return torch.load(io.BytesIO(read_bytes(location)), map_location="cpu", weights_only=True)
