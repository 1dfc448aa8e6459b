"""Product quantization: `spec.layers` contiguous sub-spaces of the embedding, one k-means each."""
from __future__ import annotations

import numpy as np

from psrq.errors import QuantizerError
from psrq.quant.base import Quantizer, layer_kmeans
from psrq.quant.kmeans import fit_kmeans, nearest


def splits(d: int, m: int) -> list[np.ndarray]:
    if m > d:
        raise QuantizerError(f"pq: {m} sub-spaces do not fit a {d}-d embedding")
    return np.array_split(np.arange(d), m)


class PQ(Quantizer):
    def _fit(self, x):
        parts = splits(x.shape[1], self.n_layers)
        return {f"layer{l}": fit_kmeans(x[:, s], layer_kmeans(self.spec, l)) for l, s in enumerate(parts)}

    def _encode(self, x):
        arrays = self.fitted
        return np.stack([nearest(np.ascontiguousarray(x[:, s]), arrays[f"layer{l}"])
                         for l, s in enumerate(splits(x.shape[1], self.n_layers))], 1).astype(np.int32)

    def decode(self, codes):
        return np.concatenate([self.fitted[f"layer{l}"][codes[:, l]] for l in range(self.n_layers)], axis=1)

    @property
    def input_dim(self):
        return sum(self.fitted[f"layer{l}"].shape[1] for l in range(self.n_layers))
