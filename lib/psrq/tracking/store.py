"""Runs recorded in MLflow (tracking.uri), off the job's path.

- "local" (the default) is a SQLite store under storage.root (mlflow/mlflow.db, artifacts
  beside it): nothing to start; `mlflow ui --backend-store-uri sqlite:///<root>/mlflow/mlflow.db`.
- A run is recorded whole after its stage succeeded (parameters, metrics, artifacts, then
  FINISHED) or not at all: a failure half-way deletes it.
- A finished run of the same kind and key (the stage's identity) is linked, not repeated: a
  stage that reports "already done" adds nothing.
- If the store cannot be reached or refuses, the job goes on untracked after one warning.
- Runs recorded inside `parent(...)` are its children (an experiment cell's training and
  evaluation, a tuning search's trials)."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Optional, ParamSpec, TypeVar

from psrq.tracking.runs import TrackedRun

if TYPE_CHECKING:
    from psrq.config import Config
    from psrq.job import JobContext
    from psrq.results import TrackedResult

log = logging.getLogger(__name__)
KIND, KEY, PARENT = "psrq.kind", "psrq.key", "mlflow.parentRunId"
BATCH = 100  # MLflow takes at most 100 parameters (and 1000 metrics) per log_batch
_warned: set[str] = set()
_trackers: dict[tuple, "Tracker"] = {}
P = ParamSpec("P")
R = TypeVar("R")


def resolve(cfg: "Config") -> tuple[Optional[str], Optional[str]]:
    """(tracking URI, artifact location for a new experiment); (None, None): off."""
    uri = cfg.tracking.uri
    if uri == "off":
        return None, None
    if uri != "local":
        return uri, None
    root = cfg.root()
    if "://" in root:  # an object store: a SQLite file there would be neither safe nor shared
        if "local-on-remote" not in _warned:
            _warned.add("local-on-remote")
            log.info("tracking off: tracking.uri=local keeps a store under a local storage.root, not %s "
                     "(set tracking.uri to your MLflow server)", root)
        return None, None
    return f"sqlite:///{root}/mlflow/mlflow.db", f"{root}/mlflow/artifacts"


def tracker_for(cfg: "Config") -> "Tracker":
    """One tracker per store and experiment in a process: the contexts of one job
    (JobContext.with_cfg) share its parents and its one warning."""
    uri, artifacts = resolve(cfg)
    key = (uri, cfg.tracking.experiment or f"psrq-{cfg.dataset.name}")
    if key not in _trackers:
        _trackers[key] = Tracker(uri, key[1], artifacts, cfg.tracking.timeout_s)
    return _trackers[key]


class Tracker:
    """uri None: every call is a no-op."""

    def __init__(self, uri: Optional[str], experiment: str, artifacts: Optional[str], timeout_s: float):
        self.uri, self.experiment, self.artifacts, self.timeout_s = uri, experiment, artifacts, timeout_s
        self.parents: list[Optional[str]] = []
        self._client: Any = None
        self._experiment_id: Optional[str] = None

    @property
    def on(self) -> bool:
        return self.uri is not None

    def record(self, run: TrackedRun) -> Optional[dict]:
        """{"run_id", "linked"} (linked: a finished run of the same kind and key already
        existed), or None when untracked."""
        if not self.on:
            return None
        try:
            client, exp = self._connect()
            if (found := self._find(client, exp, run, finished=True)) is not None:
                log.info("tracking: %s %s is run %s already (linked)", run.kind, run.key, found)
                return {"run_id": found, "linked": True}
            run_id = self._create(client, exp, run)
            self._complete(client, run_id, run, "FINISHED")
            return {"run_id": run_id, "linked": False}
        except Exception as exc:
            self.fail(exc)
            return None

    @contextlib.contextmanager
    def parent(self, run: TrackedRun) -> Iterator[Optional[str]]:
        """Runs recorded in the block are children of `run` (found by kind and key, else
        created); at the end it gets run's metrics and artifacts as they are then, and
        FINISHED, or FAILED if the block raised. Yields its run id (None: untracked)."""
        run_id = None
        if self.on:
            try:
                client, exp = self._connect()
                run_id = self._find(client, exp, run, finished=False) or self._create(client, exp, run)
            except Exception as exc:
                self.fail(exc)
        self.parents.append(run_id)
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        finally:
            self.parents.pop()
            if run_id is not None and self.on:
                try:
                    self._complete(self._client, run_id, run, status)
                except Exception as exc:
                    self.fail(exc)

    def describe(self) -> str:
        """One line for a job's summary: where its runs are, or that they are not tracked."""
        if self.uri is None:
            return "runs not tracked (tracking.uri=off, a store that failed, or a storage.root that is not local)"
        browse = f"mlflow ui --backend-store-uri {self.uri}" if self.uri.startswith("sqlite:") else self.uri
        return f"runs tracked in MLflow experiment {self.experiment} at {self.uri} (browse: {browse})"

    def fail(self, exc: BaseException) -> None:
        """Off for the rest of the process, with one warning per store."""
        if self.uri not in _warned:
            _warned.add(str(self.uri))
            log.warning("tracking off for the rest of this job: the MLflow store %s failed (%s: %s); the job goes on "
                        "and records nothing more there", self.uri, type(exc).__name__, str(exc).splitlines()[0][:300])
        self.uri = None

    def _connect(self):
        if self._client is None:
            # a server that does not answer costs one timeout, not MLflow's minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.timeout_s))))
            assert self.uri is not None
            if self.uri.startswith(("http://", "https://")):
                urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=self.timeout_s).close()
            elif self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.uri)
            exp = client.get_experiment_by_name(self.experiment)
            self._experiment_id = exp.experiment_id if exp else client.create_experiment(
                self.experiment, artifact_location=self.artifacts)
            self._client = client
        return self._client, self._experiment_id

    def _find(self, client, exp: str, run: TrackedRun, finished: bool) -> Optional[str]:
        where = f"tags.`{KIND}` = '{run.kind}' and tags.`{KEY}` = '{run.key}'"
        if finished:
            where += " and attributes.status = 'FINISHED'"
        found = client.search_runs([exp], where, max_results=1, order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None

    def _create(self, client, exp: str, run: TrackedRun) -> str:
        from mlflow.entities import Param

        tags = {KIND: run.kind, KEY: run.key, **run.tags}
        if self.parents and self.parents[-1] is not None:
            tags[PARENT] = self.parents[-1]
        run_id = client.create_run(exp, tags=tags, run_name=run.name).info.run_id
        try:
            items = [Param(k, v) for k, v in run.params.items()]
            for i in range(0, len(items), BATCH):
                client.log_batch(run_id, params=items[i:i + BATCH])
        except BaseException:
            _delete(client, run_id)
            raise
        return run_id

    def _complete(self, client, run_id: str, run: TrackedRun, status: str) -> None:
        """Metrics, curves and artifacts, then the final status; a failure deletes the run."""
        import time

        from mlflow.entities import Metric

        try:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in run.metrics.items()]
            metrics += [Metric(k, v, now, step) for k, v, step in run.curves]
            for i in range(0, len(metrics), BATCH * 10):
                client.log_batch(run_id, metrics=metrics[i:i + BATCH * 10])
            if run.texts or run.files:
                with tempfile.TemporaryDirectory(prefix="psrq-tracking-") as tmp:
                    _stage_artifacts(tmp, run)
                    client.log_artifacts(run_id, tmp)
            if run.model:
                self._log_model(client, run_id, run)
            client.set_terminated(run_id, status)
        except BaseException:
            _delete(client, run_id)
            raise


    def _log_model(self, client, run_id: str, run: TrackedRun) -> None:
        """run.model as a logged model of the run (MLflow 3's models, loadable as
        models:/<model id>), tagged with the run's tags (the codebook version it expects)."""
        from mlflow.entities import LoggedModelOutput

        from psrq.storage import fs

        assert run.model is not None and self._experiment_id is not None
        model = client.create_logged_model(self._experiment_id, name="ranker", source_run_id=run_id,
                                           tags={KIND: run.kind, KEY: run.key, **run.tags})
        with tempfile.TemporaryDirectory(prefix="psrq-tracking-model-") as tmp:
            for rel in fs.files_under(run.model):
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(fs.read_bytes(fs.join(run.model, rel)))
            client.log_model_artifacts(model.model_id, tmp)
        client.finalize_logged_model(model.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])


