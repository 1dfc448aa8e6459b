"""Baselines of the paper's Table 2 that read item content directly (psrq.content): VBPR
and SimTier+MAKE. Same batch format and logits as psrq.models.ranker; the content matrix
is a frozen buffer looked up by catalogue index (content_idx), so cold items have it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from psrq.models.layers import DinAttention, history_mask, masked_mean, mlp_head

CONTENT_INPUTS = ["content_idx", "hist_content_idx"]


def _content_buffers(module: nn.Module, modalities: dict[str, np.ndarray]) -> list[str]:
    names = sorted(modalities)
    for m in names:  # frozen: not parameters, not in checkpoints (they ship with the samples)
        module.register_buffer(f"content_{m}", torch.from_numpy(np.asarray(modalities[m], np.float32)), persistent=False)
    return names


class Vbpr(nn.Module):
    """VBPR (He & McAuley, 2016) as a pointwise ranker over the common batch.

    score(u, i) = b + beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i
    with f_i the item's content (modalities side by side), E a learnt projection and beta'
    the content bias. Choices where this setting differs from the paper:
      - users have no ID table (test users need not appear in training): gamma_u and
        theta_u are the means of the history's gamma_j and E f_j, an item-to-item reading
        of VBPR's user factors (as FISM does for matrix factorisation);
      - trained with the same log loss as every ranker here rather than BPR's pairwise loss.
    """

    def __init__(self, spec, modalities: dict[str, np.ndarray]):
        super().__init__()
        self.spec = spec
        self.modality_names = _content_buffers(self, modalities)
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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = history_mask(batch["hist_len"], self.spec.history_len)
        item, hist = batch["item_idx"].long(), batch["hist_item_idx"].long()
        f_i = self._content(batch["content_idx"].long())
        theta_i = self.project(f_i)
        gamma_u = masked_mean(self.item(hist), mask)
        theta_u = masked_mean(self.project(self._content(batch["hist_content_idx"].long())), mask)
        return (self.item_bias(item).squeeze(-1) + (gamma_u * self.item(item)).sum(-1) + (theta_u * theta_i).sum(-1)
                + self.content_bias(f_i).squeeze(-1))


class SimTierMake(nn.Module):
    """SimTier + MAKE (Sheng et al., 2024), on top of DIN over item IDs.

    SimTier: per modality, the cosine similarity of the target's content to each history
    item's, binned into `tiers` equal tiers of [-1, 1]; the tier histogram (counts / N) is
    the feature. The multimodal part (an MLP over the histograms and the target's content)
    gives a representation r_mm that joins DIN's features in the ranking MLP.

    MAKE (multimodal-aware knowledge extraction) optimises the multimodal part apart from
    the ID model: it has its own prediction head and loss (`aux_logits`, added to the
    training loss by the loop), and the ranking loss does not reach it (r_mm is detached in
    the main path). MAKE trains that part for several epochs per epoch of the ID model;
    here, within one pass, its parameters get a larger learning rate instead
    (`make_lr_scale`, see param_groups) — a stand-in, not MAKE's multi-epoch schedule.
    `make=False` trains everything jointly on the ranking loss (SimTier alone).
    """

    def __init__(self, spec, modalities: dict[str, np.ndarray], tiers: int = 10, make: bool = True,
                 make_lr_scale: float = 4.0):
        super().__init__()
        self.spec, self.tiers, self.make, self.make_lr_scale = spec, tiers, make, make_lr_scale
        self.modality_names = _content_buffers(self, modalities)
        d = spec.dim
        self.item = spec.item_table()
        self.id_attention = DinAttention(d)
        width = len(self.modality_names) * tiers + sum(modalities[m].shape[1] for m in self.modality_names)
        self.multimodal = nn.Sequential(nn.Linear(width, 2 * d), nn.PReLU(), nn.Linear(2 * d, d), nn.PReLU())
        self.multimodal_head = nn.Linear(d, 1)
        self.head = mlp_head(3 * d)
        self.aux_logits: torch.Tensor | None = None

    @property
    def inputs(self) -> list[str]:
        return ["item_idx", "hist_item_idx", "hist_len", *CONTENT_INPUTS]

    def simtier(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(B, modalities * tiers) tier histograms."""
        out = []
        for m in self.modality_names:
            table = getattr(self, f"content_{m}")
            sims = torch.einsum("bd,bnd->bn", table[batch["content_idx"].long()], table[batch["hist_content_idx"].long()])
            tier = ((sims.clamp(-1, 1) + 1) / 2 * self.tiers).long().clamp(max=self.tiers - 1)
            hist = torch.nn.functional.one_hot(tier, self.tiers).to(sims.dtype) * mask.unsqueeze(-1).to(sims.dtype)
            out.append(hist.sum(1) / self.spec.history_len)
        return torch.cat(out, dim=-1)

    def multimodal_parameters(self) -> list[nn.Parameter]:
        return [*self.multimodal.parameters(), *self.multimodal_head.parameters()]

    def param_groups(self, lr: float) -> list[dict]:
        mm = {id(p) for p in self.multimodal_parameters()}
        rest = [p for p in self.parameters() if id(p) not in mm]
        scale = self.make_lr_scale if self.make else 1.0
        return [{"params": rest, "lr": lr}, {"params": self.multimodal_parameters(), "lr": lr * scale}]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = history_mask(batch["hist_len"], self.spec.history_len)
        e_id = self.item(batch["item_idx"].long())
        h_id = self.id_attention(e_id, self.item(batch["hist_item_idx"].long()), mask)
        target = torch.cat([getattr(self, f"content_{m}")[batch["content_idx"].long()] for m in self.modality_names], -1)
        r_mm = self.multimodal(torch.cat([self.simtier(batch, mask), target], dim=-1))
        self.aux_logits = self.multimodal_head(r_mm).squeeze(-1) if self.make else None
        return self.head(torch.cat([h_id, e_id, r_mm.detach() if self.make else r_mm], dim=-1)).squeeze(-1)
