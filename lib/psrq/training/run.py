"""A training run as the stages hand it over: its identity and folder, what its checkpoint
records, and the arguments that rebuild its model. Written by training and read by
evaluation through this module (neither stage imports the other)."""
from __future__ import annotations

from psrq.config import Config, absolute
from psrq.errors import TrainingError
from psrq.models.registry import ranker_path
from psrq.samples.layout import SamplesManifest
from psrq.storage import fs
from psrq.training.identity import TrainIdentity


def content_file(samples_path: str, man: SamplesManifest) -> str:
    if not man.content:
        raise TrainingError(f"the samples at {samples_path} have no content features, which train.model needs: "
                            "rebuild them with samples.content.dim > 0")
    return fs.join(absolute(samples_path), man.content["file"])


def model_args(cfg: Config, man: SamplesManifest) -> dict:
    """build_model's arguments (content aside) for the samples' manifest."""
    return {"name": cfg.train.model, "ranker": ranker_path(cfg.train.model), "vocab_size": man.vocab_size, "k": man.k,
            "layers": man.layers,
            "history_len": man.history_len, "dim": cfg.train.dim, "options": cfg.train.model_options,
            "modalities": man.modalities, "sparse": cfg.train.sparse, "max_vocab": cfg.train.max_vocab,
            "hash_buckets": cfg.train.hash_buckets, "priors": cfg.train.priors, "user_buckets": cfg.train.user_buckets,
            "embedding_dropout": cfg.train.embedding_dropout}


def identity_and_folder(cfg: Config, man: SamplesManifest) -> tuple[TrainIdentity, str]:
    ident = TrainIdentity.of(cfg.train, man)
    return ident, ident.folder(cfg.checkpoint_root())


def checkpoint_meta(ident: TrainIdentity) -> dict:
    """What a checkpoint records and must match to be resumed or evaluated."""
    return {**ident.as_dict(), "identity": ident.key}
