"""Bias terms and train-split statistics for any ranker: what lets a learned model start
from, and so at least match, the non-learned floors (psrq.evaluation.floors).

`WithPriors(model)` adds to the model's logit
    bias + w_item * (logit(item rate) - logit(g)) + w_user * (logit(user rate) - logit(g))
    + w_n_item * log1p(item events) + w_n_user * log1p(user events)
    + b_item[item] + b_user[user]
where the rates are the train split's positive rates smoothed toward the global rate g by
PRIOR pseudo-events, exactly as the item_rate and user_rate floors, and the counts are the
train split's events. The statistics are fixed buffers (saved with the weights, so
evaluation needs nothing else); w starts at (1, 1, 0, 0) and bias at logit(g), so the
untrained model already scores like the two rate floors combined.

Leave-one-out in training: a training row's own label is part of its item's and user's
statistics, which would teach the model to trust them more than they deserve on rows they
never saw. In training (a batch with labels) each row's own event is taken out of them.

Users are not numbered in the samples: they share `user_buckets` rows by a multiplicative
hash of their ID (row 0 is the padding row). With many more users than buckets, colliding
users share their statistics and bias."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from psrq.models.base import LOGITS, Outputs, Ranker
from psrq.models.layers import ItemTable

PRIOR = 20.0  # pseudo-events at the global rate: the floors' smoothing (psrq.evaluation.floors)
HASH = 2654435761
STATS = ("item_n", "item_pos", "user_n", "user_pos")


def user_rows(user_id: np.ndarray | torch.Tensor, buckets: int):
    """The user's row in 1..buckets-1 (0 is the tables' padding row)."""
    return 1 + (user_id * HASH) % (buckets - 1)


def train_statistics(batches, vocab_size: int, user_buckets: int) -> dict[str, np.ndarray]:
    """Events and positives per vocabulary index and per user row, from batches of the train
    split (item_idx, user_id, label)."""
    out = {k: np.zeros(vocab_size if k.startswith("item") else user_buckets, dtype=np.float64) for k in STATS}
    for b in batches:
        label = np.asarray(b["label"], dtype=np.float64)
        item, user = np.asarray(b["item_idx"], dtype=np.int64), user_rows(np.asarray(b["user_id"], dtype=np.int64), user_buckets)
        out["item_n"] += np.bincount(item, minlength=vocab_size)
        out["item_pos"] += np.bincount(item, weights=label, minlength=vocab_size)
        out["user_n"] += np.bincount(user, minlength=user_buckets)
        out["user_pos"] += np.bincount(user, weights=label, minlength=user_buckets)
    return {k: v.astype(np.float32) for k, v in out.items()}


class Priors(nn.Module):
    # buffers (register_buffer): the train statistics and the global rate
    item_n: torch.Tensor
    item_pos: torch.Tensor
    user_n: torch.Tensor
    user_pos: torch.Tensor
    global_rate: torch.Tensor

    def __init__(self, vocab_size: int, user_buckets: int, keep: int | None = None, buckets: int = 0):
        super().__init__()
        self.user_buckets = user_buckets
        for name in STATS:
            self.register_buffer(name, torch.zeros(vocab_size if name.startswith("item") else user_buckets))
        self.register_buffer("global_rate", torch.tensor(0.5))
        # biases are item tables like the others: sparse, bounded by max_vocab the same way
        self.item_bias = ItemTable(vocab_size, 1, None, keep, buckets)
        self.user_bias = ItemTable(user_buckets, 1, None)
        self.weight = nn.Parameter(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def set_statistics(self, stats: dict[str, np.ndarray]) -> "Priors":
        with torch.no_grad():
            for name in STATS:
                if stats[name].shape != getattr(self, name).shape:
                    want = tuple(getattr(self, name).shape)
                    raise ValueError(f"statistics {name}: shape {stats[name].shape}, the model's {want}")
                getattr(self, name).copy_(torch.from_numpy(np.asarray(stats[name], dtype=np.float32)))
            n = float(stats["item_n"].sum())
            g = float(stats["item_pos"].sum()) / n if n else 0.5
            self.global_rate.fill_(min(max(g, 1e-4), 1 - 1e-4))
            self.bias.fill_(float(torch.logit(self.global_rate)))
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        item = batch["item_idx"].long()
        user = user_rows(batch["user_id"].long(), self.user_buckets)
        n_i, p_i, n_u, p_u = self.item_n[item], self.item_pos[item], self.user_n[user], self.user_pos[user]
        if self.training and "label" in batch:  # leave the row's own event out (see the module's doc)
            y = batch["label"].float()
            n_i, p_i, n_u, p_u = (n_i - 1).clamp(min=0), (p_i - y).clamp(min=0), (n_u - 1).clamp(min=0), (p_u - y).clamp(min=0)
        g = self.global_rate

        def rate_logit(pos, n):
            return torch.logit((pos + PRIOR * g) / (n + PRIOR)) - torch.logit(g)

        feats = torch.stack([rate_logit(p_i, n_i), rate_logit(p_u, n_u), torch.log1p(n_i), torch.log1p(n_u)], dim=-1)
        return (feats @ self.weight + self.bias + self.item_bias(item).squeeze(-1)
                + self.user_bias(user).squeeze(-1))


class WithPriors(Ranker):
    """A ranker plus its Priors; reads what the ranker reads and the user's ID."""

    def __init__(self, base: Ranker, priors: Priors):
        super().__init__(base.spec)
        self.base, self.priors = base, priors

    @property
    def inputs(self) -> list[str]:
        return list(self.base.inputs) + ["user_id"]

    def losses(self, batch: dict[str, torch.Tensor], outputs: Outputs) -> dict[str, torch.Tensor]:
        return self.base.losses(batch, outputs)

    def param_groups(self, lr: float) -> list[dict]:
        return self.base.param_groups(lr) + [{"params": list(self.priors.parameters())}]

    def forward(self, batch: dict[str, torch.Tensor]) -> Outputs:
        out = self.base(batch)
        return {**out, LOGITS: out[LOGITS] + self.priors(batch)}
