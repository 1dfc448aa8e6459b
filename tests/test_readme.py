"""The README's command lines stay true: every job it shows exists, takes the options shown,
and every configuration override it shows is a valid key with a valid value; the
spark-submit example names the JVM packages setup resolves."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from psrq import jvm
from psrq.config import load_config

from conftest import ROOT

README = Path(ROOT, "README.md").read_text()
JOB_LINES = [m.group(1) for m in re.finditer(r"^\.venv/bin/python (jobs/\S+\.py[^#\n]*)", README, re.M)]


def test_the_readme_shows_the_jobs():
    assert len(JOB_LINES) >= 12


@pytest.mark.parametrize("line", JOB_LINES)
def test_each_job_line_parses_and_its_overrides_are_valid(line):
    job, *args = shlex.split(line)
    assert Path(ROOT, job).is_file(), job
    profile = args[args.index("--profile") + 1] if "--profile" in args else "local"
    dataset = args[args.index("--dataset") + 1] if "--dataset" in args else "synthetic_small"
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    load_config(profile, dataset, overrides)  # raises ConfigError on an unknown key or a bad value
    out = subprocess.run([sys.executable, job, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "key=value" in out.stdout, out.stderr[-1000:]


def test_spark_submit_example_uses_the_derived_packages():
    assert f"--packages {jvm.packages(['delta', 's3a'])}" in README
