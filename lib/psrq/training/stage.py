"""Stage: train a ranker on the samples (single process) and report validation metrics."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from psrq.config import Config
from psrq.models.ranker import build_model
from psrq.training.loop import TrainingError, predict, train_loop
from psrq.training.readers import make_reader

log = logging.getLogger(__name__)


def samples_manifest(path: str) -> dict:
    f = Path(path) / "manifest.json"
    if not f.is_file():
        raise TrainingError(f"no samples at {path} (missing manifest.json): run jobs/build_samples.py first")
    return json.loads(f.read_text())


def device_of(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but torch sees no CUDA device")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def metrics(scores: np.ndarray, labels: np.ndarray, cold: np.ndarray) -> dict:
    out = {"rows": int(len(labels)), "logloss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))}
    out["auc"] = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None
    c = cold == 1
    out["cold_auc"] = float(roc_auc_score(labels[c], scores[c])) if len(set(labels[c].tolist())) == 2 else None
    return out


def train_stage(cfg: Config, progress: bool = True) -> dict:
    tc = cfg.train
    man = samples_manifest(cfg.samples.path)
    if tc.codebook_version and tc.codebook_version != man["codebook_version"]:
        raise TrainingError(f"samples at {cfg.samples.path} were built with codebook {man['codebook_version']}, "
                            f"the model expects {tc.codebook_version} (train.codebook_version): rebuild the samples")
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, man["vocab_size"], man["k"], man["layers"], man["history_len"], tc.dim)
    missing = [c for c in model.inputs if c.split("_codes")[0].split("_", 1)[-1] not in man["spaces"] and c.endswith("_codes")]
    if missing:
        raise TrainingError(f"model {tc.model} needs {missing}, the samples only have spaces {man['spaces']}")
    device = device_of(tc.device)
    model.to(device)
    cols = model.inputs + ["label"]
    train_path = man["splits"]["train"]["path"]
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    meta = {"model_name": tc.model, "vocab_size": man["vocab_size"], "k": man["k"], "layers": man["layers"],
            "history_len": man["history_len"], "codebook_version": man["codebook_version"]}
    ckpt_dir = os.path.join(tc.checkpoint_dir, tc.model)
    result = train_loop(model, lambda: make_reader(tc.reader, train_path, cols, tc.batch_size), opt, device,
                        ckpt_dir, tc.checkpoint_every, meta, tc.max_steps, progress=progress)
    log.info("trained %s: %d steps, %.0f samples/s, last loss %.4f", tc.model, result.steps, result.samples_per_second, result.last_loss)
    valid = make_reader(tc.reader, man["splits"]["valid"]["path"], cols + ["is_cold"], 4096)
    scores, labels, cold = predict(model, valid, device)
    return {"model": tc.model, "steps": result.steps, "samples_per_second": round(result.samples_per_second, 1),
            "train_loss": result.last_loss, "valid": metrics(scores, labels, cold), "checkpoint": ckpt_dir,
            "codebook_version": man["codebook_version"]}
