"""Shared entry point of the jobs: parse arguments, load the configuration, start Spark,
run the stage with the job's context (psrq.job), print the outcome. Errors a user can act
on end the job with exit code 2 and one clear message instead of a traceback."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from psrq.config import Config, load_config
from psrq.errors import PsrqError, storage_refusal
from psrq.job import JobContext
from psrq.storage import fs
from psrq.storage.probe import output_locations, probe_writable

log = logging.getLogger("psrq")
# where --json writes its document when set (psrq.submit sets it: under spark-submit the
# driver's stdout and stderr reach the caller as one stream)
JSON_OUT = "PSRQ_JSON_OUT"
DEMO_DATASET = "synthetic_small"  # --dataset in local mode when none is given


def parse_args(description: str, argv: list[str] | None = None, reads: tuple[str, ...] = ()) -> argparse.Namespace:
    """reads: the configuration sections the job reads, listed by --help with their defaults."""
    epilog = "Any configuration key can be overridden: key.path=value (e.g. storage.root=/data/psrq)."
    if reads:
        from psrq.settings_help import describe

        epilog += ("\n\nThe settings this job reads (key = default  # meaning; --show-config prints their merged "
                   f"values):\n{describe(reads)}")
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=epilog)
    p.add_argument("--profile", default="local", help="conf/<profile>.yaml: local (default) or cluster")
    p.add_argument("--dataset", default=None,
                   help="a name in conf/datasets/ or a YAML file (a path or URI); required on a cluster, "
                        f"{DEMO_DATASET} (the synthetic demo) by default in local mode")
    p.add_argument("--conf-dir", default=None, help="folder with base.yaml, profiles and datasets/")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (only it: logs go to stderr)")
    p.add_argument("--master", default=None, help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--show-config", action="store_true",
                   help="print the merged configuration of the sections this job reads (YAML) and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_intermixed_args(argv)  # options anywhere on the line, before or after key=value
    if args.dataset is None:
        from psrq.spark import submitted

        if submitted() or args.profile == "cluster" or (args.master or "local").split("[")[0] != "local":
            p.error("--dataset is required on a cluster: a name in conf/datasets/ or a YAML file of your own "
                    f"(without it a job would run with the synthetic demo's settings, {DEMO_DATASET})")
        args.dataset = DEMO_DATASET
    return args


class Py4jRetryFilter(logging.Filter):
    """Drops py4j's INFO records. When the JVM has closed a pooled socket (a thread that
    used the gateway ended: Horovod's Spark thread does), py4j retries the command on a new
    one and logs the first attempt's traceback at INFO on the *root* logger, past its own
    logger's level: a traceback for a command that succeeded. Its warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}py4j{os.sep}" not in record.pathname


def configure_logging() -> None:
    """INFO lines with time and module on stderr, library chatter quietened at its source."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    # py4j's INFO lines report closed sockets as errors; faiss's list the CPU builds it tried
    for noisy in ("py4j", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, Py4jRetryFilter) for f in handler.filters):
            handler.addFilter(Py4jRetryFilter())


def run_job(description: str, stage: Callable, argv: list[str] | None = None, writes: tuple[str, ...] = (),
            needs_spark: bool = True, reads: tuple[str, ...] = ()) -> int:
    """stage(job: JobContext) -> dict (the job's summary). writes: the configuration keys of
    the locations the job writes (probed before Spark starts). needs_spark=False: the job's
    context has no Spark session. reads: the configuration sections it reads (--help)."""
    args = parse_args(description, argv, reads)
    if args.show_config:
        return show_config(args, reads)
    configure_logging()
    # --json: stdout carries the one JSON document only. Everything else written to file
    # descriptor 1 while the job runs (its own lines, the JVM and the workers it starts,
    # which inherit the descriptor) goes to stderr.
    # Python's own sys.stdout is pointed at stderr as well (it may not be descriptor 1).
    json_out = os.dup(1) if args.json else None
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    if json_out is not None:
        sys.stdout.flush()
        os.dup2(2, 1)
    try:
        with quiet:
            code, result = _run(args, stage, writes, needs_spark)
    finally:
        if json_out is not None:
            sys.stdout.flush()
            os.dup2(json_out, 1)
            os.close(json_out)
    if code == 0 and args.json:
        doc = json.dumps(json_safe(result), indent=2, default=str, allow_nan=False)
        if os.environ.get(JSON_OUT):  # the launcher's file: spark-submit merges our stderr into stdout
            Path(os.environ[JSON_OUT]).write_text(doc + "\n")
        else:
            print(doc, flush=True)
    return code


def _run(args, stage: Callable, writes: tuple[str, ...], needs_spark: bool) -> tuple[int, dict | None]:
    try:
        overrides = [*args.overrides, *([f"spark.master={args.master}"] if args.master else [])]
        cfg: Config = load_config(args.profile, args.dataset, overrides, args.conf_dir)
        fs.configure(cfg.fs_options())  # every location below resolves with the configured storage options
        probe_writable(output_locations(cfg, writes))
        from psrq.spark import build_spark  # after config and probes: a bad key fails before the JVM starts

        name, spark = job_name(stage), None
        if needs_spark:
            t0 = time.time()
            spark = build_spark(cfg.spark, app_name(cfg, name), fs.spark_hadoop_conf())
            log.info("spark %s ready in %.1fs (master %s)", spark.version, time.time() - t0, spark.sparkContext.master)
            if not (spark.sparkContext.master or "local").startswith("local"):  # executors with a Python of their own
                from psrq.preflight import check_executors

                check_executors(spark, name)
        t0 = time.time()
        result = stage(JobContext(name, cfg, spark))
        log.info("%s done in %.1fs", name, time.time() - t0)
    except PsrqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2), None
    except Exception as exc:
        if (refused := storage_refusal(exc)) is None:
            raise  # a bug: the traceback is what helps
        print(f"error: storage refused a write ({refused}); nothing half-written is visible (Delta commits and "
              "checkpoints are whole or absent): free space or raise the limit, then run the same job again",
              file=sys.stderr)
        return 2, None
    return 0, result


def show_config(args, reads: tuple[str, ...]) -> int:
    """--show-config: the merged configuration (defaults, profile, dataset, tuned, overrides)
    of the sections the job reads, as YAML on stdout; nothing else runs."""
    import yaml

    try:
        cfg = load_config(args.profile, args.dataset, args.overrides, args.conf_dir)
    except PsrqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc = cfg.model_dump(mode="json")
    print(yaml.safe_dump({k: doc[k] for k in (reads or doc)}, sort_keys=False), end="")
    return 0


def job_name(stage: Callable) -> str:
    return Path(inspect.getfile(stage)).stem


def app_name(cfg: Config, job: str) -> str:
    """psrq-<job>-<run_id>: every application is told apart in the cluster's UI and logs."""
    return f"{cfg.spark.app_name}-{job}-{cfg.run.run_id}"


def json_safe(value):
    """A stage's result as JSON: its fields, with NaN and infinities as null (JSON has no such numbers)."""
    if hasattr(value, "as_dict"):  # a stage's result, or a manifest: its document
        return json_safe(value.as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
