"""What every ranker is: a torch module over the samples' batch format (the columns as
tensors), built from a ModelSpec, that says which columns it reads.

    forward(batch)          -> {"logits": (B,), ...}: the score's logits and any named
                               outputs the auxiliary losses read
    losses(batch, outputs)  -> {name: scalar}: auxiliary terms added to the log loss of
                               the logits (MAKE's multimodal head); none by default
    param_groups(lr)        -> optimiser groups (a part with its own rate)

forward returns its auxiliary outputs instead of leaving them on the module: under
DistributedDataParallel only what forward returns is part of the step, and a module
attribute is state that outlives the batch it belongs to. A new ranker is one module with
a Ranker subclass and one line in psrq.models.registry.BUILT_IN (or `register`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from psrq.models.registry import ModelShape

LOGITS = "logits"
Outputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec(ModelShape):
    keep: int | None = None   # item rows of their own (FIRST_INDEX + train.max_vocab); None: all
    buckets: int = 0          # hash buckets the other items share

    def item_table(self, dim: int | None = None, std: float | None = 0.05):
        from psrq.models.layers import ItemTable

        return ItemTable(self.vocab_size, self.dim if dim is None else dim, std, self.keep, self.buckets)


class Ranker(nn.Module, ABC):
    """Subclasses take (spec, content=None, **options): content is a
    psrq.samples.content.ContentFeatures, given to those that set needs_content; options are
    train.model_options."""

    needs_content: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec

    @classmethod
    def reads_content(cls, options: dict) -> bool:
        """Whether a model with these options reads item content (needs_content, or an option
        that makes it)."""
        return cls.needs_content

    @property
    @abstractmethod
    def inputs(self) -> list[str]:
        """The batch columns this model reads."""

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> Outputs:
        """{"logits": (B,)} and any outputs `losses` reads."""

    def losses(self, batch: dict[str, torch.Tensor], outputs: Outputs) -> dict[str, torch.Tensor]:
        """Auxiliary loss terms for a training batch (with its labels)."""
        return {}

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr}]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch)[LOGITS]
