"""docs/ARCHITECTURE.md matches the tree, and the tree keeps its rules: no stage imports
another stage (hand-offs go through typed modules), pure cores import no Spark."""
import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

PKG = Path(ROOT, "lib", "psrq")
DOC = Path(ROOT, "docs", "ARCHITECTURE.md")
COMPOSERS = {"catalog/reindex.py"}  # a night is a refit and an assignment: composes stages by design
PURE = ["data/synthetic.py", "data/movielens.py", "data/lastfm.py", "samples/layout.py", "samples/content.py", "quant/base.py",
        "quant/residual.py", "quant/product.py", "quant/rqvae.py", "quant/kmeans.py", "quant/diagnostics.py",
        "quant/registry.py", "evaluation/auc.py", "evaluation/arrays.py", "evaluation/versus.py", "evaluation/calibration.py",
        "serving/artifact.py",
        *(f"models/{p.name}" for p in (PKG / "models").glob("*.py"))]


def modules() -> list[str]:
    return sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.name != "__init__.py")


def imports(rel: str) -> set[str]:
    """Every module a file imports, at any depth (lazy imports too)."""
    out = set()
    for node in ast.walk(ast.parse((PKG / rel).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def as_module(rel: str) -> str:
    return "psrq." + rel[:-3].replace("/", ".")


def test_the_architecture_page_names_every_module_and_only_real_ones():
    table = DOC.read_text().split("## Folders and modules", 1)[1]
    named = set(re.findall(r"`([\w/]+\.py)`", table))
    assert sorted(set(modules()) - named) == []  # every module has its line
    assert sorted(n for n in named if not (PKG / n).is_file()) == []  # no line for a module that is gone


def test_no_stage_imports_another_stage():
    stages = {m for m in modules() if (ast.get_docstring(ast.parse((PKG / m).read_text())) or "").startswith("Stage:")}
    assert {"catalog/fit.py", "catalog/assign.py", "samples/build.py", "training/stage.py", "evaluation/stage.py"} <= stages
    by_name = {as_module(s): s for s in stages}
    crossing = {s: sorted(by_name[i] for i in imports(s) if i in by_name and by_name[i] != s)
                for s in stages - COMPOSERS}
    assert {s: i for s, i in crossing.items() if i} == {}


def test_pure_cores_import_no_spark():
    spark = {m: sorted(i for i in imports(m) if i.split(".")[0] == "pyspark") for m in PURE}
    assert {m: i for m, i in spark.items() if i} == {}


@pytest.mark.real  # starts a process
def test_the_training_ranks_and_the_gpu_paths_load_neither_spark_nor_delta():
    """A training rank (and bench_gpu.py, tests/test_cuda.py on a GPU node's own Python) imports
    the loop, the readers, the models, k-means and the distributed workers: none of them may
    pull in pyspark or deltalake, even through a package's __init__ (psrq.storage's engines
    load on first use)."""
    import subprocess
    import sys

    rank = ("psrq.training.loop", "psrq.training.checkpoints", "psrq.training.readers", "psrq.training.distributed", "psrq.training.optim",
            "psrq.training.statistics", "psrq.models.registry", "psrq.quant.kmeans", "psrq.samples.content",
            "psrq.evaluation.arrays")
    code = (f"import sys; import {', '.join(rank)}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'py4j', 'deltalake', 'petastorm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    # and the engines are still there, for the code that writes tables
    from psrq import storage

    assert storage.DeltaRsEngine.__name__ == "DeltaRsEngine" and callable(storage.open_engine)


def test_the_suites_longest_first_order_names_its_modules():
    """`make test` hands modules out in LONGEST_FIRST's order: a renamed module would silently
    drop to the end of it."""
    from conftest import LONGEST_FIRST

    present = {p.name for p in Path(ROOT, "tests").glob("test_*.py")}
    assert [m for m in LONGEST_FIRST if m not in present] == [] and len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def test_functions_stay_small():
    """No function of the package longer than 60 lines or with more than 8 parameters (self
    and cls aside): a longer one is split into steps, more settings travel as one typed value."""
    too_big = []
    for rel in modules():
        for node in ast.walk(ast.parse((PKG / rel).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs) if p.arg not in ("self", "cls")]
                lines = node.end_lineno - node.lineno + 1
                if lines > 60 or len(params) > 8:
                    too_big.append(f"{rel}:{node.name} ({lines} lines, {len(params)} parameters)")
    assert too_big == []


def test_stages_take_the_job_context_and_one_place_opens_the_engine():
    """Every stage's first parameter is the JobContext, and only JobContext.engine calls
    open_engine (a stage that opened its own engine would bypass the job's)."""
    from psrq.catalog.assign import assign
    from psrq.catalog.fit import fit_stage
    from psrq.catalog.reindex import reindex
    from psrq.data.generate import generate
    from psrq.data.validate import validate_inputs
    from psrq.evaluation.floors import floors_stage
    from psrq.evaluation.stage import evaluate_stage
    from psrq.samples.build import build_samples
    from psrq.training.stage import train_stage

    for stage in (assign, fit_stage, reindex, generate, validate_inputs, floors_stage, evaluate_stage, build_samples,
                  train_stage):
        first = next(iter(__import__("inspect").signature(stage).parameters.values()))
        assert first.name == "job" and first.annotation in ("JobContext", "'JobContext'"), stage.__name__
    callers = []
    for path in [*PKG.rglob("*.py"), *Path(ROOT, "jobs").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "open_engine":
                callers.append(str(path.relative_to(ROOT)))
    assert callers == ["lib/psrq/job.py"]
