"""Rankers over one batch format (the samples' columns as tensors), selected by name.

Every model has the collaborative branch: DIN attention over the history's item-ID
embeddings with the target's ID embedding as query. Code branches attend over a history
code sequence in one space with the target's semantic embedding in a (possibly other)
space as query. A model builds embedding tables only for the spaces it uses, so an
ablation really lacks what it removes.

  din          IDs only
  din_codes    + text codes (history attended by the target's text embedding): the paper's
               Table 3 setup, for any quantizer's codes
  mcca         text, audio and joint histories, each queried by the target's joint
               embedding e_o; the MLP sees [h_text, h_audio, h_joint, h_id, e_id, e_o]
  mcca_wo_msc  joint history only (no modal-specific codebooks)
  mcca_wo_mjc  text and audio histories queried by the target's own text/audio
               embeddings; no joint codebook, no shared query
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from psrq.models.layers import DinAttention, SemanticEmbedding, mlp_head


@dataclass(frozen=True)
class Architecture:
    # (history space, query space) per code branch
    branches: tuple[tuple[str, str], ...]
    # target semantic embeddings fed to the MLP
    targets: tuple[str, ...]


ARCHITECTURES = {
    "din": Architecture((), ()),
    "din_codes": Architecture((("text", "text"),), ("text",)),
    "mcca": Architecture((("text", "joint"), ("audio", "joint"), ("joint", "joint")), ("joint",)),
    "mcca_wo_msc": Architecture((("joint", "joint"),), ("joint",)),
    "mcca_wo_mjc": Architecture((("text", "text"), ("audio", "audio")), ("text", "audio")),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    vocab_size: int
    k: int
    layers: int
    history_len: int
    dim: int = 64


class Ranker(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.name not in ARCHITECTURES:
            raise ValueError(f"unknown model {spec.name!r} (choose from {', '.join(ARCHITECTURES)})")
        self.spec = spec
        self.arch = ARCHITECTURES[spec.name]
        d = spec.dim
        self.item = nn.Embedding(spec.vocab_size, d, padding_idx=0)
        nn.init.normal_(self.item.weight, std=0.05)
        self.id_attention = DinAttention(d)
        used = sorted({s for b in self.arch.branches for s in b} | set(self.arch.targets))
        self.semantic = nn.ModuleDict({s: SemanticEmbedding(spec.k, spec.layers, d) for s in used})
        self.attention = nn.ModuleDict({f"{h}_by_{q}": DinAttention(d) for h, q in self.arch.branches})
        self.head = mlp_head(d * (2 + len(self.arch.branches) + len(self.arch.targets)))

    @property
    def spaces(self) -> list[str]:
        return list(self.semantic)

    @property
    def inputs(self) -> list[str]:
        """The batch columns this model reads."""
        cols = ["item_idx", "hist_item_idx", "hist_len"]
        cols += [f"hist_{h}_codes" for h, _ in self.arch.branches]
        cols += [f"target_{s}_codes" for s in sorted({q for _, q in self.arch.branches} | set(self.arch.targets))]
        return cols

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B,)."""
        n, L = self.spec.history_len, self.spec.layers
        hist_idx = batch["hist_item_idx"].long()
        mask = torch.arange(n, device=hist_idx.device)[None, :] < batch["hist_len"].long()[:, None]
        e_id = self.item(batch["item_idx"].long())
        h_id = self.id_attention(e_id, self.item(hist_idx), mask)
        target = {}

        def target_emb(space):
            if space not in target:
                target[space] = self.semantic[space](batch[f"target_{space}_codes"].long())
            return target[space]

        interests = []
        for h, q in self.arch.branches:
            codes = batch[f"hist_{h}_codes"].long().view(-1, n, L)
            interests.append(self.attention[f"{h}_by_{q}"](target_emb(q), self.semantic[h](codes), mask))
        feats = interests + [h_id, e_id] + [target_emb(s) for s in self.arch.targets]
        return self.head(torch.cat(feats, dim=-1)).squeeze(-1)


def build_model(name: str, vocab_size: int, k: int, layers: int, history_len: int, dim: int = 64) -> Ranker:
    return Ranker(ModelSpec(name, vocab_size, k, layers, history_len, dim))
