"""Distributed scoring: the trained model is broadcast once (weights as safetensors bytes,
content features as their file's bytes: no pickled objects of ours), rebuilt once per
Python worker, and applied to Arrow batches of the samples on the executors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from psrq.models.registry import ModelArgs
from psrq.schemas import PREDICTIONS


@dataclass(frozen=True)
class ModelBundle:
    """Everything an executor needs to rebuild the model; plain values and bytes."""

    key: str                 # identifies the model (checkpoint folder + step)
    args: ModelArgs          # what the ranker is built from (content aside)
    weights: bytes           # safetensors of the state dict
    content: Optional[bytes]  # content.safetensors, for models that read content


def bundle_from_checkpoint(ckpt: dict, key: str, args: ModelArgs, content: Optional[bytes]) -> ModelBundle:
    from safetensors.torch import save

    return ModelBundle(key, args, save({k: v.contiguous() for k, v in ckpt["model"].items()}), content)


_MODELS: dict = {}  # per Python worker: bundle key -> model


def load_bundle(bundle: ModelBundle):
    """The model of a bundle, built once per process."""
    if bundle.key not in _MODELS:
        import torch
        from safetensors.torch import load

        from psrq.models.registry import build_model
        from psrq.samples.content import ContentFeatures

        torch.set_num_threads(1)  # one task per core
        content = ContentFeatures.from_bytes(bundle.content) if bundle.content else None
        model = build_model(bundle.args, content)
        model.load_state_dict(load(bundle.weights))
        _MODELS.clear()
        _MODELS[bundle.key] = model.eval()
    return _MODELS[bundle.key]


def score_batch(model, batch: pa.RecordBatch, chunk: int) -> np.ndarray:
    import torch

    from psrq.training.readers import column_to_numpy

    cols = {c: column_to_numpy(batch.column(c)) for c in model.inputs}
    out = np.empty(batch.num_rows, dtype=np.float64)
    with torch.no_grad():
        for i in range(0, batch.num_rows, chunk):
            data = {c: torch.from_numpy(np.array(v[i:i + chunk])) for c, v in cols.items()}
            out[i:i + chunk] = torch.sigmoid(model.logits(data)).double().numpy()
    return out


def score(samples: DataFrame, bundle_bc, chunk: int = 4096) -> DataFrame:
    """samples (the Parquet layout of psrq.samples.layout) -> user_id, item_id, label, is_cold, score."""
    def fn(batches):
        model = load_bundle(bundle_bc.value)
        for b in batches:
            yield pa.RecordBatch.from_pydict({
                "user_id": b.column("user_id"), "item_id": b.column("item_id"), "label": b.column("label"),
                "is_cold": b.column("is_cold"), "score": pa.array(score_batch(model, b, chunk))})

    return samples.mapInArrow(fn, PREDICTIONS)
