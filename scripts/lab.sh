#!/usr/bin/env bash
# The README's main command: create .venv, install cc-kernel with JupyterLab and its attestation indicator, install
# the kernelspecs into this environment, pin the simulated enclave's measurement, and open JupyterLab on notebooks/
# with the simulated TEE.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Installing builds the attestation indicator (labextension/, needs node) and installs it into .venv's JupyterLab.
if ! command -v node >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
fi
.venv/bin/python -m pip install --quiet -e ".[lab]"
# bytecode for the package, as a wheel install has it (why: scripts/test.sh)
.venv/bin/python -m compileall -q --invalidation-mode checked-hash cc_kernel >/dev/null
.venv/bin/cc-kernel install --sys-prefix
# Jupyter refuses to start as root unless told; on a machine where the user is root (a container, a fresh VM)
# the README's command must still open the lab, so it is told, and says so.
extra=()
if [ "$(id -u)" = 0 ]; then
  echo "lab.sh: running as root, so JupyterLab is started with --allow-root" >&2
  extra+=(--allow-root)
fi
# CurveZMQ on the frontend <-> kernel hop when the kernel supports it (both our kernelspecs declare it).
exec .venv/bin/jupyter lab --ServerApp.root_dir=notebooks --KernelManager.transport_encryption=auto "${extra[@]}" "$@"
