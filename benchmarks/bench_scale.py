"""Training cost against the item vocabulary: DIN (the model whose cost is all item-ID
tables) at V = 100k, 1M and 10M items, dense tables (all Adam) vs sparse ones (row-wise
Adagrad, the default), 2 processes, Horovod (through Spark) and TorchDistributor.

Per run: the median step time (the slower rank), each rank's peak resident memory (the
rank process's ru_maxrss, so the interpreter and libraries too: about 0.9 GiB here), the
gradient bytes per step (dense: the whole gradient; sparse: row indices and values) and
whether the ranks ended equal. Horovod's figure is what a rank sends (its own gradient,
before the exchange: uncoalesced, one row per lookup); DDP reduces during the backward pass,
so TorchDistributor's is the reduced gradient (coalesced over both ranks' rows). Item popularity is Zipf-distributed (exponent 1.05), as in a
music catalogue; labels are random (this measures cost, not quality).

A dense run whose estimated memory (weights, gradient and Adam's two moments per rank)
does not fit in 60% of this machine's memory is not started; the result says so.

    python benchmarks/bench_scale.py [--vocab 100000 1000000 10000000] [--steps 30]
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from psrq.samples.layout import fixed_lists

from common import write_result

N, DIM, BATCH, WORLD, ZIPF = 20, 64, 512, 2, 1.05


def zipf_items(rng, vocab: int, size) -> np.ndarray:
    """Item indices 1..vocab-1 with P(rank r) proportional to r^-ZIPF."""
    cdf = np.cumsum(1.0 / np.arange(1, vocab, dtype=np.float64) ** ZIPF)
    return np.searchsorted(cdf / cdf[-1], rng.random(size)).astype(np.int64) + 1


def write_samples(root: Path, vocab: int, rows: int, groups: int = 8) -> Path:
    """DIN's columns, `groups` row groups (split round-robin over the ranks)."""
    marker = root / "manifest.json"
    if marker.exists() and json.loads(marker.read_text()) == {"vocab": vocab, "rows": rows}:
        return root / "train"
    shutil.rmtree(root, ignore_errors=True)
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lens = rng.integers(1, N + 1, rows)
    hist = zipf_items(rng, vocab, (rows, N)) * (np.arange(N)[None, :] < lens[:, None])
    table = pa.table({
        "label": rng.integers(0, 2, rows).astype(np.int32),
        "item_idx": zipf_items(rng, vocab, rows),
        "hist_len": lens.astype(np.int32),
        "hist_item_idx": fixed_lists(hist, hist.dtype),
    })
    pq.write_table(table, root / "train" / "part-0.parquet", row_group_size=-(-rows // groups))
    marker.write_text(json.dumps({"vocab": vocab, "rows": rows}))
    return root / "train"


def dense_estimate_gib(vocab: int) -> float:
    """Per rank: weights, gradient and Adam's two moments of the item table, float32."""
    return vocab * DIM * 4 * 4 / 2**30


def run(spark, backend: str, vocab: int, sparse: bool, path: str, steps: int) -> dict:
    from psrq.config import TrainConf
    from psrq.models.registry import ModelArgs
    from psrq.training.distributed import RankJob, run_horovod, run_torch_distributor

    train = TrainConf(model="din", lr=5e-4, batch_size=BATCH, max_steps=steps, reader="arrow", prefetch=2)
    job = RankJob(train=train, model=ModelArgs("din", vocab, 8, 1, N, DIM, sparse=sparse), path=path)
    t = time.perf_counter()
    ranks = run_horovod(spark, job, WORLD) if backend == "horovod" else run_torch_distributor(spark, job, WORLD)
    return {
        "median_step_seconds": round(max(r["median_step_seconds"] for r in ranks), 4),
        "steps": ranks[0]["steps"],
        "peak_rss_mib_per_rank": [round(r["peak_rss_mb"]) for r in sorted(ranks, key=lambda r: r["rank"])],
        "gradient_mib_per_rank_per_step": round(float(np.mean([r["gradient_bytes"] for r in ranks])) / 2**20, 3),
        "in_sync": len({r["checksum"] for r in ranks}) == 1,
        "wall_seconds_with_start": round(time.perf_counter() - t, 1),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--backends", nargs="+", default=["horovod", "torch-distributor"])
    p.add_argument("--work", default="benchmarks/.work/scale")
    a = p.parse_args()
    from psrq.config import SparkConf
    from psrq.spark import build_spark

    budget = 0.6 * psutil.virtual_memory().total / 2**30
    spark = build_spark(SparkConf(master=f"local[{WORLD}]", app_name="bench-scale"))
    results = {}
    try:
        for vocab in a.vocab:
            path = str(write_samples(Path(a.work) / str(vocab), vocab, a.steps * BATCH * WORLD))
            weights_mib = vocab * DIM * 4 / 2**20
            for backend in a.backends:
                for kind in ("sparse", "dense"):
                    key = f"{backend}/{kind}/V={vocab}"
                    if kind == "dense" and WORLD * dense_estimate_gib(vocab) > budget:
                        results[key] = {"skipped": f"dense needs ~{dense_estimate_gib(vocab):.1f} GiB per rank x {WORLD} "
                                                   f"ranks, over 60% of this machine's memory ({budget:.1f} GiB)"}
                    else:
                        results[key] = {**run(spark, backend, vocab, kind == "sparse", path, a.steps),
                                        "item_table_weights_mib": round(weights_mib)}
                    print(key, results[key], flush=True)
    finally:
        spark.stop()

    def ratio(backend, kind, big, small):
        a_, b_ = results.get(f"{backend}/{kind}/V={big}", {}), results.get(f"{backend}/{kind}/V={small}", {})
        if "median_step_seconds" in a_ and "median_step_seconds" in b_:
            return round(a_["median_step_seconds"] / b_["median_step_seconds"], 2)
        return None

    lo, hi = min(a.vocab), max(a.vocab)
    write_result("scale", {
        "sizes": {"model": "din", "dim": DIM, "batch_size": BATCH, "history_len": N, "processes": WORLD,
                  "steps": a.steps, "zipf_exponent": ZIPF, "vocab": a.vocab},
        "runs": results,
        "notes": "gradient_mib_per_rank_per_step: Horovod: each rank's own gradient as sent; TorchDistributor: "
                 "the gradient after DDP's reduction (coalesced). peak_rss includes the interpreter and libraries.",
        f"step_time_ratio_V{hi}_vs_V{lo}": {f"{b}/{k}": ratio(b, k, hi, lo) for b in a.backends for k in ("sparse", "dense")},
        "device": "cpu",
    })


if __name__ == "__main__":
    main()
