"""A ranker added from outside the package, for the registry test: the item's bias plus
the dot product of its ID embedding with the mean of the history's, with an L2 term on
that mean as its auxiliary loss. Executors rebuild it from its import path
(toy_ranker:ItemDot), the module shipped the way a plugin reaches a cluster: addPyFile
(--py-files)."""
from psrq.models.base import LOGITS, Ranker
from psrq.models.layers import history_mask, masked_mean


class ItemDot(Ranker):
    def __init__(self, spec, content=None, l2: float = 0.0):
        super().__init__(spec)
        self.l2 = l2
        self.item = spec.item_table()
        self.bias = spec.item_table(1, std=None)

    @property
    def inputs(self):
        return ["item_idx", "hist_item_idx", "hist_len"]

    def forward(self, batch):
        item = batch["item_idx"].long()
        user = masked_mean(self.item(batch["hist_item_idx"].long()), history_mask(batch["hist_len"], self.spec.history_len))
        return {LOGITS: self.bias(item).squeeze(-1) + (user * self.item(item)).sum(-1), "user": user}

    def losses(self, batch, outputs):
        return {"l2": self.l2 * outputs["user"].pow(2).sum(-1).mean()} if self.l2 else {}
