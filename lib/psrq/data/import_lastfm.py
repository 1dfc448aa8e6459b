"""Stage: import HetRec 2011 Last.fm-2k (psrq.data.lastfm) into the items and interactions
Delta tables: first taggings as positives with sampled negatives; artists with a tag vector
and the text to embed, their tags from before the valid split only (samples.valid_from).
Text embeddings come after, from jobs/embed_text.py on the `text` column."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from psrq.config import Config
from psrq.data.imported import ImportResult, write_imported
from psrq.data.lastfm import LastfmFigures, read_lastfm
from psrq.errors import ConfigError
from psrq.job import JobContext
from psrq.schemas import LASTFM_ITEMS

log = logging.getLogger(__name__)
RELEASE = datetime(2011, 5, 1, tzinfo=timezone.utc)  # the data set's release: the items' updated_at


@dataclass
class LastfmImportResult(ImportResult):
    """The two tables, and what the import kept and dropped."""

    figures: LastfmFigures


def check_tag_width(cfg: Config) -> None:
    """A modality on tag_emb must have the tag vector's width (lastfm.tag_dim + 1)."""
    width = cfg.lastfm.tag_dim + 1
    for name, m in cfg.dataset.modalities.items():
        if m.column == "tag_emb" and m.dim != width:
            raise ConfigError(f"dataset.modalities.{name}.dim={m.dim}, but lastfm.tag_dim={cfg.lastfm.tag_dim} makes "
                              f"{width}-d tag vectors (tag_dim + 1: the 'no tag' component)")


def import_lastfm(job: JobContext) -> LastfmImportResult:
    cfg = job.cfg
    lc = cfg.lastfm
    check_tag_width(cfg)
    data = read_lastfm(lc.path, cfg.samples.valid_from, lc.negatives, lc.seed, lc.text_tags, lc.tag_dim)
    items = data.items.assign(tag_emb=[v.tolist() for v in data.items.tag_emb], updated_at=RELEASE)
    res = write_imported(job, "lastfm", "Last.fm-2k", items, LASTFM_ITEMS, data.interactions, lc.path)
    out = LastfmImportResult(res.items, res.interactions, res.positive_rate, data.figures)
    log.info("lastfm: %s", out)
    return out
