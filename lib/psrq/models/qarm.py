"""QARM (quantitative alignment multimodal recommendation): the codes of an aligned
multimodal representation (psrq.samples.content: a VQ code and RQ codes per item) used as ID-like
features, the history attended by the target's own code embedding in each code kind. The
codes are looked up by catalogue index (content_idx), so cold items have them too."""
from __future__ import annotations

from psrq.models.mcca import CodeAttention


class Qarm(CodeAttention):
    needs_content = True
