"""Offline evaluation: the distributed exact AUC equals scikit-learn's, Cold AUC reads the
cold rows only, Logloss and GAUC match direct computations; the evaluate stage end to end."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import log_loss, roc_auc_score

from psrq.evaluation.arrays import calibration_error
from psrq.evaluation.auc import EvaluationError, auc
from psrq.evaluation.metrics import evaluate_predictions, exact_auc, exact_aucs, grouped_auc, logloss
from psrq.job import JobContext


def predictions(n=5000, seed=0, decimals=2):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    score = np.clip(0.5 + 0.2 * (label - 0.5) + rng.normal(0, 0.25, n), 0, 1).round(decimals)  # many ties
    return pd.DataFrame({"user_id": rng.integers(0, 60, n), "label": label.astype("int32"), "score": score,
                         "is_cold": (rng.random(n) < 0.3).astype("int32")})


def test_numpy_auc_equals_sklearn_with_ties():
    df = predictions(decimals=1)
    assert auc(df.score.to_numpy(), df.label.to_numpy()) == pytest.approx(roc_auc_score(df.label, df.score), abs=1e-12)
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_spark_exact_auc_equals_sklearn_with_ties(spark, partitions):
    df = predictions(seed=partitions)
    sdf = spark.createDataFrame(df).repartition(4)
    got = exact_auc(sdf, partitions=partitions)
    assert got == pytest.approx(roc_auc_score(df.label, df.score), abs=1e-12)
    # several subsets of the rows from one grouping: each its own AUC, a one-label subset its error
    subsets = {"cold": F.col("is_cold") == 1, "warm": F.col("is_cold") == 0, "ones": F.col("label") == 1}
    aucs = exact_aucs(sdf, subsets, partitions=partitions)
    for name, rows in {"cold": df[df.is_cold == 1], "warm": df[df.is_cold == 0]}.items():
        assert aucs[name] == pytest.approx(roc_auc_score(rows.label, rows.score), abs=1e-12), name
    assert isinstance(aucs["ones"], EvaluationError) and "ones hold only label 1" in str(aucs["ones"])


def test_one_class_missing_is_a_clear_error(spark):
    df = predictions(200)
    df["label"] = 1
    with pytest.raises(EvaluationError, match=r"both labels.*only label 1 \(200 rows\)"):
        exact_auc(spark.createDataFrame(df))
    with pytest.raises(EvaluationError, match="no rows"):
        exact_auc(spark.createDataFrame(df).limit(0))


def test_cold_auc_reads_exactly_the_cold_rows_and_logloss_gauc_match(spark):
    df = predictions(3000, seed=5)
    # warm rows ranked backwards, cold rows forwards: any warm row in Cold AUC would show
    warm = df.is_cold == 0
    df.loc[warm, "score"] = (1 - df.loc[warm, "score"]).round(2)
    m = evaluate_predictions(spark.createDataFrame(df))
    cold = df[df.is_cold == 1]
    assert m["cold_rows"] == len(cold) and m["rows"] == len(df)
    assert m["cold_auc"] == pytest.approx(roc_auc_score(cold.label, cold.score), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(df.label, df.score), abs=1e-12)
    direct = log_loss(df.label, np.clip(df.score, 1e-7, 1 - 1e-7))
    assert m["logloss"] == pytest.approx(direct, rel=1e-9)
    assert m["positives"] == df.label.sum()
    assert m["calibration_error"] == pytest.approx(calibration_error(df.score.to_numpy(), df.label.to_numpy()), abs=1e-12)
    assert logloss(spark.createDataFrame(df)) == pytest.approx(direct, rel=1e-9)
    per_user = [(roc_auc_score(g.label, g.score), len(g)) for _, g in df.groupby("user_id") if g.label.nunique() == 2]
    want = sum(a * n for a, n in per_user) / sum(n for _, n in per_user)
    gauc, users = grouped_auc(spark.createDataFrame(df))
    assert users == len(per_user) and gauc == pytest.approx(want, abs=1e-12)
    assert m["gauc"] == pytest.approx(want, abs=1e-12)


def test_missing_cold_class_reports_none(spark):
    df = predictions(500)
    df.loc[df.is_cold == 1, "label"] = 0
    assert evaluate_predictions(spark.createDataFrame(df), gauc=False)["cold_auc"] is None


@pytest.fixture(scope="module")
def trained(small_pipeline, tmp_path_factory):
    from psrq.training.stage import train_stage

    cfg = small_pipeline[0].with_overrides({
        "train.checkpoint_dir": str(tmp_path_factory.mktemp("eval") / "ckpt"), "train.backend": "single",
        "train.reader": "arrow", "train.model": "simtier_make", "train.dim": 8, "run.run_id": 3})
    train_stage(JobContext.of(None, cfg))
    return cfg


def test_evaluate_stage_scores_in_spark_like_the_driver(spark, trained):
    """Distributed scoring gives the scores of the trained model run on the driver, the
    metrics are recorded in Delta, and a re-run of the same run commits nothing new."""
    import torch

    from psrq.evaluation.stage import evaluate_stage
    from psrq.models.registry import build_model
    from psrq.samples.content import read_content
    from psrq.samples.layout import SamplesManifest
    from psrq.storage import open_engine
    from psrq.training.checkpoints import load_checkpoint
    from psrq.training.loop import predict
    from psrq.training.readers import make_reader
    from psrq.training.run import identity_and_folder, model_args

    cfg = trained
    res = evaluate_stage(JobContext.of(spark, cfg))
    engine = open_engine(spark, "delta-rs")
    preds = engine.read(res.predictions).toPandas()
    man = SamplesManifest.read(cfg.samples.path)
    assert len(preds) == man.splits["test"]["rows"] == res.metrics.rows
    model = build_model(model_args(cfg, man), read_content(f"{cfg.samples.path}/content.safetensors"))
    model.load_state_dict(load_checkpoint(identity_and_folder(cfg, man)[1])["model"])
    scores, labels, cold = predict(model, make_reader("arrow", man.split_path("test"), model.inputs + ["label", "is_cold"], 512),
                                   torch.device("cpu"))
    assert np.allclose(np.sort(preds.score.to_numpy()), np.sort(scores), atol=1e-6)
    assert res.metrics.auc == pytest.approx(roc_auc_score(preds.label, preds.score), abs=1e-12)
    rows = engine.read(cfg.table_path("eval_metrics")).toPandas()
    assert len(rows) == 1 and rows.model[0] == "simtier_make" and rows.codebook_version[0] == "v0001"
    assert rows.auc[0] == pytest.approx(res.metrics.auc) and '"samples"' in rows.config[0]
    again = evaluate_stage(JobContext.of(spark, cfg))
    assert len(engine.read(cfg.table_path("eval_metrics")).toPandas()) == 1
    assert res.status == "evaluated" and again.status == "already done"
    assert vars(again.metrics) == pytest.approx(vars(res.metrics)) and again.eval_id == res.eval_id


def test_each_model_state_gets_its_own_evaluation_under_one_run_id(spark, trained):
    """Two states of the model evaluated in turn with the same run id: each is scored and
    recorded with its own metrics; neither reports the other's numbers."""
    import torch

    from psrq.evaluation.stage import evaluate_stage
    from psrq.samples.layout import SamplesManifest
    from psrq.storage import open_engine
    from psrq.training.checkpoints import load_checkpoint
    from psrq.training.run import identity_and_folder

    cfg = trained.with_overrides({"evaluate.split": "valid"})
    first = evaluate_stage(JobContext.of(spark, cfg))
    _, folder = identity_and_folder(cfg, SamplesManifest.read(cfg.samples.path))
    path = Path(folder, "checkpoint.pt")
    original = path.read_bytes()
    ckpt = load_checkpoint(folder)
    # another state of the same run: the weights moved on (a resumed training, say)
    ckpt["model"] = {k: (v * 0.5 if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    try:
        second = evaluate_stage(JobContext.of(spark, cfg))
    finally:
        path.write_bytes(original)
    assert second.status == "evaluated" and second.eval_id != first.eval_id
    assert second.weights != first.weights and second.predictions != first.predictions
    assert second.metrics.logloss != pytest.approx(first.metrics.logloss)
    rows = open_engine(spark, "delta-rs").read(cfg.table_path("eval_metrics")).toPandas().set_index("eval_id")
    assert rows.loc[first.eval_id, "logloss"] == pytest.approx(first.metrics.logloss)
    assert rows.loc[second.eval_id, "logloss"] == pytest.approx(second.metrics.logloss)


def test_a_registered_ranker_trains_and_is_evaluated(spark, trained, request):
    """One file (tests/toy_ranker.py) plus one register line: train.model takes the new
    name, the model trains on the driver with its own options and auxiliary loss, and the
    executors score it from its import path without the registration."""
    from psrq.errors import ConfigError
    from psrq.evaluation.stage import evaluate_stage
    from psrq.models import registry
    from psrq.samples.layout import SamplesManifest
    from psrq.storage import open_engine
    from psrq.training.checkpoints import load_checkpoint
    from psrq.training.run import identity_and_folder, model_args
    from psrq.training.stage import train_stage

    import toy_ranker

    with pytest.raises(ConfigError, match="train.model: .*unknown model 'item_dot'"):
        trained.with_overrides({"train.model": "item_dot"})
    registry.register("item_dot", toy_ranker.ItemDot)
    request.addfinalizer(lambda: registry.unregister("item_dot"))
    spark.sparkContext.addPyFile(toy_ranker.__file__)
    cfg = trained.with_overrides({"train.model": "item_dot", "train.model_options": {"l2": 0.01}, "train.priors": False})
    man = SamplesManifest.read(cfg.samples.path)
    assert model_args(cfg, man).ranker == "toy_ranker:ItemDot"
    train_stage(JobContext.of(None, cfg))
    weights = load_checkpoint(identity_and_folder(cfg, man)[1])["model"]
    assert set(weights) == {"item.weight", "bias.weight"}
    res = evaluate_stage(JobContext.of(spark, cfg))
    assert res.status == "evaluated" and res.metrics.rows == man.splits["test"]["rows"]
    assert 0.0 < res.metrics.auc < 1.0
    rows = open_engine(spark, "delta-rs").read(cfg.table_path("eval_metrics")).toPandas()
    assert rows.set_index("eval_id").loc[res.eval_id, "model"] == "item_dot"


def test_evaluating_an_untrained_model_is_a_clear_error(spark, trained):
    from psrq.evaluation.stage import evaluate_stage

    cfg = trained.model_copy(update={"train": trained.train.model_copy(update={"seed": 99})})
    with pytest.raises(EvaluationError, match="no trained simtier_make \\(seed 99\\)"):
        evaluate_stage(JobContext.of(spark, cfg))


def test_floors_come_from_train_rows_only(spark):
    """A floor's score for a row is a function of the train split: the evaluated rows' own
    labels never reach it (flipping them changes no score); the smoothed rates are exact."""
    from psrq.evaluation.floors import PRIOR, evaluate_floors, floor_scores

    rng = np.random.default_rng(3)
    train = pd.DataFrame({"user_id": rng.integers(0, 30, 2000), "item_id": rng.integers(0, 50, 2000)})
    train["label"] = (rng.random(2000) < 0.1 + 0.01 * train.item_id).astype("int32")
    rows = pd.DataFrame({"user_id": rng.integers(0, 35, 800), "item_id": rng.integers(0, 60, 800),
                         "label": rng.integers(0, 2, 800).astype("int32"), "is_cold": rng.integers(0, 2, 800).astype("int32")})
    tdf = spark.createDataFrame(train)
    cols = ["global_rate", "item_popularity", "item_rate", "user_rate"]

    def scores(r):
        out = floor_scores(tdf, spark.createDataFrame(r)).toPandas()
        return out.sort_values(["user_id", "item_id", "label", "is_cold"], kind="stable")

    a = scores(rows).drop(columns="label").reset_index(drop=True)
    b = scores(rows.assign(label=1 - rows.label)).drop(columns="label").reset_index(drop=True)
    assert len(a) == len(rows) and a[["user_id", "item_id"]].equals(b[["user_id", "item_id"]])
    assert np.array_equal(a[cols].to_numpy(), b[cols].to_numpy())
    g = train.label.mean()
    got = scores(rows).drop_duplicates("item_id").set_index("item_id")
    per_item = train.groupby("item_id").label.agg(["sum", "count"])
    for item, r in got.iterrows():
        pos, n = per_item.loc[item] if item in per_item.index else (0, 0)
        assert r.item_rate == pytest.approx((pos + PRIOR * g) / (n + PRIOR), abs=1e-12)  # unseen items: the global rate
        assert r.global_rate == pytest.approx(g)
    # popularity: a probability that grows with the item's train events
    counts = got.index.map(lambda i: per_item["count"].get(i, 0))
    pop = got.item_popularity.to_numpy()[np.argsort(counts, kind="stable")]
    assert (np.diff(pop) >= 0).all() and 0 < pop.min() and pop.max() < 1
    # the item floors rank by the item's train statistics: item_rate beats chance on rows drawn like train
    test = train.sample(500, random_state=1).assign(is_cold=0)
    m = evaluate_floors(tdf, spark.createDataFrame(test), gauc=False)
    assert m["global_rate"]["auc"] == 0.5 and m["item_rate"]["auc"] > 0.6
    assert m["global_rate"]["logloss"] == pytest.approx(log_loss(test.label, np.full(len(test), g)), abs=1e-9)


def test_each_metric_is_compared_with_the_floor_best_at_it():
    """AUCs against the highest floor, Logloss and calibration error against the lowest, each
    with the floor's name; a metric a side lacks is left out."""
    from psrq.evaluation.versus import format_versus, versus_floors

    floors = {"global_rate": {"auc": 0.5, "cold_auc": 0.5, "logloss": 0.69, "calibration_error": 0.001},
              "item_rate": {"auc": 0.62, "cold_auc": None, "logloss": 0.66, "calibration_error": 0.02}}
    model = {"auc": 0.70, "cold_auc": 0.55, "logloss": 0.68, "calibration_error": 0.05, "gauc": None}
    v = versus_floors(model, floors)
    assert v["auc"] == {"floor": "item_rate", "floor_value": 0.62, "diff": pytest.approx(0.08)}
    assert v["cold_auc"]["floor"] == "global_rate" and v["cold_auc"]["diff"] == pytest.approx(0.05)
    assert v["logloss"]["floor"] == "item_rate" and v["logloss"]["diff"] == pytest.approx(0.02)  # worse: +
    assert v["calibration_error"]["floor"] == "global_rate" and "gauc" not in v
    assert format_versus(v).startswith("AUC +0.0800 (item_rate), cold AUC +0.0500 (global_rate), logloss +0.0200")


def test_platt_scaling_recovers_a_known_miscalibration():
    """Scores made over-confident by a known map are mapped back: a and b undo it, and the
    fitted map lowers the Logloss of held-out rows."""
    from psrq.evaluation.calibration import apply_platt, fit_platt, logit

    rng = np.random.default_rng(0)
    true = rng.uniform(0.05, 0.95, 20000)
    labels = (rng.uniform(size=true.size) < true).astype(int)
    shown = 1 / (1 + np.exp(-(2.0 * logit(true) - 0.5)))  # over-confident, shifted
    a, b = fit_platt(shown[:10000], labels[:10000])
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(0.25, abs=0.05)
    ll = lambda p, y: -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))  # noqa: E731
    assert ll(apply_platt(shown[10000:], a, b), labels[10000:]) < ll(shown[10000:], labels[10000:])


