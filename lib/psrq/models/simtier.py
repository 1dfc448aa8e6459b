"""SimTier + MAKE, a baseline of the paper's Table 2 that reads item content directly
(psrq.samples.content; frozen buffers looked up by catalogue index, so cold items have them)."""
from __future__ import annotations

import torch
from torch import nn

from psrq.models.base import LOGITS, ModelSpec, Outputs, Ranker
from psrq.models.layers import CONTENT_INPUTS, DinAttention, content_buffers, history_mask, mlp_head

MAKE = "make"  # the multimodal head's output and loss


class SimTierMake(Ranker):
    """SimTier + MAKE (Sheng et al., 2024), on top of DIN over item IDs.

    SimTier: per modality, the cosine similarity of the target's content to each history
    item's, binned into `tiers` equal tiers of [-1, 1]; the tier histogram (counts / N) is
    the feature. The multimodal part (an MLP over the histograms and the target's content)
    gives a representation r_mm that joins DIN's features in the ranking MLP.

    MAKE (multimodal-aware knowledge extraction) optimises the multimodal part apart from
    the ID model: it has its own prediction head and loss (`losses`, added to the
    training loss by the loop), and the ranking loss does not reach it (r_mm is detached in
    the main path). MAKE trains that part for several epochs per epoch of the ID model;
    here, within one pass, its parameters get a larger learning rate instead
    (`make_lr_scale`, see param_groups) — a stand-in, not MAKE's multi-epoch schedule.
    `make=False` trains everything jointly on the ranking loss (SimTier alone).
    """

    needs_content = True

    def __init__(self, spec: ModelSpec, content, tiers: int = 10, make: bool = True, make_lr_scale: float = 4.0):
        super().__init__(spec)
        self.tiers, self.make, self.make_lr_scale = tiers, make, make_lr_scale
        modalities = content.modalities
        self.modality_names = content_buffers(self, modalities)
        d = spec.dim
        self.item = spec.item_table()
        self.id_attention = DinAttention(d)
        width = len(self.modality_names) * tiers + sum(modalities[m].shape[1] for m in self.modality_names)
        self.multimodal = nn.Sequential(nn.Linear(width, 2 * d), nn.PReLU(), nn.Linear(2 * d, d), nn.PReLU())
        self.multimodal_head = nn.Linear(d, 1)
        self.head = mlp_head(3 * d)

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

    def forward(self, batch: dict[str, torch.Tensor]) -> Outputs:
        mask = history_mask(batch["hist_len"], self.spec.history_len)
        e_id = self.item(batch["item_idx"].long())
        h_id = self.id_attention(e_id, self.item(batch["hist_item_idx"].long()), mask)
        target = torch.cat([getattr(self, f"content_{m}")[batch["content_idx"].long()] for m in self.modality_names], -1)
        r_mm = self.multimodal(torch.cat([self.simtier(batch, mask), target], dim=-1))
        if not self.make:
            return {LOGITS: self.head(torch.cat([h_id, e_id, r_mm], dim=-1)).squeeze(-1)}
        make = self.multimodal_head(r_mm).squeeze(-1)
        return {LOGITS: self.head(torch.cat([h_id, e_id, r_mm.detach()], dim=-1)).squeeze(-1), MAKE: make}

    def losses(self, batch: dict[str, torch.Tensor], outputs: Outputs) -> dict[str, torch.Tensor]:
        """MAKE: the multimodal part's own log loss (its head's logits)."""
        if MAKE not in outputs:
            return {}
        return {MAKE: nn.functional.binary_cross_entropy_with_logits(outputs[MAKE], batch["label"].float())}
