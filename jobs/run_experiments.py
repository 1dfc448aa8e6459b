"""Run the paper's experiment matrices (experiments.names: conf/experiments/table2, table3,
table4) over experiments.seeds on the dataset, and write Markdown + PNG reports to
experiments.reports. Finished cells are skipped: a killed run resumes.

    python jobs/run_experiments.py --dataset synthetic_small train.backend=single
    python jobs/run_experiments.py --dataset movielens_100k experiments.names=[table3] experiments.seeds=[0,1,2,3,4]
"""
import sys

from psrq.cli import run_job
from psrq.experiments.matrix import dataset_config, load_experiment
from psrq.experiments.report import write_report
from psrq.experiments.runner import read_results, run_experiment
from psrq.job import JobContext
from psrq.tracking.runs import experiment_run


def stage(job: JobContext):
    exps = [load_experiment(n) for n in job.cfg.experiments.names]  # all found before anything runs
    reports = []
    djob = job.with_cfg(dataset_config(job.cfg))
    for exp in exps:
        tracked = experiment_run(exp.name, job.cfg.dataset.name, job.cfg.experiments.seeds)
        with djob.tracker.parent(tracked):  # its cells and floors are children; the report its artifacts
            run_experiment(job, exp, job.cfg.experiments.seeds, progress=lambda s: print(s, flush=True))
            path = write_report(read_results(djob), exp, job.cfg.dataset.name, djob.cfg.codebooks_root(),
                                job.cfg.experiments.reports)
            tracked.files = {p.name: str(p) for p in path.parent.glob(f"{path.stem}*") if p.suffix in (".md", ".png")}
        print(f"report: {path}", flush=True)
        print(path.read_text().split("\n\n")[2], flush=True)  # the table
        reports.append(str(path))
    return {"reports": reports}


def main(argv=None) -> int:
    return run_job(
        __doc__,
        stage,
        argv,
        writes=("storage.root", "storage.codebooks", "samples.path", "train.checkpoint_dir"),
        reads=("run", "spark", "storage", "dataset", "movielens", "lastfm", "embed_text",
               "experiments", "codebooks", "samples", "train", "evaluate", "tracking"),
    )


if __name__ == "__main__":
    sys.exit(main())
