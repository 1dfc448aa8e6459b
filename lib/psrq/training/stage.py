"""Stage: train a ranker on the samples (single process) and report validation metrics."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from psrq.config import Config, absolute
from psrq.content import read_content
from psrq.models.ranker import NEEDS_CONTENT, build_model
from psrq.training.loop import (TrainingError, check_compatible, load_checkpoint, make_optimizer, predict, restore,
                                train_loop)
from psrq.training.readers import make_reader

log = logging.getLogger(__name__)


def samples_manifest(path: str) -> dict:
    f = Path(path) / "manifest.json"
    if not f.is_file():
        raise TrainingError(f"no samples at {path} (missing manifest.json): run jobs/build_samples.py first")
    return json.loads(f.read_text())


def content_file(samples_path: str, man: dict) -> str:
    if "content" not in man:
        raise TrainingError(f"the samples at {samples_path} have no content features, which train.model needs: "
                            "rebuild them with samples.content.dim > 0")
    return f"{absolute(samples_path).rstrip('/')}/{man['content']['file']}"


def samples_key(man: dict) -> str:
    """One build of the samples."""
    return hashlib.sha256(json.dumps({k: man[k] for k in ("codebook_version", "vocab_size", "splits", "source_versions",
                                                         "split_from_us")}, sort_keys=True).encode()).hexdigest()[:10]


def run_meta(cfg: Config, man: dict) -> dict:
    """What a checkpoint records and must match to be resumed or evaluated."""
    tc = cfg.train
    return {"model_name": tc.model, "vocab_size": man["vocab_size"], "k": man["k"], "layers": man["layers"],
            "history_len": man["history_len"], "codebook_version": man["codebook_version"], "samples": samples_key(man),
            "dim": tc.dim, "seed": tc.seed, "model_options": json.dumps(tc.model_options, sort_keys=True)}


def checkpoint_dir(cfg: Config, man: dict) -> str:
    """The folder belongs to one model, seed and options on one build of the samples: a new
    build trains afresh, a re-run of the same one resumes (or finds the training done)."""
    tc = cfg.train
    name = f"{tc.model}-{samples_key(man)}-s{tc.seed}"
    if tc.model_options:
        name += "-" + hashlib.sha256(json.dumps(tc.model_options, sort_keys=True).encode()).hexdigest()[:6]
    return str(Path(tc.checkpoint_dir, name).resolve())


def model_args(cfg: Config, man: dict) -> dict:
    """build_model's arguments (content aside) for the samples' manifest."""
    return {"name": cfg.train.model, "vocab_size": man["vocab_size"], "k": man["k"], "layers": man["layers"],
            "history_len": man["history_len"], "dim": cfg.train.dim, "options": cfg.train.model_options,
            "modalities": [s for s in man["spaces"] if s != "joint"]}


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


def train_stage(cfg: Config, spark=None, progress: bool = True) -> dict:
    """Train cfg.train.model with cfg.train.backend; validation metrics from the result."""
    tc = cfg.train
    man = samples_manifest(cfg.samples.path)
    if tc.codebook_version and tc.codebook_version != man["codebook_version"]:
        raise TrainingError(f"samples at {cfg.samples.path} were built with codebook {man['codebook_version']}, "
                            f"the model expects {tc.codebook_version} (train.codebook_version): rebuild the samples")
    torch.manual_seed(tc.seed)
    content_path = content_file(cfg.samples.path, man) if tc.model in NEEDS_CONTENT else None
    content = read_content(content_path) if content_path else None
    model = build_model(**model_args(cfg, man), content=content)
    needed = {c[len("hist_"):-len("_codes")] for c in model.inputs if c.startswith("hist_") and c.endswith("_codes")}
    if not needed <= set(man["spaces"]):
        raise TrainingError(f"model {tc.model} needs code spaces {sorted(needed)}, the samples have {man['spaces']}")
    device = device_of(tc.device)
    cols = model.inputs + ["label"]
    train_path = man["splits"]["train"]["path"]
    meta = run_meta(cfg, man)
    ckpt_dir = checkpoint_dir(cfg, man)
    if (existing := load_checkpoint(ckpt_dir)) is not None:
        check_compatible(existing, meta)  # before any worker starts
    if tc.backend == "single":
        model.to(device)
        opt = make_optimizer(model, tc.lr)
        start = restore(existing, model, opt, meta) if existing is not None else 0
        res = train_loop(model, lambda: make_reader(tc.reader, train_path, cols, tc.batch_size), opt, device,
                         ckpt_dir, tc.checkpoint_every, meta, tc.max_steps, start, progress=progress)
        ranks = [{"rank": 0, "steps": res.steps, "samples": res.samples, "seconds": res.seconds, "last_loss": res.last_loss}]
    else:
        job = {"seed": tc.seed, "lr": tc.lr, "reader": tc.reader, "path": train_path, "batch_size": tc.batch_size,
               "checkpoint_dir": ckpt_dir, "checkpoint_every": tc.checkpoint_every, "max_steps": tc.max_steps,
               "meta": meta, "model": model_args(cfg, man), "content": content_path}
        from psrq.training.distributed import run_horovod, run_torch_distributor
        from psrq.training.readers import row_groups, shard

        shard(row_groups(train_path), 0, tc.num_proc)  # too few row groups: say so before any worker starts

        try:
            if tc.backend == "horovod":
                if spark is None:
                    raise TrainingError("train.backend=horovod is launched through Spark: run it from a job")
                ranks = run_horovod(spark, job, tc.num_proc)
            else:
                ranks = run_torch_distributor(job, tc.num_proc)
        except Exception as exc:  # noqa: BLE001 - the workers' own tracebacks are on stderr above
            if isinstance(exc, TrainingError):
                raise
            raise TrainingError(f"{tc.backend} training failed in a worker (its traceback is above): {exc}") from exc
        if len({round(r["checksum"], 6) for r in ranks}) != 1:
            raise TrainingError(f"parameters diverged across ranks: {[r['checksum'] for r in ranks]}")
        model.load_state_dict(load_checkpoint(ckpt_dir)["model"])
        model.to(device)
    samples = sum(r["samples"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    log.info("trained %s (%s, %d process(es)): %.0f samples/s", tc.model, tc.backend, len(ranks), samples / max(seconds, 1e-9))
    valid = make_reader(tc.reader, man["splits"]["valid"]["path"], cols + ["is_cold"], 4096)
    scores, labels, cold = predict(model, valid, device)
    return {"model": tc.model, "backend": tc.backend, "processes": len(ranks), "steps": max(r["steps"] for r in ranks),
            "samples_per_second": round(samples / max(seconds, 1e-9), 1), "train_loss": ranks[0]["last_loss"],
            "valid": metrics(scores, labels, cold), "checkpoint": ckpt_dir, "codebook_version": man["codebook_version"],
            "ranks": ranks}
