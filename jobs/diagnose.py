"""Measure why a reference ranker beats the paper's MCCA: each of the reference's
differences (conf/experiments/diagnosis.yaml: VBPR's) changed on MCCA alone, trained over
experiments.seeds and scored on the valid split only; writes <dataset> reports to
experiments.reports (psrq.experiments.diagnosis). Finished trainings are reused: a killed
run resumes.

    python jobs/diagnose.py --dataset movielens_100k experiments.seeds=[0,1,2,3,4] train.backend=single train.reader=arrow
"""
import sys

from psrq.cli import run_job
from psrq.experiments.diagnosis import load_diagnosis, run_diagnosis, write_diagnosis
from psrq.job import JobContext


def stage(job: JobContext):
    diag = load_diagnosis(conf_dir=job.cfg.conf_dir)
    result = run_diagnosis(job, diag, job.cfg.experiments.seeds, progress=lambda s: print(s, flush=True))
    path = write_diagnosis(result, diag, job.cfg.experiments.reports)
    print(f"report: {path}", flush=True)
    print(path.read_text().split("## What the numbers say", 1)[1].strip(), flush=True)
    return {"report": str(path), "dataset": job.cfg.dataset.name, "seeds": job.cfg.experiments.seeds}


def main(argv=None) -> int:
    return run_job(
        __doc__,
        stage,
        argv,
        writes=("storage.root", "storage.codebooks", "samples.path", "train.checkpoint_dir"),
        reads=("run", "spark", "storage", "dataset", "movielens", "lastfm", "embed_text",
               "experiments", "tuning", "codebooks", "samples", "train", "tracking"),
    )


if __name__ == "__main__":
    sys.exit(main())
