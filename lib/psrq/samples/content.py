"""Item content features for the baselines that read multimodal embeddings directly
(VBPR, SimTier+MAKE) or through their own quantisation (QARM). Pure numpy/torch; the
Spark side is in psrq.samples.build.

Samples refer to items by a *catalogue index* (`content_idx`, 1..n over the whole items
table, 0 = padding) rather than by the training vocabulary, so items never seen in
training (the cold ones) still have content. The content of every item is kept once, in
`content.safetensors` next to the samples, reduced to `content_dim` per modality by a
seeded Gaussian projection of the L2-normalised embedding (Johnson-Lindenstrauss: cosine
similarities are kept up to O(1/sqrt(content_dim))). Reducing keeps the table small enough
to ship to every training process (n * modalities * content_dim float32).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load, save

from psrq.errors import PsrqError

CONTENT_FILE = "content.safetensors"


class ContentError(PsrqError):
    """Content features are missing or do not match the samples."""


def _l2(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def projection(in_dim: int, out_dim: int, modality: str, seed: int) -> np.ndarray | None:
    """The same matrix on every executor: seeded by (seed, modality name). None when the
    embedding is no wider than out_dim (kept as it is)."""
    if out_dim >= in_dim:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(modality.encode())])
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def reduce(x: np.ndarray, proj: np.ndarray | None) -> np.ndarray:
    """L2-normalise, project, L2-normalise again (rows stay unit vectors)."""
    return _l2(x) if proj is None else _l2(_l2(x) @ proj)


@dataclass
class ContentFeatures:
    """Row r of every array belongs to content_idx r; row 0 is padding (zeros)."""

    item_ids: np.ndarray                 # (n + 1,) int64, item_ids[0] = -1
    modalities: dict[str, np.ndarray]    # name -> (n + 1, content_dim) float32
    codes: dict[str, np.ndarray]         # name -> (n + 1, layers) int16, shifted by one, 0 = padding

    def to_bytes(self) -> bytes:
        arrays = {"item_ids": self.item_ids}
        arrays |= {f"modality.{k}": v for k, v in self.modalities.items()}
        arrays |= {f"codes.{k}": v for k, v in self.codes.items()}
        return save(arrays)

    @staticmethod
    def from_bytes(data: bytes) -> "ContentFeatures":
        arrays = load(data)
        return ContentFeatures(
            arrays["item_ids"],
            {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("modality.")},
            {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("codes.")},
        )

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def joint(self) -> np.ndarray:
        """Modalities side by side, in name order."""
        return np.concatenate([self.modalities[k] for k in sorted(self.modalities)], axis=1)


# --- QARM --------------------------------------------------------------------------------
def align(content: np.ndarray, pairs: np.ndarray, dim: int, steps: int, batch: int, temperature: float,
          seed: int) -> np.ndarray:
    """QARM's item alignment, reduced to what this data offers: a linear map of the frozen
    multimodal content, trained so that items a user took one after the other (`pairs`,
    rows of content indices) are close under in-batch InfoNCE, as QARM aligns its MLLM
    representation to item-item behaviour similarity. Returns unit vectors (n + 1, dim)."""
    import torch

    threads = torch.get_num_threads()
    # batch x dim matrices: a second thread only adds synchronisation, and on a busy driver
    # (local mode: Spark's executors share its cores) spinning threads cost 5-25x
    torch.set_num_threads(1)
    try:
        return _align(content, pairs, dim, steps, batch, temperature, seed)
    finally:
        torch.set_num_threads(threads)


def _align(content: np.ndarray, pairs: np.ndarray, dim: int, steps: int, batch: int, temperature: float,
           seed: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(content)
    w = torch.nn.Linear(content.shape[1], dim, bias=False)
    with torch.no_grad():
        rng = np.random.default_rng(seed)  # start from a random projection (JL): a few steps cannot lose the content
        w.weight.copy_(torch.from_numpy(rng.standard_normal((dim, content.shape[1])).astype(np.float32) / np.sqrt(dim)))
    opt = torch.optim.Adam(w.parameters(), lr=1e-2)
    p = torch.from_numpy(pairs.astype(np.int64))
    for _ in range(steps if len(pairs) else 0):
        b = p[torch.randint(len(p), (min(batch, len(p)),), generator=g)]
        a = torch.nn.functional.normalize(w(x[b[:, 0]]), dim=1)
        c = torch.nn.functional.normalize(w(x[b[:, 1]]), dim=1)
        logits = a @ c.T / temperature
        target = torch.arange(len(b))
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = torch.nn.functional.normalize(w(x), dim=1).numpy().astype(np.float32)
    out[0] = 0.0
    return out


def read_content_bytes(path: str) -> bytes:
    """content.safetensors (a local path or a URI), as it is stored."""
    from psrq.storage.fs import read_bytes

    try:
        return read_bytes(path)
    except FileNotFoundError:
        raise ContentError(f"no content features at {path}: build samples with samples.content.dim > 0") from None


def read_content(path: str) -> ContentFeatures:
    return ContentFeatures.from_bytes(read_content_bytes(path))


def write_content(path: str, content: ContentFeatures) -> None:
    from psrq.storage.fs import write_bytes

    write_bytes(path, content.to_bytes())


def quantise(aligned: np.ndarray, k: int, layers: int, seed: int) -> dict[str, np.ndarray]:
    """QARM's two code kinds of the aligned representation: a VQ code (one k-means) and RQ
    codes (residual k-means, `layers` deep); shifted by one, padding row 0."""
    from psrq.quant.base import QuantSpec
    from psrq.quant.kmeans import KMeansSpec
    from psrq.quant.residual import RQ, VQ

    x = aligned[1:]
    k = min(k, len(x))
    out = {}
    for name, q in {"qarm_vq": VQ(QuantSpec("vq", k, 1, kmeans=KMeansSpec(k, seed=seed))),
                    "qarm_rq": RQ(QuantSpec("rq", k, layers, kmeans=KMeansSpec(k, seed=seed)))}.items():
        codes = q.fit(x).encode(x).astype(np.int16) + 1
        out[name] = np.concatenate([np.zeros((1, codes.shape[1]), np.int16), codes])
    return out
