"""Choose each model's hyperparameters on the dataset's valid split (never its test split)
and write them into the configuration as the dataset's defaults: conf/tuned/<dataset>.yaml,
with the whole search in conf/tuned/<dataset>.search.json (psrq.experiments.tuning).

    python jobs/tune.py --dataset movielens_100k train.backend=single train.reader=arrow
    python jobs/tune.py --dataset synthetic_small tuning.models=[mcca] tuning.seeds=[0]

Resumable: every trial is a training run with its own identity; finished ones are reused.
"""
import sys
from pathlib import Path

from psrq.cli import run_job
from psrq.errors import ConfigError
from psrq.experiments.tuning import tune, write_tuned
from psrq.job import JobContext


def stage(job: JobContext):
    target = Path(job.cfg.conf_dir or "conf")  # the folder this configuration was read from (--conf-dir)
    if not target.is_dir():
        raise ConfigError(f"the tuned settings are written into a configuration folder; {target} is not one "
                          "(inside a package?): pass --conf-dir <folder>")
    search = tune(job, progress=lambda s: print(s, file=sys.stderr, flush=True))
    tuned, record = write_tuned(target, search)
    return {"dataset": search.dataset, "chosen": search.chosen, "tuned": str(tuned), "search": str(record),
            "valid_auc": search.valid_auc(), "stopped_by_budget": search.stopped_by_budget}


def main(argv=None) -> int:
    return run_job(
        __doc__,
        stage,
        argv,
        writes=("storage.root", "storage.codebooks", "samples.path", "train.checkpoint_dir"),
        reads=("run", "spark", "storage", "dataset", "movielens", "lastfm", "embed_text",
               "tuning", "experiments", "codebooks", "samples", "train", "tracking"),
    )


if __name__ == "__main__":
    sys.exit(main())
