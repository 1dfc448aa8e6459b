"""The code-attention family: DIN and the paper's MCCA with its ablations, one class
whose branches follow the model's name (see `architecture`).

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
  qarm         psrq.models.qarm (the same branches over content codes)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from psrq.models.base import LOGITS, ModelSpec, Outputs, Ranker
from psrq.models.layers import DinAttention, SemanticEmbedding, history_mask, mlp_head


@dataclass(frozen=True)
class Architecture:
    # (history space, query space) per code branch
    branches: tuple[tuple[str, str], ...]
    # target semantic embeddings fed to the MLP
    targets: tuple[str, ...]


def architecture(name: str, modalities: tuple[str, ...]) -> Architecture:
    """The branches of a model for the data's modalities (the samples' spaces but joint);
    the docstring above reads them for text and audio."""
    mods = tuple(modalities)
    text = "text" if "text" in mods else mods[0]  # din_codes: text codes, as the paper's Table 3
    return {
        "din": Architecture((), ()),
        "din_codes": Architecture(((text, text),), (text,)),
        "mcca": Architecture(tuple((m, "joint") for m in mods) + (("joint", "joint"),), ("joint",)),
        "mcca_wo_msc": Architecture((("joint", "joint"),), ("joint",)),
        "mcca_wo_mjc": Architecture(tuple((m, m) for m in mods), mods),
        "qarm": Architecture((("qarm_vq", "qarm_vq"), ("qarm_rq", "qarm_rq")), ("qarm_vq", "qarm_rq")),
    }[name]


ARCHITECTURES = ("din", "din_codes", "mcca", "mcca_wo_msc", "mcca_wo_mjc", "qarm")
# spaces whose codes are looked up in the content features by catalogue index
CONTENT_CODE_SPACES = ("qarm_vq", "qarm_rq")


class CodeAttention(Ranker):
    """One model of the family (spec.name in ARCHITECTURES); content only for the spaces it
    looks up by catalogue index (QARM's)."""

    def __init__(self, spec: ModelSpec, content=None):
        super().__init__(spec)
        content_codes = content.codes if content is not None else None
        self.arch = architecture(spec.name, spec.modalities)
        d = spec.dim
        self.item = spec.item_table()
        self.id_attention = DinAttention(d)
        used = sorted({s for b in self.arch.branches for s in b} | set(self.arch.targets))
        self.lookup = [s for s in used if s in CONTENT_CODE_SPACES]
        shapes = {s: (spec.k, spec.layers) for s in used}
        for s in self.lookup:
            if content_codes is None or s not in content_codes:
                raise ValueError(f"model {spec.name} needs the content codes {s!r} (samples built with samples.content.dim > 0)")
            codes = torch.from_numpy(np.asarray(content_codes[s], dtype=np.int64))
            self.register_buffer(f"codes_{s}", codes, persistent=False)  # frozen, shipped with the samples
            shapes[s] = (int(codes.max()), codes.shape[1])
        self.semantic = nn.ModuleDict({s: SemanticEmbedding(*shapes[s], d) for s in used})
        self.attention = nn.ModuleDict({f"{h}_by_{q}": DinAttention(d) for h, q in self.arch.branches})
        self.head = mlp_head(d * (2 + len(self.arch.branches) + len(self.arch.targets)))

    @property
    def spaces(self) -> list[str]:
        return list(self.semantic)

    @property
    def inputs(self) -> list[str]:
        cols = ["item_idx", "hist_item_idx", "hist_len"]
        cols += [f"hist_{h}_codes" for h, _ in self.arch.branches if h not in self.lookup]
        cols += [f"target_{s}_codes" for s in sorted({q for _, q in self.arch.branches} | set(self.arch.targets))
                 if s not in self.lookup]
        return cols + (["content_idx", "hist_content_idx"] if self.lookup else [])

    def _codes(self, batch: dict, space: str, which: str) -> torch.Tensor:
        """(B, layers) target or (B, N, layers) history codes of a space."""
        if space in self.lookup:
            table = getattr(self, f"codes_{space}")
            return table[batch["content_idx" if which == "target" else "hist_content_idx"].long()]
        codes = batch[f"{which}_{space}_codes"].long()
        return codes if which == "target" else codes.view(-1, self.spec.history_len, self.spec.layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> Outputs:
        hist_idx = batch["hist_item_idx"].long()
        mask = history_mask(batch["hist_len"], self.spec.history_len)
        e_id = self.item(batch["item_idx"].long())
        h_id = self.id_attention(e_id, self.item(hist_idx), mask)
        target = {}

        def target_emb(space):
            if space not in target:
                target[space] = self.semantic[space](self._codes(batch, space, "target"))
            return target[space]

        interests = []
        for h, q in self.arch.branches:
            interests.append(self.attention[f"{h}_by_{q}"](target_emb(q), self.semantic[h](self._codes(batch, h, "hist")), mask))
        feats = interests + [h_id, e_id] + [target_emb(s) for s in self.arch.targets]
        return {LOGITS: self.head(torch.cat(feats, dim=-1)).squeeze(-1)}
