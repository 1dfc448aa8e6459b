"""The command lines of the README and the docs pages stay true: every job they show exists,
takes the options shown, and every configuration override is a valid key with a valid
value; the spark-submit examples name the JVM packages setup resolves. The README stays a
landing page."""
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
DOCS = "\n".join([README, *(p.read_text() for p in sorted(Path(ROOT, "docs").glob("*.md")))])
JOB_LINES = sorted({m.group(1) for m in re.finditer(r"^\.venv/bin/python (jobs/\S+\.py[^#\n]*)", DOCS, re.M)})


def test_the_docs_show_every_job_and_the_readme_stays_a_landing_page():
    shown = {line.split()[0] for line in JOB_LINES}
    assert shown == {f"jobs/{p.name}" for p in Path(ROOT, "jobs").glob("*.py")}
    assert len(README.splitlines()) <= 150
    # a job line in the README names the dataset it runs on (the default is the synthetic demo's)
    for m in re.finditer(r"(?:\.venv/bin/python|psrq\.submit .*?) (jobs/\S+\.py[^#\n]*)", README):
        assert "--dataset" in m.group(1) or m.group(1).startswith("jobs/demo.py"), m.group(0)


@pytest.mark.real  # starts a process
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
    # the job's own settings, from the configuration schema, with their defaults
    assert "The settings this job reads" in out.stdout and re.search(r"^  \w+\.\w+(\.\w+)* = ", out.stdout, re.M)


SUBMIT_LINES = sorted({m.group(1) for m in re.finditer(r"\.venv/bin/python -m psrq\.submit ([^>\n]*)", DOCS)})


def test_the_docs_show_the_launcher():
    assert len(SUBMIT_LINES) >= 5


@pytest.mark.real  # starts a process
@pytest.mark.parametrize("line", SUBMIT_LINES)
def test_each_launcher_line_builds_its_spark_submit_command(line, tmp_path):
    args = shlex.split(line.replace("$(date +\\%Y\\%m\\%d)", "20261124"))
    if "--dry-run" not in args:
        args = ["--dry-run", *args]
    package = tmp_path / "psrq.zip"
    package.write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "psrq.submit", "--package", str(package), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PSRQ_STORAGE_ROOT": "/tmp/psrq"})
    assert out.returncode == 0, out.stderr[-2000:]
    cmd = shlex.split(out.stdout)
    job = next(a for a in args if a.startswith("jobs/"))
    run_id = next(a.split("=", 1)[1] for a in args if a.startswith("run.run_id="))
    assert cmd[0].endswith("spark-submit") and cmd[cmd.index("--master") + 1] == args[args.index("--master") + 1]
    assert cmd[cmd.index("--name") + 1] == f"psrq-{Path(job).stem}-{run_id}"
    assert cmd[cmd.index("--py-files") + 1] == str(package)
    # the cluster profile's JVM packages: the jars setup resolved (derived from the pins)
    assert cmd[cmd.index("--jars") + 1].split(",") == jvm.local_jars(["delta", "s3a"])
    assert "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in cmd


def test_without_resolved_jars_the_launcher_passes_the_derived_coordinates(monkeypatch):
    from psrq import submit

    monkeypatch.setattr(jvm, "resolved", lambda bundle, manifest=None: None)
    monkeypatch.setenv("PSRQ_STORAGE_ROOT", "/tmp/psrq")
    cmd = submit.command("jobs/assign_ids.py", ["--profile", "cluster", "--dataset", "catalogue", "run.run_id=1"], "yarn", "dist/psrq.zip")
    assert cmd[cmd.index("--packages") + 1] == jvm.packages(["delta", "s3a"]) and "--jars" not in cmd


def test_every_path_the_docs_name_exists():
    """README.md and docs/*.md name files and folders of the tree: each one is there."""
    missing = {}
    for doc in [Path(ROOT, "README.md"), *Path(ROOT, "docs").glob("*.md")]:
        paths = set(re.findall(r"`((?:lib|docs|tests|scripts|jobs|conf|benchmarks)/[\w./-]*\w/?)`", doc.read_text()))
        gone = sorted(p for p in paths if "*" not in p and "<" not in p and not Path(ROOT, p).exists())
        if gone:
            missing[doc.name] = gone
    assert missing == {}


MAKE_LINES = sorted({m.group(1) for doc in [Path(ROOT, "README.md"), Path(ROOT, "benchmarks", "README.md"),
                                            *Path(ROOT, "docs").glob("*.md")]
                     for m in re.finditer(r"`(make [^`]+)`", doc.read_text())})


@pytest.mark.parametrize("line", MAKE_LINES)
def test_each_make_line_names_a_target_and_its_settings_reach_the_command(line):
    """`make -n` (nothing runs): the target exists, and each VAR=value the line sets shows in
    the commands make would run."""
    words = shlex.split(line)
    out = subprocess.run([words[0], "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for setting in (w for w in words[1:] if "=" in w):
        assert setting.split("=", 1)[1] in out.stdout, (setting, out.stdout)
