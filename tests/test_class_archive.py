"""The class-data-sharing archive setup builds (psrq.class_archive): used by a local session
only when it matches the Java and pyspark that run, and mapped for real by the JVM."""
import json

from psrq import class_archive


def _fake_archive(tmp_path, key):
    archive = tmp_path / "spark-classes.jsa"
    archive.write_bytes(b"not read by these tests")
    archive.with_suffix(".json").write_text(json.dumps(key))
    return archive


def test_the_archive_is_used_only_when_its_key_matches(tmp_path):
    missing = tmp_path / "none.jsa"
    settings = {"spark.app.name": "x"}
    assert class_archive.with_archive(settings, missing) == settings
    stale = _fake_archive(tmp_path, {**class_archive.key(), "pyspark": "0.0.1"})  # built for another pyspark
    assert not class_archive.ready(stale)
    assert class_archive.with_archive(settings, stale) == settings
    good = _fake_archive(tmp_path, class_archive.key())
    assert class_archive.ready(good)
    opts = class_archive.with_archive(settings, good)[class_archive.OPTION]
    assert opts.startswith(f"-XX:SharedArchiveFile={good} ")


def test_an_archive_path_with_a_space_stays_one_java_option(tmp_path):
    folder = tmp_path / "my venv"
    folder.mkdir()
    good = _fake_archive(folder, class_archive.key())
    assert class_archive.with_archive({}, good)[class_archive.OPTION] == f'"-XX:SharedArchiveFile={good}" -Xshare:auto'


def test_the_users_java_options_come_after_the_archive_and_so_win(tmp_path):
    good = _fake_archive(tmp_path, class_archive.key())
    out = class_archive.with_archive({class_archive.OPTION: "-Xshare:off -Dx=1"}, good)
    assert out[class_archive.OPTION].endswith(" -Xshare:off -Dx=1")
    assert out[class_archive.OPTION].startswith("-XX:SharedArchiveFile=")


def test_the_suites_local_session_maps_the_archive_setup_built(spark):
    # setup (make test runs it) builds the archive for this environment's Java and pyspark;
    # the shared session was started by build_spark in local mode, so its JVM must map it
    assert class_archive.ready(), "no class archive for this Java and pyspark: run `make setup`"
    jvm = spark.sparkContext._jvm
    args = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert f"-XX:SharedArchiveFile={class_archive.ARCHIVE}" in args
    # with a SharedArchiveFile that fails to map, -Xshare:auto runs without any sharing
    assert "sharing" in jvm.java.lang.System.getProperty("java.vm.info")


def test_the_launcher_gives_a_client_mode_driver_the_archive_and_a_cluster_one_none():
    # spark-submit starts a client-mode driver on this machine with pyspark's class path: it
    # can map the archive; a cluster-mode driver starts on another machine
    from psrq.submit import command

    def java_options(*args, **kw) -> list[str]:
        cmd = command("jobs/assign_ids.py", list(args), "spark://127.0.0.1:7077", "dist/psrq.zip", **kw)
        return [cmd[i + 1] for i, c in enumerate(cmd) if c == "--conf" and cmd[i + 1].startswith(class_archive.OPTION)]

    assert class_archive.ready(), "no class archive for this Java and pyspark: run `make setup`"
    assert java_options() == [f"{class_archive.OPTION}=-XX:SharedArchiveFile={class_archive.ARCHIVE} -Xshare:auto"]
    assert java_options(deploy_mode="cluster") == []
    assert java_options("spark.class_archive=false") == []
