"""Training input and throughput on this machine:
- reader rows/s, petastorm vs arrow, over >= 2M sample rows (one shard, batch 512,
  the columns MCCA reads), in one run;
- training samples/s in one process for MCCA and DIN (batch 512, history 20, dim 64), with
  dense item tables (all Adam) and sparse ones (row-wise Adagrad, the default);
- 2-process horovod (through Spark) and TorchDistributor vs 1 process, MCCA (sparse);
- reading ahead on a thread (train.prefetch 2, the default) against reading in the loop:
  MCCA in one process, and the Arrow reader at batch 4096 feeding a stand-in for a device
  step (a wait that releases the GIL, as a step waiting on a GPU does, as long as reading
  the batch takes).
The sample rows are random but have the samples' exact schema and row-group size.

    python benchmarks/bench_training.py [--rows 2000000] [--steps 150]
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from psrq.models.registry import ModelArgs, build_model
from psrq.samples.layout import fixed_lists
from psrq.training.loop import LoopOptions, train_loop
from psrq.training.optim import make_optimizer
from psrq.training.readers import make_reader, prefetched, row_groups

from common import write_result

K, L, N, V, SPACES = 256, 3, 20, 200_000, ("text", "audio", "joint")


def write_samples(root: Path, rows: int, files: int = 4, row_group_mb: int = 8) -> Path:
    """Random rows with the samples' schema, in `files` files of ~row_group_mb row groups."""
    train = root / "train"
    if (root / "manifest.json").exists() and json.loads((root / "manifest.json").read_text())["rows"] == rows:
        return root
    shutil.rmtree(root, ignore_errors=True)
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)

    per_file = rows // files
    for f in range(files):
        n = per_file if f < files - 1 else rows - per_file * (files - 1)
        lens = rng.integers(0, N + 1, n)
        mask = np.arange(N)[None, :] < lens[:, None]
        cols = {"label": rng.integers(0, 2, n).astype(np.int32), "item_idx": rng.integers(1, V, n).astype(np.int32),
                "is_cold": rng.integers(0, 2, n).astype(np.int32), "hist_len": lens.astype(np.int32),
                "hist_item_idx": fixed_lists(rng.integers(2, V, (n, N)) * mask, np.int32)}
        for s in SPACES:
            cols[f"target_{s}_codes"] = fixed_lists(rng.integers(1, K + 1, (n, L)), np.int16)
            cols[f"hist_{s}_codes"] = fixed_lists((rng.integers(1, K + 1, (n, N, L)) * mask[:, :, None]).reshape(n, N * L), np.int16)
        table = pa.table(cols)
        rg_rows = max(1, int(row_group_mb * 2**20 / (table.nbytes / n)))
        pq.write_table(table, train / f"part-{f}.parquet", row_group_size=rg_rows)
    (root / "manifest.json").write_text(json.dumps({"rows": rows}))
    return root


def reader_rate(kind: str, path: str, cols: list[str]) -> dict:
    t = time.perf_counter()
    rows = sum(len(b["label"]) for b in make_reader(kind, path, cols, 512))
    s = time.perf_counter() - t
    return {"rows": rows, "seconds": round(s, 2), "rows_per_second": round(rows / s)}


def one_process(name: str, path: str, steps: int, sparse: bool, prefetch: int = 2) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelArgs(name, V, K, L, N, 64, sparse=sparse))
    opt = make_optimizer(model, 1e-4)
    res = train_loop(model, lambda: make_reader("arrow", path, model.inputs + ["label"], 512), opt, torch.device("cpu"),
                     LoopOptions(max_steps=steps, progress=False, prefetch=prefetch))
    return {"steps": res.steps, "prefetch": prefetch, "samples": res.samples, "seconds": round(res.seconds, 2),
            "samples_per_second": round(res.samples_per_second), "torch_threads": torch.get_num_threads()}


