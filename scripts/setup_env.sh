#!/usr/bin/env bash
# Creates .venv and installs the pinned stack (setup.cfg), horovod built from source and the
# JVM packages Spark needs (Delta, hadoop-aws) resolved by Maven.
# Idempotent: a second run checks what is there and does nothing more; the horovod wheel
# is cached under $PSRQ_WHEEL_CACHE so a fresh clone on the same machine does not rebuild it.
#
# PSRQ_GPU=1 (make setup GPU=1), on a machine with an NVIDIA driver and the CUDA toolkit:
# faiss's GPU build instead of faiss-cpu (setup.cfg [tool:psrq-native] faiss_gpu) and
# horovod built with NCCL for GPU tensors (Gloo stays the controller and the CPU path).
# torch from PyPI is already a CUDA build. The default install is the CPU one; the mode is
# kept in $VENV/.psrq-gpu for the later runs that do not name one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${PSRQ_VENV:-$ROOT/.venv}
PY=${PSRQ_PYTHON:-python3}
CACHE=${PSRQ_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/psrq/wheels}
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------------------
command -v java >/dev/null || die "Java 17+ is required by Spark 4 and was not found on PATH (install openjdk-17-jre-headless)."
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ -n "$java_major" ] && [ "$java_major" -ge 17 ] || die "Java 17+ is required by Spark 4; found '$(java -version 2>&1 | head -1)'."
command -v mvn >/dev/null || die "Maven (mvn) is required to resolve the Delta and hadoop-aws jars for Spark and was not found on PATH (install maven)."
# the mode is sticky: a later `make <target>` (PSRQ_GPU empty) keeps the install that is there
# instead of swapping a GPU install back to the CPU one; PSRQ_GPU=0 or 1 (GPU=0/1) changes it
GPU=${PSRQ_GPU:-$(cat "$VENV/.psrq-gpu" 2>/dev/null || echo 0)}
[ "$GPU" = 0 ] || [ "$GPU" = 1 ] || die "PSRQ_GPU (make GPU=...) must be 0 or 1, not '$GPU'."
if [ "$GPU" = 1 ]; then
  command -v nvidia-smi >/dev/null || die "PSRQ_GPU=1 (make setup GPU=1) needs an NVIDIA driver and nvidia-smi was not found on PATH: this machine has no GPU driver ('make setup GPU=0' installs the CPU stack)."
  command -v nvcc >/dev/null || die "PSRQ_GPU=1 (make setup GPU=1) builds horovod with NCCL and needs the CUDA toolkit matching the pinned torch's CUDA; nvcc was not found on PATH (set CUDA_HOME/PATH, or 'make setup GPU=0' for the CPU stack)."
fi
command -v "$PY" >/dev/null || die "$PY not found; Python 3.11 is required."
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "Python 3.11 is required (the pinned torch and the horovod build); $PY is $("$PY" --version 2>&1)."

# --- virtual environment -----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=70,<80" wheel
fi
VPY="$VENV/bin/python"
echo "$GPU" > "$VENV/.psrq-gpu"

