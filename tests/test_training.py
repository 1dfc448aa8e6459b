"""Readers, the training loop (checkpoint/resume, NaN stop), and a model that learns."""
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from psrq.catalog.assign import assign
from psrq.catalog.fit import fit_stage
from psrq.data.generate import generate
from psrq.models.registry import ModelArgs, build_model
from psrq.samples.build import build_samples
from psrq.samples.layout import SamplesManifest
from psrq.errors import TrainingError
from psrq.training.checkpoints import load_checkpoint, resume
from psrq.training.loop import LoopOptions, train_loop
from psrq.training.optim import make_optimizer
from psrq.training.readers import ShardError, make_reader, prefetched
from psrq.training.run import identity_and_folder
from psrq.training.stage import train_stage

from conftest import run_python, small_config
from psrq.job import JobContext


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """7 row groups of uneven sizes, with a list column."""
    d = tmp_path_factory.mktemp("rg")
    start = 0
    for f, sizes in enumerate([[100, 37], [64, 64, 10], [5, 250]]):
        with pq.ParquetWriter(d / f"part-{f}.parquet", pa.schema([("id", pa.int64()), ("label", pa.int32()),
                                                                  ("hist", pa.list_(pa.int32()))])) as w:
            for n in sizes:
                ids = np.arange(start, start + n)
                w.write_table(pa.table({"id": ids, "label": (ids % 2).astype(np.int32),
                                        "hist": pa.array([[int(i), 1, 2] for i in ids], type=pa.list_(pa.int32()))}))
                start += n
    return str(d), start


@pytest.mark.parametrize("kind", ["arrow", "petastorm"])
def test_readers_deliver_every_row_once_across_two_shards(parquet_dir, kind):
    path, total = parquet_dir
    seen = []
    for rank in (0, 1):
        sizes = []
        for b in make_reader(kind, path, ["id", "label", "hist"], 64, rank, 2):
            seen += b["id"].tolist()
            sizes.append(len(b["id"]))
            assert b["hist"].shape == (len(b["id"]), 3) and (b["hist"][:, 0] == b["id"]).all()
        assert all(s == 64 for s in sizes[:-1]) and 0 < sizes[-1] <= 64  # full batches, one smaller last
    assert sorted(seen) == list(range(total))


def test_petastorm_and_arrow_readers_give_the_same_batches_in_the_same_order(parquet_dir):
    """Petastorm schedules the row groups, the batches come from the same columnar
    conversion: equal batches, deterministically ordered (a resumed run relies on it)."""
    path, _ = parquet_dir
    for rank in (0, 1):
        arrow = list(make_reader("arrow", path, ["id", "label", "hist"], 50, rank, 2))
        for _ in range(2):
            peta = list(make_reader("petastorm", path, ["id", "label", "hist"], 50, rank, 2))
            assert len(peta) == len(arrow)
            for a, b in zip(arrow, peta):
                assert set(a) == set(b) and all(np.array_equal(a[c], b[c]) and a[c].dtype == b[c].dtype for c in a)


