"""Train a ranker (train.model: mcca, din, din_codes, mcca_wo_msc, mcca_wo_mjc, vbpr, qarm,
simtier_make) on the
samples with train.backend (single, horovod through Spark, torch-distributor) and
train.reader (petastorm, arrow), and print validation AUC, Cold AUC and Logloss.

    python -m psrq.submit --master <url> jobs/train_ranker.py --profile cluster --dataset catalogue \\
        train.backend=horovod train.num_proc=8
"""
import sys

from psrq.cli import run_job
from psrq.evaluation.metrics import format_metric
from psrq.job import JobContext
from psrq.training.stage import train_stage


def stage(job: JobContext):
    res = train_stage(job)
    v = res.valid
    print(f"{res.model} run {res.identity} {res.status} ({res.backend}, {res.processes} process(es)): "
          f"{res.steps} steps ({res.steps_this_run} this run), {res.samples_per_second:,.0f} samples/s, "
          f"train loss {format_metric(res.train_loss)}; "
          f"valid AUC {v['auc']:.4f}, cold AUC {format_metric(v['cold_auc'])}, "
          f"logloss {v['logloss']:.4f}", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("train.checkpoint_dir",),
                   reads=("run", "spark", "storage", "samples", "train", "tracking"))


if __name__ == "__main__":
    sys.exit(main())