def test_a_calibrated_evaluation_is_its_own_record_with_the_same_ranking(spark, trained):
    """evaluate.calibrate=platt: fitted on the valid split, applied to the test scores (a
    monotone map: the same AUC), recorded with its parameters under its own eval_id; the
    valid split itself cannot be evaluated calibrated."""
    from psrq.evaluation.calibration import apply_platt
    from psrq.evaluation.stage import evaluate_stage
    from psrq.storage import open_engine

    plain = evaluate_stage(JobContext.of(spark, trained))
    cal = evaluate_stage(JobContext.of(spark, trained.with_overrides({"evaluate.calibrate": "platt"})))
    assert cal.status == "evaluated" and cal.eval_id != plain.eval_id and plain.calibration is None
    c = cal.calibration
    assert c["method"] == "platt" and c["valid_rows"] > 0
    assert cal.metrics.auc == pytest.approx(plain.metrics.auc, abs=1e-9)
    engine = open_engine(spark, "delta-rs")
    raw = np.sort(engine.read(plain.predictions).toPandas().score.to_numpy())
    got = np.sort(engine.read(cal.predictions).toPandas().score.to_numpy())
    np.testing.assert_allclose(got, np.sort(apply_platt(raw, c["a"], c["b"])), rtol=0, atol=1e-9)
    again = evaluate_stage(JobContext.of(spark, trained.with_overrides({"evaluate.calibrate": "platt"})))
    assert again.status == "already done" and again.calibration == c
    with pytest.raises(EvaluationError, match="evaluate.split=test"):
        evaluate_stage(JobContext.of(spark, trained.with_overrides({"evaluate.calibrate": "platt", "evaluate.split": "valid"})))
