"""Stage: a trained ranker exported for serving (jobs/export_ranker.py).

The checkpoint evaluate scores (the training run's identity, its best validation) ->
ranker.pt2 (a torch.export program, psrq.serving.artifact), checked against the trained model on rows of
export.split -> lookup/ (Parquet): for every item the ranker knows (its vocabulary), the
vocabulary index, the semantic codes as the samples hold them (code + 1) and the content
index, so a serving system can build an event's inputs -> export.json, written last.
An export of the same checkpoint found complete is "already done"."""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import functions as F

from psrq.errors import TrainingError
from psrq.job import JobContext
from psrq.models.registry import build_model, needs_content
from psrq.results import TrackedResult
from psrq.samples.content import read_content
from psrq.samples.layout import SamplesManifest
from psrq.serving import artifact
from psrq.storage import fs
from psrq.tracking.stages import export_runs
from psrq.tracking.store import tracked
from psrq.training.checkpoints import CHECKPOINT, check_compatible, load_checkpoint
from psrq.training.identity import weights_hash
from psrq.training.readers import make_reader
from psrq.training.run import checkpoint_meta, content_file, identity_and_folder, model_args

log = logging.getLogger(__name__)
RANKER, LOOKUP, MANIFEST, MLFLOW_MODEL = "ranker.pt2", "lookup", "export.json", "mlflow_model"
# what the MLflow model's metadata repeats of the export's (the codebook version it expects first)
MODEL_METADATA = ("codebook_version", "model", "train_identity", "step", "weights", "samples", "history_len")


@dataclass
class ExportResult(TrackedResult):
    """An export: where it lies, what it holds (export.json, whole in `manifest`) and whether
    this call wrote it."""

    status: str             # exported | already done
    path: str
    model: str
    train_identity: str
    step: int
    weights: str
    codebook_version: str   # the codebook version the ranker expects
    samples: str
    ranker: str             # the torch.export archive, in `path`
    lookup: str             # the item lookup's folder, in `path`
    items: int              # rows of the lookup
    parity_gap: float
    manifest: dict

    @classmethod
    def of(cls, manifest: dict, path: str, status: str) -> "ExportResult":
        return cls(status=status, path=path, manifest=manifest,
                   **{f: manifest[f] for f in ("model", "train_identity", "step", "weights", "codebook_version",
                                               "samples", "ranker", "lookup", "items", "parity_gap")})


@tracked(export_runs)
def export_stage(job: JobContext) -> ExportResult:
    cfg, tc = job.cfg, job.cfg.train
    man = SamplesManifest.read(cfg.samples_root())
    ident, ckpt_dir = identity_and_folder(cfg, man)
    ckpt = load_checkpoint(ckpt_dir, best=True)
    if ckpt is None:
        raise TrainingError(f"no trained {tc.model} (seed {tc.seed}) with these training settings for the samples at "
                            f"{cfg.samples_root()} (run {ident.key}, looked in {ckpt_dir}): run jobs/train_ranker.py first")
    check_compatible(ckpt, checkpoint_meta(ident), f"{ckpt_dir}/{CHECKPOINT} ")
    weights = weights_hash(ckpt["model"])
    out = fs.join(cfg.export_root(), f"{tc.model}-{ident.key}-{weights}")
    if fs.exists(fs.join(out, MANIFEST)):
        log.info("%s already exported to %s", tc.model, out)
        return ExportResult.of(json.loads(fs.read_text(fs.join(out, MANIFEST))), out, "already done")
    content = read_content(content_file(cfg.samples_root(), man)) if man.content else None  # the lookup's content_idx
    model = build_model(model_args(cfg, man), content if needs_content(tc.model, tc.model_options) else None)
    model.load_state_dict(ckpt["model"])
    model.eval()
    rows = next(iter(make_reader("arrow", man.split_path(cfg.export.split), model.inputs, cfg.export.example_rows)))
    meta = {"model": tc.model, "train_identity": ident.key, "step": int(ckpt["step"]), "weights": weights,
            "codebook_version": man.codebook_version, "samples": man.key, "history_len": man.history_len,
            "vocab_table": man.raw["vocab_table"], "vocab_version": man.raw["vocab_version"], "code_shift": 1,
            "padding": 0, "oov_index": man.raw["oov_index"], "inputs": artifact.input_spec(model.inputs, rows),
            "output": "probability of a positive", "lookup": LOOKUP,
            "exported_at": datetime.now(timezone.utc).isoformat()}
    buf = io.BytesIO()
    artifact.save(artifact.export(model, model.inputs, rows), buf, meta)
    # the archive as written, read back, against the trained model
    gap = parity_gap(model, artifact.load(io.BytesIO(buf.getvalue()))[0], model.inputs, rows)
    if gap > cfg.export.tolerance:
        raise TrainingError(f"the exported {tc.model} scores {cfg.export.split} rows up to {gap:.2e} away from the "
                            f"trained model (export.tolerance {cfg.export.tolerance})")
    meta["parity_gap"] = gap
    fs.write_bytes(fs.join(out, RANKER), buf.getvalue())
    items = write_lookup(job, man, content, fs.join(out, LOOKUP))
    write_mlflow_model(out, buf.getvalue(), meta, rows, cfg.export.tolerance)
    meta = {**meta, "ranker": RANKER, "items": items, "mlflow_model": MLFLOW_MODEL}
    fs.write_text(fs.join(out, MANIFEST), json.dumps(meta, indent=2))  # last
    log.info("%s exported to %s (%d items, parity gap %.1e)", tc.model, out, items, gap)
    return ExportResult.of(meta, out, "exported")


