"""Run a job and kill -9 its own process at a chosen point, for the fault tests:

    python kill_at.py commit N jobs/<job>.py [args...]      SIGKILL just before the N-th Delta commit
    python kill_at.py checkpoint N jobs/<job>.py [args...]  SIGKILL just after the N-th checkpoint write
    python kill_at.py sigterm N jobs/<job>.py [args...]     SIGTERM (a scheduler's stop) after the N-th one

No cleanup handler runs (that is the point): what is left on disk is what a real crash leaves."""
import os
import runpy
import signal
import sys

point, n, job, *args = sys.argv[1:]
n = int(n)
calls = {"n": 0}


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if point == "commit":
    from psrq.storage.delta_rs import DeltaRsEngine

    real_commit = DeltaRsEngine._commit

    def commit(self, fn):
        calls["n"] += 1
        if calls["n"] == n:
            die()
        return real_commit(self, fn)

    DeltaRsEngine._commit = commit
elif point in ("checkpoint", "sigterm"):
    from psrq.training import loop

    real_save = loop.save_checkpoint

    def save(*a, **k):
        out = real_save(*a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            if point == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread, handled there
            else:
                die()
        return out

    loop.save_checkpoint = save
else:
    sys.exit(f"unknown kill point {point!r}")

sys.argv = [job, *args]
runpy.run_path(job, run_name="__main__")
