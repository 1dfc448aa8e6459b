"""Bias terms and train statistics (psrq.models.priors): the floors' definitions, leave-one-out
in training, and the statistics file every rank reads."""
from __future__ import annotations

import numpy as np
import torch

from psrq.evaluation import floors
from psrq.models.priors import PRIOR, Priors, WithPriors, train_statistics, user_rows
from psrq.models.registry import ModelArgs, build_model
from psrq.training import statistics

V, U = 20, 16


def _train_rows():
    rng = np.random.default_rng(0)
    n = 400
    return {"item_idx": rng.integers(1, V, n), "user_id": rng.integers(0, 1000, n) * 7919,
            "label": (rng.random(n) < 0.3).astype(np.int64)}


def test_the_untrained_priors_score_the_item_rate_floor_from_train_rows_only():
    rows = _train_rows()
    stats = train_statistics([rows], V, U)
    p = Priors(V, U).set_statistics(stats).eval()
    with torch.no_grad():
        p.weight.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # the item rate only
    assert PRIOR == floors.PRIOR
    g = rows["label"].mean()
    items = np.arange(1, V)
    batch = {"item_idx": torch.from_numpy(items), "user_id": torch.zeros(len(items), dtype=torch.long)}
    got = torch.sigmoid(p(batch)).detach().numpy()
    pos = np.bincount(rows["item_idx"], weights=rows["label"], minlength=V)[items]
    n = np.bincount(rows["item_idx"], minlength=V)[items]
    np.testing.assert_allclose(got, (pos + PRIOR * g) / (n + PRIOR), rtol=1e-5)
    # the users' statistics are per hashed row
    rows_u = user_rows(rows["user_id"], U)
    assert rows_u.min() >= 1 and rows_u.max() < U
    np.testing.assert_allclose(stats["user_n"], np.bincount(rows_u, minlength=U))


def test_in_training_a_rows_own_label_is_left_out_of_its_statistics():
    # item 3: one train event (this row, label 1); item 4: no event
    stats = train_statistics([{"item_idx": np.array([3, 5, 5]), "user_id": np.array([1, 2, 2]), "label": np.array([1, 0, 0])}], V, U)
    p = Priors(V, U).set_statistics(stats)
    with torch.no_grad():
        p.weight.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    batch = {"item_idx": torch.tensor([3, 4]), "user_id": torch.tensor([1, 1]), "label": torch.tensor([1, 1])}
    p.train()
    trained = p(batch).detach()
    p.eval()
    scored = p(batch).detach()
    # in training the row knows nothing of itself: item 3 looks like unseen item 4
    assert torch.allclose(trained[0], trained[1]) and trained[0] == p.bias
    # scoring an unseen row, the train event counts
    assert scored[0] > scored[1]


def test_every_model_takes_the_priors_and_keeps_its_own_inputs_and_groups():
    from psrq.samples.content import ContentFeatures

    m = build_model(ModelArgs("din", V, 8, 3, 5, 8, priors=True, user_buckets=U, sparse=True))
    assert isinstance(m, WithPriors) and m.inputs[-1] == "user_id" and "item_idx" in m.inputs
    tables = [n for n, mod in m.named_modules() if type(mod).__name__ == "ItemTable"]
    assert {"base.item", "priors.item_bias", "priors.user_bias"} <= set(tables)
    assert all(mod.sparse for n, mod in m.named_modules() if type(mod).__name__ == "ItemTable")
    content = ContentFeatures(np.arange(-1, V - 1), {"text": np.ones((V, 4), np.float32)}, {})
    make = build_model(ModelArgs("simtier_make", V, 8, 3, 5, 8, priors=True, user_buckets=U), content)
    groups = make.param_groups(1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(make.parameters()))


def test_the_statistics_file_round_trips_and_fills_a_model(tmp_path):
    rows = _train_rows()
    stats = train_statistics([rows], V, U)
    path = statistics.write(str(tmp_path), stats)
    back = statistics.read(path)
    for k in stats:
        np.testing.assert_array_equal(back[k], stats[k])
    m = statistics.apply(build_model(ModelArgs("din", V, 8, 3, 5, 8, priors=True, user_buckets=U)), path)
    np.testing.assert_array_equal(m.priors.item_n.numpy(), stats["item_n"])
    assert abs(float(m.priors.global_rate) - rows["label"].mean()) < 1e-6
