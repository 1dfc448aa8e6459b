"""Stage: sample item embeddings in Spark, fit codebooks on the driver, write a version."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from psrq.config import Config
from psrq.data.validation import check_item_ids, require_item_columns
from psrq.errors import ArtifactError
from psrq.job import JobContext
from psrq.quant.artifact import CodebookManifest, spec_to_dict
from psrq.quant.base import QuantSpec
from psrq.quant.diagnostics import diagnose, plot_code_distributions
from psrq.quant.kmeans import resolve_backend
from psrq.quant.registry import quantizer_class
from psrq.quant.semantic_ids import fit_sample, quant_spec
from psrq.quant.spaces import CodebookSet, fit_codebooks
from psrq.results import TrackedResult
from psrq.tracking.stages import fit_runs
from psrq.tracking.store import tracked

log = logging.getLogger(__name__)


def sample_diagnostics(cbs: CodebookSet, embs: dict[str, np.ndarray], seed: int) -> tuple[dict, dict]:
    """Diagnostics per space on the fit sample; also returns the codes (for plots)."""
    diags, codes_by_space = {}, {}
    for space, x in cbs.inputs(embs).items():
        q = cbs.quantizers[space]
        codes = q.encode(x)
        diags[space] = diagnose(x, codes, q.decode(codes), cbs.spec.k, seed)
        diags[space]["layer1_hist"] = np.bincount(codes[:, 0], minlength=cbs.spec.k).tolist()
        codes_by_space[space] = codes
    return diags, codes_by_space


def fit_identity(cfg: Config, spec: QuantSpec, modalities: dict, items_path: str, items_version, created_by: dict) -> str:
    """What makes a fit what it is: the run, every quantizer and sampling setting, and the
    exact source table version. The same identity never writes a second version."""
    cc = cfg.codebooks
    return hashlib.sha256(json.dumps({
        "run_id": cfg.run.run_id, "spec": spec_to_dict(spec), "normalisation": cc.normalisation, "joint": cc.joint,
        "modalities": modalities, "seed": cc.seed, "sample_size": cc.sample_size, "sample_fraction": cc.sample_fraction,
        "source": {"table": items_path, "delta_version": items_version}, "created_by": created_by,
    }, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FitResult(TrackedResult):
    """What fit_stage reports: the version, its whole manifest as written, and whether this
    call fitted it."""

    status: str  # fitted | already done
    version: str
    method: str
    manifest: CodebookManifest

    @property
    def diagnostics(self) -> dict:
        """Per space (psrq.quant.diagnostics); empty for a version written by other code."""
        return self.manifest.get("diagnostics") or {}

    @property
    def sample_size(self) -> int:
        return int((self.manifest.get("sample") or {}).get("size", 0))

    @property
    def fit_seconds(self) -> float:
        return float(self.manifest.get("fit_seconds", 0.0))

    @classmethod
    def of(cls, manifest: CodebookManifest, status: str) -> "FitResult":
        return cls(status=status, version=manifest["version"], method=manifest["method"], manifest=manifest)


@tracked(fit_runs)
def fit_stage(job: JobContext, method: str | None = None, created_by: dict | None = None) -> FitResult:
    """Fit `method` (default codebooks.method) for every modality and the joint space and
    write a new codebook version. Returns its manifest, with `status`: "fitted", or
    "already done" when this run already fitted the same settings on the same source
    version (a retried nightly run keeps every item's semantic ID)."""
    cfg = job.cfg
    cc = cfg.codebooks
    spec = quant_spec(cc, method)
    engine = job.engine
    items_path = cfg.table_path("items")
    items_version = engine.version(items_path)
    modalities = cfg.dataset.modality_columns()
    ident = fit_identity(cfg, spec, modalities, items_path, items_version, created_by or {})
    if (done := job.codebooks.find_fit(ident)) is not None:
        try:  # "already done" checks what it reports: the arrays against the manifest's checksum
            job.codebooks.load(done["version"])
        except ArtifactError as exc:
            raise ArtifactError(f"this run already fitted codebook {done['version']}, but it is damaged ({exc}): "
                                f"remove {cfg.codebooks_root()}/{done['version']} to fit it again") from None
        log.info("codebook %s already fitted by this run (fit %s): nothing to do", done["version"], ident)
        return FitResult.of(done, "already done")
    items = engine.read(items_path)
    require_item_columns(items, [m["column"] for m in modalities.values()])
    check_item_ids(items)
    n_items = items.count()
    t0 = time.time()
    ids, embs = fit_sample(items, cc, modalities, n_items)
    log.info("sampled %d of %d items in %.1fs; fitting %s (K=%d, L=%d) with k-means backend %s",
             len(ids), n_items, time.time() - t0, spec.method, spec.k, quantizer_class(spec.method).layers_of(spec),
             resolve_backend(spec.kmeans.backend, spec.kmeans.device))
    t1 = time.time()
    cbs = fit_codebooks(spec, embs, modalities, cc.normalisation, cc.joint,
                        progress=lambda s, shape: log.info("fitting space %s on %s", s, shape))
    fit_s = time.time() - t1
    diags, codes = sample_diagnostics(cbs, embs, cc.seed)
    png = io.BytesIO()
    plot_code_distributions(codes, spec.k, png, title=f"{spec.method} code distributions (fit sample)")
    manifest = {
        "seed": cc.seed,
        "sample": {"size": int(len(ids)), "requested": cc.sample_size, "fraction": cc.sample_fraction},
        "source": {"table": items_path, "delta_version": items_version, "rows": n_items},
        "kmeans_backend": resolve_backend(spec.kmeans.backend, spec.kmeans.device),
        "fit_seconds": round(fit_s, 2),
        "diagnostics": diags,
        "created_by": created_by or {},
        "fit_identity": ident,
        "run_id": cfg.run.run_id,
    }
    version = job.codebooks.write(cbs, manifest, {"code_distributions.png": png.getvalue()})
    log.info("codebook %s written under %s (%s, fit %.1fs)", version, cfg.codebooks_root(), spec.method, fit_s)
    return FitResult.of(job.codebooks.manifest(version), "fitted")