def write_mlflow_model(out: str, ranker: bytes, meta: dict, rows: dict, tolerance: float) -> None:
    """The export as an MLflow pyfunc model under out/mlflow_model (psrq.serving.pyfunc_model:
    no psrq, no pickle), with a signature and an input example from the export's rows, the
    codebook version it expects in its metadata, and its scores checked against the archive's."""
    import pkgutil
    import tempfile
    import warnings
    from importlib.metadata import version
    from pathlib import Path

    import mlflow.pyfunc
    from mlflow.models import infer_signature

    example = {c["name"]: np.ascontiguousarray(rows[c["name"]][:4]) for c in meta["inputs"]}
    with tempfile.TemporaryDirectory(prefix="psrq-export-") as tmp, warnings.catch_warnings():
        # MLflow's advice to type predict's input: the signature is given here, from the example
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        archive, model_dir, code = Path(tmp, RANKER), Path(tmp, MLFLOW_MODEL), Path(tmp, "pyfunc_model.py")
        archive.write_bytes(ranker)
        code.write_bytes(pkgutil.get_data("psrq.serving", code.name) or b"")  # a file even from a --py-files zip
        expected = artifact.score(artifact.load(str(archive))[0], meta, example)
        mlflow.pyfunc.save_model(
            str(model_dir), python_model=str(code),
            artifacts={"ranker": str(archive)}, signature=infer_signature(example, expected), input_example=example,
            metadata={k: meta[k] for k in MODEL_METADATA},
            pip_requirements=[f"{p}=={version(p)}" for p in ("mlflow", "torch", "numpy")])
        gap = float(np.abs(mlflow.pyfunc.load_model(str(model_dir)).predict(example) - expected).max())
        if gap > tolerance:
            raise TrainingError(f"the MLflow model of the export scores up to {gap:.2e} away from its archive")
        for f in sorted(model_dir.rglob("*")):
            if f.is_file():
                fs.write_bytes(fs.join(out, MLFLOW_MODEL, str(f.relative_to(model_dir))), f.read_bytes())


def parity_gap(model, exported, inputs: list[str], rows: dict) -> float:
    """Largest score difference between the trained model and the export read back, on the
    rows in batches of other sizes than the one exported (one row, and all but one)."""
    import torch

    spec = {"inputs": artifact.input_spec(inputs, rows)}
    gap = 0.0
    for cols in ({c: rows[c][:1] for c in inputs}, {c: rows[c][:-1] for c in inputs}):
        with torch.no_grad():
            eager = torch.sigmoid(model.logits({c: torch.from_numpy(np.ascontiguousarray(v)) for c, v in cols.items()}))
        gap = max(gap, float(np.abs(eager.double().numpy() - artifact.score(exported, spec, cols)).max()))
    return gap


def write_lookup(job: JobContext, man: SamplesManifest, content, path: str) -> int:
    """item_id -> item_idx, <space>_codes (code + 1, as in the samples) and content_idx (0 when
    the samples have no content features), for the ranker's vocabulary."""
    spark, engine = job.session, job.engine
    vocab = engine.read(man.raw["vocab_table"], man.raw["vocab_version"])
    sid = engine.read(job.cfg.table_path("semantic_ids")).filter(F.col("codebook_version") == man.codebook_version)
    codes = [F.transform(F.col(f"{s}_codes"), lambda c: (c + 1).cast("short")).alias(f"{s}_codes") for s in man.spaces]
    table = vocab.join(sid.select("item_id", *codes), "item_id", "left")
    if content is not None:
        import pandas as pd

        idx = np.flatnonzero(content.item_ids >= 0)  # row 0 is padding; Arrow, not a Python tuple per item
        cat = spark.createDataFrame(pd.DataFrame({"item_id": content.item_ids[idx].astype(np.int64),
                                                  "content_idx": idx.astype(np.int32)}))
        table = table.join(cat, "item_id", "left")
    else:
        table = table.withColumn("content_idx", F.lit(0))
    table = table.select("item_id", F.col("idx").alias("item_idx"), *[f"{s}_codes" for s in man.spaces],
                         F.coalesce("content_idx", F.lit(0)).alias("content_idx"))
    table.write.mode("overwrite").parquet(fs.spark_uri(path))
    return int(spark.read.parquet(fs.spark_uri(path)).count())
