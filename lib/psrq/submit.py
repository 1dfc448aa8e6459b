"""The documented way to run a job on a cluster: builds and runs the spark-submit command.

    python -m psrq.submit --master spark://host:7077 jobs/assign_ids.py --profile cluster run.run_id=20261124

It ships the package with its default configuration (dist/psrq.zip, `make package`), names
the application psrq-<job>-<run_id>, passes the profile's Spark settings, and hands over
the JVM packages the configuration asks for: the jars setup resolved (`--jars`, nothing is
downloaded by the cluster) or else their Maven coordinates (`--packages`), both derived
from the pinned Python packages. `--dry-run` prints the command instead of running it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from psrq import class_archive, jvm
from psrq.cli import JSON_OUT, app_name, parse_args
from psrq.config import is_dataset_file, load_config
from psrq.errors import PsrqError
from psrq.spark import GPU_DISCOVERY, gpu_discovery_script, spark_settings
from psrq.storage import fs

ROOT = Path(__file__).resolve().parents[2]


def spark_submit_binary() -> str:
    import pyspark

    return os.environ.get("SPARK_SUBMIT") or str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def command(job: str, job_args: list[str], master: str, package: str, python: str | None = None,
            deploy_mode: str | None = None, extra_conf: Sequence[str] = ()) -> list[str]:
    """The spark-submit command line (pure: tested without running it)."""
    args = parse_args("", job_args)
    cfg = load_config(args.profile, args.dataset, args.overrides, args.conf_dir)
    cmd = [spark_submit_binary(), "--master", master, "--name", app_name(cfg, Path(job).stem), "--py-files", package]
    if deploy_mode:
        cmd += ["--deploy-mode", deploy_mode]
    bundles = list(cfg.spark.jvm_packages)
    if bundles:
        if all(jvm.resolved(b) is not None for b in bundles):
            cmd += ["--jars", ",".join(jvm.local_jars(bundles))]
        else:
            cmd += ["--packages", jvm.packages(bundles)]
    settings = spark_settings(cfg.spark, master="" if not master.startswith("local") else master,
                              storage=fs.spark_hadoop_conf(cfg.fs_options()))
    for key in ("spark.jars", "spark.jars.packages"):
        settings.pop(key, None)
    if cfg.spark.gpus_per_executor and not master.startswith("local"):
        cmd += ["--files", f"{gpu_discovery_script()}#{GPU_DISCOVERY}"]  # renamed in the executors' folder
    if python:  # the executors' (and in cluster deploy mode the driver's) interpreter
        settings["spark.pyspark.python"] = python
    if deploy_mode != "cluster":  # client mode: the driver runs here, with the launching interpreter
        settings["spark.pyspark.driver.python"] = os.environ.get("PYSPARK_DRIVER_PYTHON") or sys.executable
        if cfg.spark.class_archive:  # and its JVM is launched by this pyspark's spark-submit, as a local one
            settings = class_archive.with_archive(settings)
    if is_dataset_file(args.dataset) and "://" not in args.dataset:
        # your own dataset file travels with the job; a driver on the cluster reads its copy
        local = str(Path(args.dataset).expanduser().resolve())
        cmd += ["--files", local]
        if deploy_mode == "cluster":
            job_args = _replace_option(job_args, "--dataset", f"./{Path(local).name}")
    for key, value in sorted(settings.items()):
        cmd += ["--conf", f"{key}={value}"]
    for kv in extra_conf:
        cmd += ["--conf", kv]
    return [*cmd, job, *job_args]


def _replace_option(args: list[str], option: str, value: str) -> list[str]:
    out = list(args)
    i = out.index(option)
    out[i + 1] = value
    return out


def stale_package(package: Path) -> str | None:
    """Why the package zip must be (re)built from this source tree, or None: missing, or
    older than a file of lib/psrq or conf/ (only for the tree's own dist/psrq.zip)."""
    if not package.is_file():
        return "missing"
    if package.resolve() != (ROOT / "dist" / "psrq.zip").resolve() or not (ROOT / "lib" / "psrq").is_dir():
        return None
    built = package.stat().st_mtime
    newer = next((p for d in (ROOT / "lib" / "psrq", ROOT / "conf") for p in d.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.stat().st_mtime > built), None)
    return f"older than {newer.relative_to(ROOT)}" if newer else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m psrq.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--master", required=True, help="spark://host:port, yarn, k8s://https://host:port, local[N]")
    p.add_argument("--deploy-mode", choices=["client", "cluster"], default=None)
    p.add_argument("--package", default=str(ROOT / "dist" / "psrq.zip"), help="the zip `make package` builds")
    p.add_argument("--python", default=None, help="spark.pyspark.python for the executors (e.g. ./env/bin/python)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="more spark-submit --conf")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    p.add_argument("job", help="jobs/<job>.py")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's own arguments")
    a = p.parse_args(argv)
    if not Path(a.job).is_file():
        print(f"error: no job at {a.job}", file=sys.stderr)
        return 2
    package = Path(a.package)
    if (why := stale_package(package)) is not None and not a.dry_run:
        if package.resolve() != (ROOT / "dist" / "psrq.zip").resolve():
            print(f"error: {a.package} not found: build it with `make package` (dist/psrq.zip)", file=sys.stderr)
            return 2
        print(f"psrq.submit: {a.package} is {why}: building it (make package)", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py")], check=True, stdout=sys.stderr)
    try:
        cmd = command(a.job, a.job_args, a.master, a.package, a.python, a.deploy_mode, a.conf)
    except PsrqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.dry_run:
        print(shlex.join(cmd))
        return 0
    # the driver (client mode) runs this interpreter unless told otherwise: the one with the stack
    env = {**os.environ, "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable)}
    if "--json" not in a.job_args or a.deploy_mode == "cluster":
        return subprocess.call(cmd, env=env)
    # --json (client mode): the driver writes its document to a file; spark-submit's own
    # output (the driver's stdout and stderr merged) goes to stderr; stdout gets the document
    with tempfile.TemporaryDirectory(prefix="psrq-submit-") as tmp:
        doc = Path(tmp, "result.json")
        code = subprocess.call(cmd, stdout=sys.stderr.fileno(), env={**env, JSON_OUT: str(doc)})
        if code == 0 and doc.is_file():
            sys.stdout.write(doc.read_text())
            sys.stdout.flush()
        return code


if __name__ == "__main__":
    sys.exit(main())
