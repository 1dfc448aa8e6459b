"""The train split's statistics for the priors (psrq.models.priors), computed once per run on
the driver and handed to every rank as a file in the run's folder (arrays in npz, read with
allow_pickle=False). Memory: four float32 arrays, vocabulary- and user_buckets-sized."""
from __future__ import annotations

import io

import numpy as np

from psrq.models.priors import STATS, train_statistics
from psrq.storage import fs
from psrq.training.readers import make_reader

FILE = "priors.npz"
COLUMNS = ["item_idx", "user_id", "label"]


def compute(train_path: str, vocab_size: int, user_buckets: int) -> dict[str, np.ndarray]:
    return train_statistics(make_reader("arrow", train_path, COLUMNS, 1 << 16), vocab_size, user_buckets)


def write(folder: str, stats: dict[str, np.ndarray]) -> str:
    buf = io.BytesIO()
    np.savez(buf, **stats)
    path = fs.join(folder, FILE)
    fs.write_bytes(path, buf.getvalue())
    return path


def read(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False) as z:
        return {k: z[k] for k in STATS}


def prepare(folder: str, train_path: str, vocab_size: int, user_buckets: int) -> str:
    """The run's statistics file, computed unless an earlier attempt of the run left it."""
    path = fs.join(folder, FILE)
    return path if fs.exists(path) else write(folder, compute(train_path, vocab_size, user_buckets))


def apply(model, path: str | None):
    """Fill the model's priors from the file (a model without priors: unchanged)."""
    if path is not None and hasattr(model, "priors"):
        model.priors.set_statistics(read(path))
    return model
