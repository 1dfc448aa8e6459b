"""Codebook diagnostics per space and layer (pure numpy).

- reconstruction error (mean squared, relative to the variance, per-row percentiles: the
  95th is the drift reference of the nightly reindex);
- per layer: utilisation, entropy and perplexity of the code distribution (an hourglass
  shows as a narrow middle layer), largest cluster share;
- collision rate of full code tuples;
- per-layer semantic coherence: the mean cosine, in the original space, between an item and
  the mean of all items sharing its layer-l code *alone*, beside the same figure for random
  codes with the same cluster sizes (a permutation of the codes). Each layer's code gets its
  own embedding in the ranker, so this is what a layer's code means on its own. The
  prefix-based figure (items sharing codes 1..l) is reported beside it only: it favours
  finer partitions.
"""
from __future__ import annotations

from typing import IO

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def group_coherence(x_unit: np.ndarray, groups: np.ndarray) -> float:
    """Mean cosine between each row and the mean of its group (rows already unit norm)."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sums = np.add.reduceat(x_unit[order], starts, axis=0)
    means = _unit(sums)
    which = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(g)]))
    return float(np.einsum("ij,ij->i", x_unit[order], means[which]).mean())


def distribution(codes: np.ndarray, k: int) -> dict:
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "utilisation": float((counts > 0).mean()),
        "entropy_bits": entropy,
        "perplexity": float(2.0**entropy),
        "max_share": float(counts.max() / counts.sum()),
    }


def tuple_ids(codes: np.ndarray) -> np.ndarray:
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def diagnose(x: np.ndarray, codes: np.ndarray, x_hat: np.ndarray, k: int, seed: int = 0) -> dict:
    """x: the embeddings as quantized (n, d); codes (n, L); x_hat: reconstruction."""
    rng = np.random.default_rng(seed)
    err = ((x - x_hat) ** 2).sum(1)
    var = float(((x - x.mean(0)) ** 2).sum(1).mean())
    xu = _unit(x)
    layers = []
    for l in range(codes.shape[1]):
        c = codes[:, l]
        layers.append(
            {
                "layer": l + 1,
                **distribution(c, k),
                "coherence_layer": group_coherence(xu, c),
                "coherence_random": group_coherence(xu, rng.permutation(c)),
                "coherence_prefix": group_coherence(xu, tuple_ids(codes[:, : l + 1])),
            }
        )
    full = tuple_ids(codes)
    return {
        "n": int(len(x)),
        "mse": float(err.mean()),
        "relative_error": float(err.mean() / max(var, 1e-12)),
        "error_p50": float(np.percentile(err, 50)),
        "error_p95": float(np.percentile(err, 95)),
        "collision_rate": float(1.0 - (full.max() + 1) / len(full)),
        "layers": layers,
    }


def format_side_by_side(diags: dict[str, dict], space: str) -> str:
    """diags: method -> {space -> diagnose(...)}; one table for one space."""
    head = f"{'method':<7}{'layer':>6}{'util':>7}{'perplex':>9}{'maxshare':>9}{'coh.layer':>10}{'coh.rand':>9}{'coh.prefix':>11}"
    lines = [f"space: {space}", head]
    for method, spaces in diags.items():
        d = spaces[space]
        for ly in d["layers"]:
            lines.append(
                f"{method:<7}{ly['layer']:>6}{ly['utilisation']:>7.2f}{ly['perplexity']:>9.1f}{ly['max_share']:>9.3f}"
                f"{ly['coherence_layer']:>10.3f}{ly['coherence_random']:>9.3f}{ly['coherence_prefix']:>11.3f}"
            )
        lines.append(f"{method:<7}  full codes: collision rate {d['collision_rate']:.3f}, "
                     f"relative error {d['relative_error']:.3f}")
    return "\n".join(lines)


def plot_code_distributions(diag_codes: dict[str, np.ndarray], k: int, path: str | IO[bytes],
                            title: str = "") -> str | IO[bytes]:
    """PNG: for each space, the sorted frequency of each layer's codes (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spaces = list(diag_codes)
    fig, axes = plt.subplots(1, len(spaces), figsize=(4.2 * len(spaces), 3.4), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        codes = diag_codes[space]
        for l in range(codes.shape[1]):
            counts = np.sort(np.bincount(codes[:, l], minlength=k))[::-1]
            ax.plot(np.arange(1, k + 1), np.maximum(counts, 0.8), label=f"layer {l + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("code rank")
        ax.set_ylabel("items")
        ax.set_title(space)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
