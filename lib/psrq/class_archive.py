"""A class-data-sharing (CDS) archive of the classes a local Spark driver's JVM loads.

A short local job spends seconds of JVM time loading and verifying Spark's classes (about
17,000 for build_samples); mapped from an archive at the JVM's start, they cost almost
nothing. On the demo data this took build_samples' job from 36.1 s to 30.4 s (mean of 3
runs side by side, benchmarks/README.md, 2026-12-08), and a local session starts ~2 s sooner.

`scripts/setup_env.sh` builds it once (`python -m psrq.class_archive build`): a small Spark
workload in a child process lists the classes its JVM loads (-XX:DumpLoadedClassList), then
`java -Xshare:dump` writes the archive for that JVM's exact class path. A local session
(psrq.spark.build_spark) maps it (-XX:SharedArchiveFile) when the archive's key (the Java,
pyspark's version, its jars) matches what runs now, and starts without it otherwise, as
before; HotSpot also checks the class path itself and ignores an archive that does not
match. `spark.class_archive=false` turns it off. psrq.submit gives it to a client-mode
driver too (this pyspark's spark-submit starts that JVM with the same class path); a
cluster-mode driver and the executors start on the cluster's machines, without it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from psrq.jvm import BUNDLES, resolved, spark_jars_dir

ARCHIVE = Path(sys.prefix) / "share" / "psrq" / "spark-classes.jsa"
OPTION = "spark.driver.extraJavaOptions"


def _java() -> Path | None:
    """The java Spark's launcher runs (bin/spark-class: $JAVA_HOME/bin/java, else PATH's)."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home, "bin", "java")) if home else shutil.which("java")
    return Path(os.path.realpath(found)) if found and Path(found).exists() else None


def key() -> dict | None:
    """What the archive is valid for: the JVM's build (its libjvm), pyspark's version and
    jars. None without a java."""
    java = _java()
    if java is None:
        return None
    vm = java.parent.parent / "lib" / "server" / "libjvm.so"
    vm = vm if vm.exists() else java
    st = vm.stat()
    jars = sorted(p.name for p in spark_jars_dir().glob("*.jar"))
    return {"java": str(java), "vm": [str(vm), st.st_size, st.st_mtime_ns], "pyspark": version("pyspark"),
            "jars": hashlib.sha256("\n".join(jars).encode()).hexdigest()}


def _key_file(archive: Path) -> Path:
    return archive.with_suffix(".json")


def ready(archive: Path = ARCHIVE) -> bool:
    """The archive exists and was built for the Java and pyspark that run now."""
    kf = _key_file(archive)
    if not (archive.is_file() and kf.is_file()):
        return False
    try:
        return json.loads(kf.read_text()) == key()
    except (OSError, ValueError):
        return False


def with_archive(settings: dict[str, str], archive: Path = ARCHIVE) -> dict[str, str]:
    """settings with the archive on the driver's JVM options (before any the settings
    already have, so theirs win), when it is ready; else settings unchanged."""
    if not ready(archive):
        return settings
    opt = f"-XX:SharedArchiveFile={archive}"
    opts = (f'"{opt}"' if " " in opt else opt) + " -Xshare:auto"  # Spark splits the options as a shell does
    given = settings.get(OPTION, "").strip()
    return {**settings, OPTION: f"{opts} {given}".strip()}


