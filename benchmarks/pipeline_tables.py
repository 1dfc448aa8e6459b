"""Markdown tables from results/pipeline_scale.json, for docs/SIZING.md and benchmarks/README.md
(so that the figures in the docs are the JSON's, not copied by hand).

    .venv/bin/python benchmarks/pipeline_tables.py [results/pipeline_scale.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_pipeline import SIZES

RESULT = Path(__file__).resolve().parent / "results" / "pipeline_scale.json"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list]) -> str:
    return "\n".join([_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)])


def _mib(v) -> str:
    return "" if v is None else f"{v:,.0f}"


def seconds_table(runs: dict, sizes: list[str]) -> str:
    stages = list(runs[sizes[0]]["stages"])
    rows = [[st, *(f"{runs[s]['stages'][st]['seconds']:,.1f}" if st in runs[s]["stages"] else "" for s in sizes)]
            for st in stages]
    rows.append(["**total**", *(f"**{runs[s]['total_seconds']:,.0f}**" for s in sizes)])
    return _table(["stage (job seconds)", *[f"{s} ({runs[s]['counts']['events']:,} events)" for s in sizes]], rows)


def exponent_table(doc: dict) -> str:
    exps = doc["growth_exponents_local"]
    pairs = list(exps)
    stages = [k for k in exps[pairs[0]] if k != "driver_python_rss_ratio"]
    rows = [[st, *(exps[p].get(st, "") for p in pairs)] for st in stages]
    rows.append(["driver RSS ratio", *(exps[p]["driver_python_rss_ratio"] for p in pairs)])
    return _table(["stage", *pairs], rows)


def memory_table(runs: dict, size: str) -> str:
    rows = []
    for st, c in runs[size]["stages"].items():
        m, sp = c["memory"], c["spark"]
        rows.append([st, _mib(m.get("driver_python_mib")), _mib(m.get("jvm_mib")), _mib(m.get("python_workers_mib")),
                     _mib(sp.get("task_peak_execution_memory_bytes", 0) / 2**20),
                     _mib(sp.get("shuffle_write_bytes", 0) / 2**20), _mib(sp.get("disk_spilled_bytes", 0) / 2**20),
                     sp.get("jobs", 0)])
    return _table(["stage", "driver Python MiB", "JVM MiB", "Python workers MiB", "task peak exec MiB",
                   "shuffle written MiB", "spilled to disk MiB", "Spark jobs"], rows)


def sizing_table(doc: dict) -> str:
    s = doc["sizing_1e8_events"]
    events = s["events_at_largest"]
    rows = [[st, v["exponent"], f"{v['seconds_at_largest']:,.0f}", f"{v['projected_seconds_2_cores']:,.0f}",
             f"{v['seconds_at_largest'] * s['target_events'] / events:,.0f}",
             _mib(v["driver_python_mib"]), _mib(v["task_peak_execution_mib"])] for st, v in s["stages"].items()]
    return _table(["stage", f"exponent {s['from']}", "seconds at the largest size", "at 1e8 events, 2 cores, by the exponent",
                   "at 1e8 events, 2 cores, linear", "driver Python MiB", "task peak exec MiB"], rows)


def main():
    doc = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else RESULT).read_text())
    local, cluster = doc["local"], doc["cluster"]
    sizes = [s for s in SIZES if s in local]
    print("## local[2]: seconds per job\n\n" + seconds_table(local, sizes))
    print("\n## growth exponents\n\n" + exponent_table(doc))
    print(f"\n## memory and Spark at {sizes[-1]}\n\n" + memory_table(local, sizes[-1]))
    if cluster:
        cs = [s for s in SIZES if s in cluster]
        print("\n## standalone cluster: seconds per job\n\n" + seconds_table(cluster, cs))
    if doc.get("sizing_1e8_events"):
        print("\n## projected to 1e8 events\n\n" + sizing_table(doc))
    print("\n## demo build_samples\n\n" + json.dumps(doc["demo_build_samples"], indent=1))
    print("\ntraining wait / step at the largest size:", doc["training_wait_over_step_at_largest"])


if __name__ == "__main__":
    main()
