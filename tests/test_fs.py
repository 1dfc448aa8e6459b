"""The filesystem layer: one resolution of every configured location for every engine."""
import os

import pytest
from pyarrow import fs as pafs

from psrq.config import LOCATION_KEYS, load_config
from psrq.errors import ConfigError
from psrq.storage import fs

from conftest import run_python


def test_every_engine_gets_the_same_options_in_its_own_dialect():
    o = fs.FsOptions(endpoint="http://127.0.0.1:9000", region="eu-west-1", path_style=True)
    filesystem, path = fs.resolve("s3a://bucket/psrq/items", o)
    assert isinstance(filesystem, pafs.S3FileSystem) and path == "bucket/psrq/items"
    assert filesystem.region == "eu-west-1"
    uri, opts = fs.delta_rs_location("s3a://bucket/psrq/items", o)
    assert uri == "s3://bucket/psrq/items"
    assert opts == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "true",
                    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false", "AWS_CONDITIONAL_PUT": "etag"}
    assert fs.spark_uri("s3://bucket/x") == "s3a://bucket/x" and fs.spark_uri("gs://b/x") == "gs://b/x"
    assert fs.spark_hadoop_conf(o) == {"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
                                       "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                                       "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1",
                                       "spark.hadoop.fs.s3a.path.style.access": "true"}
    # no secret ever passes through the layer: credentials are each process's environment's
    assert not any("KEY" in k or "SECRET" in k for k in {**opts, **fs.spark_hadoop_conf(o)})


def test_local_paths_and_file_uris_are_the_same_place(tmp_path):
    fs.write_text(f"file://{tmp_path}/a/b.json", "{}")
    assert fs.read_text(str(tmp_path / "a" / "b.json")) == "{}"
    assert fs.listdir(str(tmp_path / "a")) == ["b.json"] and fs.listdir(str(tmp_path / "none")) == []
    assert fs.delta_rs_location(f"file://{tmp_path}/t") == (f"{tmp_path}/t", None)
    fs.move(str(tmp_path / "a"), str(tmp_path / "c"))
    assert fs.exists(str(tmp_path / "c" / "b.json")) and not fs.exists(str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(str(tmp_path / "missing"))


def test_config_config_locations_of_an_unknown_scheme_name_the_key():
    for key in LOCATION_KEYS:
        with pytest.raises(ConfigError) as err:
            load_config("local", "synthetic_small", [f"{key}=ftp://host/psrq"])
        msg = str(err.value)
        assert msg.startswith(f"{key}: unsupported filesystem scheme 'ftp://'") and "s3://" in msg and "\n" not in msg
    cfg = load_config("local", "synthetic_small", ["storage.root=s3a://bucket/psrq", "samples.path=gs://b/samples"])
    assert cfg.table_path("items") == "s3a://bucket/psrq/items"


@pytest.mark.real  # starts a process
def test_a_job_given_an_unsupported_scheme_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = run_python(["jobs/generate_synthetic.py", "storage.root=ftp://127.0.0.1/psrq",
                      f"storage.codebooks={tmp_path}/codebooks"], timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["error: storage.root: unsupported filesystem scheme 'ftp://' in 'ftp://127.0.0.1/psrq' "
                     f"(supported: {fs.SUPPORTED})"]
    assert os.listdir(tmp_path) == []


def test_the_launcher_hands_the_storage_options_to_spark_submit():
    from psrq.submit import command

    cmd = command("jobs/assign_ids.py", ["storage.root=s3a://music/psrq", "storage.s3.endpoint=http://127.0.0.1:9000",
                                         "storage.s3.path_style=true"], "spark://127.0.0.1:7077", "dist/psrq.zip")
    confs = {cmd[i + 1] for i, c in enumerate(cmd) if c == "--conf"}
    assert {"spark.hadoop.fs.s3a.endpoint=http://127.0.0.1:9000", "spark.hadoop.fs.s3a.path.style.access=true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled=false"} <= confs
