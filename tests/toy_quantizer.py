"""A quantizer added from outside the package, for the registry test: every layer's
codebook is K residuals of the sample drawn at random (seeded). Executors import it the
way a plugin reaches a cluster: the module shipped with addPyFile (--py-files)."""
import numpy as np

from psrq.quant.base import Quantizer
from psrq.quant.kmeans import nearest


class RandomResidual(Quantizer):
    def _fit(self, x):
        rng = np.random.default_rng(self.spec.kmeans.seed)
        arrays, r = {}, x.copy()
        for l in range(self.n_layers):
            c = r[rng.choice(len(r), self.spec.k, replace=False)].copy()
            arrays[f"layer{l}"] = c
            r = r - c[nearest(r, c)]
        return arrays

    def _encode(self, x):
        codes, r = np.empty((len(x), self.n_layers), np.int32), x.copy()
        for l in range(self.n_layers):
            c = self.fitted[f"layer{l}"]
            codes[:, l] = nearest(r, c)
            r = r - c[codes[:, l]]
        return codes

    def decode(self, codes):
        return sum(self.fitted[f"layer{l}"][codes[:, l]] for l in range(self.n_layers))

    @property
    def input_dim(self):
        return self.fitted["layer0"].shape[1]
