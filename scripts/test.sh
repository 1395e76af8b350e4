#!/usr/bin/env bash
# The README's test command: create .venv, install cc-kernel with its test extra (which builds the browser
# extension), check lint/types, run tests (the browser tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# What the install and the tests need from the system, as root on Debian, installed only when missing: the
# worker's seccomp filter is built by libseccomp (libseccomp2); the status-bar extension is built from
# labextension/ during the install below (node + jlpm, npm packages); the browser tests (tests/test_browser.py)
# drive Debian's chromium.
missing=()
if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then missing+=(libseccomp2); fi
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
# Bytecode for the package, as a wheel install has it: the monitor and the worker never write .pyc files (they
# run with PYTHONDONTWRITEBYTECODE), so without it every session would compile cc_kernel from source in three
# processes (~0.2 s of start-up). checked-hash: a .pyc is used only while it matches its source's hash, so what
# runs is always what the (simulated) measurement hashed.
.venv/bin/python -m compileall -q --invalidation-mode checked-hash cc_kernel >/dev/null
.venv/bin/ruff check .
.venv/bin/mypy
# Kernel tests launch kernels through a private Jupyter path; nothing is written to the user's directories.
echo "browser test screenshots: $PWD/test-artifacts/browser/"
.venv/bin/python -m pytest -q "$@"
# The lowest allowed versions: a second environment with every dependency and the test extra pinned to the
# minimum pyproject.toml declares (scripts/min_constraints.py), running the same tests, so that the declared
# minimums stay honest. CC_KERNEL_SKIP_MIN_VERSIONS=1 skips it (a quick local run). The browser tests run once,
# above, against the extension as built: it is built for the current JupyterLab, not for the lowest one.
if [ "${CC_KERNEL_SKIP_MIN_VERSIONS:-0}" != "1" ]; then
  "$PY" -m venv .venv-min
  .venv-min/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python scripts/min_constraints.py > .venv-min/constraints.txt
  .venv-min/bin/python -m pip install --quiet --constraint .venv-min/constraints.txt -e ".[test]"
  .venv-min/bin/python -m pip list --format=freeze > .venv-min/installed.txt
  .venv-min/bin/python -m pytest -q --ignore=tests/test_browser.py "$@"
fi
