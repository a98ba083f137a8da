#!/usr/bin/env bash
# The whole test suite: install into .venv, lint (ruff), type-check (mypy --strict), pytest.
# PostgreSQL tests run when AITBC_TEST_DATABASE_URL is set (.ci/run sets it).
# Installs the exact versions in constraints.txt (scripts/install.sh), so CI and a fresh
# clone test the same dependency set; ./scripts/lock.sh regenerates it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh test
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
