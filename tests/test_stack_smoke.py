"""The environment's distributed pieces work together: horovod (gloo, 2 processes) and
petastorm reading Parquet written by Spark."""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.real  # starts a process
def test_horovod_two_processes_over_gloo():
    hvdrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    check = subprocess.run([hvdrun, "--check-build"], capture_output=True, text=True, timeout=60)
    assert re.search(r"\[X\] PyTorch", check.stdout) and re.search(r"\[X\] Gloo", check.stdout)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run(
        [hvdrun, "--gloo", "--network-interface", "lo", "-np", "2", "-H", "localhost:2", sys.executable, os.path.join(HERE, "smoke", "hvd_allreduce.py")],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = sorted(re.findall(r"rank=(\d) size=(\d) sum=(\d+) weight=(-?\d+)", out.stdout))
    # both ranks see 1 + 2 and rank 0's weights after the broadcast
    assert lines == [("0", "2", "3", "0"), ("1", "2", "3", "0")]


def test_petastorm_batch_reader_over_spark_parquet(spark, tmp_path):
    from petastorm import make_batch_reader

    path = str(tmp_path / "samples")
    df = spark.range(1000).selectExpr("id", "cast(id % 2 as int) as label", "array(cast(id as int), 1, 2) as hist")
    df.repartition(3).write.option("parquet.block.size", 4096).parquet(path)
    seen, labels = [], 0
    with make_batch_reader(f"file://{path}", num_epochs=1, workers_count=2, shuffle_row_groups=False) as reader:
        for batch in reader:
            seen.extend(batch.id.tolist())
            labels += int(batch.label.sum())
            assert batch.hist.shape[1] == 3
    assert sorted(seen) == list(range(1000)) and labels == 500
