"""The layer rules of docs/architecture.md, checked on every module's direct imports (with ast)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cc_kernel"

# Which cc_kernel parts each part may import. "*" = any cc_kernel part not in its "deny" list.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "protocol": {"errors", "protocol"},
    "crypto": {"errors", "crypto"},
    "attestation": {"errors", "protocol", "crypto", "attestation"},
    "audit": {"errors", "protocol", "crypto", "attestation", "audit"},
    "channel": {"errors", "protocol", "crypto", "attestation", "audit", "channel"},
    "measure": {"attestation"},
    "simstore": {"errors", "crypto", "attestation"},
    "logsetup": set(),
    # the trust boundary: the worker runs the cells and imports nothing that holds or makes keys or evidence
    "worker": {"errors", "protocol", "worker", "logsetup"},
    "clientkey": {"errors", "crypto", "channel", "simstore"},
    "enclave": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "enclave", "simstore", "measure",
                "logsetup", "dataset", "broker"},
    "kernel": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "kernel", "simstore", "measure",
               "clientkey"},
    # a data owner's sealed files, rules, release exchange and broker log: pure, like audit
    "dataset": {"errors", "protocol", "crypto", "attestation", "audit", "dataset"},
    # the data owner's key broker: I/O (its store, its log, a TLS server)
    "broker": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "dataset", "broker", "simstore"},
    "cli_data": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "dataset", "broker",
                 "simstore"},
}
# Third-party modules that the pure core must never import, and that the enclave must never import.
IO_MODULES = {"socket", "ssl", "asyncio", "subprocess", "selectors", "threading", "zmq", "jupyter_client",
              "ipykernel", "tornado", "time"}
CORE = {"errors", "protocol", "crypto", "attestation", "audit", "dataset"}
ENCLAVE_FORBIDDEN = {"ipykernel", "jupyter_client", "zmq", "jupyter_core", "tornado"}
WORKER_FORBIDDEN = {"cryptography", "ssl", *ENCLAVE_FORBIDDEN}
# The only modules allowed to import cryptography.hazmat / msgpack directly: the crypto package, and the
# platform verifiers (each vendor has its own signature encoding: AMD little-endian R/S, COSE r||s, ...).
HAZMAT_ALLOWED = ("crypto/", "attestation/platforms/")
MSGPACK_ALLOWED = {"protocol/codec.py"}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


MODULES = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_modules_found() -> None:
    assert len(MODULES) > 10


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_rules(path: Path) -> None:
    part = _part(path)
    rel = path.relative_to(ROOT).as_posix()
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "cc_kernel":
            sub = name.split(".")[1] if "." in name else ""
            if part in ALLOWED and sub:
                assert sub in ALLOWED[part], f"{rel} imports {name}: {part} may import only {sorted(ALLOWED[part])}"
        if part in CORE:
            assert top not in IO_MODULES, f"{rel} is pure core but imports {name}"
        if part == "worker":
            assert not name.startswith(("cryptography", "ssl")), f"{rel} runs the cells but imports {name}"
        if part in ("enclave", "worker"):
            assert top not in ENCLAVE_FORBIDDEN, f"{rel} runs in the enclave but imports {name}"
        if part == "worker":
            assert top not in WORKER_FORBIDDEN, f"{rel} runs the user's cells but imports {name}"
        if name.startswith("cryptography.hazmat"):
            assert rel.startswith(HAZMAT_ALLOWED), f"{rel} imports {name}; only {HAZMAT_ALLOWED} may"
        if top in {"msgpack"}:
            assert rel in MSGPACK_ALLOWED, f"{rel} imports msgpack; only protocol/codec.py may"


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("from cc_kernel.audit.receipts import ReceiptSigner\n", "worker may import only"),
        ("import cc_kernel.crypto.keys\n", "worker may import only"),
        ("from cryptography.hazmat.primitives import hashes\n", "runs the cells but imports"),
        ("from cc_kernel.dataset.release import ReleaseClient\n", "worker may import only"),
        ("import cc_kernel.broker.server\n", "worker may import only"),
    ],
)
def test_worker_rule_fires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expect: str) -> None:
    """The boundary rule itself: a worker module importing what holds or makes keys is refused."""
    root = tmp_path / "cc_kernel"
    (root / "worker").mkdir(parents=True)
    probe = root / "worker" / "probe.py"
    probe.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    with pytest.raises(AssertionError, match=expect):
        test_layer_rules(probe)


def test_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself works: a pure module importing socket is found."""
    bad = tmp_path / "x.py"
    bad.write_text("import socket\nfrom cc_kernel.kernel import app\n")
    assert _imports(bad) == ["socket", "cc_kernel.kernel"]
