"""Build training samples: the item vocabulary (Delta), and per event the target's codes and
the user's last N earlier positives as item indices and text/audio/joint code sequences,
split by time into train/valid/test Parquet folders readable by Petastorm.

    python -m psrq.submit --master <url> jobs/build_samples.py --profile cluster --dataset catalogue samples.path=s3a://bucket/samples
"""
import sys

from psrq.cli import run_job
from psrq.job import JobContext
from psrq.samples.build import build_samples


def stage(job: JobContext):
    man = build_samples(job)
    print(f"samples with codebook {man.codebook_version} (history {man.history_len}, "
          f"vocabulary {man.vocab_size:,}): {man.row_counts()} -> {job.cfg.samples_root()}", flush=True)
    return man


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "samples.path", "tables.item_vocab"),
                   reads=("run", "spark", "storage", "dataset", "codebooks", "samples", "validation"))


if __name__ == "__main__":
    sys.exit(main())
