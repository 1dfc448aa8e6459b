"""Versioned codebook artifacts: <root>/vNNNN/ with codebooks.safetensors (no pickle) and
manifest.json. The manifest is written last and carries the arrays' checksum and its own: a
version is complete only when its manifest is there, and loading verifies both checksums
and the manifest's settings against the arrays' shapes. Listing skips a broken version
(and says so) instead of letting it block every other one."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from typing import NotRequired, TypedDict, cast

import numpy as np
from pyarrow import fs as pafs
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from psrq.errors import ArtifactError
from psrq.quant.base import QuantSpec
from psrq.quant.kmeans import KMeansSpec
from psrq.quant.registry import quantizer_class
from psrq.quant.spaces import CodebookSet
from psrq.storage.fs import resolve

ARRAYS = "codebooks.safetensors"
MANIFEST = "manifest.json"
FORMAT = 1
_VERSION = re.compile(r"^v(\d{4,})$")
SELF = "manifest"  # key of the manifest's own checksum in "checksums"
log = logging.getLogger(__name__)


class CodebookManifest(TypedDict):
    """manifest.json of a codebook version (CodebookStore.write): what its arrays are and how
    they were fitted, with checksums of the arrays and of itself."""

    format: int
    version: str
    created_at: str
    method: str
    spec: dict                 # spec_to_dict(QuantSpec)
    normalisation: str
    modalities: list[dict]     # [{name, column, dim}], in the joint space's order
    spaces: list[dict]         # [{name, arrays: {array: shape}}]
    checksums: dict[str, str]
    # the fit's record (psrq.catalog.fit.fit_stage); a version written by other code may lack it
    seed: NotRequired[int]
    sample: NotRequired[dict]  # {size, requested, fraction}
    source: NotRequired[dict]  # {table, delta_version, rows}: the items table it was fitted on
    kmeans_backend: NotRequired[str]
    fit_seconds: NotRequired[float]
    diagnostics: NotRequired[dict]  # per space (psrq.quant.diagnostics)
    created_by: NotRequired[dict]   # e.g. the reindex night that refitted it
    fit_identity: NotRequired[str]
    run_id: NotRequired[int]


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest without its own checksum, in canonical JSON."""
    body = {**manifest, "checksums": {k: v for k, v in manifest.get("checksums", {}).items() if k != SELF}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def spec_to_dict(spec: QuantSpec) -> dict:
    return dataclasses.asdict(spec)


def spec_from_dict(d: dict) -> QuantSpec:
    return QuantSpec(**{**d, "kmeans": KMeansSpec(**d["kmeans"])})


class CodebookStore:
    """The codebook versions under one root (storage.codebooks, local or an object store),
    its filesystem resolved once: list, read, load and write versions, find a fit's. Which
    version is in use is not a file here but a Delta commit (psrq.catalog.current)."""

    def __init__(self, root: str):
        self.root = root
        self.fs, self.path = resolve(root)

    def _versions(self) -> dict[str, bool]:
        """version -> complete (has a manifest)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except FileNotFoundError:
            return {}
        out = {}
        for info in infos:
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            if info.type == pafs.FileType.Directory and _VERSION.match(name):
                out[name] = self.fs.get_file_info(f"{info.path}/{MANIFEST}").type == pafs.FileType.File
        return out

    def scan(self, method: str | None = None) -> tuple[dict[str, CodebookManifest], dict[str, str]]:
        """(version -> manifest of the complete, intact versions, oldest first, only those of
        `method` when given; version -> why each other version cannot be used)."""
        out: dict[str, CodebookManifest] = {}
        broken: dict[str, str] = {}
        for v, complete in sorted(self._versions().items()):
            if not complete:
                broken[v] = "incomplete: no manifest.json (a fit stopped before it finished; jobs/clean_orphans.py removes it)"
                continue
            try:
                m = self._manifest(v)
            except ArtifactError as exc:
                broken[v] = str(exc)
                continue
            if method is None or m.get("method") == method:
                out[v] = m
        return out, broken

    def manifests(self, method: str | None = None) -> dict[str, CodebookManifest]:
        """version -> manifest of the complete, intact versions, oldest first; only those of
        `method` when given. A version whose manifest is broken is logged and skipped."""
        out, broken = self.scan(method)
        for v, why in broken.items():
            if not why.startswith("incomplete"):
                log.warning("skipping codebook version %s: %s", v, why)
        return out

    def versions(self, method: str | None = None) -> list[str]:
        """Complete, intact versions, oldest first; only those of `method` when given."""
        return list(self.manifests(method))

    def _manifest(self, version: str) -> CodebookManifest:
        with self.fs.open_input_stream(f"{self.path}/{version}/{MANIFEST}") as f:
            try:
                m = json.loads(f.read())
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"codebook {version} under {self.path}: manifest is not valid JSON ({exc})") from None
        want = m.get("checksums", {}).get(SELF) if isinstance(m, dict) else None
        if want is not None and want != manifest_checksum(m):
            raise ArtifactError(f"codebook {version} under {self.path}: manifest.json was modified after it was written "
                                "(its checksum does not match its content)")
        if not isinstance(m, dict) or m.get("version") != version or "spec" not in m or "spaces" not in m:
            raise ArtifactError(f"codebook {version} under {self.path}: manifest.json is not a codebook manifest of "
                                "this version")
        return cast(CodebookManifest, m)

    def find_fit(self, fit_identity: str) -> CodebookManifest | None:
        """The manifest of the version a fit with this identity wrote, if any."""
        return next((m for m in reversed(self.manifests().values()) if m.get("fit_identity") == fit_identity), None)

    def write(self, cbs: CodebookSet, manifest: dict, extra_files: dict[str, bytes] | None = None) -> str:
        """Write a new version; returns its name (v0001, v0002, ...)."""
        self.fs.create_dir(self.path, recursive=True)
        n = max([int(v[1:]) for v in self._versions()] + [0]) + 1
        version = f"v{n:04d}"
        vdir = f"{self.path}/{version}"
        self.fs.create_dir(vdir, recursive=True)
        flat = {f"{space}/{name}": np.ascontiguousarray(a) for space, arrs in cbs.arrays.items() for name, a in arrs.items()}
        blob = st_save(flat)
        with self.fs.open_output_stream(f"{vdir}/{ARRAYS}") as f:
            f.write(blob)
        for name, data in (extra_files or {}).items():
            with self.fs.open_output_stream(f"{vdir}/{name}") as f:
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
        full["checksums"][SELF] = manifest_checksum(full)
        with self.fs.open_output_stream(f"{vdir}/{MANIFEST}") as f:  # last: marks the version complete
            f.write(json.dumps(full, indent=2, sort_keys=True).encode())
        cbs.version = version
        return version

    def manifest(self, version: str | None = None, method: str | None = None) -> CodebookManifest:
        """Manifest of `version`, or of the latest complete version (of `method` when given)."""
        if version is None:
            usable, broken = self.scan(method)
            if not usable:
                what = f"{method} codebook" if method else "codebook"
                if broken:  # "none usable" is not "none": say which were skipped, and why
                    skipped = "; ".join(f"{v}: {why}" for v, why in broken.items())
                    raise ArtifactError(f"no usable {what} version under {self.root}: {len(broken)} skipped ({skipped}); "
                                        "repair or remove them, or run jobs/fit_codebooks.py")
                raise ArtifactError(f"no {what} versions under {self.root}: run jobs/fit_codebooks.py first")
            version = list(usable)[-1]
        elif not self._versions().get(version):
            available = ", ".join(self.versions()) or "none"
            raise ArtifactError(f"codebook version {version!r} not found under {self.root} (available: {available})")
        return self._manifest(version)  # asked for by name: a broken manifest is an error, not skipped

    def load(self, version: str | None = None, method: str | None = None) -> tuple[CodebookSet, CodebookManifest]:
        """Load and verify a version (when None: the latest complete one, of `method` if given)."""
        manifest = self.manifest(version, method)
        version = manifest["version"]
        with self.fs.open_input_stream(f"{self.path}/{version}/{ARRAYS}") as f:
            blob = f.read()
        want = manifest.get("checksums", {}).get(ARRAYS)
        got = hashlib.sha256(blob).hexdigest()
        if want != got:
            raise ArtifactError(f"codebook {version} under {self.root} is corrupt: {ARRAYS} checksum {got[:12]}… "
                                f"!= manifest {str(want)[:12]}…")
        arrays: dict = {}
        for key, a in st_load(blob).items():
            space, name = key.split("/", 1)
            arrays.setdefault(space, {})[name] = a
        spaces = [s["name"] for s in manifest["spaces"]]
        if set(arrays) != set(spaces):
            raise ArtifactError(f"codebook {version}: arrays hold spaces {sorted(arrays)}, manifest says {sorted(spaces)}")
        check_shapes(manifest, arrays, f"codebook {version} under {self.root}")
        modalities = {m["name"]: {"column": m["column"], "dim": m["dim"]} for m in manifest["modalities"]}
        ordered = {s: arrays[s] for s in spaces}
        cbs = CodebookSet.from_arrays(spec_from_dict(manifest["spec"]), manifest["normalisation"], modalities, ordered,
                                      version)
        return cbs, manifest


def check_shapes(manifest: CodebookManifest, arrays: dict, where: str) -> None:
    """The manifest's settings must describe the arrays: recorded shapes, K rows in every
    layer codebook, one codebook per layer."""
    spec = spec_from_dict(manifest["spec"])
    k, layers = spec.k, quantizer_class(spec.method).layers_of(spec)
    for s in manifest["spaces"]:
        got = {n: list(a.shape) for n, a in arrays[s["name"]].items()}
        if got != s["arrays"]:
            raise ArtifactError(f"{where}: space {s['name']} arrays have shapes {got}, the manifest records {s['arrays']}")
        books = sorted(n for n in got if re.fullmatch(r"layer\d+", n))
        if len(books) != layers:
            raise ArtifactError(f"{where}: space {s['name']} has {len(books)} layer codebooks, the manifest's spec says {layers}")
        for n in books:
            if got[n][0] != k:
                raise ArtifactError(f"{where}: space {s['name']} {n} has {got[n][0]} codes, the manifest's spec says k={k}")
