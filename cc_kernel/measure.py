"""I/O: collect the manifest of the enclave's trusted files and compute the simulated measurement.

What is measured (see docs/architecture.md, "Measurement"):
- every file of the enclave-side cc_kernel code (all subpackages except ``kernel``, ``testing``, ``teaching``,
  ``labkit`` and the built browser extension ``labextension``, plus the top-level modules the enclave imports),
  hashed in full;
- every distribution the enclave imports (IPython, msgpack, cryptography, numpy, ... and their requirements,
  transitively), by name, version and the SHA-256 of its installed RECORD file (which lists the SHA-256 of
  every file pip installed);
- the Python version.
Editing enclave code, or installing another version of a dependency, changes the measurement.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import platform
import re
from pathlib import Path

from cc_kernel.attestation.measurement import measurement_of_manifest

#: Distributions the enclave imports directly; their requirements are followed transitively.
ENCLAVE_DISTRIBUTIONS = ("ipython", "msgpack", "cryptography", "numpy", "cbor2", "matplotlib-inline", "comm")
#: cc_kernel parts that never run in the enclave (the Jupyter side, the browser extension, test helpers, the
#: teaching lab and the relay tools it shares with the tests).
_NOT_ENCLAVE = ("kernel", "testing", "labextension", "cli.py", "__main__.py", "teaching", "labkit")

_PACKAGE_ROOT = Path(__file__).resolve().parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def enclave_source_files() -> list[Path]:
    """The cc_kernel files that make up the enclave, sorted."""
    files = []
    for path in sorted(_PACKAGE_ROOT.rglob("*")):
        rel = path.relative_to(_PACKAGE_ROOT)
        if not path.is_file() or "__pycache__" in rel.parts or rel.parts[0] in _NOT_ENCLAVE:
            continue
        if path.suffix in {".py", ".pem", ".toml", ".json"}:
            files.append(path)
    return files


def dependency_closure(roots: tuple[str, ...] = ENCLAVE_DISTRIBUTIONS) -> dict[str, md.Distribution]:
    """Installed distributions reachable from ``roots`` through their (non-extra) requirements."""
    seen: dict[str, md.Distribution | None] = {}
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            seen[name] = None
            continue
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            match = re.match(r"[A-Za-z0-9_.\-]+", req)
            if match:
                todo.append(_norm(match.group(0)))
    return {name: dist for name, dist in seen.items() if dist is not None}


def manifest() -> list[tuple[str, bytes]]:
    """(name, sha256) entries of everything measured."""
    entries: list[tuple[str, bytes]] = []
    for path in enclave_source_files():
        rel = path.relative_to(_PACKAGE_ROOT).as_posix()
        entries.append((f"cc_kernel/{rel}", hashlib.sha256(path.read_bytes()).digest()))
    for name, dist in sorted(dependency_closure().items()):
        record = dist.read_text("RECORD") or ""
        entries.append((f"dist:{name}=={dist.version}", hashlib.sha256(record.encode()).digest()))
    return entries


def python_version() -> str:
    """The interpreter identity that goes into the measurement."""
    return f"{platform.python_implementation()} {platform.python_version()}"


def enclave_measurement() -> bytes:
    """The 48-byte measurement of the installed enclave."""
    return measurement_of_manifest(manifest(), python_version=python_version())