def read_beside_a_device(path: str, cols: list[str], batch_size: int = 4096) -> dict:
    """Batches of the Arrow reader fed to a stand-in for a device step (time.sleep, which
    releases the GIL, as a step waiting on a GPU does) as long as reading one takes: in the
    loop's thread the two add up, read ahead they overlap (at best half the time)."""
    t = time.perf_counter()
    n = sum(1 for _ in make_reader("arrow", path, cols, batch_size))
    wait = (time.perf_counter() - t) / n
    out = {"batch_size": batch_size, "batches": n, "read_ms_per_batch": round(1000 * wait, 2)}
    for depth in (0, 2):
        t = time.perf_counter()
        for _ in prefetched(make_reader("arrow", path, cols, batch_size), depth):
            time.sleep(wait)
        out[f"prefetch_{depth}_seconds"] = round(time.perf_counter() - t, 2)
    out["speedup"] = round(out["prefetch_0_seconds"] / out["prefetch_2_seconds"], 2)
    return out


def two_process(backend: str, path: str, steps: int, spark) -> dict:
    from psrq.config import TrainConf
    from psrq.training.distributed import RankJob, run_horovod, run_torch_distributor

    train = TrainConf(model="mcca", lr=1e-4, batch_size=512, max_steps=steps, reader="arrow", prefetch=2)
    job = RankJob(train=train, model=ModelArgs("mcca", V, K, L, N, 64, sparse=True), path=path)
    ranks = run_horovod(spark, job, 2) if backend == "horovod" else run_torch_distributor(spark, job, 2)
    samples, secs = sum(r["samples"] for r in ranks), max(r["seconds"] for r in ranks)
    return {"processes": 2, "steps_per_rank": steps, "samples": samples, "seconds": round(secs, 2),
            "samples_per_second": round(samples / secs), "in_sync": len({r["checksum"] for r in ranks}) == 1}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--work", default="benchmarks/.work/training")
    a = p.parse_args()
    root = write_samples(Path(a.work), a.rows)
    path = str(root / "train")
    mcca_cols = build_model(ModelArgs("mcca", V, K, L, N, 64)).inputs + ["label"]
    readers = {kind: reader_rate(kind, path, mcca_cols) for kind in ("arrow", "petastorm")}
    print("readers", readers, flush=True)
    # dense: every parameter in one Adam (before issue 13); sparse: the default since
    single = {name: {kind: one_process(name, path, a.steps, kind == "sparse") for kind in ("dense", "sparse")}
              for name in ("mcca", "din")}
    print("one process", single, flush=True)
    # on the CPU the two differ by less than this machine's noise: three pairs, alternating
    rounds = [{d: one_process("mcca", path, a.steps, True, prefetch=d)["samples_per_second"] for d in (0, 2)}
              for _ in range(3)]
    prefetch = {"mcca_sparse_one_process_samples_per_second": [{f"prefetch_{d}": r[d] for d in r} for r in rounds],
                "mcca_one_process_speedup": round(sum(r[2] for r in rounds) / sum(r[0] for r in rounds), 2),
                "arrow_reader_beside_a_device_step": read_beside_a_device(path, mcca_cols)}
    print("prefetch", prefetch, flush=True)
    from psrq.config import SparkConf
    from psrq.spark import build_spark

    spark = build_spark(SparkConf(master="local[2]", app_name="bench-training"))
    dist = {b: two_process(b, path, a.steps, spark) for b in ("horovod", "torch-distributor")}
    spark.stop()
    print("two processes", dist, flush=True)
    base = single["mcca"]["sparse"]["samples_per_second"]
    write_result("training", {
        "sizes": {"rows": a.rows, "batch_size": 512, "history_len": N, "dim": 64, "k": K, "layers": L,
                  "vocab_size": V, "steps": a.steps, "row_groups": len(row_groups(path))},
        "reader_rows_per_second": readers,
        "ratio_arrow_vs_petastorm": round(readers["arrow"]["rows_per_second"] / readers["petastorm"]["rows_per_second"], 2),
        "one_process": single,
        "sparse_vs_dense_one_process": {n: round(d["sparse"]["samples_per_second"] / d["dense"]["samples_per_second"], 2)
                                        for n, d in single.items()},
        "two_processes_mcca": dist,
        "scaling_vs_one_process_mcca": {b: round(d["samples_per_second"] / base, 2) for b, d in dist.items()},
        "prefetch": prefetch,
        "device": "cpu",
    })


if __name__ == "__main__":
    main()
