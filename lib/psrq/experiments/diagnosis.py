"""Why one ranker beats another, measured: candidates (train settings) changed on a base
model one at a time (conf/experiments/diagnosis.yaml), each trained over seeds on the train
split and scored on the valid split only (the trainings' own validation: the test split is
never read). A candidate's effect on a metric is its mean difference to the base over seeds,
paired by seed, with a 95% t-interval; the report says which candidates move which metric
and how much of the reference's lead each closes."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from psrq.config import DEFAULT_CONF_DIR, read_layer
from psrq.errors import ConfigError
from psrq.job import JobContext

# valid metrics of a training (psrq.experiments.tuning.trial's runs): name, label, higher is better
METRICS = (("valid_auc", "All AUC", True), ("valid_cold_auc", "Cold AUC", True), ("valid_logloss", "Logloss", False))


@dataclass(frozen=True)
class Candidate:
    what: str
    train: dict  # train settings (train.<key>), over the base model's tuned ones


@dataclass(frozen=True)
class Diagnosis:
    name: str
    title: str
    base: str
    reference: str
    candidates: dict[str, Candidate]


def load_diagnosis(name: str = "diagnosis", conf_dir: str | Path | None = None) -> Diagnosis:
    folder = (Path(conf_dir) if conf_dir else DEFAULT_CONF_DIR).joinpath("experiments")
    raw = OmegaConf.to_container(read_layer(folder, name, "diagnosis"), resolve=True)
    if not isinstance(raw, dict) or not raw.get("base") or not raw.get("candidates"):
        raise ConfigError(f"{folder}/{name}.yaml: expected base, reference and candidates (name: {{what, train}})")
    cands = {}
    for key, c in raw["candidates"].items():
        if not isinstance(c, dict) or not isinstance(c.get("train"), dict):
            raise ConfigError(f"{folder}/{name}.yaml: candidates.{key}: expected {{what, train: {{setting: value}}}}")
        cands[key] = Candidate(str(c.get("what", key)), c["train"])
    return Diagnosis(raw.get("name", name), raw.get("title", name), raw["base"], raw.get("reference") or raw["base"], cands)


def run_diagnosis(job: JobContext, diag: Diagnosis, seeds: list[int], progress=print) -> dict:
    """The base, the reference and every candidate, each trained once per seed (a finished
    training is reused: the job resumes)."""
    from psrq.experiments.matrix import dataset_config
    from psrq.experiments.reuse import PipelineArtifacts
    from psrq.experiments.runner import prepare_data
    from psrq.experiments.tuning import trial

    djob = job.with_cfg(dataset_config(job.cfg))
    prepare_data(djob)
    pipeline = PipelineArtifacts(job.cfg, progress)
    dataset = djob.cfg.dataset.name
    out: dict = {"diagnosis": diag.name, "dataset": dataset, "seeds": seeds, "base": diag.base,
                 "reference": diag.reference, "candidates": {}}
    plan = [("base", diag.base, {}), ("reference", diag.reference, {}),
            *((name, diag.base, c.train) for name, c in diag.candidates.items())]
    for i, (name, model, setting) in enumerate(plan, 1):
        t = trial(as_tuned(djob, model), model, setting, seeds, pipeline)
        entry = {"model": model, "train": setting, "runs": t["runs"]}
        if name in ("base", "reference"):
            out[name + "_runs"] = entry
        else:
            out["candidates"][name] = {**entry, "what": diag.candidates[name].what}
        progress(f"[diagnosis on {dataset}] {i}/{len(plan)} {name}: mean valid AUC {_mean(t['runs'], 'valid_auc')}, "
                 f"cold AUC {_mean(t['runs'], 'valid_cold_auc')}, logloss {_mean(t['runs'], 'valid_logloss')}")
    out["finished_at"] = datetime.now(timezone.utc).isoformat()
    return out


def as_tuned(djob: JobContext, model: str) -> JobContext:
    """djob with tuning's epochs and patience (what trial trains with) set to the model's
    tuned ones where conf/tuned has them: the diagnosis changes one thing on the model as
    tuned, not on a trial of the search's budget."""
    tuned = djob.cfg.tuned.get(model, {})
    keep = {f"tuning.{k}": tuned[k] for k in ("epochs", "patience") if k in tuned}
    return djob.with_cfg(djob.cfg.with_overrides(keep)) if keep else djob


def _mean(runs: list[dict], metric: str) -> str:
    v = [r[metric] for r in runs if r.get(metric) is not None]
    return f"{sum(v) / len(v):.4f}" if v else "n/a"


def paired_effect(base: list[dict], runs: list[dict], metric: str) -> dict | None:
    """Mean over seeds of (run - base) on `metric`, paired by seed, with its 95% t-interval
    (None with fewer than two seeds)."""
    from scipy.stats import t

    by_seed = {r["seed"]: r[metric] for r in base if r.get(metric) is not None}
    d = [r[metric] - by_seed[r["seed"]] for r in runs if r.get(metric) is not None and r["seed"] in by_seed]
    if not d:
        return None
    n, mean = len(d), sum(d) / len(d)
    ci = None
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
    return {"diff": mean, "ci95": ci, "n": n}


