"""Human-readable summaries printed at the end of a job."""
from __future__ import annotations


def format_tables(tables: dict) -> str:
    """tables: name -> {version, rows, ...} as returned by the stages."""
    lines = [f"{'table':<14}{'version':>8}{'rows':>12}  path"]
    for name, t in tables.items():
        rows = t.get("rows")
        lines.append(f"{name:<14}{t['version']:>8}{'-' if rows is None else format(rows, ','):>12}  {t['path']}")
    return "\n".join(lines)


def format_generation(generated: dict, validated: dict) -> str:
    inter = validated["interactions"]
    cold = validated["cold_items"]
    truth = generated["item_truth"]
    tables = {
        "items": validated["items"],
        "item_truth": {**truth, "rows": None if truth["skipped"] else truth["rows_written"]},
        "interactions": inter,
    }
    skipped = [n for n, g in generated.items() if g["skipped"]]
    return "\n".join(
        [
            format_tables(tables),
            f"users: {inter['users']:,}   positive rate: {inter['positive_rate']:.1%}   "
            f"events from {inter['from']} to {inter['to']}",
            f"cold items (< {cold['threshold']} interactions): {cold['count']:,} ({cold['fraction']:.1%})",
            "validation: items and interactions meet their contracts",
        ]
        + ([f"already written by this run (skipped): {', '.join(skipped)}"] if skipped else [])
    )
