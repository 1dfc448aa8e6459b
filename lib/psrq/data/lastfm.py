"""HetRec 2011 Last.fm-2k files to the pipeline's items and interactions (pure pandas/numpy;
read in place from lastfm.path and never copied into the project: non-commercial use only).

  user_taggedartists.dat  user \t artist \t tag \t day \t month \t year (or, preferred when
                          present, user_taggedartists-timestamps.dat: user \t artist \t tag \t ms)
  user_artists.dat        user \t artist \t listen count (each user's top 50; no time)
  artists.dat             id \t name \t url \t picture (the catalogue; no quoting)
  tags.dat                tag id \t value (UTF-8 with a BOM)

Events: a user's first tagging of an artist is a positive (label 1) at that date. The data is
implicit, so each positive gets `negatives` sampled negatives at the same time: an artist
drawn uniformly from those anyone tagged, redrawn while the user ever tagged or listened to
it (numpy's default_rng(seed), whole arrays per round). Taggings dated outside WINDOW (a few
rows say 1956) or of an artist missing from artists.dat are dropped and counted.

Items: every artist of artists.dat, with the text "name | tag, tag" (its most used tags) and
a tag vector (its counts over the tag_dim most used tags, plus a "no tag" component so no row
is all zero; L2-normalised). Tags are what the events are made of, so every tag profile (and
which tags are the most used) comes from the taggings before the valid split only: before the
positives' valid_from time quantile (samples.valid_from; the ceil(q·n)-th time, as the samples'
split takes it). Valid and test events never show in an item's features; an artist first
tagged after that time has its name alone and the "no tag" vector.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from psrq.errors import InputValidationError, Problem
from psrq.samples.layout import quantile_rank

TAGGINGS, TAGGINGS_MS = "user_taggedartists.dat", "user_taggedartists-timestamps.dat"
FILES = (TAGGINGS, "user_artists.dat", "artists.dat", "tags.dat")
# plausible tagging times: from Last.fm's launch year to the data set's release (May 2011)
WINDOW = (pd.Timestamp("2002-01-01", tz="UTC"), pd.Timestamp("2011-06-01", tz="UTC"))


@dataclass
class LastfmFigures:
    """What the import kept and dropped."""

    taggings: int                 # tagging rows kept
    dropped_dates: int            # tagging rows dated outside WINDOW
    dropped_unknown_artists: int  # tagging rows of artists missing from artists.dat
    positives: int                # (user, artist) pairs: the first tagging
    negatives: int
    users: int
    items_in_events: int
    items_with_tags: int          # artists tagged before `tags_before`
    tags_before: str              # the valid split's start: tag profiles use the taggings before it


@dataclass
class Lastfm:
    items: pd.DataFrame         # item_id, name, text, tag_emb (float32 arrays of tag_dim + 1)
    interactions: pd.DataFrame  # user_id, item_id, label, ts (UTC)
    figures: LastfmFigures


def _tsv(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False, **kw)


def _check_files(root: Path) -> None:
    missing = [f for f in FILES if not (root / f).is_file() and not (f == TAGGINGS and (root / TAGGINGS_MS).is_file())]
    if missing:
        why = f"missing {', '.join(missing)} (expected the hetrec2011-lastfm-2k folder: lastfm.path)"
        raise InputValidationError(f"lastfm at {root}", [Problem("files", why, len(missing), missing)])


def read_taggings(root: Path) -> pd.DataFrame:
    """user_id, item_id, tag_id, ts (UTC; NaT for an impossible date) of every tagging row."""
    if (root / TAGGINGS_MS).is_file():
        raw = _tsv(root / TAGGINGS_MS)
        ts = pd.to_datetime(raw.timestamp, unit="ms", utc=True)
    else:
        raw = _tsv(root / TAGGINGS)
        ts = pd.to_datetime(raw[["year", "month", "day"]], errors="coerce").dt.tz_localize("UTC")
    return pd.DataFrame({"user_id": raw.userID.astype("int64"), "item_id": raw.artistID.astype("int64"),
                         "tag_id": raw.tagID.astype("int64"), "ts": ts})


def sample_negatives(pos: pd.DataFrame, seen: pd.DataFrame, pool: np.ndarray, n: int, seed: int) -> pd.DataFrame:
    """n negatives per positive (user_id, ts): artists of `pool` the user has no row of in
    `seen` (user_id, item_id), uniformly, at the positive's time. A user who has seen the
    whole pool gets none."""
    width = int(max(pool.max(), seen.item_id.max())) + 1
    forbidden = np.unique(seen.user_id.to_numpy() * width + seen.item_id.to_numpy())
    in_pool = np.isin(forbidden % width, pool)
    full = pd.Series(forbidden[in_pool] // width).value_counts()
    pos = pos[~pos.user_id.isin(full.index[full >= len(pool)])]
    rep = pos.iloc[np.repeat(np.arange(len(pos)), n)]
    users = rep.user_id.to_numpy()
    items = np.empty(len(users), dtype=np.int64)
    rng, todo = np.random.default_rng(seed), np.arange(len(users))
    while todo.size:  # a round draws for every row still to fill
        draw = pool[rng.integers(0, len(pool), todo.size)]
        keys = users[todo] * width + draw
        hit = forbidden[np.minimum(np.searchsorted(forbidden, keys), len(forbidden) - 1)] == keys
        items[todo[~hit]] = draw[~hit]
        todo = todo[hit]
    return pd.DataFrame({"user_id": users, "item_id": items, "label": np.zeros(len(users), "int32"),
                         "ts": rep.ts.reset_index(drop=True)})


def quantile_time(ts: pd.Series, q: float) -> pd.Timestamp:
    """The time where the samples' valid split begins (psrq.samples.layout.quantile_rank)."""
    k = quantile_rank(q, len(ts))
    return ts.sort_values().iloc[k - 1]