# --- pinned python packages (setup.cfg) -----------------------------------------------------
stamp="$VENV/.psrq-deps.sha"
want=$( (cat setup.cfg pyproject.toml; echo "gpu=$GPU") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned dependencies from setup.cfg (first time: a few minutes)"
  "$VPY" -m pip install --quiet --progress-bar off -e ".[dev]"
  # faiss-cpu and faiss's GPU build install the same module: exactly one of them
  if [ "$GPU" = 1 ]; then
    FAISS_GPU=$("$VPY" -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); print(c["tool:psrq-native"]["faiss_gpu"])')
    say "replacing faiss-cpu with $FAISS_GPU"
    "$VPY" -m pip uninstall --quiet -y faiss-cpu
    "$VPY" -m pip install --quiet --progress-bar off "$FAISS_GPU"
  elif "$VPY" -m pip show --quiet faiss-gpu-cu12 2>/dev/null; then
    say "replacing faiss's GPU build with faiss-cpu (a CPU install)"
    "$VPY" -m pip uninstall --quiet -y faiss-gpu-cu12
    "$VPY" -m pip install --quiet --force-reinstall --no-deps "$(grep -m1 -o 'faiss-cpu==[0-9.]*' setup.cfg)"
  fi
  echo "$want" > "$stamp"
else
  say "pinned dependencies up to date"
fi

# --- horovod, built from its sdist ------------------------------------------------------------
native() { "$VPY" - "$1" <<'PYEOF'
import configparser, sys
c = configparser.ConfigParser(); c.read("setup.cfg")
print(c["tool:psrq-native"][sys.argv[1]])
PYEOF
}
HVD_VERSION=$(native horovod)
CXX_STD=$(native horovod_cxx_standard)
# the full version (2.13.0+cu130): the wheel links against this torch build's C++ library
TORCH_VERSION=$("$VPY" -c 'import torch; print(torch.__version__)')
TORCH_MINOR=$("$VPY" -c 'import torch; print(*torch.__version__.split(".")[:2], sep=".")')
"$VPY" - "$TORCH_MINOR" "$CXX_STD" <<'PYEOF' || die "setup.cfg horovod_cxx_standard=$CXX_STD is too old for torch $TORCH_MINOR (its headers need C++20 from 2.14 on)"
import sys
major, minor = map(int, sys.argv[1].split("."))
sys.exit(0 if int(sys.argv[2]) >= (20 if (major, minor) >= (2, 14) else 17) else 1)
PYEOF
BUILD_MODE=cpu-gloo
[ "$GPU" = 1 ] && BUILD_MODE=gpu-nccl
have=$("$VPY" -c 'import horovod, horovod.torch; print(horovod.__version__)' 2>/dev/null || true)
# the build present must be this mode's: NCCL in a GPU install, none in a CPU one
have_nccl=$("$VENV/bin/horovodrun" --check-build 2>/dev/null | grep -c '\[X\] NCCL' || true)
want_nccl=0
[ "$GPU" = 1 ] && want_nccl=1
if [ "$have" = "$HVD_VERSION" ] && [ "$have_nccl" = "$want_nccl" ]; then
  say "horovod $HVD_VERSION present"
else
  slot="$CACHE/horovod-$HVD_VERSION-torch$TORCH_VERSION-cxx$CXX_STD-$BUILD_MODE"
  mkdir -p "$slot"
  wheel=$(ls "$slot"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    for tool in cmake g++ make; do
      command -v "$tool" >/dev/null || die "$tool is required to build horovod $HVD_VERSION from source and was not found on PATH (install cmake, g++ and make)."
    done
    say "building horovod $HVD_VERSION from source ($BUILD_MODE, pytorch, C++$CXX_STD; about 2-5 minutes)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$VPY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$work"
    tar -xzf "$work"/horovod-"$HVD_VERSION".tar.gz -C "$work"
    src="$work/horovod-$HVD_VERSION"
    # upstream raised this after 0.28.1 but never released it
    sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $CXX_STD)/" \
      "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    grep -q "CMAKE_CXX_STANDARD $CXX_STD" "$src/horovod/torch/CMakeLists.txt" || die "could not patch horovod's C++ standard"
    if [ "$GPU" = 1 ]; then
    # NCCL comes with torch's pip dependencies (nvidia/nccl): headers and libnccl.so.2,
    # which the linker finds under the plain name through a link in the build folder
    nccl=$("$VPY" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])')
    mkdir -p "$work/nccl-lib" && ln -sf "$nccl/lib/libnccl.so.2" "$work/nccl-lib/libnccl.so"
    (cd "$src" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
      HOROVOD_WITHOUT_MXNET=1 HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CPU_OPERATIONS=gloo HOROVOD_NCCL_LINK=SHARED \
      HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$work/nccl-lib" \
      MAKEFLAGS="-j$(nproc)" "$VPY" -m pip wheel --no-deps --no-build-isolation -w "$slot" . \
      > "$work/build.log" 2>&1) || { grep -A8 "CMake Error" "$work/build.log" >&2; tail -25 "$work/build.log" >&2; die "horovod GPU build failed (log above)"; }
    else
    # PyPI's torch is a CUDA build, and horovod's CMake turns CUDA on as soon as it finds any
    # trace of a toolkit (nvcc on PATH, CUDA_HOME, /usr/local/cuda): add_cuda() for torch and
    # enable_language(CUDA) at the top, which stop when that toolkit is partial. A CPU build
    # must not depend on what the machine happens to have: both are switched off (Gloo
    # operations, CPU tensors).
    "$VPY" - "$src" <<'PYEOF' || die "could not patch horovod's CUDA detection for a CPU build"
import pathlib, sys
src = pathlib.Path(sys.argv[1])
patches = {
    "CMakeLists.txt": ("check_language(CUDA)\nif(NOT CMAKE_CUDA_COMPILER)",
                       "set(CMAKE_CUDA_COMPILER \"\")  # psrq: CPU-only build\nif(FALSE)"),
    "cmake/Modules/FindPytorch.cmake": ('string(TOUPPER "${Pytorch_CUDA}" Pytorch_CUDA)',
                                        "set(Pytorch_CUDA FALSE)  # psrq: CPU-only build"),
}
for name, (old, new) in patches.items():
    f = src / name
    text = f.read_text()
    if text.count(old) != 1:
        sys.exit(f"{f}: expected the text to patch exactly once")
    f.write_text(text.replace(old, new))
PYEOF
    (cd "$src" && env -u CUDA_HOME -u CUDA_PATH -u HOROVOD_CUDA_HOME HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
      MAKEFLAGS="-j$(nproc)" "$VPY" -m pip wheel --no-deps --no-build-isolation -w "$slot" . \
      > "$work/build.log" 2>&1) || { grep -A8 "CMake Error" "$work/build.log" >&2; tail -25 "$work/build.log" >&2; die "horovod build failed (log above)"; }
    fi
    wheel=$(ls "$slot"/horovod-*.whl | head -1)
    say "cached $wheel"
  else
    say "using cached horovod wheel $wheel"
  fi
  # without deps: horovod's spark extra pins pyarrow<11
  "$VPY" -m pip install --quiet --no-deps --force-reinstall "$wheel"
fi

check=$("$VENV/bin/horovodrun" --check-build)
grep -q '\[X\] PyTorch' <<<"$check" || die "horovod was built without PyTorch support"
grep -q '\[X\] Gloo' <<<"$check" || die "horovod was built without Gloo support"
if [ "$GPU" = 1 ]; then
  grep -q '\[X\] NCCL' <<<"$check" || die "PSRQ_GPU=1 but horovod was built without NCCL"
  say "horovod build: PyTorch, Gloo and NCCL available"
else
  say "horovod build: PyTorch and Gloo available"
fi

# --- JVM packages: Delta and hadoop-aws, resolved by Maven ------------------------------------
# Versions follow the pinned Python packages (lib/psrq/jvm.py); Maven keeps the jars in its
# local repository and the class path of each bundle is recorded in the environment.
for bundle in delta s3a; do
  if "$VPY" -m psrq.jvm check "$bundle"; then
    say "jars for $bundle up to date"
    continue
  fi
  coords=$("$VPY" -m psrq.jvm packages "$bundle")
  say "resolving $coords with Maven (into ~/.m2; hadoop-aws brings the 560 MB AWS SDK bundle)"
  mwork=$(mktemp -d)
  "$VPY" -m psrq.jvm pom "$bundle" > "$mwork/pom.xml"
  mvn -q -B -f "$mwork/pom.xml" dependency:build-classpath -Dmdep.outputFile="$mwork/classpath.txt" \
    > "$mwork/mvn.log" 2>&1 || { tail -30 "$mwork/mvn.log" >&2; die "Maven could not resolve $coords (log above)"; }
  "$VPY" -m psrq.jvm record "$bundle" "$mwork/classpath.txt" | sed 's/^/[setup] /'
  rm -rf "$mwork"
done
# --- a class-data-sharing archive of Spark's classes (lib/psrq/class_archive.py) ------------
# Local sessions map it and skip most of their JVM's class loading (seconds per job). Only an
# optimisation: without it they start as before, so a failed build warns and setup goes on.
if "$VPY" -m psrq.class_archive check; then
  say "Spark class archive up to date"
else
  say "building the Spark class archive (about 1-2 minutes)"
  "$VPY" -m psrq.class_archive build \
    || say "WARNING: the Spark class archive could not be built (above); local sessions start without it"
fi
say "environment ready: $VENV"
