"""Fit codebooks (codebooks.method: psrq, rq, vq, pq, rqvae) for every modality and the
joint space on a seeded sample of the items table, and write a new codebook version with
its diagnostics.

    python -m psrq.submit --master <url> jobs/fit_codebooks.py --profile cluster --dataset catalogue codebooks.k=256
"""
import sys

from psrq.catalog.fit import fit_stage
from psrq.cli import run_job
from psrq.job import JobContext
from psrq.quant.diagnostics import format_side_by_side


def stage(job: JobContext):
    res = fit_stage(job)
    print(f"codebook {res.version} ({res.method}, K={job.cfg.codebooks.k}) {res.status}: "
          f"{res.sample_size:,} items in {res.fit_seconds}s", flush=True)
    for space in res.diagnostics:
        print(format_side_by_side({res.method: res.diagnostics}, space), flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.codebooks",),
                   reads=("run", "spark", "storage", "dataset", "codebooks", "tracking"))


if __name__ == "__main__":
    sys.exit(main())
