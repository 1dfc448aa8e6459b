"""Score Parquet rows with an exported ranker, in a process with torch, pyarrow and numpy
only (no psrq, no Spark): what a serving system does with jobs/export_ranker.py's output.

    python scripts/score_exported.py <export folder>/ranker.pt2 <samples folder>/test scores.npy

The rows need the ranker's inputs (listed in the archive's psrq_export.json), laid out as the
samples are: list columns of fixed length become 2-D arrays."""
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def load(path: str):
    extra = {"psrq_export.json": ""}
    ranker = torch.export.load(path, extra_files=extra).module()
    return ranker, json.loads(extra["psrq_export.json"])


def column(table: pa.Table, name: str, dtype: str) -> np.ndarray:
    arr = table.column(name).combine_chunks()
    values = np.asarray(arr.flatten()).reshape(len(arr), -1) if pa.types.is_list(arr.type) else arr.to_numpy()
    return values.astype(dtype, copy=False)


def main(ranker_path: str, rows_path: str, out_path: str) -> None:
    ranker, meta = load(ranker_path)
    table = pq.read_table(rows_path, columns=[c["name"] for c in meta["inputs"]])
    with torch.no_grad():
        scores = ranker(*[torch.from_numpy(column(table, c["name"], c["dtype"])) for c in meta["inputs"]])
    np.save(out_path, scores.double().numpy())
    print(f"{len(scores):,} rows scored by {meta['model']} (codebook {meta['codebook_version']})")


if __name__ == "__main__":
    main(*sys.argv[1:4])