def _prefetch_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "psrq-prefetch"]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetched_batches_are_the_readers_in_its_order(parquet_dir, depth):
    path, total = parquet_dir
    direct = list(make_reader("arrow", path, ["id", "hist"], 50))
    ahead = list(prefetched(make_reader("arrow", path, ["id", "hist"], 50), depth))
    assert len(ahead) == len(direct) == -(-total // 50)
    assert all(a.keys() == b.keys() and all(np.array_equal(a[c], b[c]) for c in a) for a, b in zip(ahead, direct))
    assert not _prefetch_threads()


def test_a_readers_error_is_raised_in_the_consumer_and_a_closed_prefetch_stops_reading():
    def failing():
        yield from ({"i": np.array([i])} for i in range(3))
        raise ShardError("row group 4 of part-0.parquet is unreadable")

    got = []
    with pytest.raises(ShardError, match="row group 4 of part-0.parquet"):
        for b in prefetched(failing(), 2):
            got.append(int(b["i"][0]))
    assert got == [0, 1, 2] and not _prefetch_threads()

    state = {"read": 0, "closed": False}

    def endless():
        try:
            while True:
                state["read"] += 1
                yield {"i": np.array([state["read"]])}
        finally:
            state["closed"] = True  # the reader's own cleanup ran (Petastorm's pool is stopped so)

    class Unstartable:
        def __iter__(self):
            raise ShardError("no Parquet files under s3://music/samples/train")

    with pytest.raises(ShardError, match="no Parquet files under s3://music"):  # at once, not a hang
        next(prefetched(Unstartable(), 2))
    assert not _prefetch_threads()

    source = prefetched(endless(), 2)
    assert [int(next(source)["i"][0]) for _ in range(3)] == [1, 2, 3]
    source.close()  # a run that stopped early
    assert state["closed"] and state["read"] <= 3 + 2 + 1 and not _prefetch_threads()


def test_prefetching_trains_the_same_weights(tmp_path):
    """Reading ahead changes when a batch is read, not which: the same steps, losses and
    weights as reading in the loop's thread (so it is no part of a run's identity)."""
    from sample_rows import K, L, N, V, batch, write_split

    import threading

    write_split(tmp_path / "train", batch(3000, 0), row_group_size=300)
    weights, losses, readers = [], [], []

    def read(model):  # the reader's batches, noting the thread that read them
        for b in make_reader("arrow", str(tmp_path / "train"), model.inputs + ["label"], 256):
            readers[-1].add(threading.current_thread().name)
            yield b
    for depth in (0, 2):
        torch.manual_seed(0)
        model = build_model(ModelArgs("mcca", V, K, L, N, 16, sparse=True))
        opt = make_optimizer(model, 1e-2)
        readers.append(set())
        res = train_loop(model, lambda: read(model), opt, torch.device("cpu"),
                         LoopOptions(max_steps=15, epochs=2, progress=False, prefetch=depth))
        weights.append(model.state_dict())
        losses.append(res.losses)
    assert readers == [{threading.main_thread().name}, {"psrq-prefetch"}]
    assert len(losses[0]) == 15 and losses[0] == losses[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not _prefetch_threads()


def test_the_loop_tells_waiting_for_batches_from_steps(tmp_path):
    """The time spent waiting for the reader is counted apart from the steps (what a GPU
    benchmark needs to see whether reading keeps up)."""
    from sample_rows import K, L, N, V, batch, write_split

    import time as _time

    write_split(tmp_path / "train", batch(1000, 0), row_group_size=100)

    def slow(model):  # 30 ms per batch, far longer than a step of this model
        for b in make_reader("arrow", str(tmp_path / "train"), model.inputs + ["label"], 100):
            _time.sleep(0.03)
            yield b
    torch.manual_seed(0)
    model = build_model(ModelArgs("din", V, K, L, N, 8, sparse=True))
    res = train_loop(model, lambda: slow(model), make_optimizer(model, 1e-2), torch.device("cpu"),
                     LoopOptions(max_steps=10, progress=False))
    t = res.timing()
    assert res.steps == 10 and t["wait_seconds"] >= 10 * 0.03 * 0.9
    assert t["step_seconds_total"] == pytest.approx(sum(res.step_seconds), abs=1e-3)
    assert t["wait_seconds"] + t["step_seconds_total"] <= res.seconds


@pytest.mark.real  # starts a process
def test_a_fresh_process_reads_with_petastorm_without_its_pyarrow_warnings(parquet_dir):
    """A rank is a fresh process: importing the readers silences Petastorm's FutureWarnings
    (pyarrow's legacy API, a dozen per reader) there, and only those."""
    path, total = parquet_dir
    code = ("import sys, warnings; from psrq.training.readers import make_reader; "
            f"n = sum(len(b['id']) for b in make_reader('petastorm', {path!r}, ['id'], 64)); "
            "warnings.warn('ours', FutureWarning); print(n)")
    out = run_python(["-c", code], check=True)
    assert out.stdout.strip() == str(total)
    assert out.stderr.count("FutureWarning") == 1 and "ours" in out.stderr and "petastorm" not in out.stderr


def test_too_many_shards_is_an_error_not_a_hang(parquet_dir):
    path, _ = parquet_dir
    with pytest.raises(ShardError, match="7 row group\\(s\\) for 8 processes"):
        make_reader("arrow", path, ["id"], 10, 0, 8)
    with pytest.raises(ShardError, match="no Parquet files"):
        make_reader("arrow", path + "/nothing", ["id"], 10)


@pytest.fixture(scope="module")
def samples_cfg(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = small_config(tmp, "synthetic.n_items=1500", "synthetic.n_users=1200", "synthetic.mean_events_per_user=40",
                       "codebooks.k=32", "codebooks.sample_size=1500", f"samples.path={tmp}/samples",
                       f"train.checkpoint_dir={tmp}/ckpt", "train.reader=arrow", "train.lr=0.002",
                       "train.backend=single", "samples.qarm.codes=true")
    generate(JobContext.of(spark, cfg))
    fit_stage(JobContext.of(spark, cfg))
    assign(JobContext.of(spark, cfg))
    build_samples(JobContext.of(spark, cfg))
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One checkpoint folder for the module's trainings by train_stage: a training whose
    identity was trained before in this module is "already done" and reports that run's
    result (the default DIN serves three tests, the default MCCA two)."""
    return str(tmp_path_factory.mktemp("runs"))


def _train(cfg, ckpt, steps, every, model_name="mcca"):
    man = SamplesManifest.read(cfg.samples.path)
    torch.manual_seed(0)
    model = build_model(ModelArgs(model_name, man.vocab_size, man.k, man.layers, man.history_len, 16, sparse=True))
    opt = make_optimizer(model, 1e-3, "rowwise_adagrad", 0.05)
    cols = model.inputs + ["label"]
    reader = lambda: make_reader("arrow", man.split_path("train"), cols, 256)  # noqa: E731
    meta = {"model_name": model_name, "vocab_size": man.vocab_size}
    start, _ = resume(ckpt, model, opt, meta)
    res = train_loop(model, reader, opt, torch.device("cpu"),
                     LoopOptions(checkpoint_dir=ckpt, checkpoint_every=every, meta=meta, max_steps=steps, start_step=start, progress=False))
    return model, res


def test_killed_and_resumed_run_ends_with_the_same_weights(samples_cfg, tmp_path):
    whole, _ = _train(samples_cfg, str(tmp_path / "a"), 30, 10)
    # the "killed" run stops after 20 steps (its last checkpoint), then resumes to 30
    _train(samples_cfg, str(tmp_path / "b"), 20, 10)
    assert load_checkpoint(str(tmp_path / "b"))["step"] == 20
    resumed, res = _train(samples_cfg, str(tmp_path / "b"), 30, 10)
    assert res.steps == 10 and len(res.losses) == 10  # the 10 steps after the resume
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_weights_and_optimiser_state_are_separate_files_and_a_missing_state_is_refused(samples_cfg, tmp_path):
    folder = str(tmp_path / "c")
    _train(samples_cfg, folder, 12, 5)
    weights = torch.load(Path(folder, "checkpoint.pt"), weights_only=True)
    assert set(weights) == {"model", "step", "meta", "trace"} and weights["step"] == 12
    # only the committed step's optimiser state is kept, and it holds the table accumulators
    assert sorted(p.name for p in Path(folder).glob("optimizer-*.pt")) == ["optimizer-12.pt"]
    optim = torch.load(Path(folder, "optimizer-12.pt"), weights_only=True)
    assert set(optim["optim"]) == {"dense", "tables"} and optim["step"] == 12
    Path(folder, "optimizer-12.pt").unlink()
    with pytest.raises(TrainingError, match="at step 12 but its optimiser state .*optimizer-12.pt is missing.*train.restart"):
        _train(samples_cfg, folder, 20, 5)


def test_sparse_tables_train_as_well_as_dense_ones(samples_cfg, runs):
    """The same model, data and seed: lazy Adam on sparse tables is dense Adam restricted to
    the touched rows (validation AUC within 0.01); the default row-wise Adagrad is no worse."""
    for name in ("din", "mcca"):
        auc = {}
        for label, change in {"dense": {"sparse": False}, "sparse adam": {"table_optimizer": "adam"},
                              "rowwise adagrad": {}}.items():
            auc[label] = train_stage(JobContext.of(None, _with(samples_cfg, model=name, checkpoint_dir=runs, **change))).valid["auc"]
        assert abs(auc["sparse adam"] - auc["dense"]) <= 0.01, (name, auc)
        assert auc["rowwise adagrad"] >= auc["dense"] - 0.01, (name, auc)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(samples_cfg, tmp_path, monkeypatch):
    ckpt = str(tmp_path / "n")
    _train(samples_cfg, ckpt, 10, 5)
    good = load_checkpoint(ckpt)
    real = torch.nn.functional.binary_cross_entropy_with_logits
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] == 4 else 1.0)

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 14.*last good checkpoint: step 10"):
        _train(samples_cfg, ckpt, 30, 5)
    after = load_checkpoint(ckpt)
    assert after["step"] == 10
    assert all(torch.equal(good["model"][k], after["model"][k]) for k in good["model"])


def test_checkpoint_of_another_model_is_refused(samples_cfg, tmp_path):
    ckpt = str(tmp_path / "m")
    _train(samples_cfg, ckpt, 3, 3, "din")
    with pytest.raises(TrainingError, match="written for another run: model_name='din' \\(this run: 'mcca'\\)"):
        _train(samples_cfg, ckpt, 5, 3, "mcca")


def test_samples_of_another_codebook_version_are_refused(samples_cfg):
    cfg = _with(samples_cfg, codebook_version="v0042")
    with pytest.raises(TrainingError, match="built with codebook v0001, the model expects v0042"):
        train_stage(JobContext.of(None, cfg))


def test_mcca_learns_and_codes_help_cold_items(samples_cfg, runs):
    """On planted modality-specific tastes: MCCA beats ID-only DIN and chance."""
    res = {name: train_stage(JobContext.of(None, _with(samples_cfg, model=name, checkpoint_dir=runs))).valid
           for name in ("din", "mcca")}
    assert res["mcca"]["auc"] > 0.65 and res["mcca"]["auc"] > res["din"]["auc"] + 0.03
    assert res["mcca"]["cold_auc"] > res["din"]["cold_auc"] + 0.03


def test_content_baselines_learn_and_reach_cold_items(samples_cfg, runs):
    """VBPR, QARM and SimTier+MAKE read item content by catalogue index: they learn, and on
    cold items (shared OOV ID) they beat ID-only DIN."""
    res = {name: train_stage(JobContext.of(None, _with(samples_cfg, model=name, checkpoint_dir=runs))).valid
           for name in ("din", "vbpr", "qarm", "simtier_make")}
    for name in ("vbpr", "qarm", "simtier_make"):
        assert res[name]["auc"] > 0.65, (name, res[name])
        assert res[name]["cold_auc"] > res["din"]["cold_auc"] + 0.03, (name, res)


@pytest.mark.parametrize("backend,model,epochs", [("horovod", "mcca", 2), ("torch-distributor", "mcca", 2),
                                                 ("horovod", "simtier_make", 1)])
def test_two_process_backends_keep_parameters_in_sync(spark, samples_cfg, tmp_path, backend, model, epochs, capfd,
                                                     monkeypatch):
    """simtier_make: parameter groups and an auxiliary loss under Horovod's optimizer. Two
    epochs: rank 0 validates at each epoch's end while the other rank waits, both pad their
    short shard in every epoch."""
    monkeypatch.delenv("OMP_NUM_THREADS")  # as a driver has it (conftest sets it): the ranks' 1 comes from the backend
    cfg = _with(samples_cfg, backend=backend, num_proc=2, checkpoint_dir=str(tmp_path), batch_size=256, model=model,
                epochs=epochs)
    omp = os.environ.get("OMP_NUM_THREADS")
    res = train_stage(JobContext.of(spark, cfg))
    out = capfd.readouterr()
    # quiet ranks: no torchrun banner, no library warning; the driver's environment as it was
    assert "Setting OMP_NUM_THREADS" not in out.out + out.err and "Warning" not in out.out + out.err, out
    assert os.environ.get("OMP_NUM_THREADS") == omp
    ranks = res.ranks
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["rows"] != ranks[1]["rows"]  # uneven shards
    # the same synchronised steps on both ranks: the shorter shard pads its last ones
    assert ranks[0]["steps"] == ranks[1]["steps"] == res.steps
    epoch_steps = max(-(-r["rows"] // 256) for r in ranks)
    assert res.steps == epochs * epoch_steps
    for r in ranks:
        assert r["padding_steps"] == r["steps"] - epochs * -(-r["rows"] // 256), r
        assert r["gradient_bytes"] > 0
    # every train row read exactly once per epoch across the two shards (uneven shards included)
    assert epochs * sum(r["rows"] for r in ranks) == sum(r["samples"] for r in ranks)
    assert sum(r["rows"] for r in ranks) == SamplesManifest.read(cfg.samples.path).splits["train"]["rows"]
    # rank 0 validated at each epoch's end; the best of them is what evaluation reads
    assert [p["step"] for p in res.curve] == [epoch_steps * (e + 1) for e in range(epochs)]
    assert res.valid["auc"] == max(p["valid_auc"] for p in res.curve) > 0.6
    assert load_checkpoint(res.checkpoint)["step"] == max(r["steps"] for r in ranks)
    assert load_checkpoint(res.checkpoint, best=True)["step"] == res.best_step


@pytest.mark.real  # starts a process
@pytest.mark.slow
def test_three_horovod_ranks_on_uneven_shards_end_in_sync(samples_cfg, tmp_path):
    """3 real Horovod ranks (the job in its own Spark application, local[3]) on a train split
    whose row groups do not divide evenly by 3: the ranks read different numbers of rows, take
    the same number of synchronised steps (the shorter shards pad) and end with the same
    parameters; the same command again is already done."""
    from conftest import run_python

    cmd = [os.path.join("jobs", "train_ranker.py"), "--json", "spark.master=local[3]", "train.backend=horovod",
           "train.num_proc=3", "train.model=mcca", "train.reader=arrow", "train.batch_size=256", "train.lr=0.002",
           f"samples.path={samples_cfg.samples.path}", f"train.checkpoint_dir={tmp_path}", "storage.engine=delta-rs"]
    out = run_python(cmd, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    ranks = res["ranks"]
    assert sorted(r["rank"] for r in ranks) == [0, 1, 2]
    assert len({r["rows"] for r in ranks}) > 1, ranks  # uneven shards
    assert len({r["checksum"] for r in ranks}) == 1, ranks
    assert len({r["steps"] for r in ranks}) == 1 and max(r["padding_steps"] for r in ranks) > 0, ranks
    assert sum(r["rows"] for r in ranks) == SamplesManifest.read(samples_cfg.samples.path).splits["train"]["rows"]
    assert load_checkpoint(res["checkpoint"])["step"] == max(r["steps"] for r in ranks) == res["steps"]
    again = run_python(cmd, timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "already done", again.stderr[-3000:]


def _with(cfg, **train):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def test_an_identical_rerun_is_already_done_and_any_changed_setting_trains(samples_cfg, tmp_path):
    cfg = _with(samples_cfg, model="din", checkpoint_dir=str(tmp_path), max_steps=5)
    first = train_stage(JobContext.of(None, cfg))
    again = train_stage(JobContext.of(None, cfg))
    assert first.status == "trained" and first.steps == first.steps_this_run == 5
    assert again.status == "already done" and again.steps_this_run == 0 and again.steps == 5
    assert again.valid == first.valid and again.checkpoint == first.checkpoint
    assert again.identity == first.identity
    # reading ahead or not trains the same weights (test_prefetching_trains_the_same_weights): the same run
    unprefetched = train_stage(JobContext.of(None, _with(cfg, prefetch=0)))
    assert unprefetched.status == "already done" and unprefetched.identity == first.identity
    # every setting that changes the weights is a new run in its own folder
    for change in ({"lr": 0.5}, {"batch_size": 128}, {"max_steps": 6}, {"seed": 1}, {"dim": 32}, {"reader": "petastorm"},
                   {"sparse": False}, {"table_optimizer": "adam"}, {"table_lr": 0.1}):
        other = train_stage(JobContext.of(None, _with(cfg, **change)))
        assert other.status == "trained" and other.steps_this_run > 0, change
        assert other.identity != first.identity and other.checkpoint != first.checkpoint, change
    assert json.loads(json.dumps(again.as_dict(), allow_nan=False))["identity"] == first.identity


def test_a_checkpoint_of_another_run_is_refused_by_name(samples_cfg, tmp_path):
    base = _with(samples_cfg, model="din", checkpoint_dir=str(tmp_path), max_steps=2)
    done = train_stage(JobContext.of(None, base))
    wider = _with(base, dim=32)
    _, folder = identity_and_folder(wider, SamplesManifest.read(base.samples.path))
    Path(folder).mkdir(parents=True)
    shutil.copy(Path(done.checkpoint, "checkpoint.pt"), folder)  # a foreign checkpoint in its folder
    with pytest.raises(TrainingError, match=r"checkpoint .*checkpoint.pt was written for another run: dim=64 \(this run: 32\).*train.restart=true"):
        train_stage(JobContext.of(None, wider))
    res = train_stage(JobContext.of(None, _with(wider, restart=True)))
    assert res.status == "trained" and load_checkpoint(folder)["meta"]["dim"] == 32
    assert len(list(Path(folder).parent.glob(Path(folder).name + ".moved-*"))) == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_damaged_checkpoints_give_a_clear_error_and_restart_recovers(samples_cfg, tmp_path):
    cfg = _with(samples_cfg, model="din", checkpoint_dir=str(tmp_path), max_steps=4, checkpoint_every=2)
    _, folder = identity_and_folder(cfg, SamplesManifest.read(cfg.samples.path))
    Path(folder).mkdir(parents=True)
    ckpt = Path(folder, "checkpoint.pt")
    # a truncated file (a disk that filled up, a copy cut short)
    torch.save({"model": {"w": torch.zeros(1000)}, "optim": {}, "step": 2, "meta": {}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(TrainingError, match=r"checkpoint .*checkpoint.pt is unreadable \(truncated or corrupt.*train.restart=true"):
        train_stage(JobContext.of(None, cfg))
    # a pickle that would run code: refused, nothing runs, and no advice to unpickle it
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(ckpt, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(TrainingError) as err:
        train_stage(JobContext.of(None, cfg))
    assert "refused, nothing in it was run" in str(err.value) and "weights_only=False" not in str(err.value)
    assert not marker.exists()
    # a stale temporary of a killed writer is cleaned; restart moves the damaged folder aside
    Path(folder, "checkpoint.pt.tmp-999999999").write_bytes(b"partial")
    res = train_stage(JobContext.of(None, _with(cfg, restart=True)))
    assert res.status == "trained" and res.steps == 4
    assert not list(Path(folder).glob("checkpoint.pt.tmp-*"))


def test_too_many_processes_is_refused_before_workers_start(spark, samples_cfg):
    cfg = _with(samples_cfg, backend="horovod", num_proc=64)
    with pytest.raises(ShardError, match="for 64 processes"):
        train_stage(JobContext.of(spark, cfg))


def test_content_models_need_samples_with_content():
    from psrq.training.run import content_file

    with pytest.raises(TrainingError, match="no content features.*samples.content.dim > 0"):
        man = SamplesManifest(path="/data/samples", codebook_version="v0001", k=4, layers=2, spaces=("text",),
                              history_len=5, vocab_size=10, splits={}, source_versions={}, split_from_us={}, content=None)
        content_file("/data/samples", man)


def test_ranks_that_disagree_fail_the_run_and_it_is_never_recorded_done(spark, samples_cfg, tmp_path, monkeypatch):
    """Diverging ranks are simulated (the real 3-rank divergence is issue 13's): the stage
    must fail, write no result, and set the last checkpoint aside so a re-run starts afresh."""
    from psrq.training import distributed
    from psrq.training.checkpoints import save_checkpoint

    cfg = _with(samples_cfg, model="din", backend="horovod", num_proc=2, checkpoint_dir=str(tmp_path), max_steps=3)

    def diverged(spark_, job, num_proc):
        model = build_model(job.model)
        save_checkpoint(job.checkpoint_dir, model, torch.optim.Adam(model.parameters()), 3, job.meta)
        return [{"rank": r, "steps": 3, "samples": 10, "seconds": 1.0, "last_loss": 0.5, "checksum": 1.0 + r, "rows": 10}
                for r in range(2)]

    monkeypatch.setattr(distributed, "run_horovod", diverged)
    with pytest.raises(TrainingError, match="parameters diverged across ranks.*not recorded as finished"):
        train_stage(JobContext.of(spark, cfg))
    _, folder = identity_and_folder(cfg, SamplesManifest.read(cfg.samples.path))
    assert not Path(folder, "result.json").exists() and not Path(folder, "checkpoint.pt").exists()
    assert len(list(Path(folder).glob("checkpoint.diverged-*.pt"))) == 1


def test_max_vocab_trains_a_bounded_table_on_frequency_ordered_samples(samples_cfg, tmp_path):
    man = SamplesManifest.read(samples_cfg.samples.path)
    assert man.raw["vocab_order"] == "train_frequency"
    cfg = _with(samples_cfg, model="mcca", checkpoint_dir=str(tmp_path), max_vocab=200, hash_buckets=50)
    res = train_stage(JobContext.of(None, cfg))
    weights = load_checkpoint(res.checkpoint)["model"]
    assert weights["base.item.weight"].shape[0] == 2 + 200 + 50 < man.vocab_size
    assert weights["priors.item_bias.weight"].shape[0] == 2 + 200 + 50  # the item biases are bounded alike
    assert res.settings["max_vocab"] == 200 and res.valid["auc"] > 0.6
    # samples numbered in another order cannot say which items are the frequent ones
    raw = json.loads(Path(samples_cfg.samples.path, "manifest.json").read_text())
    stale = tmp_path / "stale"
    shutil.copytree(samples_cfg.samples.path, stale)
    (stale / "manifest.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "vocab_order"}))
    with pytest.raises(TrainingError, match="max_vocab keeps the most frequent items.*rebuild them"):
        train_stage(JobContext.of(None, cfg.with_overrides({"samples.path": str(stale)})))


def test_ranks_that_resumed_from_different_steps_are_refused_and_checksums_are_exact_in_chunks():
    from psrq.training.distributed import param_checksum, same_start

    assert same_start([40, 40, 40]) == 40
    with pytest.raises(TrainingError, match=r"resumed from different steps \[0, 40\].*every rank sees"):
        same_start([0, 40])
    m = torch.nn.Linear(300, 7)
    whole = sum(p.detach().double().sum().item() for p in m.parameters())
    assert param_checksum(m, chunk=64) == pytest.approx(whole, rel=1e-12)
