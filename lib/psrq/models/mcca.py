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

Options (train.model_options), each one of VBPR's differences from MCCA, for the diagnosis
(psrq.experiments.diagnosis); all off is the paper's model:
  user_factor     + the history's mean ID embedding · the target's (VBPR's gamma_u · gamma_i)
  target_content  + the target's raw content, projected to dim, as an input of the MLP
                    (the model then reads the samples' content features)
  history_window  attend over the last n events of the history only
  cold_ids        "zero": an out-of-vocabulary item's ID embedding is zero, not the shared
                    row that training never updates ("trained", the default)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from psrq.models.base import LOGITS, ModelSpec, Outputs, Ranker
from psrq.models.layers import DinAttention, SemanticEmbedding, content_buffers, history_mask, masked_mean, mlp_head
from psrq.samples.layout import OOV


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

    def __init__(self, spec: ModelSpec, content=None, user_factor: bool = False, target_content: bool = False,
                 history_window: int | None = None, cold_ids: str = "trained"):
        super().__init__(spec)
        if cold_ids not in ("trained", "zero"):
            raise ValueError(f"train.model_options.cold_ids: 'trained' or 'zero', not {cold_ids!r}")
        if history_window is not None and not 1 <= history_window <= spec.history_len:
            raise ValueError(f"train.model_options.history_window: 1..{spec.history_len} (samples.history_len), "
                             f"not {history_window}")
        self.user_factor, self.history_window, self.cold_ids = user_factor, history_window, cold_ids
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
                raise ValueError(f"model {spec.name} needs the content codes {s!r}: build the samples with "
                                 "samples.content.dim > 0 and train.model=qarm (or samples.qarm.codes=true)")
            codes = torch.from_numpy(np.asarray(content_codes[s], dtype=np.int64))
            self.register_buffer(f"codes_{s}", codes, persistent=False)  # frozen, shipped with the samples
            shapes[s] = (int(codes.max()), codes.shape[1])
        self.semantic = nn.ModuleDict({s: SemanticEmbedding(*shapes[s], d) for s in used})
        self.attention = nn.ModuleDict({f"{h}_by_{q}": DinAttention(d) for h, q in self.arch.branches})
        self.content_names: list[str] = []
        if target_content:
            if content is None:
                raise ValueError(f"model {spec.name} with target_content reads item content: build samples with "
                                 "samples.content.dim > 0")
            self.content_names = content_buffers(self, content.modalities)
            self.project = nn.Linear(sum(content.modalities[m].shape[1] for m in self.content_names), d, bias=False)
        self.head = mlp_head(d * (2 + len(self.arch.branches) + len(self.arch.targets) + bool(self.content_names)))

    @classmethod
    def reads_content(cls, options: dict) -> bool:
        return bool(options.get("target_content"))

    @property
    def spaces(self) -> list[str]:
        return list(self.semantic)

    @property
    def inputs(self) -> list[str]:
        cols = ["item_idx", "hist_item_idx", "hist_len"]
        cols += [f"hist_{h}_codes" for h, _ in self.arch.branches if h not in self.lookup]
        cols += [f"target_{s}_codes" for s in sorted({q for _, q in self.arch.branches} | set(self.arch.targets))
                 if s not in self.lookup]
        return cols + (["content_idx", "hist_content_idx"] if self.lookup else ["content_idx"] if self.content_names else [])

    def _codes(self, batch: dict, space: str, which: str) -> torch.Tensor:
        """(B, layers) target or (B, N, layers) history codes of a space."""
        if space in self.lookup:
            table = getattr(self, f"codes_{space}")
            return table[batch["content_idx" if which == "target" else "hist_content_idx"].long()]
        codes = batch[f"{which}_{space}_codes"].long()
        return codes if which == "target" else codes.view(-1, self.spec.history_len, self.spec.layers)

    def _ids(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.item(idx)
        return e * (idx != OOV).unsqueeze(-1).to(e.dtype) if self.cold_ids == "zero" else e

    def _mask(self, hist_len: torch.Tensor) -> torch.Tensor:
        mask = history_mask(hist_len, self.spec.history_len)
        if self.history_window is not None:  # positions are oldest first: keep the last n valid ones
            pos = torch.arange(self.spec.history_len, device=hist_len.device)[None, :]
            mask = mask & (pos >= hist_len.long()[:, None] - self.history_window)
        return mask

    def forward(self, batch: dict[str, torch.Tensor]) -> Outputs:
        mask = self._mask(batch["hist_len"])
        e_id, hist_ids = self._ids(batch["item_idx"].long()), self._ids(batch["hist_item_idx"].long())
        h_id = self.id_attention(e_id, hist_ids, mask)
        target = {}

        def target_emb(space):
            if space not in target:
                target[space] = self.semantic[space](self._codes(batch, space, "target"))
            return target[space]

        interests = []
        for h, q in self.arch.branches:
            interests.append(self.attention[f"{h}_by_{q}"](target_emb(q), self.semantic[h](self._codes(batch, h, "hist")), mask))
        feats = interests + [h_id, e_id] + [target_emb(s) for s in self.arch.targets]
        if self.content_names:
            idx = batch["content_idx"].long()
            feats.append(self.project(torch.cat([getattr(self, f"content_{m}")[idx] for m in self.content_names], -1)))
        logits = self.head(torch.cat(feats, dim=-1)).squeeze(-1)
        if self.user_factor:
            logits = logits + (masked_mean(hist_ids, mask) * e_id).sum(-1)
        return {LOGITS: logits}
