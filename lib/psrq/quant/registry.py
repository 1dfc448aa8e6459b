"""Quantizers by name (`codebooks.method`). A new quantizer is one module with a
psrq.quant.base.Quantizer subclass and one line in BUILT_IN; code outside the package
(or a test) adds one with `register`. Executors never look a name up: the fitted
quantizers travel to them as objects (their classes must be importable there: the
package's own are, a plugin module ships with --py-files)."""
from __future__ import annotations

import numpy as np

from psrq.errors import QuantizerError
from psrq.quant.base import Quantizer, QuantSpec
from psrq.quant.product import PQ
from psrq.quant.residual import PSRQ, RQ, VQ
from psrq.quant.rqvae import RQVAE

BUILT_IN: dict[str, type[Quantizer]] = {"vq": VQ, "rq": RQ, "psrq": PSRQ, "pq": PQ, "rqvae": RQVAE}
_REGISTRY: dict[str, type[Quantizer]] = dict(BUILT_IN)


def register(name: str, cls: type[Quantizer]) -> type[Quantizer]:
    if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
        raise TypeError(f"quantizer {name!r}: {cls!r} is not a psrq.quant.base.Quantizer subclass")
    _REGISTRY[name] = cls
    return cls


def names() -> list[str]:
    return list(_REGISTRY)


def quantizer_class(method: str) -> type[Quantizer]:
    try:
        return _REGISTRY[method]
    except KeyError:
        raise QuantizerError(f"unknown quantizer {method!r} (choose from {', '.join(_REGISTRY)})") from None


def quantizer(spec: QuantSpec, arrays: dict[str, np.ndarray] | None = None) -> Quantizer:
    """spec.method's quantizer, unfitted or with its fitted arrays."""
    return quantizer_class(spec.method)(spec, arrays)
