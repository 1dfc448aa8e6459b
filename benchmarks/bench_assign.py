"""Semantic-ID assignment throughput: through Spark end to end (Delta items -> encode ->
dedup -> Delta semantic_ids) vs the same encoding (the same `encode_batch` function over
the same Arrow batches) in one process on the same cores. Two 768-d modalities + joint,
PSRQ L=3, K=256.

    python benchmarks/bench_assign.py [--items 1000000]
"""
import argparse
import time

import pyarrow.dataset as pads
from deltalake import DeltaTable

from psrq.catalog.assign import assign
from psrq.catalog.fit import fit_stage
from psrq.config import load_config
from psrq.data.synthetic_spark import synthetic_frames
from psrq.quant.artifact import CodebookStore
from psrq.quant.spark_encode import encode_batch, encode_items
from psrq.spark import build_spark
from psrq.storage import open_engine

from common import write_result
from psrq.job import JobContext


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--work", default="benchmarks/.work/assign")
    p.add_argument("--sample", type=int, default=16384)
    a = p.parse_args()
    cfg = load_config("local", "synthetic_1m", [
        f"storage.root={a.work}/delta", f"storage.codebooks={a.work}/codebooks",
        f"synthetic.n_items={a.items}", "synthetic.n_users=1000",
        f"dataset.modalities.text.dim={a.dim}", f"dataset.modalities.audio.dim={a.dim}",
        "codebooks.method=psrq", "codebooks.k=256", "codebooks.layers=3",
        f"codebooks.sample_size={a.sample}", "codebooks.kmeans.iters=10", f"run.run_id={int(time.time())}",
    ])
    spark = build_spark(cfg.spark)
    engine = open_engine(spark, cfg.storage.engine)
    items_path = cfg.table_path("items")
    timings = {}
    if engine.exists(items_path) and engine.read(items_path).count() == a.items:
        print(f"reusing {a.items:,} items at {items_path}", flush=True)
    else:
        t = time.perf_counter()
        engine.write(synthetic_frames(spark, cfg)["items"], items_path, "overwrite")
        timings["generate_items_seconds"] = round(time.perf_counter() - t, 1)
        print(f"generated {a.items:,} items in {timings['generate_items_seconds']}s", flush=True)
    t = time.perf_counter()
    fit_stage(JobContext.of(spark, cfg))
    timings["fit_seconds"] = round(time.perf_counter() - t, 1)
    cbs, _ = CodebookStore(cfg.codebooks_root()).load(method="psrq")

    # Spark, encode pass only (no write): the executors' share of the work
    t = time.perf_counter()
    n = encode_items(spark, engine.read(items_path), cbs).count()
    spark_encode_s = time.perf_counter() - t
    # Spark end to end: read Delta, encode, dedup, sort, write and commit Delta
    t = time.perf_counter()
    res = assign(JobContext.of(spark, cfg))
    spark_e2e_s = time.perf_counter() - t
    assert res.items == a.items and not res.skipped
    print(f"spark: encode {n / spark_encode_s:,.0f} items/s, end to end {a.items / spark_e2e_s:,.0f} items/s", flush=True)

    # one process, same cores (numpy's BLAS uses all of them), same function, same batches
    files = DeltaTable(items_path).file_uris()
    ds = pads.dataset(files, format="parquet")
    cols = ["item_id"] + [m["column"] for m in cbs.modalities.values()]
    t = time.perf_counter()
    m = 0
    for batch in ds.to_batches(columns=cols, batch_size=cfg.spark.arrow_batch_rows):
        m += encode_batch(cbs, batch).num_rows
    local_s = time.perf_counter() - t
    assert m == a.items
    print(f"one process: {a.items / local_s:,.0f} items/s", flush=True)
    spark.stop()
    write_result("assign", {
        "sizes": {"items": a.items, "modalities": {"text": a.dim, "audio": a.dim}, "spaces": cbs.spaces,
                  "method": "psrq", "k": 256, "layers": 3, "fit_sample": a.sample},
        "spark_master": cfg.spark.master,
        "items_per_second": {
            "spark_end_to_end": round(a.items / spark_e2e_s),
            "spark_encode_pass": round(a.items / spark_encode_s),
            "one_process_encode": round(a.items / local_s),
        },
        "seconds": {"spark_end_to_end": round(spark_e2e_s, 1), "spark_encode_pass": round(spark_encode_s, 1),
                    "one_process_encode": round(local_s, 1), **timings},
        "ratio_spark_end_to_end_vs_one_process": round(local_s / spark_e2e_s, 3),
        "ratio_spark_encode_pass_vs_one_process": round(local_s / spark_encode_s, 3),
        "target_ratio": 0.8,
    })


if __name__ == "__main__":
    main()
