"""Epochs, validation, early stopping and the best checkpoint (no Spark: the loop on
in-memory batches, validation scores scripted so the expected best step is known)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from psrq.models.registry import ModelArgs, build_model
from psrq.training.early_stop import EarlyStopping
from psrq.training.checkpoints import BEST, load_checkpoint, resume
from psrq.training.loop import LoopHooks, LoopOptions, train_loop
from psrq.training.optim import make_optimizer

V, N, B = 50, 5, 16


def _batches(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [{"item_idx": rng.integers(1, V, B).astype(np.int32), "hist_item_idx": rng.integers(0, V, (B, N)).astype(np.int32),
             "hist_len": np.full(B, 3, np.int32), "label": rng.integers(0, 2, B).astype(np.int32)} for _ in range(n)]


def _model():
    torch.manual_seed(0)
    m = build_model(ModelArgs("din", V, 8, 3, N, 8, sparse=True))
    return m, make_optimizer(m, 1e-2)


class Scripted:
    """A validate callback returning the scripted AUCs in turn, remembering the weights it saw."""

    def __init__(self, aucs):
        self.aucs, self.seen = list(aucs), []

    def __call__(self, model):
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"rows": 10, "auc": self.aucs[len(self.seen) - 1], "cold_auc": None, "logloss": 0.6}


def test_the_record_keeps_the_best_and_stops_after_patience():
    s = EarlyStopping(patience=2)
    assert s.update(2, 0, 0.7, {"auc": 0.60}) and s.best_step == 2
    assert s.update(4, 0, 0.6, {"auc": 0.70}) and s.best_step == 4
    assert not s.update(6, 1, 0.5, {"auc": 0.65}) and not s.stopped
    assert not s.update(8, 1, 0.5, {"auc": 0.70}) and s.stopped  # equal is not better
    assert s.best_step == 4 and s.best_auc == 0.70 and [p["step"] for p in s.curve] == [2, 4, 6, 8]
    assert EarlyStopping.restored(s.state(), 2) == s
    never = EarlyStopping(patience=0)
    for step, auc in enumerate([0.9, 0.1, 0.1, 0.1]):
        never.update(step, 0, None, {"auc": auc})
    assert not never.stopped and never.best_step == 0


def test_on_logloss_the_lowest_loss_is_the_best():
    """train.select_on=logloss: a proper score picks the weights (lower is better), whatever
    the AUC does; a restored record keeps the run's score."""
    s = EarlyStopping(patience=2, metric="logloss")
    assert s.update(2, 0, 0.7, {"auc": 0.60, "logloss": 0.69})
    assert not s.update(4, 0, 0.6, {"auc": 0.75, "logloss": 0.80})  # a better ranking, worse probabilities
    assert s.update(6, 1, 0.5, {"auc": 0.70, "logloss": 0.55}) and s.best_step == 6
    assert not s.update(8, 1, 0.5, {"auc": 0.71, "logloss": None})  # a missing score never wins
    assert not s.update(10, 1, 0.5, {"auc": 0.72, "logloss": 0.55}) and s.stopped  # equal is not better
    assert s.best_score == 0.55 and s.best_auc == 0.70
    assert EarlyStopping.restored(s.state(), 2, "logloss") == s
    assert EarlyStopping.restored(None, 3, "logloss").metric == "logloss"


def test_early_stopping_picks_the_best_validation_step_and_evaluation_reads_its_weights(tmp_path):
    model, opt = _model()
    val = Scripted([0.60, 0.70, 0.65, 0.64, 0.99])  # best at the 2nd validation, stop at the 4th
    ckpt = str(tmp_path)
    res = train_loop(model, lambda: _batches(), opt, torch.device("cpu"),
                     LoopOptions(checkpoint_dir=ckpt, checkpoint_every=0, meta={"run": "x"}, progress=False, epoch_steps=6, epochs=10, eval_every=2),
                     LoopHooks(validate=val, stopping=EarlyStopping(patience=2)))
    assert res.steps == 8 and res.stopping.stopped  # 4 validations x 2 steps, not 10 epochs
    assert res.stopping.best_step == 4 and [p["step"] for p in res.stopping.curve] == [2, 4, 6, 8]
    assert all(p["train_loss"] > 0 for p in res.stopping.curve)
    last, best = load_checkpoint(ckpt), load_checkpoint(ckpt, best=True)
    assert last["step"] == 8 and best["step"] == 4 and best["valid"]["auc"] == 0.70
    for name, tensor in val.seen[1].items():  # the weights the 2nd validation scored
        assert torch.equal(best["model"][name], tensor), name
    assert not torch.equal(last["model"]["item.weight"], best["model"]["item.weight"])
    assert sorted(p.name for p in tmp_path.glob("best-*.pt")) == [BEST.format(step=4)]  # superseded bests removed


