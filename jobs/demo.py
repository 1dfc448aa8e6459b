"""The main job end to end on the embedded default (Spark local mode, Delta on local disk,
CPU): generate a small synthetic catalogue into Delta, validate it, print a summary.

    python jobs/demo.py                      # what `make demo` runs
"""
import sys
import time

from psrq.cli import run_job
from psrq.stages.generate import generate
from psrq.stages.summary import format_generation
from psrq.stages.validate import validate_inputs


def stage(spark, cfg):
    t0 = time.time()
    print(f"[demo] generating '{cfg.dataset.name}' into {cfg.storage.root}", flush=True)
    generated = generate(spark, cfg)
    t1 = time.time()
    print(f"[demo] generated in {t1 - t0:.1f}s; validating", flush=True)
    validated = validate_inputs(spark, cfg)
    print(f"[demo] validated in {time.time() - t1:.1f}s\n", flush=True)
    print(format_generation(generated, validated), flush=True)
    return {"generated": generated, "validated": validated}


if __name__ == "__main__":
    sys.exit(run_job(__doc__, stage))
