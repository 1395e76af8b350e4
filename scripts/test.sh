#!/usr/bin/env bash
# The README's test command: create .venv, install cc-kernel with its test extra, check lint/types, run tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# The worker's seccomp filter is built by libseccomp (Debian package libseccomp2); install it only if missing.
if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp2 >/dev/null
  else
    echo "libseccomp.so.2 is missing: install libseccomp2 (Debian/Ubuntu) or libseccomp (Fedora)" >&2
  fi
fi
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/ruff check .
.venv/bin/mypy
# Kernel tests launch kernels through a private Jupyter path; nothing is written to the user's directories.
.venv/bin/python -m pytest -q "$@"
# The lowest allowed versions: a second environment with every dependency and the test extra pinned to the
# minimum pyproject.toml declares (scripts/min_constraints.py), running the same tests, so that the declared
# minimums stay honest. CC_KERNEL_SKIP_MIN_VERSIONS=1 skips it (a quick local run).
if [ "${CC_KERNEL_SKIP_MIN_VERSIONS:-0}" != "1" ]; then
  "$PY" -m venv .venv-min
  .venv-min/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python scripts/min_constraints.py > .venv-min/constraints.txt
  .venv-min/bin/python -m pip install --quiet --constraint .venv-min/constraints.txt -e ".[test]"
  .venv-min/bin/python -m pip list --format=freeze > .venv-min/installed.txt
  .venv-min/bin/python -m pytest -q "$@"
fi
