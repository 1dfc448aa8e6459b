"""Human-readable summaries printed at the end of a job."""
from __future__ import annotations

from typing import TYPE_CHECKING

from psrq.results import TableSummary

if TYPE_CHECKING:
    from psrq.data.validate import InputSummary
    from psrq.storage import WriteResult


def format_tables(tables: dict[str, TableSummary]) -> str:
    lines = [f"{'table':<14}{'version':>8}{'rows':>12}  path"]
    for name, t in tables.items():
        lines.append(f"{name:<14}{t.version:>8}{'-' if t.rows is None else format(t.rows, ','):>12}  {t.path}")
    return "\n".join(lines)


def format_generation(generated: dict[str, "WriteResult"], validated: "InputSummary") -> str:
    inter, cold, truth = validated.interactions, validated.cold_items, generated["item_truth"]
    tables = {"items": validated.items,
              "item_truth": TableSummary(truth.table, truth.version, None if truth.skipped else truth.rows_written),
              "interactions": inter}
    skipped = [n for n, g in generated.items() if g.skipped]
    return "\n".join(
        [
            format_tables(tables),
            f"users: {inter.users:,}   positive rate: {inter.positive_rate:.1%}   "
            f"events from {inter.first_event} to {inter.last_event}",
            f"cold items (< {cold.threshold} interactions): {cold.count:,} ({cold.fraction:.1%})",
            "validation: items and interactions meet their contracts",
        ]
        + ([f"already written by this run (skipped): {', '.join(skipped)}"] if skipped else [])
    )
