#!/usr/bin/env bash
# The README's test command: create .venv, install cc-kernel with its test extra (which builds the browser
# extension), check lint/types, run tests (the browser tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# The status-bar extension is built from labextension/ during the install below (node + jlpm, npm packages), and
# the browser tests (tests/test_browser.py) drive Debian's chromium: install what is missing, as root on Debian.
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]} (install them; a developer may skip the browser tests with" \
         "CC_KERNEL_SKIP_BROWSER_TESTS=1)" >&2
  fi
fi
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/ruff check .
.venv/bin/mypy
# Kernel tests launch kernels through a private Jupyter path; nothing is written to the user's directories.
echo "browser test screenshots: $PWD/test-artifacts/browser/"
.venv/bin/python -m pytest -q "$@"
