"""Hyperparameters chosen on the valid split, never on the test split.

Per model (tuning.models), a staged grid over a small documented space (tuning.space,
conf/base.yaml): the dimensions in order, each one's values tried with the best values of
those before it and the first value of those after it; every setting trains once per seed
(tuning.seeds) with early stopping (tuning.epochs at most, tuning.patience) and is scored
by its mean valid score over the seeds (the best validation of each run): AUC, or Logloss
with train.select_on=logloss (a proper score, so the chosen model's probabilities are
usable as such). Ties keep the earlier value. A numeric dimension whose best value sits at
the edge of its range is tried beyond it (tuning.extend times at most: the grid's edges do
not bind the choice), and tuning.budget_minutes stops the search before a trial that would
start after it (the chosen settings are then those of the trials done, and the search says so).

Why a grid and not Optuna: with a handful of settings per model a sampler has nothing to
learn from, while every trial here is a training run with its own identity: a killed search
resumes through the run cache (finished runs report their result.json), an identical trial
is never trained twice, and the whole search is deterministic and reads as a table.

Only training runs: train_stage reads the train split and scores the valid split; nothing
here evaluates, and the test split is never opened (a test removes it before tuning).

The chosen settings go to conf/tuned/<dataset>.yaml (the dataset's defaults per model, read
by psrq.config.load_config under the command line's overrides), the whole search beside it
in conf/tuned/<dataset>.search.json."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean
from typing import Any

from omegaconf import OmegaConf

from psrq.config import TUNED_DIR
from psrq.experiments.matrix import cell_config, dataset_config
from psrq.experiments.reuse import PipelineArtifacts
from psrq.experiments.runner import prepare_data, prepare_method
from psrq.job import JobContext
from psrq.results import StageResult
from psrq.tracking.runs import doc, numbers, search_run, trial_run

log = logging.getLogger(__name__)


def trial(djob: JobContext, model: str, setting: dict, seeds: list[int], pipeline: PipelineArtifacts | None = None) -> dict:
    """One setting of one model, trained once per seed: the valid metrics of each run
    (djob: with the dataset's configuration; pipeline: the pipeline's artifacts, read where
    they are what the trial would build). Tracked as a child of the model's search, with its
    trainings as its children."""
    from psrq.training.stage import train_stage

    dcfg = djob.cfg
    tc = dcfg.tuning
    runs: list[dict[str, Any]] = []
    tracked = trial_run(model, setting, seeds)
    with djob.tracker.parent(tracked):
        for seed in seeds:
            c = cell_config(dcfg, {**{f"train.{k}": v for k, v in setting.items()}, "train.model": model,
                                   "train.epochs": tc.epochs, "train.patience": tc.patience}, seed)
            c = prepare_method(djob.with_cfg(c), pipeline)
            res = train_stage(djob.with_cfg(c))
            runs.append({"seed": seed, "samples": c.samples_root(), "identity": res.identity, "status": res.status,
                         "steps": res.steps, "best_step": res.best_step, "valid_auc": res.valid["auc"],
                         "valid_cold_auc": res.valid.get("cold_auc"), "valid_logloss": res.valid.get("logloss")})
        aucs = [r["valid_auc"] for r in runs if r["valid_auc"] is not None]
        losses = [r["valid_logloss"] for r in runs if r["valid_logloss"] is not None]
        out = {"model": model, "setting": setting, "valid_auc_mean": mean(aucs) if aucs else None,
               "valid_logloss_mean": mean(losses) if losses else None, "runs": runs}
        tracked.metrics = numbers({k: out[k] for k in ("valid_auc_mean", "valid_logloss_mean")})
    return out


def trial_score(t: dict, select_on: str) -> float:
    """Higher is better: the mean valid AUC, or minus the mean valid Logloss (a trial
    without one scores below every trial with one)."""
    v = t[f"valid_{select_on}_mean"]
    return float("-inf") if v is None else (-v if select_on == "logloss" else v)


def beyond_edge(values: list, best: Any) -> Any | None:
    """The next value past the edge of a numeric range where `best` sits, at the range's
    spacing there (geometric when every value is positive, else arithmetic; never below 0
    from a 0); None inside the range, or for values that are not numbers."""
    if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    ordered = sorted(set(values))
    if best == ordered[-1]:
        a, b = ordered[-2], ordered[-1]
    elif best == ordered[0]:
        a, b = ordered[1], ordered[0]
    else:
        return None
    geometric = a > 0 and b > 0
    nxt = b * (b / a) if geometric else b + (b - a)
    if not geometric and nxt < 0 <= min(ordered):
        return None  # a non-negative setting (a weight decay, a dropout) is not taken below 0
    if all(isinstance(v, int) for v in values):
        nxt = int(round(nxt))
    return None if nxt in ordered else nxt


@dataclass
class Grid:
    """A staged grid's outcome: the chosen setting, every trial in order, and whether the
    budget stopped it before its end."""

    chosen: dict
    trials: list[dict] = field(default_factory=list)
    stopped: bool = False


def staged_grid(space: dict[str, list], run_trial: Callable[[dict], dict], select_on: str, extend: int,
                deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
                progress: Callable[[str], None] = print) -> Grid:
    """One key of the space at a time, the others at their chosen values; a key whose best
    value sits at the edge of its range is tried beyond it, up to `extend` times. No trial
    starts after `deadline` (of `clock`): the grid keeps what it has."""
    grid = Grid({key: values[0] for key, values in space.items()})
    for key, values in space.items():
        values, extended = list(values), 0
        scores: dict[str, float] = {}

        def best_tried():  # the best of the values this key has tried (the earlier on a tie)
            return max(values[:len(scores)], key=lambda v: scores[json.dumps(v)])

        while len(scores) < len(values):
            value = values[len(scores)]
            setting = {**grid.chosen, key: value}
            if deadline is not None and clock() >= deadline:
                if scores:
                    grid.chosen[key] = best_tried()
                progress(f"tuning budget spent: stopping before train.{key}={value}; keeping {_short(grid.chosen)}")
                grid.stopped = True
                return grid
            t = run_trial(setting)  # a setting tried before: its trainings are "already done"
            grid.trials.append(t)
            scores[json.dumps(value)] = trial_score(t, select_on)
            if len(scores) == len(values) and extended < extend:
                best = best_tried()
                if (nxt := beyond_edge(values, best)) is not None:
                    progress(f"train.{key}: the best value {best} is at the edge of {values}: trying {nxt}")
                    values.append(nxt)
                    extended += 1
        grid.chosen[key] = best_tried()
    return grid


def tune_model(djob: JobContext, model: str, deadline: float | None, pipeline: PipelineArtifacts | None = None,
               progress=print) -> dict:
    """The staged grid for one model: its chosen setting and every trial."""
    dcfg = djob.cfg
    tc = dcfg.tuning
    search = search_run(dcfg.dataset.name, model, tc.space, tc.seeds, dcfg.train.select_on)

    def run_trial(setting: dict) -> dict:
        t = trial(djob, model, setting, tc.seeds, pipeline)
        progress(f"[tune {dcfg.dataset.name}] {model} {_short(setting)}: mean valid AUC "
                 f"{'n/a' if t['valid_auc_mean'] is None else format(t['valid_auc_mean'], '.4f')}, logloss "
                 f"{'n/a' if t['valid_logloss_mean'] is None else format(t['valid_logloss_mean'], '.4f')} over "
                 f"{len(t['runs'])} seeds")
        return t

    with djob.tracker.parent(search):  # its trials are children
        grid = staged_grid(tc.space, run_trial, dcfg.train.select_on, tc.extend, deadline, progress=progress)
        best_trial = next((t for t in reversed(grid.trials) if t["setting"] == grid.chosen), None)
        best = {k: (best_trial or {}).get(k) for k in ("valid_auc_mean", "valid_logloss_mean")}
        search.metrics = numbers(best)
        search.texts = {"chosen.json": doc(grid.chosen)}
    return {"model": model, "chosen": grid.chosen, "selected_on": dcfg.train.select_on, **best,
            "stopped_by_budget": grid.stopped, "trials": grid.trials}


def _short(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


@dataclass
class Search(StageResult):
    """A finished search (jobs/tune.py): the settings chosen per model, ready for write_tuned,
    and each model's staged grid (tune_model) with every trial; <dataset>.search.json."""

    dataset: str
    chosen: dict[str, dict]       # model -> its train settings, with the tuning's epochs and patience
    results: dict[str, dict]      # model -> {chosen, selected_on, valid_auc_mean, valid_logloss_mean, trials}
    space: dict[str, list]
    seeds: list[int]
    inherit: dict[str, str]
    finished_at: str

    @property
    def stopped_by_budget(self) -> bool:
        """tuning.budget_minutes ran out before the grid's end (for some model)."""
        return any(r.get("stopped_by_budget") for r in self.results.values())

    def valid_auc(self) -> dict[str, float | None]:
        """Each model's mean valid AUC at its chosen setting."""
        return {m: r["valid_auc_mean"] for m, r in self.results.items()}


