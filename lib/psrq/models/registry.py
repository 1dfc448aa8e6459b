"""Rankers by name (`train.model`). A new ranker is one module with a
psrq.models.base.Ranker subclass and one line in BUILT_IN; code outside the package (or a
test) adds one with `register`. Entries are import paths until first used, so reading the
names (config validation) imports no torch. Executors and ranks rebuild a model from plain
values, its name and class path (`ranker_path`): a plugin class needs no registration
there, only its module on the path (--py-files)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from psrq.plugins import Registry

if TYPE_CHECKING:
    from psrq.models.base import Ranker

BUILT_IN: dict[str, str] = {
    "mcca": "psrq.models.mcca:CodeAttention", "din": "psrq.models.mcca:CodeAttention",
    "din_codes": "psrq.models.mcca:CodeAttention", "mcca_wo_msc": "psrq.models.mcca:CodeAttention",
    "mcca_wo_mjc": "psrq.models.mcca:CodeAttention", "qarm": "psrq.models.qarm:Qarm",
    "vbpr": "psrq.models.vbpr:Vbpr", "simtier_make": "psrq.models.simtier:SimTierMake"}
RANKERS: Registry[Ranker] = Registry("model", "psrq.models.base:Ranker", BUILT_IN)
register, unregister, names, ranker_class, ranker_path = (RANKERS.register, RANKERS.unregister, RANKERS.names,
                                                          RANKERS.get, RANKERS.path)


def needs_content(name: str, options: dict | None = None) -> bool:
    """Whether model `name` with train.model_options `options` reads the samples' content."""
    cls = ranker_class(name)
    return cls.needs_content or cls.reads_content(options or {})


@dataclass(frozen=True)
class ModelShape:
    """What the samples fix about a ranker, and its width: the fields ModelArgs (the settings
    hand-off) and psrq.models.base.ModelSpec (a ranker's constructor input) share."""

    name: str
    vocab_size: int
    k: int
    layers: int
    history_len: int
    dim: int = 64
    modalities: tuple[str, ...] = ("text", "audio")


@dataclass(frozen=True)
class ModelArgs(ModelShape):
    """What a ranker is built from (content aside): the samples' shape and the train section's
    model settings (psrq.training.run.model_args). options: model-specific settings
    (train.model_options); modalities: the samples' spaces but joint; sparse: sparse
    gradients for the item-ID tables (train.sparse; the weights are the same); max_vocab: rows
    of their own for the max_vocab most frequent items only, the others share hash_buckets
    rows (psrq.models.layers.ItemTable); priors: bias terms and train statistics
    (psrq.models.priors; their buffers are zero until set_statistics or a checkpoint fills
    them); ranker: the class's import path (ranker_path), where the name is not registered
    in this process."""

    options: Optional[dict] = None
    sparse: bool = False
    max_vocab: Optional[int] = None
    hash_buckets: int = 0
    priors: bool = False
    user_buckets: int = 65536
    embedding_dropout: float = 0.0
    ranker: Optional[str] = None


def build_model(args: ModelArgs, content=None) -> Ranker:
    """The ranker `args` describe; content: psrq.samples.content.ContentFeatures, for the
    rankers that need it."""
    from psrq.models.base import ModelSpec
    from psrq.models.layers import set_dropout, set_sparse
    from psrq.samples.layout import FIRST_INDEX

    a = args
    cls = RANKERS.load(a.ranker) if a.ranker else ranker_class(a.name)
    if (cls.needs_content or cls.reads_content(a.options or {})) and content is None:
        raise ValueError(f"model {a.name} reads item content: build samples with samples.content.dim > 0")
    takes = list(inspect.signature(cls).parameters)[2:]  # after spec and content
    unknown = sorted(set(a.options or {}) - set(takes))
    if unknown:
        raise ValueError(f"train.model_options {unknown}: model {a.name} takes {', '.join(takes) or 'none'}")
    keep = FIRST_INDEX + a.max_vocab if a.max_vocab else None
    spec = ModelSpec(a.name, a.vocab_size, a.k, a.layers, a.history_len, a.dim, tuple(a.modalities), keep,
                     a.hash_buckets if keep else 0)
    model: Ranker = cls(spec, content, **(a.options or {}))  # type: ignore[call-arg]  # subclasses take content
    if a.priors:
        from psrq.models.priors import Priors, WithPriors

        model = WithPriors(model, Priors(a.vocab_size, a.user_buckets, spec.keep, spec.buckets))
    return set_dropout(set_sparse(model, a.sparse), a.embedding_dropout)
