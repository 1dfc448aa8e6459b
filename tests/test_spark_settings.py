from psrq.config import SparkConf, load_config
from psrq.spark import spark_settings


def test_local_settings_for_a_small_machine():
    s = spark_settings(load_config("local", "synthetic_small").spark)
    assert s["spark.sql.session.timeZone"] == "UTC"
    assert s["spark.driver.memory"] == "4g" and s["spark.sql.shuffle.partitions"] == "8"
    assert "spark.jars.packages" not in s


def test_the_stage_progress_bar_only_on_a_terminal(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    cfg = load_config("local", "synthetic_small").spark
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert spark_settings(cfg)["spark.ui.showConsoleProgress"] == "false"
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert spark_settings(cfg)["spark.ui.showConsoleProgress"] == "true"


def test_cluster_settings_load_delta_and_leave_resources_to_spark_submit(monkeypatch):
    from importlib.metadata import version

    from psrq import jvm

    monkeypatch.setenv("PSRQ_STORAGE_ROOT", "hdfs:///psrq")
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "4711")  # run by spark-submit
    # a driver where setup did not resolve the jars: Spark resolves the pinned coordinates
    monkeypatch.setattr(jvm, "resolved", lambda bundle, manifest=None: None)
    s = spark_settings(load_config("cluster", "synthetic_1m").spark)
    delta, aws = s["spark.jars.packages"].split(",")
    assert delta == f"io.delta:delta-spark_2.13:{version('delta-spark')}" and aws.startswith("org.apache.hadoop:hadoop-aws:")
    assert "spark.jars" not in s
    assert s["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    # off: Horovod's ranks and TorchDistributor's barrier tasks need all their tasks at once
    assert "spark.driver.memory" not in s and s["spark.dynamicAllocation.enabled"] == "false"


def test_user_conf_wins():
    s = spark_settings(SparkConf(master="local[2]", conf={"spark.sql.shuffle.partitions": "3"}))
    assert s["spark.sql.shuffle.partitions"] == "3"


def test_the_master_comes_from_spark_submit_never_from_a_profile(monkeypatch):
    from psrq.spark import resolve_master

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    for profile in ("local", "cluster"):
        monkeypatch.setenv("PSRQ_STORAGE_ROOT", "/tmp/psrq")
        cfg = load_config(profile, "synthetic_small")
        assert resolve_master(cfg.spark) == "local[*]"  # nothing says otherwise: the embedded default
        monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "4711")  # a driver started by spark-submit
        assert resolve_master(cfg.spark) is None
        assert "spark.driver.memory" not in spark_settings(cfg.spark)  # spark-submit's resources
        monkeypatch.delenv("PYSPARK_GATEWAY_PORT")
    forced = load_config("local", "synthetic_small", ["spark.master=local[3]"])
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "4711")
    assert resolve_master(forced.spark) == "local[3]"


def test_app_names_tell_jobs_and_runs_apart():
    from psrq.cli import app_name

    cfg = load_config("local", "synthetic_small", ["run.run_id=20261124"])
    assert app_name(cfg, "reindex_catalog") == "psrq-reindex_catalog-20261124"
