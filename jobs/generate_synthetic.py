"""Generate a synthetic catalogue (items with text+audio embeddings), item ground truth and
user interactions into Delta tables, then validate them and print a summary.

    python -m psrq.submit --master <url> jobs/generate_synthetic.py --profile cluster --dataset synthetic_1m run.run_id=1
"""
import sys

from psrq.cli import run_job
from psrq.data.generate import generate
from psrq.data.summary import format_generation
from psrq.data.validate import validate_inputs
from psrq.job import JobContext


def stage(job: JobContext):
    generated = generate(job)
    validated = validate_inputs(job)
    print(format_generation(generated, validated), flush=True)
    return {"generated": generated, "validated": validated}


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.items", "tables.item_truth", "tables.interactions"),
                   reads=("run", "spark", "storage", "dataset", "synthetic", "validation", "samples"))


if __name__ == "__main__":
    sys.exit(main())
