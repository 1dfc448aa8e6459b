#!/usr/bin/env bash
# The GPU checks on a bare GPU node that has CUDA, PyTorch, numpy and pyarrow but not this
# project's stack (no Spark): the tests of the GPU paths, then bench_gpu.py with the
# pipeline's middle size. Run from the repository root. Wheels for what the node lacks
# (faiss-cpu, pydantic, omegaconf and their needs) may be put in .whl/ beforehand; they are
# installed into /tmp/site. Results go to $OUT (default benchmarks/results): gpu.json and
# gpu_tests.txt.
#
#   bash benchmarks/gpu_node.sh ITEMS TRAIN_ROWS VOCAB      # bench_pipeline.py's middle size
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=lib:benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
CMD="PYTHONPATH=lib python3 -m pytest -p no:cacheprovider --noconftest -v -rs tests/test_cuda.py tests/test_kmeans.py"
{ echo "# tests/test_cuda.py and tests/test_kmeans.py on a GPU node, $(date -u +%FT%TZ) (the same run as gpu.json)"
  echo "# command: $CMD"; } > "$OUT/gpu_tests.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/gpu_tests.txt"
python3 -c 'import torch, numpy, faiss; print("torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__, "faiss", faiss.__version__)' | tee -a "$OUT/gpu_tests.txt"
# the suite's conftest starts Spark: the GPU modules run without it
python3 -m pytest -p no:cacheprovider --noconftest -v -rs tests/test_cuda.py tests/test_kmeans.py 2>&1 | tee -a "$OUT/gpu_tests.txt"
python3 benchmarks/bench_gpu.py --pipeline "$@" 2>&1 | tail -n 40
[ "$OUT" = benchmarks/results ] || cp benchmarks/results/gpu.json "$OUT/"
