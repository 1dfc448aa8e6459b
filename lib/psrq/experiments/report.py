"""Markdown + PNG reports of experiment results: mean ± std over seeds per cell and metric,
the improvement of `ours` over the best other cell as the paper prints it, Welch's t-test
against that cell, and the codebook diagnostics of each quantizer used."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from psrq.experiments.matrix import Experiment

METRICS = {"auc": ("All AUC", "max"), "cold_auc": ("Cold AUC", "max"), "logloss": ("Logloss", "min")}


def summarise(res: pd.DataFrame, exp: Experiment) -> pd.DataFrame:
    """One row per cell (in the experiment's order): n seeds, mean and std per metric."""
    rows = []
    for cell in exp.cells:
        r = res[res.cell == cell]
        row = {"cell": cell, "seeds": len(r)}
        for m in METRICS:
            v = r[m].dropna().astype(float)
            row[m], row[f"{m}_std"] = (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0) if len(v) else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def compare(res: pd.DataFrame, summary: pd.DataFrame, exp: Experiment) -> dict:
    """Per metric: the best other cell, the paper's %Improv. and Welch's t-test p-value."""
    from scipy.stats import ttest_ind

    out = {}
    others = summary[summary.cell != exp.ours].dropna(subset=["auc"])
    ours = summary[summary.cell == exp.ours].iloc[0]
    for m, (_, best) in METRICS.items():
        cand = others.dropna(subset=[m])
        if cand.empty or np.isnan(ours[m]):
            continue
        b = cand.loc[cand[m].idxmax() if best == "max" else cand[m].idxmin()]
        a_vals = res[(res.cell == exp.ours)][m].dropna().astype(float)
        b_vals = res[(res.cell == b.cell)][m].dropna().astype(float)
        p, ci = float("nan"), (float("nan"), float("nan"))
        if min(len(a_vals), len(b_vals)) > 1:
            t = ttest_ind(a_vals, b_vals, equal_var=False)
            p, ci = float(t.pvalue), tuple(float(x) for x in t.confidence_interval(0.95))
        better = ours[m] > b[m] if best == "max" else ours[m] < b[m]
        out[m] = {"best_other": b.cell, "improvement_pct": 100 * (ours[m] - b[m]) / b[m], "p_value": p, "ours_better": bool(better),
                  "diff_ci95": ci}
    return out


def _fmt(mean, std) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def markdown_table(summary: pd.DataFrame, cmp: dict, exp: Experiment) -> str:
    head = "| cell | seeds | " + " | ".join(lbl for lbl, _ in METRICS.values()) + " |"
    lines = [head, "|" + " --- |" * (2 + len(METRICS))]
    for _, r in summary.iterrows():
        name = f"**{r.cell}**" if r.cell == exp.ours else r.cell
        lines.append(f"| {name} | {r.seeds} | " + " | ".join(_fmt(r[m], r[f'{m}_std']) for m in METRICS) + " |")
    imp = [f"{cmp[m]['improvement_pct']:+.2f}% vs {cmp[m]['best_other']}" if m in cmp else "n/a" for m in METRICS]
    lines.append("| %Improv. (of the means) | | " + " | ".join(imp) + " |")
    pv = [f"p = {cmp[m]['p_value']:.3f}" if m in cmp else "n/a" for m in METRICS]
    lines.append("| Welch t-test vs that cell | | " + " | ".join(pv) + " |")
    return "\n".join(lines)


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
                   f"means [{lo:+.4f}, {hi:+.4f}]{', which includes 0' if lo <= 0 <= hi else ''}; few seeds make this a weak test).")
    return out


def plot(summary: pd.DataFrame, exp: Experiment, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    colors = ["tab:red" if c == exp.ours else "tab:gray" for c in summary.cell]
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


def diagnostics_section(codebooks_root: str, versions: dict[str, str]) -> str:
    """Per-layer diagnostics of each quantizer's codebook (method -> version)."""
    from psrq.quant.artifact import read_manifest
    from psrq.quant.diagnostics import format_side_by_side

    diags = {}
    for method, version in versions.items():
        try:
            diags[method] = read_manifest(codebooks_root, version)["diagnostics"]
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
    png = out / f"{exp.name}_{dataset}.png"
    plot(summary, exp, dataset, png)
    versions = res.drop_duplicates("method").set_index("method").codebook_version.to_dict()
    seeds = sorted(res.seed.astype(int).unique().tolist())
    text = [f"# {exp.title} — {dataset}", "",
            f"Seeds {seeds} (ranker initialisation and batch order; one codebook per quantizer). "
            f"Test split: {int(res.rows.iloc[0]):,} predictions, {int(res.cold_rows.iloc[0]):,} on cold items." if len(res) else "No results.",
            "", markdown_table(summary, cmp, exp), "", *verdict(cmp, exp), "", f"![{exp.name}]({png.name})", ""]
    diag = diagnostics_section(codebooks_root, versions)
    if diag:
        text += ["## Codebook diagnostics (fit sample)", "",
                 "coh. = mean cosine between an item and the mean of the items sharing the code; layer: that layer's "
                 "code alone; rand: random codes of the same sizes; prefix: codes 1..l.", "", diag, ""]
    path = out / f"{exp.name}_{dataset}.md"
    path.write_text("\n".join(text))
    return path
