"""A trained ranker as a file that serving loads with torch alone: a torch.export program
(.pt2; the batch dimension dynamic), with what it expects written in the same archive
(`psrq_export.json`: its inputs in order with their dtypes and trailing shapes, the codebook
version, the samples' layout and the run it comes from). Pure torch: no Spark, no pickles
of ours. torch.export, not TorchScript: the pinned torch deprecates torch.jit, and export
refuses a model whose control flow depends on the data instead of baking one branch in.

Load it in a plain Python process (no psrq installed; scripts/score_exported.py):

    import json, torch
    extra = {"psrq_export.json": ""}
    ranker = torch.export.load("ranker.pt2", extra_files=extra).module()
    meta = json.loads(extra["psrq_export.json"])
    probs = ranker(*[torch.from_numpy(batch[c["name"]]) for c in meta["inputs"]])
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from psrq.models.base import Ranker

META = "psrq_export.json"
FORMAT = 1


class Scorer(torch.nn.Module):
    """The ranker with positional inputs (TorchScript has no dict of tensors by name here)
    and a probability out."""

    def __init__(self, model: "Ranker", inputs: list[str]):
        super().__init__()
        self.model, self.inputs = model, list(inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.logits(dict(zip(self.inputs, tensors))))


def export(model: "Ranker", inputs: list[str], example: Mapping[str, np.ndarray]) -> torch.export.ExportedProgram:
    """The model (in eval mode) exported on an example batch of its inputs, any batch size."""
    model = model.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[c])) for c in inputs)
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        return torch.export.export(Scorer(model, inputs), args, dynamic_shapes=(tuple({0: batch} for _ in args),))


def input_spec(inputs: list[str], example: Mapping[str, np.ndarray]) -> list[dict]:
    """Each input's name, numpy dtype and shape after the batch dimension."""
    return [{"name": c, "dtype": str(example[c].dtype), "shape": list(example[c].shape[1:])} for c in inputs]


def save(program: torch.export.ExportedProgram, path: "str | IO[bytes]", meta: dict) -> None:
    torch.export.save(program, path, extra_files={META: json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True)})


def load(path: "str | IO[bytes]") -> tuple[torch.nn.Module, dict]:
    """The exported ranker as a callable module, and what it expects."""
    extra = {META: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[META])


def score(module: torch.nn.Module, meta: dict, columns: Mapping[str, np.ndarray], chunk: int = 4096) -> np.ndarray:
    """Probabilities for a batch given as numpy columns (list columns as 2-D arrays)."""
    n = len(next(iter(columns.values())))
    out = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for i in range(0, n, chunk):
            args = [torch.from_numpy(np.ascontiguousarray(columns[c["name"]][i:i + chunk]).astype(c["dtype"], copy=False))
                    for c in meta["inputs"]]
            out[i:i + chunk] = module(*args).double().numpy()
    return out
