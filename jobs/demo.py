"""The main job end to end on the embedded default (Spark local mode, Delta on local disk,
CPU): generate a synthetic catalogue into Delta, validate it, fit codebooks, assign semantic
IDs, run a night of the catalogue reindex (nothing changed since the assignment: it records
its watermark and merges nothing), print the codebook diagnostics of PSRQ beside RQ, build
training samples, train MCCA (train.backend, default horovod with 2 processes) and the
ID-only DIN baseline (demo.baseline; null: none), evaluate both on the test split in Spark
(predictions and metrics in Delta) beside the non-learned floors and print the metrics table.

    python jobs/demo.py                      # what `make demo` runs
"""
import sys
import time
from dataclasses import replace

from psrq.catalog.assign import assign
from psrq.catalog.fit import fit_stage
from psrq.catalog.reindex import format_night, reindex
from psrq.cli import run_job
from psrq.data.generate import generate
from psrq.data.summary import format_generation
from psrq.data.validate import validate_inputs
from psrq.evaluation.floors import floors_stage
from psrq.evaluation.metrics import format_metric
from psrq.evaluation.stage import evaluate_stage
from psrq.evaluation.versus import format_versus, versus_floors
from psrq.job import JobContext
from psrq.quant.diagnostics import format_side_by_side
from psrq.samples.build import build_samples
from psrq.storage.probe import ALL_TABLES
from psrq.training.stage import check_launchable, train_stage


def stage(job: JobContext):
    spark, cfg = job.spark, job.cfg
    quiet = replace(job, progress=False)  # the demo prints its own lines while it trains
    check_launchable(cfg, spark)  # a backend this application cannot run: refused before the first stage
    timings = {}

    def step(name, fn):
        print(f"[demo] {name} ...", flush=True)
        t = time.time()
        out = fn()
        timings[name] = round(time.time() - t, 1)
        print(f"[demo] {name}: {timings[name]}s", flush=True)
        return out

    generated = step("generate", lambda: generate(job))
    validated = step("validate", lambda: validate_inputs(job))
    print("\n" + format_generation(generated, validated) + "\n", flush=True)
    fitted = {cfg.codebooks.method: step(f"fit {cfg.codebooks.method}", lambda: fit_stage(job))}
    assigned = step("assign", lambda: assign(job))
    night = step("reindex", lambda: reindex(job))  # run.run_id is the night
    for method in cfg.codebooks.compare:
        if method not in fitted:
            fitted[method] = step(f"fit {method}", lambda m=method: fit_stage(job, m))
    print(f"\nsemantic_ids: version {assigned.version}, {assigned.items:,} items, "
          f"codebook {assigned.codebook_version} ({cfg.codebooks.method}, K={cfg.codebooks.k}, L={cfg.codebooks.layers})")
    print(format_night(night))
    print("codebook diagnostics on the fit sample (coh. = mean cosine to the mean of items sharing the code;"
          " layer: that layer's code alone, rand: random codes of the same sizes, prefix: codes 1..l):")
    diags = {m: f.diagnostics for m, f in fitted.items()}
    for space in next(iter(diags.values())):
        print("\n" + format_side_by_side(diags, space), flush=True)
    print(f"\ncode distribution plots: {cfg.codebooks_root()}/<version>/code_distributions.png "
          f"({', '.join(f.version for f in fitted.values())})")
    # QARM's codes when the baseline is QARM (the main model's own settings decide the rest)
    samples_job = job.with_cfg(cfg.with_overrides({"samples.qarm.codes": True})) if cfg.demo.baseline == "qarm" else job
    samples = step("build samples", lambda: build_samples(samples_job))
    print(f"training samples: {samples.row_counts()} (history {samples.history_len}, vocabulary {samples.vocab_size:,})"
          f" in {cfg.samples_root()}")
    trained = step(f"train {cfg.train.model}", lambda: train_stage(quiet))
    v = trained.valid
    print(f"{trained.model} ({trained.backend}, {trained.processes} process(es), {trained.steps} steps, {trained.status}, "
          f"{trained.samples_per_second:,.0f} samples/s): train loss {format_metric(trained.train_loss)}, "
          f"validation AUC {v['auc']:.4f}, cold AUC {format_metric(v['cold_auc'])}, logloss {v['logloss']:.4f} "
          f"(best of {len(trained.curve)} validation(s), at step {trained.best_step})")
    evaluated = {cfg.train.model: step(f"evaluate {cfg.train.model}", lambda: evaluate_stage(job))}
    if cfg.demo.baseline and cfg.demo.baseline != cfg.train.model:
        baseline = cfg.for_model(cfg.demo.baseline)  # with its own tuned settings (conf/tuned)
        step(f"train {baseline.train.model} (baseline)", lambda: train_stage(quiet.with_cfg(baseline)))
        evaluated[baseline.train.model] = step(f"evaluate {baseline.train.model}", lambda: evaluate_stage(job.with_cfg(baseline)))
    floors = step("floors", lambda: floors_stage(job)) if cfg.evaluate.floors else {}
    print(f"\n{cfg.evaluate.split} split, {next(iter(evaluated.values())).metrics.rows:,} predictions "
          f"(metrics recorded in {cfg.table_path('eval_metrics')}):")
    print(f"{'model':<22}{'All AUC':>9}{'Cold AUC':>10}{'Logloss':>9}{'GAUC':>8}{'Calib.':>8}")
    # the models, then what needs no training (train split statistics): a model must beat the best floor
    rows = [*((name, e.metrics) for name, e in evaluated.items()), *((f"floor:{n}", m) for n, m in floors.items())]
    for name, m in rows:
        print(f"{name:<22}{format_metric(m.auc):>9}{format_metric(m.cold_auc):>10}{format_metric(m.logloss):>9}"
              f"{format_metric(m.gauc):>8}{format_metric(m.calibration_error):>8}")
    floor_metrics = {n: f.recorded() for n, f in floors.items()}
    for name, e in evaluated.items() if floors else ():
        print(f"{name} - best floor per metric: {format_versus(versus_floors(e.metrics.recorded(), floor_metrics))}")
    print(job.tracker.describe(), flush=True)
    print(f"[demo] done in {sum(timings.values()):.0f}s: " + ", ".join(f"{k} {v}s" for k, v in timings.items()), flush=True)
    return {"generated": generated, "validated": validated, "assigned": assigned, "reindexed": night,
            "codebooks": {m: f.version for m, f in fitted.items()}, "samples": samples, "trained": trained,
            "evaluated": {k: v.metrics for k, v in evaluated.items()}, "floors": floors, "timings": timings}


def main(argv=None) -> int:
    return run_job(
        __doc__,
        stage,
        argv,
        writes=("storage.root", "storage.codebooks", "samples.path", "train.checkpoint_dir", *ALL_TABLES),
        reads=("run", "spark", "storage", "dataset", "synthetic", "validation", "codebooks", "reindex", "samples", "train",
               "evaluate", "demo", "tracking"),
    )


if __name__ == "__main__":
    sys.exit(main())
