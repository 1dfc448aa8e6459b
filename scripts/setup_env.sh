#!/usr/bin/env bash
# Creates .venv and installs the pinned stack (setup.cfg) plus horovod built from source.
# Idempotent: a second run checks what is there and does nothing more; the horovod wheel
# is cached under $PSRQ_WHEEL_CACHE so a fresh clone on the same machine does not rebuild it.
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
command -v "$PY" >/dev/null || die "$PY not found; Python 3.11 is required."
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "Python 3.11 is required (torch 2.13 CPU wheel, horovod build); $PY is $("$PY" --version 2>&1)."

# --- virtual environment -----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=70,<80" wheel
fi
VPY="$VENV/bin/python"

# --- pinned python packages (setup.cfg) -----------------------------------------------------
stamp="$VENV/.psrq-deps.sha"
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned dependencies from setup.cfg (first time: a few minutes)"
  "$VPY" -m pip install --quiet --progress-bar off -e ".[dev]"
  echo "$want" > "$stamp"
else
  say "pinned dependencies up to date"
fi

# --- horovod, built from its sdist with C++17 ---------------------------------------------
native() { "$VPY" - "$1" <<'PYEOF'
import configparser, sys
c = configparser.ConfigParser(); c.read("setup.cfg")
print(c["tool:psrq-native"][sys.argv[1]])
PYEOF
}
HVD_VERSION=$(native horovod)
CXX_STD=$(native horovod_cxx_standard)
TORCH_VERSION=$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')
have=$("$VPY" -c 'import horovod, horovod.torch; print(horovod.__version__)' 2>/dev/null || true)
if [ "$have" = "$HVD_VERSION" ]; then
  say "horovod $HVD_VERSION present"
else
  # the wheel links against torch's C++ ABI: the cache key includes the torch version
  slot="$CACHE/horovod-$HVD_VERSION-torch$TORCH_VERSION-cxx$CXX_STD"
  mkdir -p "$slot"
  wheel=$(ls "$slot"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    say "building horovod $HVD_VERSION from source (gloo + pytorch, C++$CXX_STD; about 5-10 minutes)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$VPY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$work"
    tar -xzf "$work"/horovod-"$HVD_VERSION".tar.gz -C "$work"
    src="$work/horovod-$HVD_VERSION"
    # upstream raised this after 0.28.1 but never released it
    sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $CXX_STD)/" \
      "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    grep -q "CMAKE_CXX_STANDARD $CXX_STD" "$src/horovod/torch/CMakeLists.txt" || die "could not patch horovod's C++ standard"
    (cd "$src" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
      MAKEFLAGS="-j$(nproc)" "$VPY" -m pip wheel --no-deps --no-build-isolation -w "$slot" . \
      > "$work/build.log" 2>&1) || { tail -40 "$work/build.log" >&2; die "horovod build failed (log above)"; }
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
say "horovod build: PyTorch and Gloo available"
say "environment ready: $VENV"
