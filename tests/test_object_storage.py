"""Everything on object storage: a local S3-compatible endpoint (moto's server, bound to
127.0.0.1; tests/s3_endpoint.py) holds the Delta tables, codebook artifacts, content,
samples, checkpoints and model bundles of a whole pipeline run, written and read through the
filesystem layer: delta-rs and pyarrow on the Python side, Spark's own s3a:// (hadoop-aws)
for the samples. Credentials come from the process environment only and never appear in any
output. The delta-spark engine on S3 runs on the standalone cluster (tests/test_cluster.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, job_env
from s3_endpoint import CREDENTIALS, SECRET, assert_pipeline_on_s3, read_metrics, s3_locations

pytestmark = pytest.mark.slow

SMALL = ["dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12", "synthetic.n_items=300",
         "synthetic.n_users=100", "synthetic.block_size=64", "synthetic.mean_events_per_user=30", "codebooks.k=16",
         "codebooks.sample_size=300", "codebooks.compare=[]", "samples.history_len=5", "samples.content.dim=8",
         "train.max_steps=20", "train.dim=16", "spark.master=local[2]", "spark.shuffle_partitions=2"]


def test_the_demo_pipeline_entirely_on_s3(s3, tmp_path):
    """delta-rs engine; a content model (VBPR) and the DIN baseline, each trained by two
    Horovod ranks that read their shards from the endpoint with the Arrow reader."""
    endpoint, bucket, client = s3
    root = f"{bucket}/delta-rs"
    overrides = [*s3_locations(endpoint, root), "storage.engine=delta-rs", "spark.jvm_packages=[delta,s3a]",
                 "train.model=vbpr", "train.backend=horovod", "train.reader=arrow", "demo.baseline=din",
                 "evaluate.floors=false", *SMALL]
    env = {**job_env(), **CREDENTIALS}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "demo.py"), "--json", *overrides],
                         capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert SECRET not in out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["trained"]["status"] == "trained" and 0 < doc["trained"]["valid"]["auc"] < 1
    assert {r["rank"] for r in doc["trained"]["ranks"]} == {0, 1}
    assert sorted(doc["evaluated"]) == ["din", "vbpr"]
    assert os.listdir(cwd) == []  # nothing local: every location was on the endpoint
    assert_pipeline_on_s3(client, bucket, "delta-rs", ["din", "vbpr"])
    assert sorted(m["model"] for m in read_metrics(endpoint, root)) == ["din", "vbpr"]
