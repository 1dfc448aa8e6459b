"""Stage: import MovieLens-100k (psrq.data.movielens) into the items and interactions Delta
tables. Text embeddings come after, from jobs/embed_text.py on the `text` column."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from psrq.data.imported import ImportResult, write_imported
from psrq.data.movielens import read_interactions, read_items
from psrq.job import JobContext
from psrq.schemas import MOVIELENS_ITEMS

log = logging.getLogger(__name__)


def import_movielens(job: JobContext) -> ImportResult:
    mc = job.cfg.movielens
    items = read_items(mc.path)
    items["genre_emb"] = [v.tolist() for v in items.genre_emb]
    items["updated_at"] = datetime(1998, 4, 23, tzinfo=timezone.utc)  # the data set's release
    inter = read_interactions(mc.path, mc.positive_from)
    res = write_imported(job, "movielens", "MovieLens-100k", items, MOVIELENS_ITEMS, inter, mc.path)
    log.info("movielens: %s", res)
    return res
