"""One shared local SparkSession for the whole run; small data everywhere."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the hand-set defaults in every process the tests start: the datasets' tuned settings
# (conf/tuned) would make every training in the suite run many epochs. test_tuning tests them.
os.environ["PSRQ_TUNED"] = "0"
# Runs are not tracked unless a test asks (tracking.uri on its command line wins): the default
# local store would be a SQLite file, and 2-3 s of set-up, in every job process the suite starts.
# test_tracking runs the demo against a real server and the local store for real.
os.environ["PSRQ_TRACKING"] = "off"
# Every JVM the suite starts (the shared session's, each job's driver, the standalone
# master, workers and executors) compiles with C1 only: they live for seconds to minutes on
# small data, and C2's compiler threads take the cores they share (2 here) from the work.
# Measured here (two runs of test_cluster): the delta-spark cluster demo 153 s -> 94 s.
# Benchmarks and the product keep the JVM's default; a JAVA_TOOL_OPTIONS of your own is kept.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
# One math-library thread per process the suite starts (this one, its jobs, their drivers):
# two pytest processes share 2 cores, and a second OpenMP or BLAS thread does not halve a
# step but spins waiting for a core the other process holds. Measured here (the sparse-table
# trainings of test_training beside one busy core): 127 s -> 60 s, user CPU 175 s -> 66 s.
# Ranks and Spark's Python workers get 1 from the product already; your own setting is kept.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


# fixtures that start real components: a test using one (directly or through another
# fixture) is marked `real`, and `make test-fast` leaves it out
REAL_FIXTURES = {"spark", "engine", "python_exe", "s3", "cluster"}


# The modules whose tests take longest, longest first (measured: README, "make test"). With
# `make test`'s two processes (xdist --dist loadfile --no-loadscope-reorder) each module goes
# whole to the first free process in this order, so the long ones start at once and the short
# ones fill the end instead of one long module running alone there.
LONGEST_FIRST = ("test_training.py", "test_faults.py", "test_cluster.py", "test_jobs.py", "test_object_storage.py",
                 "test_experiments.py", "test_tracking.py", "test_reindex.py", "test_evaluation.py", "test_samples.py", "test_serving.py",
                 "test_assign.py",
                 "test_storage_delta_rs.py", "test_tuning.py", "test_readme.py", "test_movielens.py",
                 "test_validation.py", "test_models.py", "test_storage_delta_spark.py", "test_stack_smoke.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.real)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


@pytest.fixture(scope="session")
def spark():
    from psrq.config import SparkConf
    from psrq.spark import build_spark

    # The Delta jars setup resolved are on the class path, so the delta-spark engine is
    # tested for real; tests that run stages pick their engine explicitly (small_config).
    cfg = SparkConf(
        master="local[2]", app_name="psrq-tests", shuffle_partitions=2, driver_memory="2g",
        jvm_packages=["delta"],
        conf={"spark.ui.showConsoleProgress": "false", "spark.default.parallelism": "2",
              "spark.databricks.delta.snapshotPartitions": "2"},  # as conf/local.yaml
    )
    session = build_spark(cfg)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def engine(spark):
    from psrq.storage import DeltaRsEngine

    return DeltaRsEngine(spark, max_rows_per_file=50)


def small_config(tmp_path, *overrides):
    """The local profile with a tiny synthetic dataset under tmp_path."""
    from psrq.config import load_config

    base = [
        f"storage.root={tmp_path}/delta",
        f"storage.codebooks={tmp_path}/codebooks",
        # the shared session has the Delta jars: without this, engine=auto would pick delta-spark
        "storage.engine=delta-rs",
        "dataset.modalities.text.dim=16",
        "dataset.modalities.audio.dim=12",
        "synthetic.n_items=400",
        "synthetic.n_users=120",
        "synthetic.block_size=64",
        "synthetic.mean_events_per_user=30",
    ]
    return load_config("local", "synthetic_small", [*base, *overrides])


@pytest.fixture(scope="session")
def small_pipeline(spark, tmp_path_factory):
    """The small pipeline built once per run (generate, fit, assign, build samples), for the
    modules that read it. A test may add to it (a training, an evaluation) but must not change
    what is there: write elsewhere (with_overrides of the paths) or on a copy (copy_pipeline)."""
    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage
    from psrq.data.generate import generate
    from psrq.samples.build import build_samples

    from psrq.job import JobContext

    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = small_config(tmp, "codebooks.k=16", "codebooks.sample_size=400", f"samples.path={tmp}/samples",
                       "samples.history_len=5", "samples.qarm.codes=true")  # QARM trains on them too
    generate(JobContext.of(spark, cfg))
    fit_stage(JobContext.of(spark, cfg))
    assign(JobContext.of(spark, cfg))
    return cfg, build_samples(JobContext.of(spark, cfg))


def copy_tables(root, codebooks, dest) -> dict:
    """The Delta tables under root and the codebooks copied under dest (Delta logs name their
    files relative to the table); the overrides that point a configuration at the copies."""
    import shutil

    shutil.copytree(root, f"{dest}/delta")
    shutil.copytree(codebooks, f"{dest}/codebooks")
    return {"storage.root": f"{dest}/delta", "storage.codebooks": f"{dest}/codebooks"}


def override_args(overrides: dict) -> list[str]:
    """A job's command-line overrides (key=value) for a dict of them (as copy_tables gives)."""
    return [f"{k}={v}" for k, v in overrides.items()]


def copy_pipeline(cfg, dest):
    """cfg's tables and codebooks copied under dest, and cfg pointing at the copies."""
    return cfg.with_overrides(copy_tables(cfg.storage.root, cfg.storage.codebooks, dest))


def load_job(name: str):
    """The module of jobs/<name>.py (its stage and main), loaded from the source tree."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", os.path.join(ROOT, "jobs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_env() -> dict:
    """The environment a job started by a test runs with (the source tree's package first)."""
    return {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}


def run_python(args: list[str], **kw):
    """This interpreter on `args`, from the repository, output captured as text."""
    import subprocess

    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=job_env(), **kw)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, bucket, boto3 client) of a local S3-compatible server (tests/s3_endpoint.py)."""
    from s3_endpoint import moto_endpoint

    with moto_endpoint(tmp_path_factory.mktemp("moto")) as found:
        yield found


@pytest.fixture
def python_exe():
    return sys.executable