def tag_profiles(taggings: pd.DataFrame, names: pd.Series, item_ids: pd.Index, text_tags: int,
                 tag_dim: int) -> tuple[pd.Series, np.ndarray]:
    """Per item of item_ids: its text_tags most used tags' names joined by ", " ("" for none),
    and its L2-normalised counts over the tag_dim most used tags plus a "no tag" component."""
    counts = taggings.groupby(["item_id", "tag_id"]).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "tag_id"], ascending=[True, False, True])
    top = counts.groupby("item_id").head(text_tags).assign(value=lambda d: d.tag_id.map(names)).dropna()
    text = top.groupby("item_id").value.agg(", ".join).reindex(item_ids, fill_value="")
    totals = counts.groupby("tag_id").n.sum().reset_index().sort_values(["n", "tag_id"], ascending=[False, True])
    column = pd.Series(np.arange(min(tag_dim, len(totals))), index=totals.tag_id.to_numpy()[:tag_dim])
    emb = np.zeros((len(item_ids), tag_dim + 1), dtype=np.float32)
    rows, cols = item_ids.get_indexer(counts.item_id), counts.tag_id.map(column)
    keep = (rows >= 0) & cols.notna().to_numpy()
    np.add.at(emb, (rows[keep], cols[keep].astype(int).to_numpy()), counts.n.to_numpy()[keep])
    emb[emb.sum(1) == 0, tag_dim] = 1.0
    return text, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def read_items(root: Path, artists: pd.DataFrame, taggings: pd.DataFrame, text_tags: int, tag_dim: int) -> pd.DataFrame:
    """item_id, name, text, tag_emb of every artist (id, name), its tags from `taggings` only."""
    names = _tsv(root / "tags.dat", encoding="utf-8-sig", dtype={"tagValue": str}).set_index("tagID").tagValue
    ids = pd.Index(artists.id.astype("int64"))
    tags, emb = tag_profiles(taggings, names, ids, text_tags, tag_dim)
    name = artists.name.str.strip()
    text = [f"{n} | {t}" if t else n for n, t in zip(name, tags)]
    return pd.DataFrame({"item_id": ids, "name": name, "text": text, "tag_emb": list(emb)})


def read_lastfm(root: str | Path, valid_from: float = 0.8, negatives: int = 1, seed: int = 0, text_tags: int = 5,
                tag_dim: int = 32) -> Lastfm:
    """The items and interactions of the folder (module docstring); valid_from: where the
    valid split begins, as a quantile of the positives' times (samples.valid_from)."""
    root = Path(root)
    _check_files(root)
    artists = _tsv(root / "artists.dat", usecols=["id", "name"], dtype={"name": str})
    raw = read_taggings(root)
    dated, known = (raw.ts >= WINDOW[0]) & (raw.ts < WINDOW[1]), raw.item_id.isin(artists.id)
    taggings = raw[dated & known]
    if taggings.empty:
        why = f"no tagging of an artist of artists.dat dated from {WINDOW[0]:%Y-%m-%d} to before {WINDOW[1]:%Y-%m-%d}"
        raise InputValidationError(f"lastfm at {root}", [Problem("taggings", why, len(raw), [])])
    pos = taggings.groupby(["user_id", "item_id"], as_index=False).ts.min().sort_values(["ts", "user_id", "item_id"])
    listened = _tsv(root / "user_artists.dat").rename(columns={"userID": "user_id", "artistID": "item_id"})
    seen = pd.concat([raw[["user_id", "item_id"]], listened[["user_id", "item_id"]].astype("int64")])
    neg = sample_negatives(pos, seen, np.unique(taggings.item_id.to_numpy()), negatives, seed)
    inter = pd.concat([pos.assign(label=np.int32(1)), neg], ignore_index=True)
    inter = inter.sort_values(["ts", "user_id", "label", "item_id"], ascending=[True, True, False, True], kind="stable")
    before = quantile_time(pos.ts, valid_from)
    tagged = taggings[taggings.ts < before]
    items = read_items(root, artists, tagged, text_tags, tag_dim)
    figures = LastfmFigures(len(taggings), int((~dated).sum()), int((dated & ~known).sum()), len(pos), len(neg),
                            int(pos.user_id.nunique()), int(pos.item_id.nunique()), int(tagged.item_id.nunique()),
                            before.isoformat())
    return Lastfm(items, inter[["user_id", "item_id", "label", "ts"]].reset_index(drop=True), figures)
