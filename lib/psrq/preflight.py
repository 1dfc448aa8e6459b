"""Before a job's first real Spark work on a cluster: one tiny task asks the executors' Python
for the stack this job needs, and compares its versions with the driver's. A missing module
or another version fails the job in seconds with one message, instead of a JVM stack trace
minutes into the first stage."""
from __future__ import annotations

import importlib
import sys

from psrq.errors import PsrqError

# what every job's tasks import; the ones that run rankers on the executors add torch
STACK = ("numpy", "pyarrow", "pandas", "psrq")
MODEL_JOBS = {"train_ranker", "evaluate", "demo", "tune", "run_experiments"}


class EnvironmentMismatch(PsrqError):
    """The executors' Python cannot run this job."""


def versions(modules) -> dict:
    """{"python": the interpreter, "versions": module -> version, "missing": module -> why}."""
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    out = {"python": sys.executable, "version": sys.version.split()[0], "versions": found, "missing": missing}
    for name in modules:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - any import failure is what we report
            missing[name] = f"{type(exc).__name__}: {exc}"
    return out


def problems(driver: dict, executor: dict) -> list[str]:
    """What the executors lack or hold at another version than the driver (pure)."""
    out = [f"{m} is missing ({why})" for m, why in executor["missing"].items()]
    for m, v in executor["versions"].items():
        if m in driver["versions"] and driver["versions"][m] != v:
            out.append(f"{m} {v} (the driver has {driver['versions'][m]})")
    return out


def check_executors(spark, job: str) -> None:
    """One task on an executor imports the job's stack; raises EnvironmentMismatch naming the
    executors' Python, what is missing or different, and how to point at another one."""
    from pyspark import cloudpickle

    # the probe travels by value: it must run where psrq itself does not import
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    modules = (*STACK, "torch") if job in MODEL_JOBS else STACK
    driver = versions(modules)
    got = spark.sparkContext.parallelize([0], 1).map(lambda _: versions(modules)).collect()[0]
    found = problems(driver, got)
    if found:
        raise EnvironmentMismatch(
            f"the executors' Python ({got['python']}, {got['version']}) cannot run {job}: {'; '.join(found)}. "
            "Point the executors at an interpreter with the pinned stack: python -m psrq.submit --python <path> "
            "(spark.pyspark.python), or ship an environment (--conf spark.archives=env.tar.gz#env --python "
            "./env/bin/python); psrq itself travels as --py-files (make package)")
