"""Stage: generate the synthetic catalogue, users and interactions into Delta."""
from __future__ import annotations

import logging

from psrq.data.synthetic_spark import synthetic_frames
from psrq.job import JobContext
from psrq.storage import AppTxn, WriteResult

log = logging.getLogger(__name__)

TABLES = ("items", "item_truth", "interactions")


def generate(job: JobContext) -> dict[str, WriteResult]:
    """Overwrite the three tables. The app transaction is keyed by the generator's
    settings and run.run_id, so re-running the same generation commits nothing new."""
    cfg, spark = job.cfg, job.session
    engine = job.engine
    txn = AppTxn(f"psrq.generate_synthetic.{cfg.fingerprint('dataset', 'synthetic')}", cfg.run.run_id)
    frames = synthetic_frames(spark, cfg)
    results: dict[str, WriteResult] = {}
    for name in TABLES:
        path = cfg.table_path(name)
        log.info("writing %s -> %s", name, path)
        res = engine.write(frames[name], path, "overwrite", txn, description=f"generate_synthetic {name}")
        log.info("%s: version %d%s", name, res.version, " (already written by this run: skipped)" if res.skipped else "")
        results[name] = res
    return results