def verdict(effect: dict | None, higher_better: bool) -> str:
    if effect is None or effect["ci95"] is None:
        return "n/a"
    lo, hi = effect["ci95"]
    if lo > 0 or hi < 0:
        return "helps" if (lo > 0) == higher_better else "hurts"
    return "no clear effect"


def _stats(runs: list[dict], metric: str) -> str:
    v = [r[metric] for r in runs if r.get(metric) is not None]
    if not v:
        return "n/a"
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{mean:.4f} ± {sd:.4f}"


def _fmt_effect(e: dict | None, higher_better: bool) -> str:
    if e is None:
        return "n/a"
    ci = "" if e["ci95"] is None else f" [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}]"
    v = verdict(e, higher_better)
    return f"{e['diff']:+.4f}{ci}" + (f" **{v}**" if v in ("helps", "hurts") else "")


def effects(result: dict) -> dict:
    """name -> metric -> paired effect against the base (the reference's too, as 'reference')."""
    base = result["base_runs"]["runs"]
    entries = {"reference": result["reference_runs"], **result["candidates"]}
    return {name: {m: paired_effect(base, e["runs"], m) for m, _, _ in METRICS} for name, e in entries.items()}


def findings(result: dict, eff: dict) -> list[str]:
    """The report's conclusions, from the effects alone."""
    ref = eff["reference"]
    lines = []
    for m, label, higher in METRICS:
        lead = ref[m]
        if lead is not None:
            v = verdict(lead, higher)
            who = {"helps": f"{result['reference']} is better", "hurts": f"{result['base']} is better"}.get(v, v)
            lines.append(f"- {result['reference']} against {result['base']}, {label}: "
                         f"{_fmt_effect(lead, higher).replace(' **helps**', '').replace(' **hurts**', '')} ({who}).")
    for m, label, higher in METRICS:
        groups: dict[str, list[str]] = {"helps": [], "hurts": [], "no clear effect": []}
        for name in result["candidates"]:
            e = eff[name][m]
            v = verdict(e, higher)
            if v == "n/a" or e is None:
                continue
            share = ""
            lead = ref[m]
            if v == "helps" and lead is not None and abs(lead["diff"]) > 1e-9 and (lead["diff"] > 0) == higher:
                share = f" (closes {100 * e['diff'] / lead['diff']:.0f}% of {result['reference']}'s lead)"
            groups[v].append(f"{name} {e['diff']:+.4f}{share}")
        for v, names in groups.items():
            if names:
                lines.append(f"- {label}, {v}: " + "; ".join(names) + ".")
    return lines


def report_markdown(result: dict, diag: Diagnosis) -> str:
    eff = effects(result)
    seeds = result["seeds"]
    head = "| cell | what | " + " | ".join(f"{label} | Δ {label} vs {result['base']} [95%]" for _, label, _ in METRICS) + " |"
    rows = [head, "|" + " --- |" * (2 + 2 * len(METRICS))]

    def row(name: str, what: str, runs: list[dict], e: dict | None) -> str:
        cells = [f"{_stats(runs, m)} | {_fmt_effect(e[m], higher) if e else ''}" for m, _, higher in METRICS]
        return f"| {name} | {what} | " + " | ".join(cells) + " |"

    rows.append(row(f"**{result['base']}** (base)", "the paper's model, tuned", result["base_runs"]["runs"], None))
    rows.append(row(f"{result['reference']} (reference)", "as tuned", result["reference_runs"]["runs"], eff["reference"]))
    for name, c in result["candidates"].items():
        rows.append(row(name, c["what"], c["runs"], eff[name]))
    text = [f"# {diag.title} — {result['dataset']}", "",
            f"Written by `jobs/diagnose.py` ({result['finished_at'][:10]}). Seeds {seeds}. Every training uses its "
            f"model's tuned settings (conf/tuned/{result['dataset']}.yaml, their epochs and patience included), then "
            "the candidate's change, with early stopping on the valid split; all figures are the valid split's "
            "(the test split is never read). Δ: the mean over seeds of the cell's metric minus the base's at the "
            "same seed, with its 95% t-interval; **helps** / **hurts**: the interval excludes 0.", "",
            *rows, "", "## What the numbers say", "", *findings(result, eff), "",
            "Not measured: the contrastive alignment terms' weights. Neither VBPR nor MCCA has such terms "
            "(QARM's alignment is its own pre-training), so there is nothing to switch.", ""]
    return "\n".join(text)


def write_diagnosis(result: dict, diag: Diagnosis, out_dir: str) -> Path:
    """docs/results/<diagnosis>_<dataset>.md, and the runs behind it as JSON beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{diag.name}_{result['dataset']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    path = out / f"{stem}.md"
    path.write_text(report_markdown(result, diag))
    return path
