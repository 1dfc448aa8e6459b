"""Assign semantic IDs to every item with a codebook version (codebooks.version, default
the latest fitted): its rows in the semantic_ids Delta table are replaced, other versions'
rows stay beside them, and the version is marked current (codebooks.mark_current=false to
roll it out later with jobs/mark_current.py).

    python -m psrq.submit --master <url> jobs/assign_ids.py --profile cluster --dataset catalogue run.run_id=20261123
"""
import sys

from psrq.catalog.assign import assign
from psrq.cli import run_job
from psrq.job import JobContext


def stage(job: JobContext):
    res = assign(job)
    state = "skipped (already written by this run)" if res.skipped else f"{res.items:,} items in {res.seconds}s"
    current = f"; {res.current} is current" if res.current else ""
    print(f"semantic_ids version {res.version} with codebook {res.codebook_version}: {state}{current}", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.semantic_ids", "tables.codebook_current"),
                   reads=("run", "spark", "storage", "dataset", "codebooks", "validation"))


if __name__ == "__main__":
    sys.exit(main())
