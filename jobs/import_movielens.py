"""Import MovieLens-100k from movielens.path (default ../shared/data/ml-100k; read in
place, never copied) into the items and interactions Delta tables: rating >= 4 -> label 1,
items with the text "title | genres" and a genre vector. Then run jobs/embed_text.py.

    python jobs/import_movielens.py --dataset movielens_100k movielens.path=/data/ml-100k
"""
import sys

from psrq.cli import run_job
from psrq.data.import_movielens import import_movielens
from psrq.job import JobContext


def stage(job: JobContext):
    res = import_movielens(job)
    print(f"movielens: {res.items.rows:,} items, {res.interactions.rows:,} interactions "
          f"(positive rate {res.positive_rate:.1%})", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.items", "tables.interactions"),
                   reads=("run", "spark", "storage", "dataset", "movielens"))


if __name__ == "__main__":
    sys.exit(main())