def test_a_resumed_run_continues_the_same_curve_and_a_stopped_run_takes_no_step(tmp_path):
    aucs = [0.60, 0.70, 0.65, 0.64]
    whole_model, opt = _model()
    whole = train_loop(whole_model, lambda: _batches(), opt, torch.device("cpu"),
                       LoopOptions(checkpoint_dir=str(tmp_path / "a"), checkpoint_every=2, meta={}, progress=False, epoch_steps=6, epochs=10, eval_every=2),
                       LoopHooks(validate=Scripted(aucs), stopping=EarlyStopping(patience=2)))
    # killed after 3 validations (max_steps), then resumed by a fresh process
    ckpt = str(tmp_path / "b")
    m, opt = _model()
    train_loop(m, lambda: _batches(), opt, torch.device("cpu"),
               LoopOptions(checkpoint_dir=ckpt, checkpoint_every=2, meta={}, max_steps=6, progress=False, epoch_steps=6, epochs=10, eval_every=2),
               LoopHooks(validate=Scripted(aucs), stopping=EarlyStopping(patience=2)))
    m, opt = _model()
    start, trace = resume(ckpt, m, opt, {})
    assert start == 6 and len(trace["curve"]) == 3
    val = Scripted(aucs[3:])
    res = train_loop(m, lambda: _batches(), opt, torch.device("cpu"),
                     LoopOptions(checkpoint_dir=ckpt, checkpoint_every=2, meta={}, start_step=start, progress=False, epoch_steps=6, epochs=10, eval_every=2),
                     LoopHooks(validate=val, stopping=EarlyStopping.restored(trace, 2)))
    assert res.steps == 2 and res.stopping.curve == whole.stopping.curve
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(m.state_dict()[name], tensor), name
    assert load_checkpoint(ckpt, best=True)["step"] == 4
    # the stopped run resumed again (killed before its result was written): nothing to do
    m, opt = _model()
    start, trace = resume(ckpt, m, opt, {})
    again = train_loop(m, lambda: _batches(), opt, torch.device("cpu"),
                       LoopOptions(checkpoint_dir=ckpt, checkpoint_every=2, meta={}, start_step=start, progress=False, epoch_steps=6, epochs=10, eval_every=2),
                       LoopHooks(validate=Scripted([]), stopping=EarlyStopping.restored(trace, 2)))
    assert again.steps == 0 and load_checkpoint(ckpt)["step"] == 8  # and its checkpoint left as it was


def test_epochs_validate_at_each_end_and_ranks_that_do_not_decide_follow_the_decision(tmp_path):
    model, opt = _model()
    val = Scripted([0.5, 0.6, 0.7])
    res = train_loop(model, lambda: _batches(), opt, torch.device("cpu"),
                     LoopOptions(checkpoint_dir=None, progress=False, epoch_steps=6, epochs=3),
                     LoopHooks(validate=val, stopping=EarlyStopping(patience=1)))
    assert [p["step"] for p in res.stopping.curve] == [6, 12, 18] and [p["epoch"] for p in res.stopping.curve] == [0, 1, 2]
    # a rank without validation stops when the deciding rank says so (agree: the max over ranks)
    decisions = iter([0, 1])
    model, opt = _model()
    follower = train_loop(model, lambda: _batches(), opt, torch.device("cpu"),
                          LoopOptions(checkpoint_dir=None, progress=False, epoch_steps=6, epochs=5, eval_every=3),
                          LoopHooks(agree=lambda flag: max(flag, next(decisions))))
    assert follower.steps == 6
    with pytest.raises(StopIteration):  # asked exactly at the two validation points
        next(decisions)


def test_a_best_file_no_record_names_is_never_read_and_goes_at_the_next_checkpoint(tmp_path):
    """A crash after a new best's weights and before its checkpoint leaves best-<step>.pt that
    the last checkpoint's record does not name: evaluation reads the named one, and the next
    checkpoint removes the stray."""
    from psrq.training.checkpoints import save_best, save_checkpoint

    model, opt = _model()
    save_best(str(tmp_path), model, 4, {}, {"auc": 0.7})
    save_checkpoint(str(tmp_path), model, opt, 6, {}, EarlyStopping(patience=2, best_step=4, best={"auc": 0.7}).state())
    with torch.no_grad():
        model.item.weight.add_(1.0)
    save_best(str(tmp_path), model, 8, {}, {"auc": 0.9})  # ... and the process dies here
    assert load_checkpoint(str(tmp_path), best=True)["step"] == 4
    save_checkpoint(str(tmp_path), model, opt, 8, {}, EarlyStopping(patience=2, best_step=4, best={"auc": 0.7}).state())
    assert sorted(p.name for p in tmp_path.glob("best-*.pt")) == ["best-4.pt"]
