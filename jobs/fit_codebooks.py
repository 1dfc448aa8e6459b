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
    manifest = fit_stage(job)
    print(f"codebook {manifest['version']} ({manifest['method']}, K={job.cfg.codebooks.k}) "
          f"fitted on {manifest['sample']['size']:,} items in {manifest['fit_seconds']}s", flush=True)
    for space in manifest["diagnostics"]:
        print(format_side_by_side({manifest["method"]: manifest["diagnostics"]}, space), flush=True)
    return manifest


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.codebooks",),
                   reads=("run", "spark", "storage", "dataset", "codebooks", "tracking"))


if __name__ == "__main__":
    sys.exit(main())
