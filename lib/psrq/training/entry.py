"""The first function a training rank runs, sent to it by value (cloudpickle): on a cluster a
rank is a process that Horovod's task service or TorchDistributor starts beside Spark's Python
worker, with the executor's environment but not the worker's path, so the package shipped
with --py-files (localised into the executor's working directory) is not importable there,
and an installed psrq of another version, or none, is what the rank would import. This module
imports nothing of psrq: it puts the shipped archives on the path first, then imports the
rank's function by name and hands it its arguments, sent as cloudpickle bytes so that they
are read only once the path is right."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys


def on_shipped_path(archives: list[str], target: str, payload: bytes):
    """archives: the names of the driver's --py-files (psrq.zip); target: "module:function"."""
    for name in archives:
        for base in (os.environ.get("HOROVOD_SPARK_WORK_DIR"), os.getcwd()):
            path = os.path.join(base, name) if base else ""
            if os.path.isfile(path):
                if path not in sys.path:
                    sys.path.insert(0, path)
                break
    import cloudpickle

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*cloudpickle.loads(payload))


@contextlib.contextmanager
def by_value():
    """While open, this module's functions are pickled by value (not imported by name), by
    cloudpickle (Horovod's) and by PySpark's own copy of it (TorchDistributor's: its barrier
    task pickles the function again for torchrun, and a function it had imported by name
    would import psrq from the executor's installed packages before this one ran)."""
    import cloudpickle
    from pyspark import cloudpickle as spark_cloudpickle

    me = sys.modules[__name__]
    picklers = [cloudpickle, spark_cloudpickle]
    for p in picklers:
        p.register_pickle_by_value(me)
    try:
        yield on_shipped_path
    finally:
        for p in picklers:
            p.unregister_pickle_by_value(me)


def shipped_archives(spark) -> list[str]:
    """The file names of the application's --py-files (none under a local master)."""
    files = spark.conf.get("spark.submit.pyFiles", "") if spark is not None else ""
    return [os.path.basename(f) for f in files.split(",") if f.strip()]
