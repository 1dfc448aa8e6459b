"""Everything on object storage: a local S3-compatible endpoint (moto's server, bound to
127.0.0.1) holds the Delta tables, codebook artifacts, content, samples, checkpoints and
model bundles of a whole pipeline run, written and read through the filesystem layer:
delta-rs and pyarrow on the Python side, Spark's own s3a:// (hadoop-aws) for the Delta
tables of the delta-spark engine and for the samples. Credentials come from the process
environment only and never appear in any output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from psrq.standalone import free_port

from conftest import ROOT, job_env

pytestmark = pytest.mark.slow

SECRET = "psrq-test-secret-5b0d1e"  # must never show up in a log or an output
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "psrq-test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, bucket) of a moto S3 server on 127.0.0.1, stopped by its PID afterwards."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(f"moto server did not start on {endpoint}")
                time.sleep(0.3)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=SECRET)
        client.create_bucket(Bucket="music")
        yield endpoint, "music", client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def _keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


SMALL = ["dataset.modalities.text.dim=16", "dataset.modalities.audio.dim=12", "synthetic.n_items=300",
         "synthetic.n_users=100", "synthetic.block_size=64", "synthetic.mean_events_per_user=30", "codebooks.k=16",
         "codebooks.sample_size=300", "codebooks.compare=[]", "samples.history_len=5", "samples.content.dim=8",
         "train.max_steps=20", "train.dim=16", "spark.master=local[2]", "spark.shuffle_partitions=2"]


@pytest.mark.parametrize("engine,model,backend,reader,baseline", [
    ("delta-spark", "mcca", "horovod", "petastorm", None),  # the baseline's path is the delta-rs case's
    ("delta-rs", "vbpr", "single", "arrow", "din"),
])
def test_the_demo_pipeline_entirely_on_s3(s3, tmp_path, engine, model, backend, reader, baseline):
    endpoint, bucket, client = s3
    root = f"{bucket}/{engine}"
    # Spark's side names the bucket s3a://, the rest s3://: the layer maps both
    overrides = [f"storage.root=s3a://{root}/delta", f"storage.codebooks=s3://{root}/codebooks",
                 f"samples.path=s3a://{root}/samples", f"train.checkpoint_dir=s3://{root}/checkpoints",
                 f"storage.s3.endpoint={endpoint}", "storage.s3.region=us-east-1", "storage.s3.path_style=true",
                 f"storage.engine={engine}", "spark.jvm_packages=[delta,s3a]", f"train.model={model}",
                 f"train.backend={backend}", f"train.reader={reader}", f"demo.baseline={baseline or 'null'}",
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
    models = sorted({model, baseline} - {None})
    assert sorted(doc["evaluated"]) == models
    assert os.listdir(cwd) == []  # nothing local: every location was on the endpoint

    keys = _keys(client, bucket, f"{engine}/")
    def under(prefix):
        return [k for k in keys if k.startswith(f"{engine}/{prefix}")]
    for table in ("items", "interactions", "semantic_ids", "codebook_current", "item_vocab", "eval_metrics"):
        assert under(f"delta/{table}/_delta_log/00000000000000000000.json"), table
    # one predictions table per evaluation (named by its identity)
    assert len([k for k in under("delta/predictions/") if k.endswith("_delta_log/00000000000000000000.json")]) == len(models)
    assert under("codebooks/v0001/manifest.json") and under("samples/manifest.json")
    assert under("samples/content.safetensors") and under("samples/train/part-")
    assert len([k for k in under("checkpoints/") if k.endswith("/checkpoint.pt")]) == len(models)
    assert len([k for k in under("checkpoints/") if k.endswith("/result.json")]) == len(models)
    if backend == "horovod":
        assert {r["rank"] for r in doc["trained"]["ranks"]} == {0, 1}

    # the tables read back through delta-rs with the same options, in this process
    from deltalake import DeltaTable

    from psrq.storage import fs

    o = fs.FsOptions(endpoint=endpoint, region="us-east-1", path_style=True)
    uri, opts = fs.delta_rs_location(f"s3a://{root}/delta/eval_metrics", o)
    metrics = DeltaTable(uri, storage_options={**opts, "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                               "AWS_SECRET_ACCESS_KEY": SECRET}).to_pyarrow_table().to_pylist()
    assert sorted(m["model"] for m in metrics) == models
