"""Synthetic catalogue and users with planted structure (pure numpy).

Items sit in a latent hierarchy genre -> sub-genre -> item. Text embeddings follow the
item's text sub-genre, audio embeddings its audio style, which equals the sub-genre only
with probability `modality_agreement`: the two modalities share the genre but are partly
independent below it. Users have a taste per modality and a weight between them, so some
users are text-driven and others audio-driven. Popularity is Zipf-like over a fixed
permutation of item ids, which makes most items cold.

Everything is generated in fixed-size blocks seeded by (seed, block), so the output does not
depend on how Spark partitions the blocks, and any block can be regenerated on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from psrq.config import SyntheticConf

MODALITIES = ("text", "audio")
_ITEMS, _USERS, _WORLD, _HOT = 1, 2, 3, 4
_US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True)
class World:
    """The latent hierarchy and projections: small, derived from the seed alone."""

    genre_p: np.ndarray  # (G,) genre popularity
    genre_centres: dict  # modality -> (G, k)
    sub_centres: dict  # modality -> (G, S, k)
    projections: dict  # modality -> (k, dim)
    start_us: int
    perm_a: int  # popularity rank = (a * item_id + c) mod n
    perm_c: int


def make_world(cfg: SyntheticConf, dims: dict[str, int]) -> World:
    missing = [m for m in MODALITIES if m not in dims]
    if missing:
        raise ValueError(f"the synthetic generator needs modalities {MODALITIES}; missing {missing}")
    rng = np.random.default_rng([cfg.seed, _WORLD])
    g, s, k = cfg.n_genres, cfg.subgenres_per_genre, cfg.latent_dim
    genre_p = 1.0 / np.arange(1, g + 1) ** 0.6
    genre_centres, sub_centres, projections = {}, {}, {}
    for m in MODALITIES:
        genre_centres[m] = rng.normal(size=(g, k)) * 1.0
        sub_centres[m] = rng.normal(size=(g, s, k)) * 0.6
        projections[m] = rng.normal(size=(k, dims[m])) / np.sqrt(k)
    n = cfg.n_items
    a = int(rng.integers(1, max(2, min(n, 2**31 - 1))))
    while gcd(a, n) != 1:
        a += 1
    start = np.datetime64(cfg.start, "us").astype(np.int64)
    return World(genre_p / genre_p.sum(), genre_centres, sub_centres, projections, int(start), a, int(rng.integers(0, n)))


def block_range(block: int, size: int, total: int) -> np.ndarray:
    return np.arange(block * size, min((block + 1) * size, total), dtype=np.int64)


def n_blocks(total: int, size: int) -> int:
    return (total + size - 1) // size


def popularity_rank(item_ids: np.ndarray, world: World, n_items: int) -> np.ndarray:
    # a, c < n < 2**31 and ids < 2**31: the product stays inside int64
    return (world.perm_a * item_ids + world.perm_c) % n_items


def item_for_rank(ranks: np.ndarray, world: World, n_items: int) -> np.ndarray:
    inv = pow(world.perm_a, -1, n_items) if n_items > 1 else 0
    return (inv * ((ranks - world.perm_c) % n_items)) % n_items


def zipf_ranks(u: np.ndarray, n: int, exponent: float) -> np.ndarray:
    """Inverse CDF of a continuous Zipf law on [0, n): rank 0 is the most popular."""
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * np.log(n + 1.0)) - 1.0
    else:
        e = 1.0 - exponent
        x = (1.0 + u * ((n + 1.0) ** e - 1.0)) ** (1.0 / e) - 1.0
    return np.clip(x.astype(np.int64), 0, n - 1)


def _classes(rng, n: int, cfg: SyntheticConf, world: World):
    """Genre, text sub-genre and audio style (the sub-genre with prob. modality_agreement)."""
    genre = rng.choice(cfg.n_genres, size=n, p=world.genre_p)
    sub = rng.integers(0, cfg.subgenres_per_genre, size=n)
    style = np.where(rng.random(n) < cfg.modality_agreement, sub, rng.integers(0, cfg.subgenres_per_genre, size=n))
    return genre, sub, style


def _latents(rng, world: World, genre, sub, style, noise: float, k: int) -> dict:
    """Latent point per modality: genre centre + fine-class centre + noise."""
    out = {}
    for m, fine in (("text", sub), ("audio", style)):
        z = world.genre_centres[m][genre] + world.sub_centres[m][genre, fine] + noise * rng.normal(size=(len(genre), k))
        out[m] = z.astype(np.float32)
    return out


def item_block(block: int, cfg: SyntheticConf, world: World, with_embeddings: bool = True) -> dict:
    """Items of one block: ids, truth labels, latents z_<m> and (optionally) embeddings."""
    ids = block_range(block, cfg.block_size, cfg.n_items)
    rng = np.random.default_rng([cfg.seed, _ITEMS, block])
    n = len(ids)
    genre, sub, style = _classes(rng, n, cfg, world)
    out = {
        "item_id": ids,
        "genre": genre.astype(np.int32),
        "text_subgenre": sub.astype(np.int32),
        "audio_style": style.astype(np.int32),
        "popularity_rank": popularity_rank(ids, world, cfg.n_items).astype(np.int64),
        "updated_at_us": world.start_us + (rng.random(n) * cfg.days * _US_PER_DAY).astype(np.int64),
    }
    for m, z in _latents(rng, world, genre, sub, style, cfg.item_noise, cfg.latent_dim).items():
        out[f"z_{m}"] = z
    if with_embeddings:
        for m in MODALITIES:
            proj = world.projections[m]
            emb = out[f"z_{m}"] @ proj + cfg.embedding_noise * rng.normal(size=(n, proj.shape[1]))
            out[f"{m}_emb"] = emb.astype(np.float32)
    return out


def user_block(block: int, cfg: SyntheticConf, world: World) -> dict:
    """Users of one block: tastes per modality, modality weight, activity."""
    ids = block_range(block, cfg.block_size, cfg.n_users)
    rng = np.random.default_rng([cfg.seed, _USERS, block])
    n = len(ids)
    genre, sub, style = _classes(rng, n, cfg, world)
    out = {"user_id": ids, "w_text": rng.beta(0.6, 0.6, size=n).astype(np.float32)}
    for m, t in _latents(rng, world, genre, sub, style, 0.3, cfg.latent_dim).items():
        out[f"taste_{m}"] = t
    activity = rng.lognormal(0.0, 0.6, size=n)
    out["n_events"] = np.maximum(1, rng.poisson(cfg.mean_events_per_user * activity / np.exp(0.18))).astype(np.int64)
    heavy = ids < len(cfg.heavy_users)
    if heavy.any():  # share s of all events: s / (1 - the shares' sum) times the others' expected total
        rest = cfg.n_users * cfg.mean_events_per_user / (1.0 - sum(cfg.heavy_users))
        out["n_events"][heavy] = [round(cfg.heavy_users[u] * rest) for u in ids[heavy]]
    # per-user event times and popularity draws, from the same block stream
    total = int(out["n_events"].sum())
    out["event_u"] = rng.random(total)
    out["event_t"] = rng.random(total)
    return out


def impressions(users: dict, cfg: SyntheticConf, world: World) -> dict:
    """One row per (user, event): the item shown and its time, sorted by time per user."""
    counts = users["n_events"]
    user_idx = np.repeat(np.arange(len(counts)), counts)
    ranks = zipf_ranks(users["event_u"], cfg.n_items, cfg.popularity_exponent)
    if cfg.hot_item_share > 0:  # a hashed draw per (user, event number): the other draws stay as they are
        nth = np.arange(len(user_idx)) - np.repeat(np.cumsum(counts) - counts, counts)
        ranks = np.where(uniform_hash(cfg.seed + _HOT, users["user_id"][user_idx], nth) < cfg.hot_item_share, 0, ranks)
    t = world.start_us + (users["event_t"] * cfg.days * _US_PER_DAY).astype(np.int64)
    order = np.lexsort((t, user_idx))
    return {
        "user_idx": user_idx[order],
        "item_id": item_for_rank(ranks, world, cfg.n_items)[order].astype(np.int64),
        "ts_us": t[order],
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


def affinity(w_text, taste_text, taste_audio, z_text, z_audio) -> np.ndarray:
    """Row-wise user-item affinity in [-1, 1]: a user-weighted mix of the two modalities."""
    ct = np.einsum("ij,ij->i", _unit(taste_text), _unit(z_text))
    ca = np.einsum("ij,ij->i", _unit(taste_audio), _unit(z_audio))
    return w_text * ct + (1.0 - w_text) * ca


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash: the same input gives the same 64 bits whatever the row order."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_hash(seed: int, *keys: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = splitmix64(np.full(len(keys[0]), seed, dtype=np.uint64))
        for k in keys:
            h = splitmix64(h ^ k.astype(np.int64).view(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def labels(aff: np.ndarray, seed: int, user_id, item_id, ts_us, sharpness: float) -> np.ndarray:
    """Bernoulli(sigmoid(sharpness * (affinity - 0.5))) with hash-based draws."""
    p = 1.0 / (1.0 + np.exp(-sharpness * (aff - 0.5)))
    return (uniform_hash(seed, user_id, item_id, ts_us) < p).astype(np.int32)
