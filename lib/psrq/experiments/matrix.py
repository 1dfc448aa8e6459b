"""Experiment matrices: conf/experiments/<name>.yaml -> cells of configuration overrides."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from psrq.config import DEFAULT_CONF_DIR, Config, read_layer
from psrq.errors import ConfigError


@dataclass(frozen=True)
class Experiment:
    """A matrix of cells; `ours` is the row the improvement column is about; `against`: cells
    every other cell is also compared with, each difference with its 95% interval."""

    name: str
    title: str
    ours: str
    cells: dict[str, dict]
    against: tuple[str, ...] = ()


def load_experiment(name: str, conf_dir: Path | None = None) -> Experiment:
    folder = (Path(conf_dir) if conf_dir else DEFAULT_CONF_DIR).joinpath("experiments")
    path = folder.joinpath(f"{name}.yaml")
    raw = OmegaConf.to_container(read_layer(folder, name, "experiment"), resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (name, title, ours, cells)")
    cells = raw.get("cells") or {}
    if raw.get("ours") not in cells:
        raise ConfigError(f"{path}: `ours` ({raw.get('ours')!r}) must name one of the cells ({', '.join(cells)})")
    against = tuple(raw.get("against") or ())
    if unknown := [c for c in against if c not in cells]:
        raise ConfigError(f"{path}: `against` names cells that are not there: {', '.join(unknown)} (cells: {', '.join(cells)})")
    return Experiment(raw.get("name", name), raw.get("title", name), raw["ours"], {k: dict(v or {}) for k, v in cells.items()},
                      against)


INPUT_TABLES = ("items", "interactions")  # a dataset's own tables: what the pipeline reads


def dataset_config(cfg: Config) -> Config:
    """Everything one dataset's experiments write lives under experiments.root/<dataset>.
    They generate or import the synthetic, MovieLens and Last.fm tables there; an external
    dataset's items and interactions are read where the other jobs read them (storage.root)."""
    root = f"{cfg.experiments_root().rstrip('/')}/{cfg.dataset.name}"
    overrides = {"storage.root": f"{root}/delta", "storage.codebooks": f"{root}/codebooks",
                 "train.checkpoint_dir": f"{root}/checkpoints", "samples.path": f"{root}/samples"}
    if cfg.dataset.kind == "external":
        overrides |= {f"storage.tables.{t}": cfg.table_path(t) for t in INPUT_TABLES}
    return cfg.with_overrides(overrides)



def cell_config(dcfg: Config, overrides: dict, seed: int) -> Config:
    """A cell's configuration: its model's tuned settings (conf/tuned), its overrides, then
    semantic IDs, vocabulary and samples kept apart per quantizer, so cells of different
    quantizers do not overwrite each other."""
    c = dcfg.for_model(overrides.get("train.model", dcfg.train.model), overrides)
    m = c.codebooks.method
    return c.with_overrides({"storage.tables.semantic_ids": f"semantic_ids_{m}", "storage.tables.item_vocab": f"item_vocab_{m}",
                             "samples.path": f"{dcfg.samples.path}_{m}", "train.seed": seed, "run.run_id": seed})
