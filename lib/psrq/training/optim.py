"""Optimisers: Adam for the dense parameters and, for the item-ID tables
(psrq.models.layers.ItemTable) when their gradients are sparse, an optimiser whose step
reads and writes only the rows a batch touched, so a step's cost follows the batch and not
the catalogue.

Table optimisers (train.table_optimizer):
  rowwise_adagrad  one accumulator per row (the mean squared gradient of the row), as
                   FBGEMM's/TorchRec's row-wise Adagrad: state is V floats, not V x d, so a
                   rank holds about the weights and nothing more
  adam             torch.optim.SparseAdam (lazy Adam): Adam's update on the touched rows,
                   state 2 x V x d
With dense tables (train.sparse=false) every parameter is in one Adam, as before."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from psrq.errors import PsrqError
from psrq.models.base import Ranker
from psrq.models.layers import item_tables

TABLE_OPTIMIZERS = ("rowwise_adagrad", "adam")
# train.table_lr when unset: Adagrad's rate is not Adam's (0.05 measured best of 0.01/0.05
# on the demo data for DIN; MCCA within 0.002 at either); lazy Adam keeps train.lr
ROWWISE_ADAGRAD_LR = 0.05


def table_rate(table_optimizer: str, table_lr: Optional[float], lr: float) -> float:
    """The learning rate of the sparse tables."""
    if table_lr is not None:
        return float(table_lr)
    return ROWWISE_ADAGRAD_LR if table_optimizer == "rowwise_adagrad" else float(lr)


class OptimizerStateError(PsrqError):
    """Saved optimiser state that does not fit this run's optimisers."""


class RowwiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row: s_r += mean_j(g_rj^2); w_r -= lr * g_r / (sqrt(s_r) + eps).
    Takes sparse gradients (only their rows are read and written; duplicate rows, as an
    allgather across ranks leaves them, are summed first) and dense ones."""

    def __init__(self, params, lr: float = ROWWISE_ADAGRAD_LR, eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"rowwise_adagrad: lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                acc = state["sum"]
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    if not len(rows):
                        continue
                    acc.index_add_(0, rows, values.float().pow(2).mean(1))
                    scale = (acc[rows].sqrt() + eps).reciprocal().mul_(-lr).to(values.dtype)
                    p.index_add_(0, rows, values * scale[:, None])
                else:
                    acc.add_(grad.float().pow(2).mean(1))
                    p.addcmul_(grad, (acc.sqrt() + eps).reciprocal().mul_(-lr).to(grad.dtype)[:, None])
        return loss


class Optimizers:
    """The dense and the table optimiser behind one interface (zero_grad, step, state_dict),
    for the loop and the checkpoints; `parts` by name, for the backends that wrap each one
    (Horovod's DistributedOptimizer, one per part, each over its own parameters)."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = dict(parts)

    def zero_grad(self) -> None:
        for opt in self.parts.values():
            opt.zero_grad()  # set_to_none (torch default): a sparse gradient is rebuilt each step

    def step(self) -> None:
        for opt in self.parts.values():
            opt.step()

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.parts):
            raise OptimizerStateError(f"saved optimiser state has parts {sorted(state)}, this run's optimisers are "
                                      f"{sorted(self.parts)} (train.sparse or train.table_optimizer changed)")
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])

    def wrap(self, fn: Callable[[torch.optim.Optimizer], torch.optim.Optimizer]) -> "Optimizers":
        """Each part through fn (hvd.DistributedOptimizer), which builds a new optimiser over
        the same parameters: the state a resumed run restored (moments, accumulators, steps)
        is carried over to it, or the resumed run would start them from zero."""
        wrapped = {}
        for name, opt in self.parts.items():
            wrapped[name] = fn(opt)
            wrapped[name].load_state_dict(opt.state_dict())
        self.parts = wrapped
        return self


def make_optimizer(model: Ranker, lr: float, table_optimizer: str = "rowwise_adagrad",
                   table_lr: Optional[float] = None, weight_decay: float = 0.0) -> Optimizers:
    """Adam over the dense parameters (AdamW's decoupled weight decay when weight_decay > 0;
    models with parameter groups of their own, SimTier+MAKE, set per-group rates); the sparse
    item tables, if any, get `table_optimizer` at `table_lr` (None: see table_rate), without
    weight decay: it would touch every row at every step."""
    tables = [p for t in item_tables(model) if t.sparse for p in t.parameters()]
    ids = {id(p) for p in tables}
    dense = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in model.param_groups(lr)]
    dense = [g for g in dense if g["params"]]
    parts: dict[str, torch.optim.Optimizer] = {}
    if dense:  # a model of sparse item tables only has none
        parts["dense"] = (torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay) if weight_decay
                          else torch.optim.Adam(dense, lr=lr))
    if tables:
        if table_optimizer not in TABLE_OPTIMIZERS:
            raise ValueError(f"unknown table optimiser {table_optimizer!r} (choose from {', '.join(TABLE_OPTIMIZERS)})")
        rate = table_rate(table_optimizer, table_lr, lr)
        parts["tables"] = RowwiseAdagrad(tables, lr=rate) if table_optimizer == "rowwise_adagrad" else \
            torch.optim.SparseAdam(tables, lr=rate)
    return Optimizers(parts)


def gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients a rank contributes to one exchange: a dense gradient whole, a
    sparse one as its row indices (int64) and values."""
    total = 0
    for p in model.parameters():
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            total += g._nnz() * g.sparse_dim() * 8 + g._values().numel() * g.element_size()
        else:
            total += g.numel() * g.element_size()
    return total