def tune(job: JobContext, progress=print) -> Search:
    """Every model of tuning.models on cfg's dataset (its trainings under experiments.root, as
    the experiments'; the pipeline's codebooks, IDs and samples where they are what a trial
    would build); the chosen settings per model, with epochs and patience, ready for
    write_tuned."""
    cfg = job.cfg
    djob = job.with_cfg(dataset_config(cfg))
    prepare_data(djob)
    budget = cfg.tuning.budget_minutes
    deadline = time.monotonic() + 60 * budget if budget else None
    pipeline = PipelineArtifacts(cfg, progress)
    results = {m: tune_model(djob, m, deadline, pipeline, progress) for m in cfg.tuning.models}
    chosen = {m: {**r["chosen"], "epochs": cfg.tuning.epochs, "patience": cfg.tuning.patience}
              for m, r in results.items()}
    for model, source in cfg.tuning.inherit.items():
        if source in chosen:
            chosen[model] = dict(chosen[source])
    return Search(cfg.dataset.name, chosen, results, cfg.tuning.space, cfg.tuning.seeds, cfg.tuning.inherit,
                  datetime.now(timezone.utc).isoformat())


SCORES = {"auc": "AUC", "logloss": "Logloss"}  # train.select_on -> the header's name for it


def write_tuned(conf_dir: Path, search: Search) -> tuple[Path, Path]:
    """conf/tuned/<dataset>.yaml (what load_config reads) and <dataset>.search.json beside it."""
    folder = Path(conf_dir) / TUNED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = search.dataset
    record = folder / f"{name}.search.json"
    record.write_text(json.dumps(search.as_dict(), indent=2, default=str))
    score = " / ".join(sorted({SCORES[r["selected_on"]] for r in search.results.values()})) or "AUC"
    head = (f"# Chosen by jobs/tune.py on the valid split of {name} (never its test split), {search.finished_at[:10]}:\n"
            f"# per model, the setting with the best mean valid {score} over seeds {search.seeds} in a staged grid over\n"
            f"# {'; '.join(f'{k} {list(v)}' for k, v in search.space.items())};\n"
            f"# inherited: {search.inherit or 'none'}. The search: {record.name}.\n"
            + ("# tuning.budget_minutes stopped it before the grid's end (stopped_by_budget in the search).\n"
               if search.stopped_by_budget else "")
            + "# The command line's overrides win over these.\n")
    tuned = folder / f"{name}.yaml"
    tuned.write_text(head + OmegaConf.to_yaml(OmegaConf.create({"tuned": search.chosen})))
    return tuned, record
