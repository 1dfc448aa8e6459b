"""Rankers by name (`train.model`). A new ranker is one module with a
psrq.models.base.Ranker subclass and one line in BUILT_IN; code outside the package (or a
test) adds one with `register`. Entries are import paths until first used, so reading the
names (config validation) imports no torch. Executors and ranks rebuild a model from plain
values, its name and class path (`ranker_path`): a plugin class needs no registration
there, only its module on the path (--py-files)."""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

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


def needs_content(name: str) -> bool:
    return ranker_class(name).needs_content


def build_model(name: str, vocab_size: int, k: int, layers: int, history_len: int, dim: int = 64,
                content=None, options: dict | None = None, modalities: tuple[str, ...] = ("text", "audio"),
                sparse: bool = False, max_vocab: int | None = None, hash_buckets: int = 0,
                priors: bool = False, user_buckets: int = 65536, embedding_dropout: float = 0.0,
                ranker: str | None = None) -> Ranker:
    """content: psrq.samples.content.ContentFeatures, for the rankers that need it; options:
    model-specific settings (train.model_options); modalities: the samples' spaces but joint;
    sparse: sparse gradients for the item-ID tables (train.sparse; the weights are the same);
    max_vocab: rows of their own for the max_vocab most frequent items only, the others
    share hash_buckets rows (psrq.models.layers.ItemTable); priors: bias terms and train
    statistics (psrq.models.priors; their buffers are zero until set_statistics or a
    checkpoint fills them); ranker: the class's import path (ranker_path), where the name
    is not registered in this process."""
    from psrq.models.base import ModelSpec
    from psrq.models.layers import set_dropout, set_sparse
    from psrq.samples.layout import FIRST_INDEX

    cls = RANKERS.load(ranker) if ranker else ranker_class(name)
    if cls.needs_content and content is None:
        raise ValueError(f"model {name} reads item content: build samples with samples.content.dim > 0")
    takes = list(inspect.signature(cls).parameters)[2:]  # after spec and content
    unknown = sorted(set(options or {}) - set(takes))
    if unknown:
        raise ValueError(f"train.model_options {unknown}: model {name} takes {', '.join(takes) or 'none'}")
    keep = FIRST_INDEX + max_vocab if max_vocab else None
    spec = ModelSpec(name, vocab_size, k, layers, history_len, dim, tuple(modalities), keep, hash_buckets if keep else 0)
    model: Ranker = cls(spec, content, **(options or {}))  # type: ignore[call-arg]  # subclasses take content
    if priors:
        from psrq.models.priors import Priors, WithPriors

        model = WithPriors(model, Priors(vocab_size, user_buckets, spec.keep, spec.buckets))
    return set_dropout(set_sparse(model, sparse), embedding_dropout)
