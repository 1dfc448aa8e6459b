"""VBPR, a baseline of the paper's Table 2 that reads item content directly (psrq.samples.content):
the content matrix is a frozen buffer looked up by catalogue index (content_idx), so cold
items have it."""
from __future__ import annotations

import torch
from torch import nn

from psrq.models.base import LOGITS, ModelSpec, Outputs, Ranker
from psrq.models.layers import CONTENT_INPUTS, content_buffers, history_mask, masked_mean


class Vbpr(Ranker):
    """VBPR (He & McAuley, 2016) as a pointwise ranker over the common batch.

    score(u, i) = b + beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i
    with f_i the item's content (modalities side by side), E a learnt projection and beta'
    the content bias. Choices where this setting differs from the paper:
      - users have no ID table (test users need not appear in training): gamma_u and
        theta_u are the means of the history's gamma_j and E f_j, an item-to-item reading
        of VBPR's user factors (as FISM does for matrix factorisation);
      - trained with the same log loss as every ranker here rather than BPR's pairwise loss.
    """

    needs_content = True

    def __init__(self, spec: ModelSpec, content):
        super().__init__(spec)
        modalities = content.modalities
        self.modality_names = content_buffers(self, modalities)
        width = sum(modalities[m].shape[1] for m in self.modality_names)
        d = spec.dim
        self.item = spec.item_table()
        self.item_bias = spec.item_table(1, std=None)
        self.project = nn.Linear(width, d, bias=False)  # E
        self.content_bias = nn.Linear(width, 1)         # beta' and the global bias b

    @property
    def inputs(self) -> list[str]:
        return ["item_idx", "hist_item_idx", "hist_len", *CONTENT_INPUTS]

    def _content(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"content_{m}")[idx] for m in self.modality_names], dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> Outputs:
        mask = history_mask(batch["hist_len"], self.spec.history_len)
        item, hist = batch["item_idx"].long(), batch["hist_item_idx"].long()
        f_i = self._content(batch["content_idx"].long())
        theta_i = self.project(f_i)
        gamma_u = masked_mean(self.item(hist), mask)
        theta_u = masked_mean(self.project(self._content(batch["hist_content_idx"].long())), mask)
        return {LOGITS: self.item_bias(item).squeeze(-1) + (gamma_u * self.item(item)).sum(-1)
                + (theta_u * theta_i).sum(-1) + self.content_bias(f_i).squeeze(-1)}
