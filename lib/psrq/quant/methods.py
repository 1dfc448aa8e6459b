"""Quantizers with one interface: fit on a sample -> arrays; encode a batch -> codes (n, L);
decode codes -> reconstruction. Arrays are plain float32 numpy (saved with safetensors),
and encoding is numpy matrix products only, so executors need neither faiss nor torch.

Methods:
  vq     one k-means layer
  rq     residual k-means: layer l clusters the residual left by layers < l
  psrq   progressive semantic RQ (DESIGN.md): layer l >= 2 clusters concat(R_l, w * P_l),
         the residual next to the prefix semantics; the residual half of the chosen centroid
         is subtracted. `prefix` names how P_l is defined:
           reconstruction  P_l = X - R_l, what layers < l reconstruct (the paper's reading)
           input           P_l = X, the original embedding at every layer
  pq     product quantization: L contiguous sub-spaces, one k-means each
  rqvae  RQ-VAE (torch, trained on the sample): MLP encoder -> residual codebooks -> decoder
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from psrq.errors import QuantizerError
from psrq.quant.kmeans import KMeansSpec, fit_kmeans, nearest

Method = Literal["vq", "rq", "psrq", "pq", "rqvae"]
METHODS = ("vq", "rq", "psrq", "pq", "rqvae")


@dataclass(frozen=True)
class QuantSpec:
    method: Method = "psrq"
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

    def n_layers(self) -> int:
        return 1 if self.method == "vq" else self.layers


def layer_kmeans(spec: QuantSpec, layer: int) -> KMeansSpec:
    """The layer's k-means: every configured setting, with the spec's K and a per-layer seed."""
    return dataclasses.replace(spec.kmeans, k=spec.k, seed=spec.kmeans.seed + layer)


def _check(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise QuantizerError(f"expected a 2-d batch of embeddings, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise QuantizerError(f"embeddings have dimension {x.shape[1]}, the codebook expects {dim}")
    return x


# --- residual family (vq, rq, psrq) ------------------------------------------------------
def _psrq_input(spec: QuantSpec, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    prefix = x - r if spec.prefix == "reconstruction" else x
    return np.concatenate([r, spec.prefix_weight * prefix], axis=1)


def _residual_fit(spec: QuantSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    arrays, r, d = {}, x.copy(), x.shape[1]
    for l in range(spec.n_layers()):
        z = r if (spec.method != "psrq" or l == 0) else _psrq_input(spec, x, r)
        c = fit_kmeans(z, layer_kmeans(spec, l))
        arrays[f"layer{l}"] = c
        r = r - c[nearest(z, c)][:, :d]
    return arrays


def _residual_encode(spec: QuantSpec, arrays: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, final residual)."""
    n, d = x.shape
    codes = np.empty((n, spec.n_layers()), dtype=np.int32)
    r = x.copy()
    for l in range(spec.n_layers()):
        c = arrays[f"layer{l}"]
        z = r if (spec.method != "psrq" or l == 0) else _psrq_input(spec, x, r)
        codes[:, l] = nearest(z, c)
        r = r - c[codes[:, l]][:, :d]
    return codes, r


def _residual_decode(spec: QuantSpec, arrays: dict, codes: np.ndarray, d: int) -> np.ndarray:
    out = np.zeros((len(codes), d), dtype=np.float32)
    for l in range(spec.n_layers()):
        out += arrays[f"layer{l}"][codes[:, l]][:, :d]
    return out


# --- product quantization ------------------------------------------------------------------
def _pq_splits(d: int, m: int) -> list[np.ndarray]:
    if m > d:
        raise QuantizerError(f"pq: {m} sub-spaces do not fit a {d}-d embedding")
    return np.array_split(np.arange(d), m)


def _pq_fit(spec: QuantSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    return {f"layer{l}": fit_kmeans(x[:, s], layer_kmeans(spec, l)) for l, s in enumerate(_pq_splits(x.shape[1], spec.layers))}


def _pq_encode(spec: QuantSpec, arrays: dict, x: np.ndarray) -> np.ndarray:
    splits = _pq_splits(x.shape[1], spec.layers)
    return np.stack([nearest(np.ascontiguousarray(x[:, s]), arrays[f"layer{l}"]) for l, s in enumerate(splits)], 1).astype(np.int32)


def _pq_decode(spec: QuantSpec, arrays: dict, codes: np.ndarray) -> np.ndarray:
    return np.concatenate([arrays[f"layer{l}"][codes[:, l]] for l in range(spec.layers)], axis=1)


# --- public interface ----------------------------------------------------------------------
def fit(spec: QuantSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    """Fit on a sample (n, d); returns the codebook arrays."""
    if spec.method not in METHODS:
        raise QuantizerError(f"unknown quantizer {spec.method!r} (choose from {', '.join(METHODS)})")
    x = _check(x)
    if spec.method == "pq":
        return _pq_fit(spec, x)
    if spec.method == "rqvae":
        from psrq.quant.rqvae import fit_rqvae

        return fit_rqvae(spec, x)
    return _residual_fit(spec, x)


def encode(spec: QuantSpec, arrays: dict, x: np.ndarray) -> np.ndarray:
    """Codes (n, L) int32; row i depends only on x[i] (batching never changes a code)."""
    x = _check(x, input_dim(spec, arrays))
    if spec.method == "pq":
        return _pq_encode(spec, arrays, x)
    if spec.method == "rqvae":
        from psrq.quant.rqvae import encode_rqvae

        return encode_rqvae(spec, arrays, x)
    return _residual_encode(spec, arrays, x)[0]


def decode(spec: QuantSpec, arrays: dict, codes: np.ndarray) -> np.ndarray:
    if spec.method == "pq":
        return _pq_decode(spec, arrays, codes)
    if spec.method == "rqvae":
        from psrq.quant.rqvae import decode_rqvae

        return decode_rqvae(spec, arrays, codes)
    return _residual_decode(spec, arrays, codes, input_dim(spec, arrays))


def input_dim(spec: QuantSpec, arrays: dict) -> int:
    if spec.method == "pq":
        return sum(arrays[f"layer{l}"].shape[1] for l in range(spec.layers))
    if spec.method == "rqvae":
        return arrays["enc0.weight"].shape[1]
    return arrays["layer0"].shape[1]
