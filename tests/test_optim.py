"""Sparse item tables and their optimisers (psrq.training.optim)."""
import pytest
import torch

from psrq.models.layers import ItemTable, item_tables
from psrq.models.ranker import build_model
from psrq.training.optim import OptimizerStateError, RowwiseAdagrad, gradient_bytes, make_optimizer

V, D = 1000, 8


def _grad(table: ItemTable, rows: torch.Tensor) -> None:
    table.zero_grad()
    (table(rows) ** 2).sum().backward()


def test_rowwise_adagrad_takes_the_same_step_from_a_sparse_or_a_dense_gradient():
    torch.manual_seed(0)
    a, b = ItemTable(V, D), ItemTable(V, D)
    b.load_state_dict(a.state_dict())
    b.sparse = True
    oa, ob = RowwiseAdagrad(a.parameters(), lr=0.1), RowwiseAdagrad(b.parameters(), lr=0.1)
    for rows in (torch.tensor([3, 5, 5, 999]), torch.tensor([5, 7])):  # a repeated row: its gradients add up
        _grad(a, rows)
        _grad(b, rows)
        assert b.weight.grad.is_sparse and not a.weight.grad.is_sparse
        oa.step()
        ob.step()
        assert torch.allclose(a.weight, b.weight, atol=1e-6)
    # the update by hand for row 7 (one step, accumulator = mean of its squared gradient)
    torch.manual_seed(0)
    w7 = ItemTable(V, D).weight.detach()[7]
    g = 2 * w7
    assert torch.allclose(b.weight[7], w7 - 0.1 * g / ((g ** 2).mean().sqrt() + 1e-8), atol=1e-6)


def test_a_sparse_step_touches_only_the_batch_rows_and_state_is_one_float_per_row():
    table = ItemTable(V, D)
    table.sparse = True
    before = table.weight.detach().clone()
    opt = RowwiseAdagrad(table.parameters(), lr=0.1)
    _grad(table, torch.tensor([1, 2, 3]))
    opt.step()
    changed = (table.weight != before).any(1).nonzero().flatten().tolist()
    assert changed == [1, 2, 3]
    assert opt.state[table.weight]["sum"].shape == (V,)
    # padding row 0 takes no gradient and never moves
    _grad(table, torch.tensor([0, 4]))
    opt.step()
    assert torch.equal(table.weight[0], before[0])


@pytest.mark.parametrize("table_optimizer", ["rowwise_adagrad", "adam"])
def test_models_split_their_parameters_between_dense_adam_and_the_table_optimiser(table_optimizer):
    sparse = build_model("din", V, 16, 3, 5, D, sparse=True)
    dense = build_model("din", V, 16, 3, 5, D)
    assert [t.sparse for t in item_tables(sparse)] == [True] and [t.sparse for t in item_tables(dense)] == [False]
    opt = make_optimizer(sparse, 1e-3, table_optimizer, 0.05)
    tables = {id(p) for t in item_tables(sparse) for p in t.parameters()}
    in_dense = {id(p) for g in opt.parts["dense"].param_groups for p in g["params"]}
    in_tables = {id(p) for g in opt.parts["tables"].param_groups for p in g["params"]}
    assert in_tables == tables and not (in_dense & tables)
    assert in_dense | in_tables == {id(p) for p in sparse.parameters()}
    assert opt.parts["tables"].param_groups[0]["lr"] == 0.05
    assert list(make_optimizer(dense, 1e-3).parts) == ["dense"]


def test_optimiser_state_round_trips_and_a_different_split_is_refused():
    m = build_model("din", V, 16, 3, 5, D, sparse=True)
    opt = make_optimizer(m, 1e-3)
    batch = {"item_idx": torch.tensor([1, 2]), "hist_item_idx": torch.tensor([[3, 4, 0, 0, 0], [5, 0, 0, 0, 0]]),
             "hist_len": torch.tensor([2, 1])}
    m(batch).sum().backward()
    opt.step()
    again = make_optimizer(m, 1e-3)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.parts["tables"].state[m.item.weight]["sum"], opt.parts["tables"].state[m.item.weight]["sum"])
    with pytest.raises(OptimizerStateError, match="parts \\['dense'\\].*train.sparse"):
        again.load_state_dict({"dense": opt.state_dict()["dense"]})


def test_gradient_bytes_follow_the_batch_for_sparse_tables_and_the_vocabulary_for_dense_ones():
    sizes = {}
    for v in (1_000, 100_000):
        for sparse in (True, False):
            m = build_model("din", v, 16, 3, 5, D, sparse=sparse)
            batch = {"item_idx": torch.tensor([1, 2]), "hist_item_idx": torch.tensor([[3, 4, 0, 0, 0], [5, 0, 0, 0, 0]]),
                     "hist_len": torch.tensor([2, 1])}
            m(batch).sum().backward()
            sizes[v, sparse] = gradient_bytes(m)
    assert sizes[1_000, True] == sizes[100_000, True]
    assert sizes[100_000, False] - sizes[1_000, False] == 99_000 * D * 4
