"""Markdown + PNG reports of experiment results: mean ± std over seeds per cell and metric,
the improvement of `ours` over the best other cell as the paper prints it, Welch's t-test
against that cell, every cell's difference to the best non-learned floor with its 95%
interval, the learning curves, and the codebook diagnostics of each quantizer used."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from psrq.experiments.matrix import Experiment

METRICS = {"auc": ("All AUC", "max"), "cold_auc": ("Cold AUC", "max"), "logloss": ("Logloss", "min"),
           "calibration_error": ("Calibration error", "min")}
FLOOR = "floor:"           # cells of the non-learned floors (psrq.evaluation.floors)
VS_FLOOR = ("auc", "cold_auc")  # the metrics a model must beat the floors on


def is_floor(cell: str) -> bool:
    return str(cell).startswith(FLOOR)


def summarise(res: pd.DataFrame, exp: Experiment) -> pd.DataFrame:
    """One row per cell (the experiment's, then the floors): n seeds, mean and std per metric."""
    rows = []
    floors = sorted(c for c in res.cell.unique() if is_floor(c)) if len(res) else []
    for cell in [*exp.cells, *floors]:
        r = res[res.cell == cell]
        row = {"cell": cell, "seeds": len(r)}
        for m in METRICS:
            v = r[m].dropna().astype(float) if m in r else pd.Series(dtype=float)
            row[m], row[f"{m}_std"] = (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0) if len(v) else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def welch(res: pd.DataFrame, a: str, b: str, m: str) -> tuple[float, tuple[float, float]]:
    """Welch's t-test of cell a's metric m against cell b's over their seeds: the p-value and
    the 95% interval of the difference of means (a - b); nan where it is undefined."""
    from scipy.stats import ttest_ind

    a_vals = res[res.cell == a][m].dropna().astype(float)
    b_vals = res[res.cell == b][m].dropna().astype(float)
    # Welch's test needs spread in at least one cell: seeds that all give the same value
    # (a seed-independent metric) leave it undefined (nan), which scipy would also warn of
    if min(len(a_vals), len(b_vals)) > 1 and (np.ptp(a_vals) > 0 or np.ptp(b_vals) > 0):
        t = ttest_ind(a_vals, b_vals, equal_var=False)
        lo, hi = t.confidence_interval(0.95)
        return float(t.pvalue), (float(lo), float(hi))
    return float("nan"), (float("nan"), float("nan"))


def compare(res: pd.DataFrame, summary: pd.DataFrame, exp: Experiment) -> dict:
    """Per metric: the best other cell, the paper's %Improv. and Welch's t-test p-value."""
    out = {}
    others = summary[(summary.cell != exp.ours) & ~summary.cell.map(is_floor)].dropna(subset=["auc"])
    ours = summary[summary.cell == exp.ours].iloc[0]
    for m, (_, best) in METRICS.items():
        cand = others.dropna(subset=[m])
        if cand.empty or np.isnan(ours[m]):
            continue
        b = cand.loc[cand[m].idxmax() if best == "max" else cand[m].idxmin()]
        p, ci = welch(res, exp.ours, b.cell, m)
        better = ours[m] > b[m] if best == "max" else ours[m] < b[m]
        out[m] = {"best_other": b.cell, "improvement_pct": 100 * (ours[m] - b[m]) / b[m], "p_value": p,
                  "ours_better": bool(better),
                  "diff_ci95": ci}
    return out


def versus_floors(res: pd.DataFrame, summary: pd.DataFrame) -> dict:
    """cell -> metric -> the best floor, the mean difference to it over the cell's seeds and
    its 95% t-interval (the floors have no seed: the interval is the seeds' spread; None
    with one seed)."""
    from scipy.stats import t

    out: dict = {}
    floors = summary[summary.cell.map(is_floor)]
    for m in VS_FLOOR:
        cand = floors.dropna(subset=[m])
        if cand.empty:
            continue
        best = cand.loc[cand[m].idxmax()]
        for cell in summary.cell[~summary.cell.map(is_floor)]:
            d = res[res.cell == cell][m].dropna().astype(float) - best[m]
            if d.empty:
                continue
            n, mean = len(d), float(d.mean())
            ci = None
            if n > 1:
                half = float(t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
                ci = (mean - half, mean + half)
            out.setdefault(cell, {})[m] = {"floor": best.cell, "floor_value": float(best[m]), "diff": mean, "ci95": ci, "n": n}
    return out


AGAINST = ("auc", "cold_auc", "logloss")  # the metrics of the `against` comparison


def against_section(res: pd.DataFrame, summary: pd.DataFrame, exp: Experiment) -> list[str]:
    """Every other model cell against each of exp.against: the difference of means with
    Welch's 95% interval per metric, and, per metric, the cell closest to the best of them."""
    if not exp.against:
        return []
    cells = [c for c in summary.cell if not is_floor(c) and c not in exp.against]
    cols = [(ref, m) for ref in exp.against for m in AGAINST]
    lines = [f"## Against {', '.join(exp.against)}", "",
             "The difference of means over seeds (cell − reference) with Welch's 95% interval; "
             "better is + for the AUCs and − for Logloss.", "",
             "| cell | " + " | ".join(f"Δ {METRICS[m][0]} vs {ref}" for ref, m in cols) + " |",
             "|" + " --- |" * (1 + len(cols))]
    means = summary.set_index("cell")
    for cell in cells:
        parts = []
        for ref, m in cols:
            d = means.at[cell, m] - means.at[ref, m]
            _, (lo, hi) = welch(res, cell, ref, m)
            parts.append("n/a" if np.isnan(d) else f"{d:+.4f}" + ("" if np.isnan(lo) else f" [{lo:+.4f}, {hi:+.4f}]"))
        lines.append(f"| {cell} | " + " | ".join(parts) + " |")
    lines.append("")
    for m in AGAINST:
        label, best = METRICS[m]
        pick = max if best == "max" else min
        refs, others = ([c for c in group if not np.isnan(means.at[c, m])] for group in (exp.against, cells))
        if not refs or not others:
            continue
        ref = pick(refs, key=lambda c: means.at[c, m])
        near = pick(others, key=lambda c: means.at[c, m])
        gap = means.at[near, m] - means.at[ref, m]
        ahead = gap >= 0 if best == "max" else gap <= 0
        lines.append(f"- {label}: the best reference is {ref} ({means.at[ref, m]:.4f}); the closest other cell is {near} "
                     f"({means.at[near, m]:.4f}), " + ("at least as good" if ahead else f"short by {abs(gap):.4f}") + ".")
    return [*lines, ""]


def _fmt(mean, std) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _fmt_diff(v: dict | None) -> str:
    if v is None:
        return ""
    ci = "" if v["ci95"] is None else f" [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"
    return f"{v['diff']:+.4f}{ci}"


def markdown_table(summary: pd.DataFrame, cmp: dict, exp: Experiment, floors: dict | None = None) -> str:
    floors = floors or {}
    head = ("| cell | seeds | " + " | ".join(lbl for lbl, _ in METRICS.values()) + " | "
            + " | ".join(f"Δ {METRICS[m][0]} vs best floor [95%]" for m in VS_FLOOR) + " |")
    lines = [head, "|" + " --- |" * (2 + len(METRICS) + len(VS_FLOOR))]
    for _, r in summary.iterrows():
        name = f"**{r.cell}**" if r.cell == exp.ours else r.cell
        diffs = [_fmt_diff(floors.get(r.cell, {}).get(m)) for m in VS_FLOOR]
        lines.append(f"| {name} | {r.seeds} | " + " | ".join(_fmt(r[m], r[f'{m}_std']) for m in METRICS) + " | "
                     + " | ".join(diffs) + " |")
    pad = " |" * len(VS_FLOOR)
    imp = [f"{cmp[m]['improvement_pct']:+.2f}% vs {cmp[m]['best_other']}" if m in cmp else "n/a" for m in METRICS]
    lines.append("| %Improv. (of the means) | | " + " | ".join(imp) + " |" + pad)
    pv = [f"p = {cmp[m]['p_value']:.3f}" if m in cmp else "n/a" for m in METRICS]
    lines.append("| Welch t-test vs that cell | | " + " | ".join(pv) + " |" + pad)
    return "\n".join(lines)


def floor_verdict(floors: dict, exp: Experiment) -> list[str]:
    """Per metric: does `ours` exceed the best floor with the interval of the difference above 0?"""
    out = []
    for m, v in floors.get(exp.ours, {}).items():
        label = METRICS[m][0]
        if v["ci95"] is None:
            out.append(f"- {label} vs the best floor ({v['floor']}, {v['floor_value']:.4f}): {exp.ours} differs by "
                       f"{v['diff']:+.4f} on one seed: no interval, so the claim is not tested.")
            continue
        lo, hi = v["ci95"]
        holds = lo > 0
        out.append(f"- {label} vs the best floor ({v['floor']}, {v['floor_value']:.4f}): {exp.ours} differs by "
                   f"{v['diff']:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] over {v['n']} seeds: "
                   + ("**holds** (the interval is above 0)." if holds else
                      "**does not hold** (the interval " + ("is below 0)." if hi < 0 else "includes 0).")))
    return out


def verdict(cmp: dict, exp: Experiment, alpha: float = 0.05) -> list[str]:
    """Plain sentences: where ours beats the best other cell, and whether the seeds allow
    calling it a difference."""
    out = []
    for m, c in cmp.items():
        label = METRICS[m][0]
        sig = "significant" if c["p_value"] < alpha else "not significant"
        word = "beats" if c["ours_better"] else "does not beat"
        lo, hi = c["diff_ci95"]
        out.append(f"- {label}: {exp.ours} {word} the best other cell ({c['best_other']}, {c['improvement_pct']:+.2f}%); "
                   f"the difference is {sig} at {alpha} (Welch p = {c['p_value']:.3f}; 95% interval of the difference of "
                   f"means [{lo:+.4f}, {hi:+.4f}]{', which includes 0' if lo <= 0 <= hi else ''}; "
                   "few seeds make this a weak test).")
    return out


def plot(summary: pd.DataFrame, exp: Experiment, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    colors = ["tab:red" if c == exp.ours else "tab:blue" if is_floor(c) else "tab:gray" for c in summary.cell]
    for ax, (m, (label, _)) in zip(axes, METRICS.items()):
        ax.bar(summary.cell, summary[m], yerr=summary[f"{m}_std"], color=colors, capsize=3)
        vals = summary[m].dropna()
        if len(vals):
            lo, hi = vals.min(), vals.max()
            pad = max((hi - lo) * 0.6, 0.005)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"{exp.title} — {dataset} (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(res: pd.DataFrame, exp: Experiment, dataset: str, path: Path) -> bool:
    """Valid AUC and train loss per step of each cell's first seed (the runs' curves)."""
    if "curve" not in res or res.curve.dropna().empty:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (auc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for cell in exp.cells:
        r = res[(res.cell == cell) & res.curve.notna()].sort_values("seed")
        if r.empty:
            continue
        curve = pd.DataFrame(json.loads(r.curve.iloc[0]))
        if curve.empty:
            continue
        style = {"color": "tab:red", "linewidth": 2} if cell == exp.ours else {"linewidth": 1}
        auc_ax.plot(curve.step, curve.valid_auc, marker=".", label=f"{cell} (seed {int(r.seed.iloc[0])})", **style)
        loss_ax.plot(curve.step, curve.train_loss, marker=".", label=cell, **style)
    auc_ax.set(title="valid AUC", xlabel="step")
    loss_ax.set(title="train loss (mean since the last validation)", xlabel="step")
    auc_ax.legend(fontsize=7)
    fig.suptitle(f"{exp.title} — {dataset}: learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def diagnostics_section(codebooks_root: str, versions: dict[str, str]) -> str:
    """Per-layer diagnostics of each quantizer's codebook (method -> version)."""
    from psrq.quant.artifact import CodebookStore
    from psrq.quant.diagnostics import format_side_by_side

    diags = {}
    for method, version in versions.items():
        try:
            diags[method] = CodebookStore(codebooks_root).manifest(version)["diagnostics"]
        except Exception:  # noqa: BLE001 - a report without one quantizer's diagnostics still reads
            continue
    if not diags:
        return ""
    spaces = sorted(set.intersection(*(set(d) for d in diags.values())))
    return "\n\n".join("```\n" + format_side_by_side(diags, s) + "\n```" for s in spaces)


def write_report(res: pd.DataFrame, exp: Experiment, dataset: str, codebooks_root: str, out_dir: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = res[(res.experiment == exp.name) & (res.dataset == dataset)]
    summary = summarise(res, exp)
    cmp = compare(res, summary, exp)
    floors = versus_floors(res, summary)
    png = out / f"{exp.name}_{dataset}.png"
    plot(summary, exp, dataset, png)
    curves = out / f"{exp.name}_{dataset}_curves.png"
    has_curves = plot_curves(res, exp, dataset, curves)
    models = res[~res.cell.map(is_floor)]
    versions = models.drop_duplicates("method").set_index("method").codebook_version.to_dict()
    seeds = sorted(models.seed.astype(int).unique().tolist())
    text = [f"# {exp.title} — {dataset}", "",
            f"Seeds {seeds} (ranker initialisation and batch order; one codebook per quantizer). "
            f"Test split: {int(res.rows.iloc[0]):,} predictions, {int(res.cold_rows.iloc[0]):,} on cold items. "
            "Floors (`floor:*`) score the test rows from the train split alone (psrq.evaluation.floors); "
            "Δ vs best floor: the mean over seeds of the cell's metric minus the best floor's, with its 95% t-interval "
            "(the floors have no seed: the interval is the seeds' spread, not the test sample's)." if len(res) else "No results.",
            "", markdown_table(summary, cmp, exp, floors), "", *verdict(cmp, exp), *floor_verdict(floors, exp), "",
            *against_section(res, summary, exp), f"![{exp.name}]({png.name})", ""]
    if has_curves:
        text += [f"![{exp.name} learning curves]({curves.name})", ""]
    diag = diagnostics_section(codebooks_root, versions)
    if diag:
        text += ["## Codebook diagnostics (fit sample)", "",
                 "coh. = mean cosine between an item and the mean of the items sharing the code; layer: that layer's "
                 "code alone; rand: random codes of the same sizes; prefix: codes 1..l.", "", diag, ""]
    path = out / f"{exp.name}_{dataset}.md"
    path.write_text("\n".join(text))
    return path
