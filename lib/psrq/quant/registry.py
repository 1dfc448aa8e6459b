"""Quantizers by name (`codebooks.method`). A new quantizer is one module with a
psrq.quant.base.Quantizer subclass and one line in BUILT_IN; code outside the package
(or a test) adds one with `register`. Executors never look a name up: the fitted
quantizers travel to them as objects (their classes must be importable there: the
package's own are, a plugin module ships with --py-files)."""
from __future__ import annotations

import numpy as np

from psrq.errors import QuantizerError
from psrq.plugins import Registry
from psrq.quant.base import Quantizer, QuantSpec
from psrq.quant.product import PQ
from psrq.quant.residual import PSRQ, RQ, VQ
from psrq.quant.rqvae import RQVAE

BUILT_IN: dict[str, type[Quantizer]] = {"vq": VQ, "rq": RQ, "psrq": PSRQ, "pq": PQ, "rqvae": RQVAE}
QUANTIZERS: Registry[Quantizer] = Registry("quantizer", "psrq.quant.base:Quantizer", BUILT_IN, QuantizerError)
register, unregister, names, quantizer_class = QUANTIZERS.register, QUANTIZERS.unregister, QUANTIZERS.names, QUANTIZERS.get


def quantizer(spec: QuantSpec, arrays: dict[str, np.ndarray] | None = None) -> Quantizer:
    """spec.method's quantizer, unfitted or with its fitted arrays."""
    return quantizer_class(spec.method)(spec, arrays)
