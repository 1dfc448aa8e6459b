"""Export a trained ranker (train.model, train.seed, on the samples at samples.path) for
serving: a torch.export program (ranker.pt2) that torch alone loads (no psrq, no Spark), checked against the
trained model on rows of export.split, and a Parquet lookup of its items' vocabulary
indices, semantic codes and content indices, under export.path (docs/SERVING.md).

    python -m psrq.submit --master <url> jobs/export_ranker.py --profile cluster --dataset catalogue train.model=mcca
"""
import sys

from psrq.cli import run_job
from psrq.job import JobContext
from psrq.serving.stage import export_stage


def stage(job: JobContext):
    res = export_stage(job)
    print(f"{res.model} (step {res.step}, codebook {res.codebook_version}) {res.status}: "
          f"{res.path}/{res.ranker} and {res.items:,} items in {res.lookup}/", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("export.path",),
                   reads=("run", "spark", "storage", "samples", "train", "export", "tracking"))


if __name__ == "__main__":
    sys.exit(main())
