"""Rankers exported for serving (jobs/export_ranker.py): a torch.export archive, and the MLflow
model around it, that a process without psrq or Spark loads, scoring the test split as the
Spark evaluation did."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from psrq.job import JobContext

from conftest import ROOT

# one per ranker class (the MCCA family's names share CodeAttention): every family exports
FAMILIES = ["mcca", "qarm", "vbpr", "simtier_make"]
# the scorer in a process that cannot import psrq or pyspark
ISOLATED = ("import runpy, sys; sys.modules['psrq'] = None; sys.modules['pyspark'] = None; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
# the export's MLflow model (mlflow_model/) scoring the same rows, in such a process too
PYFUNC = """
import sys
sys.modules['psrq'] = None
sys.modules['pyspark'] = None
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
specs = model.metadata.get_input_schema().inputs
table = pq.read_table(sys.argv[2], columns=[s.name for s in specs])
def column(name, dtype):
    arr = table.column(name).combine_chunks()
    values = np.asarray(arr.flatten()).reshape(len(arr), -1) if pa.types.is_list(arr.type) else arr.to_numpy()
    return values.astype(dtype)
np.save(sys.argv[3], model.predict({s.name: column(s.name, s.type) for s in specs}))
print(model.metadata.metadata["codebook_version"])
"""


@pytest.mark.parametrize("model", FAMILIES)
def test_an_exported_ranker_scores_like_the_spark_evaluation(spark, small_pipeline, tmp_path, model, monkeypatch):
    from psrq.evaluation.stage import evaluate_stage
    from psrq.samples.layout import SamplesManifest
    from psrq.serving.stage import export_stage
    from psrq.storage import open_engine
    from psrq.training.stage import train_stage

    cfg = small_pipeline[0].with_overrides({
        "train.checkpoint_dir": str(tmp_path / "ckpt"), "train.backend": "single", "train.reader": "arrow",
        "train.model": model, "train.dim": 8, "train.epochs": 1, "evaluate.floors": False,
        "storage.tables.predictions": f"predictions_{model}", "storage.tables.eval_metrics": f"eval_metrics_{model}",
        "export.path": str(tmp_path / "exports"), "tracking.uri": "local" if model == "mcca" else "off"})
    train_stage(JobContext.of(None, cfg))
    evaluated = evaluate_stage(JobContext.of(spark, cfg))
    exported = export_stage(JobContext.of(spark, cfg))
    assert exported.status == "exported" and exported.parity_gap <= 1e-5
    ranker = Path(exported.path, exported.ranker)
    man = SamplesManifest.read(cfg.samples.path)
    out = tmp_path / "scores.npy"
    run = subprocess.run([sys.executable, "-c", ISOLATED, str(Path(ROOT, "scripts", "score_exported.py")), str(ranker),
                          man.split_path("test"), str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = np.load(out)
    preds = open_engine(spark, "delta-rs").read(evaluated.predictions).toPandas()
    assert len(scores) == len(preds) == man.splits["test"]["rows"]
    np.testing.assert_allclose(np.sort(scores), np.sort(preds.score.to_numpy()), rtol=0, atol=1e-5)
    model_dir = Path(exported.path, exported.manifest["mlflow_model"])
    assert (model_dir / "MLmodel").is_file() and (model_dir / "serving_input_example.json").is_file()
    pyfunc = subprocess.run([sys.executable, "-c", PYFUNC, str(model_dir), man.split_path("test"), str(tmp_path / "py.npy")],
                            capture_output=True, text=True, timeout=300)
    assert pyfunc.returncode == 0, pyfunc.stderr[-3000:]
    assert pyfunc.stdout.split()[-1] == man.codebook_version  # the codebook version it expects, in its metadata
    np.testing.assert_allclose(np.load(tmp_path / "py.npy"), scores, rtol=0, atol=1e-9)
    labels = __import__("pyarrow.parquet", fromlist=["x"]).read_table(man.split_path("test"), columns=["label"])
    assert roc_auc_score(labels.column("label").to_numpy(), scores) == pytest.approx(evaluated.metrics.auc, abs=1e-6)
    # the lookup: every item of the vocabulary with its codes as the samples hold them
    lookup = spark.read.parquet(str(Path(exported.path, exported.lookup))).toPandas()
    assert len(lookup) == exported.items == man.vocab_size - 2  # padding and OOV have no item
    test = __import__("pandas").read_parquet(man.split_path("test"))
    known = test[test.item_idx > 1].drop_duplicates("item_id").set_index("item_id")
    got = lookup.set_index("item_id").loc[known.index]
    assert (got.item_idx == known.item_idx).all()
    assert all(list(a) == list(b) for a, b in zip(got.text_codes, known.target_text_codes))
    if "content_idx" in known:
        assert (got.content_idx == known.content_idx).all()
    meta = json.loads(Path(exported.path, "export.json").read_text())
    assert meta["codebook_version"] == "v0001" and [c["name"] for c in meta["inputs"]]
    again = export_stage(JobContext.of(spark, cfg))
    assert again.status == "already done"
    if model == "mcca":  # tracked: the export's run has the MLflow model as its logged model, linked when done again
        import mlflow
        from mlflow.tracking import MlflowClient

        from psrq.tracking.store import resolve

        assert again.tracking == {"run_id": exported.tracking["run_id"], "linked": True}
        client = MlflowClient(resolve(cfg)[0])
        (logged,) = client.search_logged_models([client.get_run(exported.tracking["run_id"]).info.experiment_id])
        assert logged.source_run_id == exported.tracking["run_id"] and logged.tags["psrq.codebook_version"] == "v0001"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", resolve(cfg)[0])  # models:/ resolves through the tracking store
        served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
        assert served.metadata.metadata["codebook_version"] == man.codebook_version
