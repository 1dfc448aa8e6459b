"""Tuning on the valid split: it never opens the test split, chooses by mean valid AUC,
and its settings round-trip through conf/ as the dataset's defaults (under the command
line's overrides)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from conftest import load_job

from psrq.config import DEFAULT_CONF_DIR, load_config
from psrq.errors import ConfigError
from psrq.experiments.matrix import cell_config, dataset_config
from psrq.experiments.runner import prepare_data, prepare_method
from psrq.experiments.tuning import tune, write_tuned
from psrq.job import JobContext
from psrq.samples.layout import SamplesManifest
from psrq.storage import fs

SMALL = ["dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12", "synthetic.n_items=400",
         "synthetic.n_users=120", "synthetic.block_size=64", "synthetic.mean_events_per_user=30", "storage.engine=delta-rs",
         "codebooks.k=16", "codebooks.sample_size=400", "samples.history_len=5", "train.backend=single",
         "train.reader=arrow", "train.dim=8", "train.batch_size=256"]


def test_tuning_never_opens_the_test_split_and_its_choice_round_trips_through_conf(spark, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf, ignore=shutil.ignore_patterns("tuned"))
    cfg = load_config("local", "synthetic_small", [*SMALL, f"experiments.root={tmp_path}/exp", "tuning.models=[din]",
                                                   "tuning.seeds=[0,1]", "tuning.epochs=2", "tuning.patience=1", "tuning.extend=0",
                                                   "tuning.space.lr=[0.0001,0.01]", "tuning.space.embedding_dropout=[]",
                                                   "tuning.space.weight_decay=[]",
                                                   "tuning.inherit={din_codes: din}"], conf_dir=conf, tuned=True)
    dcfg = dataset_config(cfg)
    prepare_data(JobContext.of(spark, dcfg))
    c = cell_config(dcfg, {"train.model": "din"}, 0)
    prepare_method(JobContext.of(spark, c))
    man = SamplesManifest.read(c.samples.path)
    # the test split is gone: tuning that opened it would fail
    fs.move(man.split_path("test"), man.split_path("test") + ".hidden")
    asked = []
    real = SamplesManifest.split_path
    monkeypatch.setattr(SamplesManifest, "split_path", lambda self, split: asked.append(split) or real(self, split))
    said = []
    search = tune(JobContext.of(spark, cfg), progress=said.append)
    assert set(asked) == {"train", "valid"}
    res = search.results["din"]
    # 2 dimensions x 2 values, the second dimension's first value repeating a trial of the first
    assert [t["setting"] for t in res["trials"]][:2] == [{"lr": 0.0001, "priors": True}, {"lr": 0.01, "priors": True}]
    assert all(len(t["runs"]) == 2 for t in res["trials"])
    assert res["trials"][2]["runs"][0]["status"] == "already done"  # a repeated setting is not trained twice
    by_lr = {t["setting"]["lr"]: t["valid_auc_mean"] for t in res["trials"][:2]}
    assert res["chosen"]["lr"] == max(by_lr, key=by_lr.get)
    best = max(res["trials"], key=lambda t: t["valid_auc_mean"])
    assert res["valid_auc_mean"] == best["valid_auc_mean"] and res["chosen"] == best["setting"]
    assert all(r["best_step"] <= r["steps"] for t in res["trials"] for r in t["runs"])
    assert any("mean valid AUC" in s for s in said)

    # the diagnosis (jobs/diagnose.py) on the same data: valid split only, paired by seed,
    # its report written by the runner; a second run reuses every training
    from psrq.experiments.diagnosis import load_diagnosis, run_diagnosis, write_diagnosis

    (conf / "experiments" / "diag.yaml").write_text(
        "name: diag\ntitle: Why\nbase: mcca\nreference: vbpr\ncandidates:\n"
        "  user_factor: {what: the user factor, train: {model_options: {user_factor: true}}}\n"
        "  history_2: {what: two events, train: {model_options: {history_window: 2}}}\n")
    diag = load_diagnosis("diag", conf)
    asked.clear()
    result = run_diagnosis(JobContext.of(spark, cfg), diag, [0, 1], progress=said.append)
    assert set(asked) == {"train", "valid"}
    runs = [result["base_runs"], result["reference_runs"], *result["candidates"].values()]
    assert [len(r["runs"]) for r in runs] == [2, 2, 2, 2] and result["reference_runs"]["model"] == "vbpr"
    assert len({r["runs"][0]["identity"] for r in runs}) == 4  # four trainings per seed, none shared
    report = write_diagnosis(result, diag, str(tmp_path / "reports")).read_text()
    assert "| **mcca** (base) |" in report and "| vbpr (reference) |" in report and "| history_2 | two events |" in report
    assert "Δ All AUC vs mcca [95%]" in report and "## What the numbers say" in report
    assert "vbpr against mcca, All AUC" in report
    again = run_diagnosis(JobContext.of(spark, cfg), diag, [0, 1], progress=said.append)
    assert all(r["status"] == "already done" for c in again["candidates"].values() for r in c["runs"])
    assert json.loads((tmp_path / "reports" / "diag_synthetic_small.json").read_text())["seeds"] == [0, 1]

    tuned, record = write_tuned(conf, search)
    assert json.loads(record.read_text())["chosen"]["din"] == search.chosen["din"]
    assert all(f"{k} {list(v)}" in tuned.read_text() for k, v in search.space.items())  # the header says what was searched
    back = load_config("local", "synthetic_small", ["train.model=din"], conf_dir=conf, tuned=True)
    for key, value in search.chosen["din"].items():
        assert back.model_dump()["train"][key] == value, key
    assert back.train.epochs == 2 and back.train.patience == 1
    # the command line wins; another model keeps its defaults; a variant inherits its family's
    assert load_config("local", "synthetic_small", ["train.model=din", "train.lr=0.3"], conf_dir=conf, tuned=True).train.lr == 0.3
    assert load_config("local", "synthetic_small", ["train.model=vbpr"], conf_dir=conf, tuned=True).train.epochs == 1
    variant = load_config("local", "synthetic_small", [], conf_dir=conf, tuned=True).for_model("din_codes")
    assert variant.train.lr == search.chosen["din"]["lr"] and variant.train.model == "din_codes"
    assert load_config("local", "synthetic_small", ["train.model=din"], conf_dir=conf, tuned=False).train.epochs == 1


def test_the_grid_goes_past_an_edge_that_binds_and_stops_at_its_budget():
    """The search itself, on a known objective (valid AUC peaking at lr 0.04, dropout 0.1):
    lr's best listed value is its top edge, so the grid tries 0.02 then 0.08 beyond it and
    keeps the peak; a budget spent after 3 trials stops before the 4th, keeps the best value tried so far, and
    says so."""
    from psrq.experiments.tuning import beyond_edge, staged_grid

    assert beyond_edge([0.0005, 0.002, 0.005], 0.005) == pytest.approx(0.0125)  # geometric at the top
    assert beyond_edge([0.0005, 0.002, 0.005], 0.0005) == pytest.approx(0.000125)  # and at the bottom
    assert beyond_edge([0.0005, 0.002, 0.005], 0.002) is None  # inside: nothing to extend
    assert beyond_edge([0, 0.0001], 0.0001) == pytest.approx(0.0002) and beyond_edge([0, 0.0001], 0) is None
    assert beyond_edge([32, 64], 64) == 128 and beyond_edge([True, False], True) is None

    def run_trial(setting):
        auc = 0.8 - abs(math.log(setting["lr"] / 0.04)) / 10 - abs(setting["embedding_dropout"] - 0.1)
        return {"setting": setting, "valid_auc_mean": auc, "valid_logloss_mean": 1 - auc, "runs": []}

    space = {"lr": [0.005, 0.01], "embedding_dropout": [0.0, 0.1, 0.2]}
    said = []
    grid = staged_grid(space, run_trial, "auc", extend=2, progress=said.append)
    assert [t["setting"]["lr"] for t in grid.trials[:4]] == [0.005, 0.01, 0.02, 0.04]
    assert grid.chosen == {"lr": 0.04, "embedding_dropout": 0.1} and not grid.stopped
    assert sum("at the edge" in s for s in said) == 2
    assert staged_grid(space, run_trial, "auc", extend=0).chosen["lr"] == 0.01  # the space as listed
    clock = iter(range(100))
    stopped = staged_grid(space, run_trial, "auc", extend=2, deadline=3, clock=lambda: next(clock), progress=said.append)
    assert len(stopped.trials) == 3 and stopped.stopped and stopped.chosen == {"lr": 0.02, "embedding_dropout": 0.0}
    assert said[-1].startswith("tuning budget spent: stopping before train.lr=0.04")


def test_a_tuned_file_with_foreign_keys_or_models_is_refused(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf, ignore=shutil.ignore_patterns("tuned"))
    (conf / "tuned").mkdir()
    (conf / "tuned" / "synthetic_small.yaml").write_text("tuned:\n  din: {seed: 3}\n")
    with pytest.raises(ConfigError, match="only train settings.*are tuned, not \\['seed'\\]"):
        load_config("local", "synthetic_small", conf_dir=conf, tuned=True)
    (conf / "tuned" / "synthetic_small.yaml").write_text("tuned:\n  gbdt: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="tuned.gbdt: not a model"):
        load_config("local", "synthetic_small", conf_dir=conf, tuned=True)
    with pytest.raises(ConfigError, match="tuning.space.*k: the search space holds train settings only"):
        load_config("local", "synthetic_small", ["tuning.space.k=[8]"], conf_dir=conf)


def test_the_diagnosis_trains_each_model_for_as_long_as_its_tuned_settings_say():
    # Last.fm's models were tuned with 3 epochs and patience 1; the diagnosis' trial must
    # train them so, not with tuning's default budget of 8 and 2
    from psrq.experiments.diagnosis import as_tuned

    job = JobContext.of(None, load_config("local", "lastfm_2k", tuned=True))
    assert (job.cfg.tuning.epochs, job.cfg.tuning.patience) == (8, 2)
    mcca = as_tuned(job, "mcca").cfg.tuning
    assert (mcca.epochs, mcca.patience) == (3, 1)
    assert as_tuned(job, "rqvae_unknown").cfg.tuning == job.cfg.tuning  # no tuned entry: tuning's own


@pytest.mark.parametrize("path", sorted(DEFAULT_CONF_DIR.joinpath("tuned").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_committed_tuned_settings_load_as_their_datasets_defaults(path):
    from omegaconf import OmegaConf

    table = OmegaConf.to_container(OmegaConf.create(path.read_text()))["tuned"]
    assert json.loads(path.with_suffix(".search.json").read_text())["chosen"] == table  # the record beside them
    for model, settings in table.items():
        cfg = load_config("local", path.stem, [f"train.model={model}"], tuned=True)
        assert {k: cfg.model_dump()["train"][k] for k in settings} == settings, model


def test_tuning_your_own_data_reads_it_where_the_other_jobs_do(spark, tmp_path):
    """An external dataset's tables are read under storage.root (where "Bring your own data"
    writes them), the experiments' own outputs go under experiments.root; a missing table is
    one clear error (exit 2 from a job), not a FileNotFoundError traceback."""
    from psrq.errors import StorageError

    mine = tmp_path / "mine.yaml"
    mine.write_text("dataset: {name: mine, kind: external, modalities: {text: {column: t, dim: 8}}}\n")
    cfg = load_config("local", str(mine), [f"storage.root={tmp_path}/tables", f"experiments.root={tmp_path}/exp"])
    dcfg = dataset_config(cfg)
    assert dcfg.table_path("interactions") == f"{tmp_path}/tables/interactions"
    assert dcfg.table_path("items") == f"{tmp_path}/tables/items"
    assert dcfg.table_path("semantic_ids").startswith(f"{tmp_path}/exp/mine/")
    assert dcfg.samples_root().startswith(f"{tmp_path}/exp/mine/")
    with pytest.raises(StorageError, match=f"dataset mine: no items and no interactions table at {tmp_path}/tables/items, "):
        prepare_data(JobContext.of(spark, dcfg))


def test_tuning_your_own_data_reuses_the_pipelines_artifacts_within_its_budget(spark, small_pipeline, tmp_path, capfd):
    """Bring your own data as docs/DATA.md says (two tables under storage.root, a dataset
    file, fit -> assign -> samples), then jobs/tune.py --dataset <file> with a small budget:
    its trials train on the pipeline's own samples (nothing fitted, assigned or built under
    experiments.root) and it stops at its budget. A cell that would build other samples, or
    tables that moved on since, are told apart, with the reason."""
    from deltalake import DeltaTable, write_deltalake

    from psrq.experiments.reuse import samples_mismatch

    cfg, _ = small_pipeline
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf, ignore=shutil.ignore_patterns("tuned"))
    for table in ("items", "interactions"):
        shutil.copytree(cfg.table_path(table), tmp_path / "tables" / table)
    mine = tmp_path / "mine.yaml"
    mine.write_text("dataset: {name: mine, kind: external, modalities: {text: {column: text_emb, dim: 16}, "
                    "audio: {column: audio_emb, dim: 12}}}\n")
    common = ["--dataset", str(mine), "--conf-dir", str(conf), f"storage.root={tmp_path}/tables", "storage.engine=delta-rs",
              "codebooks.k=16", "codebooks.sample_size=400", "samples.history_len=5", f"experiments.root={tmp_path}/exp"]

    def job(name, *extra):
        capfd.readouterr()
        code = load_job(name).main(["--json", *common, *extra])
        out, err = capfd.readouterr()
        assert code == 0, f"{name}: {err[-3000:]}"
        return json.loads(out), err

    for name in ("fit_codebooks", "assign_ids"):
        job(name)
    samples = job("build_samples")[0]["path"]
    lrs = [0.001 * 2 ** i for i in range(8)]  # more trials than fit in the budget
    out, err = job("tune", "tuning.models=[mcca]", "tuning.seeds=[0]", "tuning.epochs=1", "tuning.patience=1",
                   "tuning.extend=0", f"tuning.space.lr={lrs}", "tuning.space.embedding_dropout=[]",
                   "tuning.space.weight_decay=[]", "tuning.space.priors=[]", "tuning.budget_minutes=0.01",
                   "train.backend=single", "train.reader=arrow", "train.dim=8", "train.batch_size=256")
    trials = json.loads((conf / "tuned" / "mine.search.json").read_text())["results"]["mcca"]["trials"]
    assert out["stopped_by_budget"] and 1 <= len(trials) < len(lrs), err[-3000:]
    assert "tuning budget spent: stopping before train.lr=" in err
    head = (conf / "tuned" / "mine.yaml").read_text()  # the committed defaults say how they were chosen
    assert "the best mean valid AUC over seeds [0]" in head and "tuning.budget_minutes stopped it" in head
    assert {r["samples"] for t in trials for r in t["runs"]} == {samples}
    assert f"psrq: reusing the pipeline's codebooks, semantic IDs and samples at {samples}" in err
    exp = tmp_path / "exp" / "mine"
    assert not (exp / "codebooks").exists() and not list(exp.glob("samples*")) and not (exp / "delta").exists()
    assert (exp / "checkpoints").is_dir()  # the trainings are the experiments' own

    pipeline = load_config("local", str(mine), common[4:], conf_dir=conf)

    def mismatch(*overrides):
        c = cell_config(dataset_config(load_config("local", str(mine), [*common[4:], *overrides], conf_dir=conf)),
                        {"train.model": "mcca"}, 0)
        return samples_mismatch(JobContext.of(spark, c), pipeline)

    assert mismatch() is None
    assert "samples.history_len=5 (the cell's: 3)" in mismatch("samples.history_len=3")
    assert "psrq, the cell quantizes with rq" in mismatch("codebooks.method=rq")
    assert "fitted with other codebooks.* settings" in mismatch("codebooks.k=8")
    books = tmp_path / "tables" / "codebooks"
    books.rename(tmp_path / "moved")
    assert "the samples' codebook cannot be read (codebook version 'v0001' not found" in mismatch()
    (tmp_path / "moved").rename(books)
    inter = f"{tmp_path}/tables/interactions"
    write_deltalake(inter, DeltaTable(inter).to_pyarrow_table().slice(0, 1), mode="append")  # the log moved on
    assert "the tables are at" in mismatch()


def test_trials_are_compared_by_the_selection_score():
    """train.select_on=logloss: the lowest mean valid Logloss wins a tuning dimension; a trial
    without the score loses to every trial with one."""
    from psrq.experiments.tuning import trial_score

    a = {"valid_auc_mean": 0.80, "valid_logloss_mean": 0.60}
    b = {"valid_auc_mean": 0.78, "valid_logloss_mean": 0.50}
    none = {"valid_auc_mean": None, "valid_logloss_mean": None}
    assert max([a, b], key=lambda t: trial_score(t, "auc")) is a
    assert max([a, b], key=lambda t: trial_score(t, "logloss")) is b
    assert max([none, a], key=lambda t: trial_score(t, "logloss")) is a


def test_the_tuned_file_names_the_score_it_was_chosen_on(tmp_path):
    """A search selected on Logloss says so in conf/tuned/<dataset>.yaml's header (not AUC)."""
    from psrq.experiments.tuning import Search

    search = Search("d", {"mcca": {"lr": 0.01}}, {"mcca": {"selected_on": "logloss", "stopped_by_budget": False}},
                    {"lr": [0.01]}, [0], {}, "2026-12-07T00:00:00")
    tuned, _ = write_tuned(tmp_path, search)
    head = tuned.read_text()
    assert "the best mean valid Logloss over seeds [0]" in head and "stopped it" not in head
