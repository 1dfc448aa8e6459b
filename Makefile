# Every target sets up .venv first (idempotent: a few seconds once it exists).
PY := .venv/bin/python
ARGS ?=

.PHONY: setup demo lint test test-fast test-gpu bench experiments package clean help

help:
	@echo "make demo    run the main job end to end on the embedded default (local Spark, Delta on disk, CPU)"
	@echo "make test    run the test suite"
	@echo "make test-fast  lint, then the tests that start nothing real (no Spark, cluster, S3 endpoint or process)"
	@echo "make lint    ruff and mypy (pyproject.toml)"
	@echo "make test-gpu  the GPU paths' tests (tests/test_cuda.py) and k-means' on a machine with a CUDA device"
	@echo "make setup   create .venv with the pinned stack (horovod built once, then cached); GPU=1 for GPU nodes"
	@echo "make bench   run the benchmarks (JSON under benchmarks/results/)"
	@echo "make experiments  tuning on the valid split, then the paper's Tables 2-4 on synthetic data and MovieLens-100k, 3 seeds (docs/results/)"
	@echo "make package build dist/psrq.zip for spark-submit --py-files"

# GPU=1: faiss's GPU build and horovod with NCCL (needs an NVIDIA driver and the CUDA toolkit);
# GPU=0: the CPU build. Unset: the install that is there (CPU for a new .venv), so that
# `make test-gpu` after `make setup GPU=1` keeps the GPU build.
GPU ?=
setup:
	@PSRQ_GPU=$(GPU) bash scripts/setup_env.sh

demo: setup
	$(PY) jobs/demo.py $(ARGS)

# 2 pytest processes, each module's tests in one of them: most tests wait on JVMs, Python
# workers and other processes they start, so two overlap on 2 cores (TEST_WORKERS=0: one process).
# Modules go out longest first (tests/conftest.py LONGEST_FIRST), not by their test count.
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

test-fast: setup lint
	$(PY) -m pytest -m "not real" $(ARGS)

# ruff (pyflakes, pycodestyle, import order) on the package and the jobs; mypy on the package
# and the jobs (pyproject.toml holds both settings; the stages' results are TypedDicts, so the jobs' key reads are checked)
lint: setup
	$(PY) -m ruff check lib/psrq jobs
	$(PY) -m mypy lib/psrq jobs

# On a GPU node (after `make setup GPU=1`): the GPU paths run for real; elsewhere they skip.
test-gpu: setup
	$(PY) -m pytest tests/test_cuda.py tests/test_kmeans.py $(ARGS)

# Benchmarks write JSON under benchmarks/results/ (see benchmarks/README.md). About 45
# minutes here at full size; BENCH=kmeans (or assign, assign_memory, training, scale,
# evaluate, demo, cluster, pipeline: about 2 hours, gpu: on a GPU only) runs one.
BENCH ?= kmeans assign assign_memory training scale evaluate demo
bench: setup
	@for b in $(BENCH); do echo "== benchmark $$b"; PYTHONPATH=benchmarks $(PY) benchmarks/bench_$$b.py $(ARGS) || exit 1; done

# Per dataset: the tuning search on the valid split (writes conf/tuned/<dataset>.yaml), then
# the paper's tables with the tuned settings (one process per training run: on 2 cores data
# parallelism only adds overhead). Resumable: finished trials and cells are reused.
EXP_ARGS := train.backend=single train.reader=arrow
experiments: setup
	$(PY) jobs/tune.py --dataset synthetic_small $(EXP_ARGS) $(ARGS)
	$(PY) jobs/run_experiments.py --dataset synthetic_small $(EXP_ARGS) $(ARGS)
	$(PY) jobs/tune.py --dataset movielens_100k $(EXP_ARGS) $(ARGS)
	$(PY) jobs/run_experiments.py --dataset movielens_100k $(EXP_ARGS) $(ARGS)

package: setup
	$(PY) scripts/package.py

clean:
	rm -rf data dist build .pytest_cache lib/*.egg-info
