"""Maintenance: remove what killed runs left behind and no commit references: Parquet files
under the Delta tables of storage.root, checkpoint temporaries under train.checkpoint_dir,
codebook versions without a manifest. Only files older than maintenance.min_age_hours are
touched (a running writer keeps its files); maintenance.dry_run=true only lists them. Spark
is not started.

    python jobs/clean_orphans.py maintenance.dry_run=true
"""
import sys

from psrq.cli import run_job
from psrq.job import JobContext
from psrq.storage.maintenance import clean, orphans


def stage(job: JobContext):
    mc = job.cfg.maintenance
    found = orphans(job.cfg.root(), job.cfg.checkpoint_root(), job.cfg.codebooks_root(), mc.min_age_hours * 3600)
    if not mc.dry_run:
        clean(found)
    verb = "would remove" if mc.dry_run else "removed"
    print(f"{verb} {len(found.files)} orphan file(s) and {len(found.folders)} incomplete codebook folder(s), "
          f"{found.bytes:,} bytes", flush=True)
    return {**found.summary(), "dry_run": mc.dry_run}


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, needs_spark=False, reads=("storage", "train", "maintenance"))


if __name__ == "__main__":
    sys.exit(main())
