"""Mark a codebook version current: build_samples, the nightly reindex and every reader of
semantic IDs switch to its rows in one commit (and back, by marking the old version). The
version must be fitted and assigned (jobs/assign_ids.py codebooks.version=vNNNN
codebooks.mark_current=false assigns it beside the version in use).

    python jobs/mark_current.py codebooks.version=v0002 run.run_id=20261124
"""
import sys

from psrq.catalog.current import mark_current
from psrq.cli import run_job
from psrq.errors import ConfigError
from psrq.job import JobContext


def stage(job: JobContext):
    if not job.cfg.codebooks.version:
        raise ConfigError("codebooks.version: which version to mark current (e.g. codebooks.version=v0002)")
    res = mark_current(job.spark, job.engine, job.cfg, job.cfg.codebooks.version)
    state = "already current" if res.skipped else "now current"
    print(f"codebook {res.codebook_version} ({res.method}, {res.items:,} items): {state}", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.codebook_current"),
                   reads=("run", "spark", "storage", "codebooks"))


if __name__ == "__main__":
    sys.exit(main())
