"""Random sample rows with the samples' columns, in memory or as a one-file split, for the
tests that train without building samples (no Spark): tests/test_cuda.py runs on a GPU node
without the suite's conftest."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

V, K, L, N, SPACES = 500, 16, 3, 5, ("text", "audio", "joint")


def batch(n: int, seed: int) -> dict:
    """n rows; the label is learnable (it follows the target item's parity), so a model that
    trains lowers its loss."""
    g = np.random.default_rng(seed)
    item = g.integers(1, V, n)
    lens = g.integers(1, N + 1, n)
    mask = np.arange(N)[None, :] < lens[:, None]
    out = {"item_idx": item.astype(np.int32), "hist_item_idx": (g.integers(1, V, (n, N)) * mask).astype(np.int32),
           "hist_len": lens.astype(np.int32), "label": (item % 2).astype(np.int32),
           "is_cold": np.zeros(n, dtype=np.int32)}
    for s in SPACES:
        out[f"target_{s}_codes"] = g.integers(1, K + 1, (n, L)).astype(np.int16)
        out[f"hist_{s}_codes"] = (g.integers(1, K + 1, (n, N, L)) * mask[:, :, None]).reshape(n, N * L).astype(np.int16)
    return out


def write_split(path, rows: dict, row_group_size: int = 256) -> None:
    """rows as one parquet file in the folder `path` (2-d arrays become list columns)."""
    from psrq.samples.layout import fixed_lists

    columns = {k: fixed_lists(v, v.dtype) if v.ndim == 2 else pa.array(v) for k, v in rows.items()}
    path.mkdir(parents=True)
    pq.write_table(pa.table(columns), path / "part-0.parquet", row_group_size=row_group_size)


def ddp_job(path, sparse: bool, device: str):
    """One TorchDistributor rank's job (psrq.training.distributed.RankJob) for MCCA on the split at path."""
    from psrq.config import TrainConf
    from psrq.models.registry import ModelArgs
    from psrq.training.distributed import RankJob

    train = TrainConf(model="mcca", lr=1e-2, batch_size=256, device=device, reader="arrow", epochs=1)
    return RankJob(train=train, model=ModelArgs("mcca", V, K, L, N, 16, sparse=sparse), path=str(path))


def world_of_one(monkeypatch) -> None:
    """The environment torchrun gives a single rank, on the loopback interface."""
    from psrq.standalone import free_port

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}.items():
        monkeypatch.setenv(key, value)
