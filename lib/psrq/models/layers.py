"""Building blocks of the rankers (torch)."""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import nn

CONTENT_INPUTS = ["content_idx", "hist_content_idx"]  # the target's and history's catalogue indices


def content_buffers(module: nn.Module, modalities: dict[str, np.ndarray]) -> list[str]:
    """The content matrices as frozen buffers `content_<modality>`: not parameters, not in
    checkpoints (they ship with the samples). Returns the modality names, sorted."""
    names = sorted(modalities)
    for m in names:
        module.register_buffer(f"content_{m}", torch.from_numpy(np.asarray(modalities[m], np.float32)), persistent=False)
    return names


def history_mask(hist_len: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) bool: True at the valid positions (the first hist_len)."""
    return torch.arange(n, device=hist_len.device)[None, :] < hist_len.long()[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, N, d), mask (B, N) -> (B, d); zero for an empty history."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class ItemTable(nn.Embedding):
    """An item-ID table (one row per vocabulary entry, 0 the padding row): the one kind of
    parameter whose size grows with the catalogue. With `sparse` set, its gradient holds
    only the rows a batch touched, and psrq.training.optim gives it an optimiser whose step
    touches only those rows; the weights are the same either way.

    keep (train.max_vocab): only indices below `keep` get a row of their own (the samples'
    vocabulary is in train-frequency order, so these are the most frequent items); the
    others share `buckets` rows by a multiplicative hash of their index, so the table's size
    is bounded whatever the catalogue. Such items are told apart by their semantic codes."""

    HASH = 2654435761  # Knuth's multiplicative constant: spreads neighbouring indices

    def __init__(self, vocab_size: int, dim: int, std: float | None = 0.05, keep: int | None = None, buckets: int = 0):
        self.keep = keep if keep is not None and keep < vocab_size else None
        self.buckets = buckets if self.keep is not None else 0
        if self.keep is not None and self.buckets < 1:
            raise ValueError(f"an item table that keeps {keep} of {vocab_size} rows needs hash buckets >= 1")
        super().__init__(self.keep + self.buckets if self.keep is not None else vocab_size, dim, padding_idx=0)
        if std is None:
            nn.init.zeros_(self.weight)
        else:
            nn.init.normal_(self.weight, std=std)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The table row of each vocabulary index."""
        if self.keep is None:
            return idx
        return torch.where(idx < self.keep, idx, self.keep + (idx * self.HASH) % self.buckets)

    dropout = 0.0  # train.embedding_dropout (set_dropout): on the looked-up rows, in training only

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = super().forward(self.rows(idx))
        return nn.functional.dropout(out, self.dropout, True) if self.dropout and self.training else out


def item_tables(model: nn.Module) -> list[ItemTable]:
    return [m for m in model.modules() if isinstance(m, ItemTable)]


M = TypeVar("M", bound=nn.Module)


def set_dropout(model: M, p: float) -> M:
    """Dropout on the embeddings of every item-ID table wider than one (not on bias tables)."""
    for table in item_tables(model):
        table.dropout = p if table.embedding_dim > 1 else 0.0
    return model


def set_sparse(model: M, sparse: bool) -> M:
    """Sparse (or dense) gradients for every item-ID table of the model."""
    for table in item_tables(model):
        table.sparse = sparse
    return model


class SemanticEmbedding(nn.Module):
    """One randomly initialised table per codebook layer; an item's embedding in a space is
    the sum of its layers' embeddings (MCCA's hierarchical embedding layer). Codes arrive
    shifted by one, 0 being padding, whose embedding is zero."""

    def __init__(self, k: int, layers: int, dim: int):
        super().__init__()
        self.layers = layers
        tables = [nn.Embedding(k + 1, dim, padding_idx=0) for _ in range(layers)]
        for t in tables:
            nn.init.normal_(t.weight, std=0.05)
            with torch.no_grad():
                t.weight[0].zero_()
        self.tables = nn.ModuleList(tables)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (..., layers) -> (..., dim)."""
        return sum(t(codes[..., i]) for i, t in enumerate(self.tables))


class DinAttention(nn.Module):
    """DIN's local activation unit: weight_j = MLP([q, k_j, q - k_j, q * k_j]); interest =
    sum_j weight_j * k_j over the valid positions (no softmax, as in DIN). PReLU stands in
    for DIN's Dice (a choice the MCCA paper leaves open)."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (80, 40)):
        super().__init__()
        layers, width = [], 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query (B, d), keys (B, N, d), mask (B, N) bool -> (B, d)."""
        q = query.unsqueeze(1).expand_as(keys)
        w = self.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)
        w = w * mask.to(w.dtype)
        return torch.einsum("bn,bnd->bd", w, keys)


def mlp_head(width: int, hidden: tuple[int, ...] = (200, 80)) -> nn.Sequential:
    layers = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.PReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)
