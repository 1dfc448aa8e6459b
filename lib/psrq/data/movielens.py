"""MovieLens-100k files to the pipeline's items and interactions (pure pandas; the data is
read from a configured path and never copied into the project).

  u.data   user \t item \t rating \t unix seconds   -> label = rating >= positive_from
  u.item   id|title|release|video release|url|19 genre flags (latin-1)
  u.genre  name|index

Items get the text "title | genre, genre" (the input of jobs/embed_text.py) and a genre
vector (the flags, L2-normalised; "unknown" counts as a genre, so no row is all zero).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from psrq.errors import InputValidationError, Problem

FILES = ("u.data", "u.item", "u.genre")


def _check_files(root: Path) -> None:
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        why = f"missing {', '.join(missing)} (expected the ml-100k folder: movielens.path)"
        raise InputValidationError(f"movielens at {root}", [Problem("files", why, len(missing), missing)])


def read_genres(root: Path) -> list[str]:
    g = pd.read_csv(root / "u.genre", sep="|", header=None, names=["name", "idx"], encoding="latin-1").dropna()
    return g.sort_values("idx").name.tolist()


def read_items(root: str | Path) -> pd.DataFrame:
    """item_id, title, genres, text, genre_emb (list of float32)."""
    root = Path(root)
    _check_files(root)
    genres = read_genres(root)
    cols = ["item_id", "title", "release", "video_release", "url", *genres]
    df = pd.read_csv(root / "u.item", sep="|", header=None, names=cols, encoding="latin-1")
    flags = df[genres].to_numpy(dtype=np.float32)
    if (flags.sum(1) == 0).any():
        bad = df.item_id[flags.sum(1) == 0].head(5).tolist()
        n_bad = int((flags.sum(1) == 0).sum())
        raise InputValidationError("u.item", [Problem("genres", "items without any genre flag", n_bad, bad)])
    emb = flags / np.linalg.norm(flags, axis=1, keepdims=True)
    names = [", ".join(g for g, f in zip(genres, row) if f) for row in flags]
    title = df.title.fillna("").str.strip()
    return pd.DataFrame({"item_id": df.item_id.astype("int64"), "title": title, "genres": names,
                         "text": [f"{t} | {g}" for t, g in zip(title, names)], "genre_emb": list(emb)})


def read_interactions(root: str | Path, positive_from: int = 4) -> pd.DataFrame:
    """user_id, item_id, label (rating >= positive_from), ts (UTC)."""
    root = Path(root)
    _check_files(root)
    df = pd.read_csv(root / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"])
    return pd.DataFrame({"user_id": df.user_id.astype("int64"), "item_id": df.item_id.astype("int64"),
                         "label": (df.rating >= positive_from).astype("int32"),
                         "ts": pd.to_datetime(df.ts, unit="s", utc=True)})
