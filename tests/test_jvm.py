"""JVM packages: versions derived from the pinned Python packages, resolved by setup."""
import json
import re
from importlib.metadata import version

import pytest

from psrq import jvm
from psrq.config import SparkConf
from psrq.errors import ConfigError
from psrq.spark import spark_settings


def test_coordinates_follow_the_pinned_python_packages():
    (delta,) = jvm.coordinates("delta")
    assert delta.version == version("delta-spark") and delta.artifact == f"delta-spark_{jvm.scala_binary_version()}"
    (aws,) = jvm.coordinates("s3a")
    assert str(aws) == f"org.apache.hadoop:hadoop-aws:{jvm.hadoop_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", jvm.hadoop_version())
    assert jvm.packages(["delta", "s3a"]) == f"{delta},{aws}"
    with pytest.raises(ConfigError, match="unknown bundle 'hdfs'"):
        jvm.coordinates("hdfs")


def test_pom_names_each_coordinate():
    pom = jvm.pom("delta")
    (c,) = jvm.coordinates("delta")
    assert f"<artifactId>{c.artifact}</artifactId><version>{c.version}</version>" in pom


def test_setup_resolved_every_bundle_and_drops_what_spark_ships():
    for bundle in jvm.BUNDLES:
        jars = jvm.resolved(bundle)
        assert jars, f"setup did not resolve {bundle}"
        names = [j.rsplit("/", 1)[-1] for j in jars]
        assert not any(n.startswith(("scala-library-", "antlr4-runtime-")) for n in names), names
    assert any("delta-spark_" in j for j in jvm.resolved("delta"))
    assert any("hadoop-aws-" in j for j in jvm.resolved("s3a"))


def test_stale_or_missing_resolution_is_refused(tmp_path):
    manifest = tmp_path / "jars.json"
    with pytest.raises(ConfigError, match="not resolved.*make setup"):
        jvm.local_jars(["delta"], manifest)
    jar = tmp_path / "delta-spark_2.13-0.1.jar"
    jar.write_bytes(b"")
    manifest.write_text(json.dumps({"delta": {"coordinates": ["io.delta:delta-spark_2.13:0.1"], "jars": [str(jar)]}}))
    assert jvm.resolved("delta", manifest) is None  # resolved for another version than the pin
    cp = tmp_path / "cp.txt"
    cp.write_text(f"{jar}:{tmp_path}/gone.jar")
    with pytest.raises(ConfigError, match="missing"):
        jvm.record("delta", cp, manifest)


def test_session_settings_use_the_local_jars_and_the_delta_extension():
    s = spark_settings(SparkConf(jvm_packages=["delta", "s3a"]))
    assert s["spark.jars"].split(",") == jvm.local_jars(["delta", "s3a"])
    assert "spark.jars.packages" not in s
    assert s["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    plain = spark_settings(SparkConf())
    assert "spark.jars" not in plain and "spark.sql.extensions" not in plain
