"""Import HetRec 2011 Last.fm-2k from lastfm.path (default ../shared/data/hetrec2011-lastfm-2k;
read in place, never copied) into the items and interactions Delta tables: a user's first
tagging of an artist -> label 1, with lastfm.negatives sampled negatives each; every artist
with the text "name | its top tags" and a tag vector, both from the taggings before the valid
split (samples.valid_from). Then run jobs/embed_text.py.

    python jobs/import_lastfm.py --dataset lastfm_2k lastfm.path=/data/hetrec2011-lastfm-2k
"""
import sys

from psrq.cli import run_job
from psrq.data.import_lastfm import import_lastfm
from psrq.job import JobContext


def stage(job: JobContext):
    res = import_lastfm(job)
    f = res.figures
    print(f"lastfm: {res.items.rows:,} items ({f.items_with_tags:,} tagged before {f.tags_before}), "
          f"{res.interactions.rows:,} interactions: {f.positives:,} positives, {f.negatives:,} negatives, "
          f"{f.users:,} users, {f.items_in_events:,} items (positive rate {res.positive_rate:.1%}); dropped "
          f"{f.dropped_dates:,} taggings with an implausible date, {f.dropped_unknown_artists:,} of artists "
          "missing from artists.dat", flush=True)
    return res


def main(argv=None) -> int:
    return run_job(__doc__, stage, argv, writes=("storage.root", "tables.items", "tables.interactions"),
                   reads=("run", "spark", "storage", "dataset", "samples", "lastfm"))


if __name__ == "__main__":
    sys.exit(main())
