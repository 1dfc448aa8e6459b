"""Run identities: what makes a trained model, or an evaluation of one, what it is.

A training identity holds every setting that changes the weights; its key names the
checkpoint folder, the checkpoint records it, and a checkpoint is resumed or evaluated only
under the identity it was written for. An evaluation identity adds the checkpoint's step, a
hash of its weights and the split, so two states of one training can never share a record.
Computed here and nowhere else."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch

from psrq.config import absolute
from psrq.samples.layout import SamplesManifest
from psrq.storage import fs
from psrq.training.optim import table_rate


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainIdentity:
    model: str
    model_options: str  # canonical JSON
    dim: int
    lr: float
    batch_size: int
    max_steps: Optional[int]
    seed: int
    backend: str
    num_proc: int       # 1 for the single-process backend
    reader: str
    samples: str        # the samples build (SamplesManifest.key)
    codebook_version: str
    vocab_size: int
    k: int
    layers: int
    history_len: int
    precision: str     # as set (auto: per rank's device; each rank's summary says what it used)
    sparse: bool
    table_optimizer: Optional[str]  # None with dense tables
    table_lr: Optional[float]       # the rate the tables train at; None with dense tables
    max_vocab: Optional[int]
    hash_buckets: Optional[int]     # None without max_vocab
    epochs: int
    eval_every: int
    patience: int                   # which weights are kept as the best depends on it
    select_on: str                  # and on the score they are compared by
    weight_decay: float
    embedding_dropout: float
    priors: bool
    user_buckets: Optional[int]     # None without priors

    @classmethod
    def of(cls, train, man: SamplesManifest) -> "TrainIdentity":
        """train: the `train` configuration section."""
        return cls(
            model=train.model, model_options=json.dumps(train.model_options, sort_keys=True), dim=train.dim,
            lr=float(train.lr), batch_size=train.batch_size, max_steps=train.max_steps, seed=train.seed,
            backend=train.backend, num_proc=1 if train.backend == "single" else train.num_proc, reader=train.reader,
            samples=man.key, codebook_version=man.codebook_version, vocab_size=man.vocab_size, k=man.k,
            layers=man.layers, history_len=man.history_len, precision=train.precision,
            sparse=train.sparse,
            table_optimizer=train.table_optimizer if train.sparse else None,
            table_lr=table_rate(train.table_optimizer, train.table_lr, train.lr) if train.sparse else None,
            max_vocab=train.max_vocab, hash_buckets=train.hash_buckets if train.max_vocab else None,
            epochs=train.epochs, eval_every=train.eval_every, patience=train.patience, select_on=train.select_on,
            weight_decay=float(train.weight_decay), embedding_dropout=float(train.embedding_dropout),
            priors=train.priors, user_buckets=train.user_buckets if train.priors else None,
        )

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> str:
        return _digest(self.as_dict())

    def folder(self, root: str) -> str:
        return fs.join(absolute(root), f"{self.model}-{self.key}")

    def differences(self, recorded: Optional[dict]) -> list[str]:
        """`key: recorded → this run` for every field a checkpoint's identity disagrees on."""
        recorded = recorded or {}
        return [f"{f.name}={recorded.get(f.name)!r} (this run: {getattr(self, f.name)!r})"
                for f in fields(self) if recorded.get(f.name) != getattr(self, f.name)]


def weights_hash(state_dict: dict) -> str:
    """SHA-256 of a model's tensors, in name order (the same weights → the same hash)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class EvalIdentity:
    train_key: str
    model: str
    step: int
    weights: str
    split: str
    samples: str
    calibration: str = "none"  # evaluate.calibrate (fitted on the valid split: weights and samples fix it)

    @property
    def eval_id(self) -> str:
        return f"{self.model}-{_digest(asdict(self))}-{self.split}"
