"""The pipeline's own codebooks, semantic IDs and samples, reused by the experiments
(tuning, the matrices, the diagnosis) when they are what a cell would build: samples built
from the tables the cell reads, at the versions those tables have now, with the cell's
samples settings, and a codebook fitted with the cell's quantizer settings on the items
table as it is now. Otherwise the cell prepares its own under experiments.root, and the
reason is said once. Decided when an experiment run starts using a build: a later pipeline
run (a nightly reindex, a rebuild) is noticed by the next experiment run, never mixed in."""
from __future__ import annotations

import json
from collections.abc import Callable

from psrq.config import Config
from psrq.errors import ArtifactError
from psrq.job import JobContext
from psrq.storage import fs


def codebook_mismatch(job: JobContext, pipeline: Config, version: str) -> str | None:
    """Why the pipeline's codebook `version` is not the one job.cfg would fit (None: it is)."""
    from psrq.catalog.fit import fit_identity
    from psrq.quant.artifact import CodebookStore
    from psrq.quant.semantic_ids import quant_spec

    cell = job.cfg
    try:
        man = CodebookStore(pipeline.codebooks_root()).manifest(version)
    except ArtifactError as exc:  # removed or damaged since the samples were built: not reusable, not fatal
        return f"the samples' codebook cannot be read ({exc})"
    if man["method"] != cell.codebooks.method:
        return f"codebook {version} is {man['method']}, the cell quantizes with {cell.codebooks.method}"
    if "fit_identity" not in man:
        return f"codebook {version} has no record of its fit (written by other code)"
    items_path = cell.table_path("items")
    items_version = job.engine.version(items_path)
    source = man.get("source") or {}
    if (source.get("table"), source.get("delta_version")) != (items_path, items_version):
        return (f"codebook {version} was fitted on {source.get('table')} version {source.get('delta_version')}, "
                f"the cell reads {items_path} version {items_version}")
    # the fit's identity, recomputed with the cell's settings for the run that fitted it
    same_run = cell.with_overrides({"run.run_id": man.get("run_id", 0)})
    ident = fit_identity(same_run, quant_spec(cell.codebooks), cell.dataset.modality_columns(), items_path, items_version,
                         man.get("created_by") or {})
    if ident != man["fit_identity"]:
        return f"codebook {version} was fitted with other codebooks.* settings than the cell's"
    return None


def samples_mismatch(job: JobContext, pipeline: Config) -> str | None:
    """Why the pipeline's samples (pipeline.samples_root()) are not what job.cfg would build
    (None: they are)."""
    from psrq.samples.layout import SamplesManifest, build_settings, settings_differ

    cell, root = job.cfg, pipeline.samples_root()
    if not fs.exists(fs.join(root, SamplesManifest.FILE)):
        return f"no samples at {root}"
    man = SamplesManifest.read(root)
    tables, settings = man.raw.get("source_tables"), man.raw.get("settings")
    if tables is None or settings is None:
        return f"the samples at {root} predate the record of their sources and settings: rebuild them"
    if (built_from := tables.get("interactions")) != cell.table_path("interactions"):
        return f"the samples at {root} were built from {built_from}, the cell reads {cell.table_path('interactions')}"
    now = {name: job.engine.version(path) for name, path in tables.items()}
    if now != man.source_versions:
        return f"the samples at {root} were built from table versions {man.source_versions}, the tables are at {now} now"
    if differ := settings_differ(settings, build_settings(cell)):
        return f"the samples at {root} were built with " + ", ".join(
            f"samples.{k}={json.dumps(b)} (the cell's: {json.dumps(w)})" for k, (b, w) in differ.items())
    return codebook_mismatch(job, pipeline, man.codebook_version)


class PipelineArtifacts:
    """One experiment run's view of the pipeline's artifacts (pipeline: the configuration
    the other jobs run with): per cell, its configuration pointed at the pipeline's samples
    where they can be reused, else None. Decided once per build a cell would make (its
    tables, samples, codebooks and modalities settings; seeds and train settings do not
    change it) and said then, so a run's cells read one source however many seeds and
    trials share it."""

    def __init__(self, pipeline: Config, progress: Callable[[str], None] = print):
        self.pipeline, self.progress = pipeline, progress
        self._why: dict[str, str | None] = {}  # build -> why not the pipeline's (None: reused)

    def samples_for(self, job: JobContext) -> Config | None:
        """job.cfg reading the pipeline's samples, when they are what it would build."""
        from psrq.samples.layout import build_settings

        c = job.cfg
        build = json.dumps({"tables": [c.table_path("interactions"), c.table_path("items")],
                            "samples": build_settings(c), "codebooks": c.codebooks.model_dump(mode="json"),
                            "modalities": c.dataset.modality_columns()}, sort_keys=True)
        if build not in self._why:
            why = self._why[build] = samples_mismatch(job, self.pipeline)
            self.progress(f"{c.codebooks.method}: reusing the pipeline's codebooks, semantic IDs and samples at "
                          f"{self.pipeline.samples_root()}" if why is None else
                          f"{c.codebooks.method}: not reusing the pipeline's samples ({why}); the experiments' own "
                          f"are at {c.samples_root()}")
        return None if self._why[build] else c.with_overrides({"samples.path": self.pipeline.samples_root()})
