"""Experiment matrices: the paper's tables load, the runner trains and evaluates every
(cell, seed) once, resumes without redoing finished cells, and the report says what the
numbers allow."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from psrq.errors import ConfigError
from psrq.experiments.matrix import Experiment, load_experiment
from psrq.experiments.report import compare, summarise, welch, write_report
from psrq.experiments.runner import read_results, run_experiment

from conftest import small_config
from psrq.job import JobContext


def test_paper_tables_load():
    t2, t3, t4 = (load_experiment(n) for n in ("table2", "table3", "table4"))
    assert set(t2.cells) == {"vbpr", "simtier_make", "din", "qarm", "psrq_mcca"} and t2.ours == "psrq_mcca"
    assert {c.get("codebooks.method") for c in t3.cells.values()} == {None, "pq", "vq", "rq", "rqvae", "psrq"}
    assert {c["train.model"] for c in t4.cells.values()} == {"mcca", "mcca_wo_msc", "mcca_wo_mjc"}
    with pytest.raises(ConfigError, match="experiment 'table9' not found.*table2"):
        load_experiment("table9")
    # the MCCA family: the paper's model by name, its variants MCCA's constructor options
    import inspect

    from psrq.models.mcca import CodeAttention

    fam = load_experiment("mcca_family")
    assert fam.ours == "psrq_mcca" and "train.model_options" not in fam.cells["psrq_mcca"]
    options = {k for c in fam.cells.values() for k in c.get("train.model_options", {})}
    assert options and options <= set(inspect.signature(CodeAttention).parameters) - {"spec", "content"}
    # calibrated: the same trainings as Table 2 and the family (their runs are reused), evaluated with Platt
    cal = load_experiment("calibrated")
    assert {k: {o: v for o, v in c.items() if o != "evaluate.calibrate"} for k, c in cal.cells.items()} == t2.cells | fam.cells
    assert {c["evaluate.calibrate"] for c in cal.cells.values()} == {"platt"} and cal.against == fam.against


def test_runner_resumes_and_reports(spark, tmp_path):
    cfg = small_config(tmp_path, "codebooks.k=16", "codebooks.sample_size=400", "samples.history_len=5",
                       "train.backend=single", "train.reader=arrow", "train.dim=8", f"experiments.root={tmp_path}/exp",
                       "synthetic.n_users=200", "tracking.uri=local")
    exp = Experiment("t", "test", "din_vq", {"din": {"train.model": "din"},
                                              "din_vq": {"codebooks.method": "vq", "train.model": "din_codes"}})
    said = []
    first = run_experiment(JobContext.of(spark, cfg), exp, [0], progress=said.append)
    assert [(r["cell"], r["seed"]) for r in first] == [("din", 0), ("din_vq", 0), ("floor:global_rate", 0),
                                                       ("floor:item_popularity", 0), ("floor:item_rate", 0), ("floor:user_rate", 0)]
    assert {r["method"] for r in first[:2]} == {"psrq", "vq"}
    # tracked (the local store under the experiment tree): each cell a run, its training and evaluation its children
    from mlflow_server import runs
    from psrq.experiments.matrix import dataset_config
    from psrq.tracking.store import PARENT, resolve

    uri, name = resolve(dataset_config(cfg))[0], f"psrq-{cfg.dataset.name}"
    cells = runs(uri, name, "cell")
    assert len(cells) == 2 and all(c.info.status == "FINISHED" and "auc" in c.data.metrics for c in cells)
    children = [*runs(uri, name, "train"), *runs(uri, name, "evaluate")]
    assert len(children) == 4 and {r.data.tags[PARENT] for r in children} == {c.info.run_id for c in cells}
    again = run_experiment(JobContext.of(spark, cfg), exp, [0, 1], progress=said.append)
    assert [(r["cell"], r["seed"]) for r in again] == [("din", 1), ("din_vq", 1)]  # seed 0 not redone
    assert "2 of 4 cells done, 2 to run" in said[-3]
    assert len(runs(uri, name, "cell")) == 4 and len(runs(uri, name, "floor")) == 4  # the floors not recorded twice
    dcfg = dataset_config(cfg)
    res = read_results(JobContext.of(spark, dcfg))
    floors = res[res.cell.str.startswith("floor:")]
    assert sorted(floors.cell) == ["floor:global_rate", "floor:item_popularity", "floor:item_rate", "floor:user_rate"]
    assert (floors.rows == res.rows.iloc[0]).all() and (floors.train_identity == "floor").all()  # the same test rows
    res_models = res[~res.cell.str.startswith("floor:")]
    assert len(res_models) == 4 and res.auc.between(0, 1).all()
    assert (res_models.best_step <= res_models.steps).all() and res_models.curve.map(lambda c: len(json.loads(c)) >= 1).all()
    assert res_models.calibration_error.between(0, 1).all()
    # seeds differ (ranker initialisation), the quantizer's samples are shared across seeds
    din = res[res.cell == "din"].sort_values("seed")
    assert din.auc.iloc[0] != din.auc.iloc[1] and din.eval_id.nunique() == 2
    path = write_report(res, exp, cfg.dataset.name, dcfg.codebooks_root(), str(tmp_path / "reports"))
    text = path.read_text()
    assert "| **din_vq** | 2 |" in text and "%Improv." in text and "Welch" in text
    assert "| floor:item_rate | 1 |" in text and "Δ All AUC vs best floor [95%]" in text
    assert "vs the best floor (floor:" in text  # the verdict on ours against the floors
    assert (tmp_path / "reports" / f"t_{cfg.dataset.name}.png").stat().st_size > 1000
    assert (tmp_path / "reports" / f"t_{cfg.dataset.name}_curves.png").stat().st_size > 1000
    # a changed setting is a new training identity: the cell runs again, the report shows the newest
    changed = cfg.with_overrides({"train.lr": 0.001})
    rerun = run_experiment(JobContext.of(spark, changed), exp, [0], progress=said.append)
    assert [(r["cell"], r["seed"]) for r in rerun] == [("din", 0), ("din_vq", 0)]
    latest = read_results(JobContext.of(spark, dcfg))
    assert len(latest[~latest.cell.str.startswith("floor:")]) == 4
    assert set(latest[latest.seed == 0].train_identity) >= {r["train_identity"] for r in rerun}
    assert "space: text" in text  # diagnostics of the quantizers used


def test_improvement_and_significance_as_the_paper_prints_them():
    exp = Experiment("x", "x", "ours", {"a": {}, "b": {}, "ours": {}})
    res = pd.DataFrame({"cell": ["a"] * 3 + ["b"] * 3 + ["ours"] * 3, "seed": [0, 1, 2] * 3,
                        "auc": [0.70, 0.71, 0.72, 0.74, 0.75, 0.76, 0.80, 0.81, 0.82],
                        "cold_auc": [0.6] * 9, "logloss": [0.5, 0.5, 0.5, 0.4, 0.41, 0.42, 0.45, 0.46, 0.44]})
    s = summarise(res, exp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal values in every seed: no test, and no scipy warning of it
        c = compare(res, s, exp)
    assert np.isnan(c["cold_auc"]["p_value"]) and np.isnan(c["cold_auc"]["diff_ci95"][0])
    assert c["auc"]["best_other"] == "b" and c["auc"]["improvement_pct"] == pytest.approx(100 * (0.81 - 0.75) / 0.75)
    assert c["auc"]["p_value"] < 0.01 and c["auc"]["ours_better"]
    lo, hi = c["auc"]["diff_ci95"]
    assert 0 < lo < 0.06 < hi  # the difference of means (0.06) inside its interval, 0 outside
    assert c["logloss"]["best_other"] == "b" and not c["logloss"]["ours_better"]  # lower is better


def test_the_difference_to_the_best_floor_has_a_t_interval_over_seeds():
    from psrq.experiments.report import floor_verdict, versus_floors

    exp = Experiment("x", "x", "ours", {"a": {}, "ours": {}})
    res = pd.DataFrame({"cell": ["a"] * 3 + ["ours"] * 3 + ["floor:item_rate", "floor:global_rate"], "seed": [0, 1, 2] * 2 + [0, 0],
                        "auc": [0.69, 0.70, 0.71, 0.72, 0.73, 0.74, 0.70, 0.5], "cold_auc": [0.6] * 6 + [0.55, 0.5],
                        "logloss": [0.6] * 8, "calibration_error": [0.01] * 8})
    s = summarise(res, exp)
    assert list(s.cell) == ["a", "ours", "floor:global_rate", "floor:item_rate"]
    f = versus_floors(res, s)
    ours = f["ours"]["auc"]
    assert ours["floor"] == "floor:item_rate" and ours["diff"] == pytest.approx(0.03)
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert ours["ci95"] == pytest.approx((0.03 - half, 0.03 + half))
    assert f["a"]["auc"]["ci95"][0] < 0 < f["a"]["auc"]["ci95"][1]
    assert "floor:item_rate" not in f and compare(res, s, exp)["auc"]["best_other"] == "a"  # floors are not "other cells"
    lines = floor_verdict(f, exp)
    assert "All AUC" in lines[0] and "**holds**" in lines[0]
    assert "Cold AUC" in lines[1] and "**holds**" in lines[1]


def test_every_cell_against_the_reference_cells_with_the_closest_named(tmp_path):
    """`against`: each other cell's difference of means to each reference, with Welch's
    interval, and per metric the cell closest to the better reference and by how much."""
    from psrq.experiments.report import against_section

    exp = Experiment("x", "x", "ours", {"ref": {}, "ours": {}, "variant": {}}, against=("ref",))
    res = pd.DataFrame({"cell": ["ref"] * 3 + ["ours"] * 3 + ["variant"] * 3, "seed": [0, 1, 2] * 3,
                        "auc": [0.80, 0.81, 0.82, 0.70, 0.71, 0.72, 0.76, 0.78, 0.80],
                        "cold_auc": [0.69, 0.70, 0.71] + [0.60, 0.61, 0.62] + [0.70, 0.72, 0.74],
                        "logloss": [0.39, 0.40, 0.41] + [0.50, 0.51, 0.52] + [0.45, 0.46, 0.47]})
    lines = against_section(res, summarise(res, exp), exp)
    rows = {ln.split(" | ")[0][2:]: ln for ln in lines if ln.startswith("| ") and not ln.startswith(("| cell", "| ---"))}
    assert set(rows) == {"ours", "variant"}  # the reference is not compared with itself
    _, (lo, hi) = welch(res, "ours", "ref", "auc")
    assert f"-0.1000 [{lo:+.4f}, {hi:+.4f}]" in rows["ours"] and hi < 0
    assert "- All AUC: the best reference is ref (0.8100); the closest other cell is variant (0.7800), short by 0.0300." in lines
    assert ("- Cold AUC: the best reference is ref (0.7000); the closest other cell is variant (0.7200), "
            "at least as good.") in lines
    assert any(ln.startswith("- Logloss:") and "variant (0.4600), short by 0.0600" in ln for ln in lines)
    assert against_section(res, summarise(res, exp), Experiment("x", "x", "ours", exp.cells)) == []
    import shutil

    from psrq.config import DEFAULT_CONF_DIR

    shutil.copytree(DEFAULT_CONF_DIR / "experiments", tmp_path / "experiments")
    fam = tmp_path / "experiments" / "mcca_family.yaml"
    assert load_experiment("mcca_family", tmp_path).against == ("vbpr", "simtier_make")
    fam.write_text(fam.read_text().replace("against: [vbpr, simtier_make]", "against: [vbpr, nope]"))
    with pytest.raises(ConfigError, match="`against` names cells that are not there: nope"):
        load_experiment("mcca_family", tmp_path)

