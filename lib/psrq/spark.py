"""SparkSession from the `spark` section of the configuration.

The master: `spark.master` when set, else spark-submit's (`--master`), else local[*] (the
embedded default). Local masters get settings for a small machine and the loopback address;
the profiles carry tuning only. JVM packages (Delta, hadoop-aws) from psrq.jvm."""
from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from pyspark.sql import SparkSession

from psrq import class_archive, jvm
from psrq.config import SparkConf


def submitted() -> bool:
    """True in a driver started by spark-submit (it hands the Python process its gateway)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def resolve_master(cfg: SparkConf) -> str | None:
    """None: spark-submit's --master applies."""
    if cfg.master:
        return cfg.master
    return None if submitted() else "local[*]"


def spark_settings(cfg: SparkConf, master: str | None = None, storage: dict[str, str] | None = None) -> dict[str, str]:
    """Every setting the builder applies (pure: testable without a JVM). master: the
    resolved master (default: resolve_master(cfg)); storage: the filesystem layer's
    spark.hadoop.* settings (psrq.storage.fs.spark_hadoop_conf)."""
    master = master if master is not None else resolve_master(cfg)
    settings = {
        # one time zone everywhere: Delta stores timestamps as UTC instants
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_rows),
        "spark.python.worker.reuse": "true",
        # not INT96: readers outside Spark (pyarrow, petastorm) expect standard timestamps
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # adaptive execution may merge a cached plan's shuffle partitions too: otherwise a
        # persisted aggregate keeps spark.sql.shuffle.partitions (the cluster profile's 400)
        # and every read of it runs that many tasks (build_samples on the demo's data: 1,250
        # tasks -> 53 on the 2-worker cluster, benchmarks/README.md)
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
        # the stage progress bar redraws with carriage returns: a terminal's, not a log's
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
    }
    if master and master.startswith("local"):
        settings.update(
            {
                # one machine: the driver listens on the loopback address only
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.memory": cfg.driver_memory,
                "spark.ui.enabled": "false",
                "spark.sql.adaptive.coalescePartitions.enabled": "true",
                # executors are the driver's JVM in local mode: keep broadcast joins small
                "spark.sql.autoBroadcastJoinThreshold": str(32 * 1024 * 1024),
            }
        )
    # Spark already runs one task per core: one BLAS thread per Python worker avoids
    # oversubscribing the cores in the matrix products of encoding
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        settings[f"spark.executorEnv.{var}"] = "1"
    settings.update(jvm_settings(cfg.jvm_packages))
    if not (master or "").startswith("local"):  # a cluster (or spark-submit's master)
        settings.update(gpu_settings(cfg.gpus_per_executor))
    settings.update(storage or {})
    settings.update(cfg.conf)
    return settings


GPU_DISCOVERY = "psrq_gpu_discovery.sh"  # its name in the executors' working directory


def gpu_discovery_script() -> str:
    """The discovery script shipped with the package (psrq/resources), for spark-submit --files."""
    from importlib.resources import files

    return str(files("psrq").joinpath("resources", "gpu_discovery.sh"))


def gpu_settings(gpus_per_executor: int) -> dict[str, str]:
    """Spark GPU scheduling: each executor holds `gpus_per_executor` GPUs (found by the
    shipped discovery script, which spark-submit --files puts in its working directory) and
    each task one: a Horovod rank or a TorchDistributor process gets a GPU of its own."""
    if not gpus_per_executor:
        return {}
    return {"spark.executor.resource.gpu.amount": str(gpus_per_executor),
            "spark.task.resource.gpu.amount": "1",
            "spark.executor.resource.gpu.discoveryScript": f"./{GPU_DISCOVERY}"}


def jvm_settings(bundles: Sequence[str]) -> dict[str, str]:
    """The jars of the requested JVM packages: those setup resolved with Maven (`spark.jars`,
    nothing downloaded at start), or else their coordinates for Spark to resolve itself."""
    if not bundles:
        return {}
    if all(jvm.resolved(b) is not None for b in bundles):
        out = {"spark.jars": ",".join(jvm.local_jars(bundles))}
    else:
        out = {"spark.jars.packages": jvm.packages(bundles)}
    if "delta" in bundles:
        out["spark.sql.extensions"] = "io.delta.sql.DeltaSparkSessionExtension"
        out["spark.sql.catalog.spark_catalog"] = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    return out


def launch_settings() -> dict[str, str]:
    """The Spark settings spark-submit started this driver with (its --conf, spark-defaults)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the gateway spark-submit launched: its system properties
    return dict(SparkConf().getAll())


def build_spark(cfg: SparkConf, app_name: str | None = None, storage: dict[str, str] | None = None) -> SparkSession:
    master = resolve_master(cfg)
    if master and master.startswith("local"):
        # local workers run the driver's interpreter (and so the same pinned packages); on a
        # cluster the executors' Python comes from spark-submit (spark.pyspark.python)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # before the JVM starts
    builder = SparkSession.builder.appName(app_name or cfg.app_name)
    if master:
        builder = builder.master(master)
    settings = spark_settings(cfg, master or "", storage)
    if master and master.startswith("local") and cfg.class_archive and not submitted():
        settings = class_archive.with_archive(settings)  # pyspark starts this JVM: it can map the archive
    if submitted():
        # one precedence: the command line over the profile over the defaults. The launcher
        # passed the configuration's settings to spark-submit and the user's --conf after
        # them (the last wins there); re-applying the configuration here would undo a --conf
        launched = launch_settings()
        settings = {k: v for k, v in settings.items() if k not in launched}
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


@contextmanager
def side_jobs(spark: SparkSession, name: str, threads: int = 3) -> Iterator[Callable[..., Future]]:
    """Spark work beside the caller's: yields submit(fn, *args) -> Future. Spark runs the jobs
    of several driver threads at once, so small jobs fill the cores a big one leaves idle and
    driver-side work overlaps the executors'. If the caller fails, the side jobs are cancelled
    (their job group), not waited for to the end."""
    sc = spark.sparkContext
    group = f"{name}-{uuid.uuid4().hex[:8]}"

    def grouped(fn: Callable, *args):
        sc.setJobGroup(group, name)  # this thread's jobs (PySpark pins a JVM thread to it)
        return fn(*args)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        try:
            yield lambda fn, *args: pool.submit(grouped, fn, *args)
        except BaseException:
            sc.cancelJobGroup(group)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
