"""The quantizer interface and its settings.

A quantizer is fitted on a sample and then encodes any batch: `fit(x) -> self`,
`encode(x) -> codes` (n, L) int32, `decode(codes) -> reconstruction`, `diagnostics(x)`.
Its state is `arrays`: plain float32 numpy arrays (saved with safetensors in the versioned
artifact, psrq.quant.artifact), among them one codebook `layer<l>` of K rows per layer.
Encoding is numpy only, so executors need neither faiss nor torch, and row i of a batch's
codes depends only on x[i] (batching never changes a code).

Implementations are found by name in psrq.quant.registry."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from psrq.errors import QuantizerError
from psrq.quant.kmeans import KMeansSpec


@dataclass(frozen=True)
class QuantSpec:
    """Settings of any quantizer; `method` names its implementation in the registry."""

    method: str = "psrq"
    k: int = 256
    layers: int = 3
    prefix: Literal["reconstruction", "input"] = "reconstruction"
    prefix_weight: float = 1.0
    kmeans: KMeansSpec = field(default_factory=lambda: KMeansSpec(k=256))
    # rqvae only
    latent_dim: int = 64
    hidden_dim: int = 256
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    beta: float = 0.25


def layer_kmeans(spec: QuantSpec, layer: int) -> KMeansSpec:
    """The layer's k-means: every configured setting, with the spec's K and a per-layer seed."""
    return dataclasses.replace(spec.kmeans, k=spec.k, seed=spec.kmeans.seed + layer)


def check_batch(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise QuantizerError(f"expected a 2-d batch of embeddings, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise QuantizerError(f"embeddings have dimension {x.shape[1]}, the codebook expects {dim}")
    return x


class Quantizer(ABC):
    """Subclasses implement `_fit`, `_encode`, `decode` and `input_dim`; `n_layers` when the
    number of code columns is not `spec.layers`."""

    def __init__(self, spec: QuantSpec, arrays: dict[str, np.ndarray] | None = None):
        self.spec = spec
        self.arrays = arrays

    @classmethod
    def layers_of(cls, spec: QuantSpec) -> int:
        """Code columns (and `layer<l>` codebooks) a fit with this spec produces."""
        return spec.layers

    @property
    def n_layers(self) -> int:
        return self.layers_of(self.spec)

    def fit(self, x: np.ndarray) -> "Quantizer":
        """Fit on a sample (n, d)."""
        self.arrays = self._fit(check_batch(x))
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes (n, n_layers) int32."""
        return self._encode(check_batch(x, self.input_dim))

    def diagnostics(self, x: np.ndarray, seed: int = 0) -> dict:
        """Per-layer utilisation, balance and coherence, and the reconstruction error on x."""
        from psrq.quant.diagnostics import diagnose

        codes = self.encode(x)
        return diagnose(check_batch(x), codes, self.decode(codes), self.spec.k, seed)

    @property
    def fitted(self) -> dict[str, np.ndarray]:
        if self.arrays is None:
            raise QuantizerError(f"{self.spec.method} quantizer is not fitted: call fit(x) or load its arrays")
        return self.arrays

    @property
    @abstractmethod
    def input_dim(self) -> int: ...

    @abstractmethod
    def _fit(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _encode(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray: ...
