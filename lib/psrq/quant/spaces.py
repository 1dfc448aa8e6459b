"""Spaces a catalogue is quantized in: one per modality (modal-specific codes) and the
joint space over all modalities (modal-joint codes), and the set of codebooks over them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psrq.quant.base import Quantizer, QuantSpec
from psrq.quant.registry import quantizer

JOINT = "joint"


def normalise(x: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return x.astype(np.float32, copy=False)
    if how == "l2":
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    raise ValueError(f"unknown normalisation {how!r} (l2, none)")


def space_inputs(embs: dict[str, np.ndarray], how: str, joint: bool = True) -> dict[str, np.ndarray]:
    """Each modality normalised; joint = their concatenation scaled by 1/sqrt(M), so that
    with l2 every modality weighs the same and the joint vector has unit norm (the paper
    does not say how it normalises)."""
    out = {m: normalise(x, how) for m, x in embs.items()}
    if joint:
        out[JOINT] = np.concatenate([out[m] for m in embs], axis=1) / np.float32(np.sqrt(len(embs)))
    return out


@dataclass
class CodebookSet:
    """A fitted quantizer for every space, and what is needed to apply them."""

    spec: QuantSpec
    normalisation: str
    modalities: dict  # modality -> {"column": str, "dim": int}, in order
    quantizers: dict[str, Quantizer]  # space -> fitted quantizer
    version: str = ""

    @classmethod
    def from_arrays(cls, spec: QuantSpec, normalisation: str, modalities: dict, arrays: dict, version: str = "") -> "CodebookSet":
        """From saved arrays (space -> {array name -> np.ndarray}), spec.method's quantizer per space."""
        return cls(spec, normalisation, modalities, {s: quantizer(spec, a) for s, a in arrays.items()}, version)

    @property
    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: q.fitted for s, q in self.quantizers.items()}

    @property
    def spaces(self) -> list[str]:
        return list(self.quantizers)

    @property
    def joint(self) -> bool:
        return JOINT in self.quantizers

    def inputs(self, embs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return space_inputs({m: embs[m] for m in self.modalities}, self.normalisation, self.joint)

    def encode(self, embs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """modality -> (n, dim) raw embeddings  =>  space -> (n, L) codes."""
        return {s: self.quantizers[s].encode(x) for s, x in self.inputs(embs).items()}


def fit_codebooks(spec: QuantSpec, embs: dict[str, np.ndarray], modalities: dict, how: str, joint: bool = True,
                  progress=None) -> CodebookSet:
    fitted = {}
    for space, x in space_inputs(embs, how, joint).items():
        if progress:
            progress(space, x.shape)
        fitted[space] = quantizer(spec).fit(x)
    return CodebookSet(spec, how, modalities, fitted)
