"""Evaluate a trained ranker (train.model, train.seed, on the samples at samples.path) on
evaluate.split: distributed scoring in Spark, predictions and a metrics record in Delta,
exact All AUC, Cold AUC, Logloss and user-grouped AUC; beside it the non-learned floors
(global rate, item popularity, item and user positive rates from the train split;
evaluate.floors=false to skip them).

    python -m psrq.submit --master <url> jobs/evaluate.py --profile cluster --dataset catalogue \\
        train.model=mcca evaluate.split=test run.run_id=20261123
"""
import sys

from psrq.cli import run_job
from psrq.evaluation.floors import floors_stage
from psrq.evaluation.metrics import format_metric
from psrq.evaluation.stage import evaluate_stage
from psrq.evaluation.versus import format_versus, versus_floors
from psrq.job import JobContext


def stage(job: JobContext):
    res = evaluate_stage(job)
    m = res.metrics
    print(f"{res.model} (seed {res.seed}, step {res.checkpoint_step}) on {res.split}: evaluation {res.eval_id} "
          f"{res.status}, {m.rows:,} rows ({m.cold_rows:,} cold): "
          f"AUC {m.auc:.4f}, cold AUC {format_metric(m.cold_auc)}, logloss {m.logloss:.4f}, "
          f"GAUC {format_metric(m.gauc)}; predictions in {res.predictions}", flush=True)
    if not job.cfg.evaluate.floors:
        return res
    floors = floors_stage(job)
    best = max(floors.values(), key=lambda f: f.auc)
    for name, f in floors.items():
        print(f"  floor {name:<16} AUC {f.auc:.4f}, cold AUC {format_metric(f.cold_auc)}, "
              f"logloss {f.logloss:.4f}{'  (best floor)' if f is best else ''}", flush=True)
    versus = versus_floors(m.recorded(), {n: f.recorded() for n, f in floors.items()})
    print(f"  {res.model} - best floor per metric: {format_versus(versus)}", flush=True)
    return {**res.as_dict(), "floors": floors, "versus_floors": versus}


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.predictions", "tables.eval_metrics"),
                   reads=("run", "spark", "storage", "samples", "train", "evaluate", "tracking"))


if __name__ == "__main__":
    sys.exit(main())