def workload(class_list: Path, info: Path) -> None:
    """A local session doing what the jobs do (Parquet, joins, aggregations, windows, a
    sort, Arrow to Python and back, Delta where setup resolved it) with its JVM listing
    each class it loads; writes that JVM's class path, home and module options to info."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from psrq.config import SparkConf
    from psrq.spark import build_spark

    bundles = [b for b in BUNDLES if resolved(b) is not None]
    cfg = SparkConf(master="local[1]", app_name="psrq-class-archive", shuffle_partitions=2, jvm_packages=bundles,
                    class_archive=False, conf={OPTION: f"-XX:DumpLoadedClassList={class_list}"})
    spark = build_spark(cfg)
    with tempfile.TemporaryDirectory(prefix="psrq-cds-") as tmp:
        df = spark.range(5000).select((F.col("id") % 97).alias("user_id"), (F.col("id") % 31).alias("item_id"),
                                      (F.rand(0) > 0.5).cast("int").alias("label"),
                                      F.timestamp_micros(F.col("id") * 1000).alias("ts"),
                                      F.array(F.col("id") % 7, F.col("id") % 5).alias("codes"))
        df.write.parquet(f"{tmp}/events")
        ev = spark.read.parquet(f"{tmp}/events")
        counts = ev.groupBy("item_id").agg(F.count("*").alias("n"), F.sum("label").alias("pos"))
        joined = ev.join(counts, "item_id", "left").withColumn(
            "r", F.row_number().over(Window.partitionBy("user_id").orderBy("ts")))
        joined.approxQuantile("n", [0.5], 0.01)
        ranked = counts.repartitionByRange(2, F.desc("n")).select("*", F.spark_partition_id().alias("p"),
                                                                 F.monotonically_increasing_id().alias("m")).persist()
        ranked.groupBy("p").count().collect()
        ranked.unpersist()
        out = joined.repartition(2, "user_id").sortWithinPartitions("user_id", "ts").mapInArrow(
            lambda batches: batches, joined.schema)
        out.write.mode("overwrite").option("maxRecordsPerFile", 0).parquet(f"{tmp}/samples")
        spark.read.parquet(f"{tmp}/samples").toArrow()
        if "delta" in bundles:
            counts.write.format("delta").save(f"{tmp}/delta")
            spark.read.format("delta").load(f"{tmp}/delta").collect()
        jvm = spark.sparkContext._jvm
        assert jvm is not None  # a started session has its gateway
        system = jvm.java.lang.System
        args = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
        info.write_text(json.dumps({"class_path": system.getProperty("java.class.path"),
                                    "java_home": system.getProperty("java.home"),
                                    "modules": [a for a in args if a.startswith("--add-modules")]}))
    spark.stop()


def _run(cmd: list[str], log_file: Path, what: str) -> None:
    """Runs cmd with its output in log_file (Spark's and the dump's thousands of warnings
    stay off the console); a failure raises with the log's tail."""
    with log_file.open("w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {rc}); the end of its output:\n{tail}")


def build(archive: Path = ARCHIVE, log=print) -> Path:
    """Runs the workload in a child process (its JVM exits with it, the class list
    complete), then dumps the archive for that JVM's class path. The key is written last:
    a failed build leaves no archive a session would use."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="psrq-cds-") as tmp:
        classes, info_file, partial = Path(tmp, "classes.lst"), Path(tmp, "info.json"), Path(tmp, "archive.jsa")
        log("running a small Spark workload to list the classes its JVM loads")
        _run([sys.executable, "-m", "psrq.class_archive", "workload", str(classes), str(info_file)],
             Path(tmp, "workload.log"), "the class-listing Spark workload")
        info = json.loads(info_file.read_text())
        log(f"dumping {sum(1 for _ in classes.open())} classes into {archive}")
        _run([str(Path(info["java_home"], "bin", "java")), "-Xshare:dump", f"-XX:SharedClassListFile={classes}",
              f"-XX:SharedArchiveFile={partial}", *info["modules"], "-cp", info["class_path"]],
             Path(tmp, "dump.log"), "java -Xshare:dump")
        _key_file(archive).unlink(missing_ok=True)
        shutil.move(partial, archive)
        _key_file(archive).write_text(json.dumps(key(), indent=2))
    return archive


def main(argv: list[str]) -> int:
    if argv[:1] == ["workload"] and len(argv) == 3:
        workload(Path(argv[1]), Path(argv[2]))
        return 0
    if argv == ["check"]:
        return 0 if ready() else 1
    if argv == ["build"]:
        build(log=lambda s: print(f"[setup] {s}", flush=True))
        return 0
    print("usage: python -m psrq.class_archive build | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
