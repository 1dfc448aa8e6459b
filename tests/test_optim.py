"""Sparse item tables and their optimisers (psrq.training.optim)."""
import pytest
import torch

from psrq.models.layers import ItemTable, item_tables
from psrq.models.registry import ModelArgs, build_model
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
    sparse = build_model(ModelArgs("din", V, 16, 3, 5, D, sparse=True))
    dense = build_model(ModelArgs("din", V, 16, 3, 5, D))
    assert [t.sparse for t in item_tables(sparse)] == [True] and [t.sparse for t in item_tables(dense)] == [False]
    opt = make_optimizer(sparse, 1e-3, table_optimizer, 0.05)
    tables = {id(p) for t in item_tables(sparse) for p in t.parameters()}
    in_dense = {id(p) for g in opt.parts["dense"].param_groups for p in g["params"]}
    in_tables = {id(p) for g in opt.parts["tables"].param_groups for p in g["params"]}
    assert in_tables == tables and not (in_dense & tables)
    assert in_dense | in_tables == {id(p) for p in sparse.parameters()}
    assert opt.parts["tables"].param_groups[0]["lr"] == 0.05
    assert list(make_optimizer(dense, 1e-3).parts) == ["dense"]


def test_a_model_of_sparse_tables_only_has_the_table_optimiser_alone():
    """No dense parameters (tests/toy_ranker.py: two item tables): no empty Adam, and a step
    moves the batch's rows."""
    from psrq.models.base import ModelSpec
    from psrq.models.layers import set_sparse

    import toy_ranker

    m = set_sparse(toy_ranker.ItemDot(ModelSpec("item_dot", V, 16, 3, 5, D)), True)
    opt = make_optimizer(m, 1e-2)
    assert list(opt.parts) == ["tables"]
    batch = {"item_idx": torch.tensor([3, 4]), "hist_item_idx": torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0]]),
             "hist_len": torch.tensor([2, 1])}
    before = m.item.weight.detach().clone()
    m.logits(batch).sum().backward()
    opt.step()
    moved = (m.item.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert moved == [3, 4, 5, 6, 7]


def test_optimiser_state_round_trips_and_a_different_split_is_refused():
    m = build_model(ModelArgs("din", V, 16, 3, 5, D, sparse=True))
    opt = make_optimizer(m, 1e-3)
    batch = {"item_idx": torch.tensor([1, 2]), "hist_item_idx": torch.tensor([[3, 4, 0, 0, 0], [5, 0, 0, 0, 0]]),
             "hist_len": torch.tensor([2, 1])}
    m.logits(batch).sum().backward()
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
            m = build_model(ModelArgs("din", v, 16, 3, 5, D, sparse=sparse))
            batch = {"item_idx": torch.tensor([1, 2]), "hist_item_idx": torch.tensor([[3, 4, 0, 0, 0], [5, 0, 0, 0, 0]]),
                     "hist_len": torch.tensor([2, 1])}
            m.logits(batch).sum().backward()
            sizes[v, sparse] = gradient_bytes(m)
    assert sizes[1_000, True] == sizes[100_000, True]
    assert sizes[100_000, False] - sizes[1_000, False] == 99_000 * D * 4


def test_max_vocab_keeps_the_frequent_rows_and_folds_the_tail_into_buckets():
    from psrq.models.layers import ItemTable

    table = ItemTable(10_000_000, 4, keep=1002, buckets=64)
    assert table.weight.shape == (1066, 4)  # bounded: not 10M rows
    idx = torch.tensor([0, 1, 2, 1001, 1002, 1003, 9_999_999])
    rows = table.rows(idx)
    assert rows[:4].tolist() == [0, 1, 2, 1001]  # padding, OOV and the kept items: their own rows
    assert ((rows[4:] >= 1002) & (rows[4:] < 1066)).all()
    spread = table.rows(torch.arange(1002, 1002 + 6400))
    assert len(torch.unique(spread)) == 64  # the tail spreads over every bucket
    assert ItemTable(500, 4, keep=1002, buckets=64).weight.shape == (500, 4)  # nothing to fold


def test_max_vocab_models_tell_tail_items_apart_by_their_codes():
    """Two tail items in one bucket share an ID row; MCCA still scores them apart through
    their semantic codes, DIN cannot."""
    from psrq.models.layers import ItemTable

    table = ItemTable(100_000, 4, keep=12, buckets=8)
    rows = table.rows(torch.arange(12, 2000))
    a, b = [int(i) + 12 for i in torch.nonzero(rows == rows[0]).flatten()[:2]]
    scores = {}
    for name in ("din", "mcca"):
        torch.manual_seed(0)
        m = build_model(ModelArgs(name, 100_000, 16, 3, 5, 8, max_vocab=10, hash_buckets=8)).eval()
        assert m.item.weight.shape[0] == 20
        g = torch.Generator().manual_seed(1)
        base = {"item_idx": torch.tensor([a, b]), "hist_item_idx": torch.tensor([[3, 4, 0, 0, 0]] * 2),
                "hist_len": torch.tensor([2, 2])}
        for s in ("text", "audio", "joint"):
            base[f"target_{s}_codes"] = torch.randint(1, 17, (2, 3), generator=g)  # the two items' own codes
            base[f"hist_{s}_codes"] = torch.randint(1, 17, (1, 15), generator=g).repeat(2, 1)
        with torch.no_grad():
            scores[name] = m.logits(base)
    assert torch.equal(scores["din"][0], scores["din"][1])
    assert not torch.isclose(scores["mcca"][0], scores["mcca"][1])
