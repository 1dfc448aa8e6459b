"""Versioned codebook artifacts: <root>/vNNNN/ with codebooks.safetensors (no pickle) and
manifest.json. The manifest is written last and carries the arrays' checksum: a version is
complete only when its manifest is there, and loading verifies the checksum."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time

import numpy as np
from pyarrow import fs as pafs
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from psrq.errors import ArtifactError
from psrq.quant.kmeans import KMeansSpec
from psrq.quant.methods import QuantSpec
from psrq.quant.spaces import CodebookSet
from psrq.storage.parquet_files import resolve

ARRAYS = "codebooks.safetensors"
MANIFEST = "manifest.json"
FORMAT = 1
_VERSION = re.compile(r"^v(\d{4,})$")


def _versions(fs, root: str) -> dict[str, bool]:
    """version -> complete (has a manifest)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except FileNotFoundError:
        return {}
    out = {}
    for info in infos:
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and _VERSION.match(name):
            out[name] = fs.get_file_info(f"{info.path}/{MANIFEST}").type == pafs.FileType.File
    return out


def list_versions(root: str, method: str | None = None) -> list[str]:
    """Complete versions, oldest first; only those of `method` when given."""
    fs, path = resolve(root)
    versions = sorted(v for v, complete in _versions(fs, path).items() if complete)
    if method is None:
        return versions
    return [v for v in versions if _manifest(fs, path, v).get("method") == method]


def _manifest(fs, path: str, version: str) -> dict:
    with fs.open_input_stream(f"{path}/{version}/{MANIFEST}") as f:
        try:
            return json.loads(f.read())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"codebook {version} under {path}: manifest is not valid JSON ({exc})") from None


def spec_to_dict(spec: QuantSpec) -> dict:
    return dataclasses.asdict(spec)


def spec_from_dict(d: dict) -> QuantSpec:
    return QuantSpec(**{**d, "kmeans": KMeansSpec(**d["kmeans"])})


def write_artifact(root: str, cbs: CodebookSet, manifest: dict, extra_files: dict[str, bytes] | None = None) -> str:
    """Write a new version; returns its name (v0001, v0002, ...)."""
    fs, path = resolve(root)
    fs.create_dir(path, recursive=True)
    existing = _versions(fs, path)
    n = max([int(v[1:]) for v in existing] + [0]) + 1
    version = f"v{n:04d}"
    vdir = f"{path}/{version}"
    fs.create_dir(vdir, recursive=True)
    flat = {f"{space}/{name}": np.ascontiguousarray(a) for space, arrs in cbs.arrays.items() for name, a in arrs.items()}
    blob = st_save(flat)
    with fs.open_output_stream(f"{vdir}/{ARRAYS}") as f:
        f.write(blob)
    for name, data in (extra_files or {}).items():
        with fs.open_output_stream(f"{vdir}/{name}") as f:
            f.write(data)
    full = {
        "format": FORMAT,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": cbs.spec.method,
        "spec": spec_to_dict(cbs.spec),
        "normalisation": cbs.normalisation,
        # lists, not objects: the order of modalities defines the joint space's layout
        "modalities": [{"name": m, **info} for m, info in cbs.modalities.items()],
        "spaces": [{"name": s, "arrays": {n: list(a.shape) for n, a in arrs.items()}} for s, arrs in cbs.arrays.items()],
        **manifest,
        "checksums": {ARRAYS: hashlib.sha256(blob).hexdigest()},
    }
    with fs.open_output_stream(f"{vdir}/{MANIFEST}") as f:  # last: marks the version complete
        f.write(json.dumps(full, indent=2, sort_keys=True).encode())
    cbs.version = version
    return version


def read_manifest(root: str, version: str | None = None, method: str | None = None) -> dict:
    """Manifest of `version`, or of the latest complete version (of `method` when given)."""
    fs, path = resolve(root)
    if version is None:
        versions = list_versions(root, method)
        if not versions:
            what = f"{method} codebook" if method else "codebook"
            raise ArtifactError(f"no {what} versions under {root}: run jobs/fit_codebooks.py first")
        version = versions[-1]
    elif version not in list_versions(root):
        raise ArtifactError(f"codebook version {version!r} not found under {root} (available: {', '.join(list_versions(root)) or 'none'})")
    return _manifest(fs, path, version)


def load_artifact(root: str, version: str | None = None, method: str | None = None) -> tuple[CodebookSet, dict]:
    """Load and verify a version (when None: the latest complete one, of `method` if given)."""
    manifest = read_manifest(root, version, method)
    version = manifest["version"]
    fs, path = resolve(root)
    with fs.open_input_stream(f"{path}/{version}/{ARRAYS}") as f:
        blob = f.read()
    want = manifest.get("checksums", {}).get(ARRAYS)
    got = hashlib.sha256(blob).hexdigest()
    if want != got:
        raise ArtifactError(f"codebook {version} under {root} is corrupt: {ARRAYS} checksum {got[:12]}… != manifest {str(want)[:12]}…")
    flat = st_load(blob)
    arrays: dict = {}
    for key, a in flat.items():
        space, name = key.split("/", 1)
        arrays.setdefault(space, {})[name] = a
    spaces = [s["name"] for s in manifest["spaces"]]
    if set(arrays) != set(spaces):
        raise ArtifactError(f"codebook {version}: arrays hold spaces {sorted(arrays)}, manifest says {sorted(spaces)}")
    modalities = {m["name"]: {"column": m["column"], "dim": m["dim"]} for m in manifest["modalities"]}
    ordered = {s: arrays[s] for s in spaces}
    cbs = CodebookSet(spec_from_dict(manifest["spec"]), manifest["normalisation"], modalities, ordered, version)
    return cbs, manifest
