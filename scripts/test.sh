#!/usr/bin/env bash
# The README's test command: create .venv, install cc-kernel with its test extra, check lint/types, run tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/ruff check .
.venv/bin/mypy
# Kernel tests launch kernels through a private Jupyter path; nothing is written to the user's directories.
.venv/bin/python -m pytest -q "$@"