def _stage_artifacts(folder: str, run: TrackedRun) -> None:
    from psrq.storage import fs

    for name, text in run.texts.items():
        path = Path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name, location in run.files.items():
        if fs.exists(location):
            path = Path(folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(fs.read_bytes(location))


def _delete(client, run_id: str) -> None:
    with contextlib.suppress(Exception):  # the store that failed may refuse this too
        client.delete_run(run_id)


def tracked(build: Callable[["JobContext", Any], list[tuple[TrackedRun, "TrackedResult"]]]
            ) -> Callable[[Callable[Concatenate["JobContext", P], R]], Callable[Concatenate["JobContext", P], R]]:
    """A stage whose result is recorded: build(job, result) gives (run, the result that gets
    its `tracking` reference) pairs. Tracking never fails the stage; the stage keeps its type."""
    def wrap(stage: Callable[Concatenate["JobContext", P], R]) -> Callable[Concatenate["JobContext", P], R]:
        @functools.wraps(stage)
        def run(job: "JobContext", *args: P.args, **kwargs: P.kwargs) -> R:
            result = stage(job, *args, **kwargs)
            tracker = job.tracker
            if tracker.on:
                try:
                    pairs = build(job, result)
                except Exception as exc:
                    tracker.fail(exc)
                    return result
                for tracked_run, holder in pairs:
                    holder.tracking = tracker.record(tracked_run)
            return result
        return run
    return wrap
