"""Validate the configured items and interactions tables against their contracts
(embedding dimensions, NaN/Inf, ids, labels, timestamps, unknown items) and summarise them.

    python -m psrq.submit --master <url> jobs/validate_inputs.py --profile cluster --dataset catalogue
"""
import sys

from psrq.cli import run_job
from psrq.data.summary import format_tables
from psrq.data.validate import validate_inputs
from psrq.job import JobContext


def stage(job: JobContext):
    summary = validate_inputs(job)
    print(format_tables({"items": summary.items, "interactions": summary.interactions}), flush=True)
    print("validation: items and interactions meet their contracts", flush=True)
    return summary


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, reads=("spark", "storage", "dataset", "validation", "samples"))


if __name__ == "__main__":
    sys.exit(main())
