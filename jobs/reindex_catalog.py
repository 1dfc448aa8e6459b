"""Nightly catalogue reindex: assign IDs to new and changed items, refit and reassign the
whole catalogue when they drift from the codebook's fit. run.run_id is the night
(e.g. 20261123): running the same night again changes nothing.

    python -m psrq.submit --master <url> jobs/reindex_catalog.py --profile cluster --dataset catalogue run.run_id=20261123
"""
import sys

from psrq.catalog.reindex import format_night, reindex
from psrq.cli import run_job
from psrq.job import JobContext


def stage(job: JobContext):
    res = reindex(job)
    print(format_night(res), flush=True)
    return res


def main(argv=None) -> int:
    return run_job(
        __doc__,
        stage,
        argv,
        writes=("storage.root", "storage.codebooks", "tables.semantic_ids", "tables.reindex_state", "tables.codebook_current"),
        reads=("run", "spark", "storage", "dataset", "codebooks", "reindex", "validation", "tracking"),
    )


if __name__ == "__main__":
    sys.exit(main())
