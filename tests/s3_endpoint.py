"""A local S3-compatible endpoint for the tests that put a pipeline on object storage (moto's
server, bound to 127.0.0.1, stopped by its PID), and the credentials every process of those
tests gets from its environment only: SECRET must never show up in any output or log."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from psrq.standalone import free_port

SECRET = "psrq-test-secret-5b0d1e"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "psrq-test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
BUCKET = "music"


@contextmanager
def moto_endpoint(folder: Path):
    """(endpoint, bucket, boto3 client) of a fresh server with one bucket; its log in folder."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "w")  # noqa: SIM115 - closed below
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
                    raise AssertionError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.3)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=SECRET)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, BUCKET, client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def s3_locations(endpoint: str, root: str) -> list[str]:
    """The overrides that put a run's every location under s3://<root>/: Spark's side names
    the bucket s3a://, the rest s3:// (the filesystem layer maps both)."""
    return [f"storage.root=s3a://{root}/delta", f"storage.codebooks=s3://{root}/codebooks",
            f"samples.path=s3a://{root}/samples", f"train.checkpoint_dir=s3://{root}/checkpoints",
            f"storage.s3.endpoint={endpoint}", "storage.s3.region=us-east-1", "storage.s3.path_style=true"]


def assert_pipeline_on_s3(client, bucket: str, prefix: str, models: list[str]) -> None:
    """What a demo run with s3_locations(.., f"{bucket}/{prefix}") left on the endpoint:
    every table, the codebooks, samples with content, one checkpoint and result per model."""
    found = keys(client, bucket, f"{prefix}/")

    def under(p):
        return [k for k in found if k.startswith(f"{prefix}/{p}")]
    for table in ("items", "interactions", "semantic_ids", "codebook_current", "item_vocab", "eval_metrics"):
        assert under(f"delta/{table}/_delta_log/00000000000000000000.json"), table
    # one predictions table per evaluation (named by its identity)
    assert len([k for k in under("delta/predictions/") if k.endswith("_delta_log/00000000000000000000.json")]) == len(models)
    assert under("codebooks/v0001/manifest.json") and under("samples/manifest.json")
    assert under("samples/content.safetensors") and under("samples/train/part-")
    assert len([k for k in under("checkpoints/") if k.endswith("/checkpoint.pt")]) == len(models)
    assert len([k for k in under("checkpoints/") if k.endswith("/result.json")]) == len(models)


def delta_table(endpoint: str, location: str):
    """The Delta table at s3://<location>, opened with delta-rs and the options a run with
    s3_locations used (credentials given explicitly: the test process's environment has none)."""
    from deltalake import DeltaTable

    from psrq.storage import fs

    o = fs.FsOptions(endpoint=endpoint, region="us-east-1", path_style=True)
    uri, opts = fs.delta_rs_location(f"s3a://{location}", o)
    return DeltaTable(uri, storage_options={**opts, "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                            "AWS_SECRET_ACCESS_KEY": SECRET})


def read_metrics(endpoint: str, root: str) -> list[dict]:
    """The eval_metrics rows of a run with s3_locations(endpoint, root)."""
    return delta_table(endpoint, f"{root}/delta/eval_metrics").to_pyarrow_table().to_pylist()
