"""The residual family: VQ, RQ and PSRQ.

  vq     one k-means layer
  rq     residual k-means: layer l clusters the residual left by layers < l
  psrq   progressive semantic RQ: layer l >= 2 clusters concat(R_l, w * P_l), the residual
         next to the prefix semantics; the residual half of the chosen centroid is
         subtracted. `spec.prefix` names how P_l is defined:
           reconstruction  P_l = X - R_l, what layers < l reconstruct (the paper's reading)
           input           P_l = X, the original embedding at every layer"""
from __future__ import annotations

import numpy as np

from psrq.quant.base import Quantizer, layer_kmeans
from psrq.quant.kmeans import fit_kmeans, nearest


class RQ(Quantizer):
    def layer_input(self, l: int, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        """What layer l clusters, given the input x and the residual r left by layers < l."""
        return r

    def _fit(self, x):
        arrays, r, d = {}, x.copy(), x.shape[1]
        for l in range(self.n_layers):
            z = self.layer_input(l, x, r)
            c = fit_kmeans(z, layer_kmeans(self.spec, l))
            arrays[f"layer{l}"] = c
            r = r - c[nearest(z, c)][:, :d]
        return arrays

    def _encode(self, x):
        arrays, d = self.fitted, x.shape[1]
        codes = np.empty((len(x), self.n_layers), dtype=np.int32)
        r = x.copy()
        for l in range(self.n_layers):
            c = arrays[f"layer{l}"]
            z = self.layer_input(l, x, r)
            codes[:, l] = nearest(z, c)
            r = r - c[codes[:, l]][:, :d]
        return codes

    def decode(self, codes):
        d = self.input_dim
        out = np.zeros((len(codes), d), dtype=np.float32)
        for l in range(self.n_layers):
            out += self.fitted[f"layer{l}"][codes[:, l]][:, :d]
        return out

    @property
    def input_dim(self):
        return self.fitted["layer0"].shape[1]


class VQ(RQ):
    @classmethod
    def layers_of(cls, spec):
        return 1


class PSRQ(RQ):
    def layer_input(self, l, x, r):
        if l == 0:
            return r
        prefix = x - r if self.spec.prefix == "reconstruction" else x
        return np.concatenate([r, self.spec.prefix_weight * prefix], axis=1)
