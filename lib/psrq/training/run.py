"""A training run as the stages hand it over: its identity and folder, what its checkpoint
records, and the arguments that rebuild its model. Written by training and read by
evaluation through this module (neither stage imports the other)."""
from __future__ import annotations

from dataclasses import fields

from psrq.config import Config, TrainConf, absolute
from psrq.errors import TrainingError
from psrq.models.registry import ModelArgs, ranker_path
from psrq.samples.layout import SamplesManifest
from psrq.storage import fs
from psrq.training.identity import TrainIdentity


def content_file(samples_path: str, man: SamplesManifest) -> str:
    if not man.content:
        raise TrainingError(f"the samples at {samples_path} have no content features, which train.model needs: "
                            "rebuild them with samples.content.dim > 0")
    return fs.join(absolute(samples_path), man.content["file"])


def model_args(cfg: Config, man: SamplesManifest) -> ModelArgs:
    """build_model's arguments (content aside): the samples' shape, and the train section's
    settings of the same names."""
    tc = cfg.train
    same = {f.name: getattr(tc, f.name) for f in fields(ModelArgs) if f.name in TrainConf.model_fields}
    return ModelArgs(**same, name=tc.model, ranker=ranker_path(tc.model), vocab_size=man.vocab_size, k=man.k,
                     layers=man.layers, history_len=man.history_len, options=tc.model_options,
                     modalities=tuple(man.modalities))


def identity_and_folder(cfg: Config, man: SamplesManifest) -> tuple[TrainIdentity, str]:
    ident = TrainIdentity.of(cfg.train, man)
    return ident, ident.folder(cfg.checkpoint_root())


def checkpoint_meta(ident: TrainIdentity) -> dict:
    """What a checkpoint records and must match to be resumed or evaluated."""
    return {**ident.as_dict(), "identity": ident.key}
