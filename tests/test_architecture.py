"""The layer rules of docs/architecture.md, checked on every module's direct imports and calls (with ast).

Every import form counts: ``import cc_kernel.x``, ``from cc_kernel.x import y``, ``from cc_kernel import x`` and
relative imports (``from ..x import y``), each resolved to the module it names. The pure layers (``CORE`` and
``PURE_MODULES``) may not import I/O modules, call ``open()`` or read the clock (``datetime.now()`` and friends).
An intended exception is listed in ``EXCEPTIONS`` with its reason, and must still be needed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cc_kernel"

# Which cc_kernel parts each part may import. A part not listed here (cli, teaching, testing) may import any.
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
    "memory": set(),  # allocator set-up, stdlib only: every process calls it
    "links": set(),  # the socketpairs between our processes, stdlib only
    # the trust boundary: the worker runs the cells and imports nothing that holds or makes keys or evidence
    "worker": {"errors", "protocol", "worker", "logsetup", "memory"},
    "clientkey": {"errors", "crypto", "channel", "simstore"},
    "enclave": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "enclave", "simstore", "measure",
                "logsetup", "memory", "links", "dataset", "broker"},
    "kernel": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "kernel", "simstore", "measure",
               "clientkey", "memory", "links"},
    # a data owner's sealed files, rules, release exchange and broker log: pure, like audit
    "dataset": {"errors", "protocol", "crypto", "attestation", "audit", "dataset"},
    # the data owner's key broker: I/O (its store, its log, a TLS server)
    "broker": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "dataset", "broker", "simstore"},
    "cli_data": {"errors", "protocol", "crypto", "attestation", "audit", "channel", "dataset", "broker",
                 "simstore"},
    # tools on the untrusted path (relay, TLS-record walker, process stopper) for the teaching lab and the test
    # harness only: no other part lists it
    "labkit": {"errors", "channel", "labkit"},
}
# Modules that touch sockets, files, processes, threads, the clock or Jupyter: the pure layers never import them.
IO_MODULES = {"socket", "ssl", "asyncio", "subprocess", "selectors", "threading", "zmq", "jupyter_client",
              "ipykernel", "tornado", "time", "os", "pathlib", "shutil", "tempfile", "glob", "fcntl", "mmap",
              "signal", "multiprocessing", "concurrent", "urllib", "http", "requests", "importlib"}
# The pure layers (docs/architecture.md): whole parts, and single modules of an I/O part.
CORE = {"errors", "protocol", "crypto", "attestation", "audit", "dataset"}
PURE_MODULES = {"channel/ratls.py"}
# Calls that read the clock: ``datetime.now()``, ``datetime.datetime.utcnow()``, ``date.today()``, ...
CLOCK_CALLS = {"now", "utcnow", "today"}
ENCLAVE_FORBIDDEN = {"ipykernel", "jupyter_client", "zmq", "jupyter_core", "tornado"}
WORKER_FORBIDDEN = {"cryptography", "ssl", *ENCLAVE_FORBIDDEN}
# The only modules allowed to import cryptography.hazmat / msgpack directly: the crypto package, and the
# platform verifiers (each vendor has its own signature encoding: AMD little-endian R/S, COSE r||s, ...).
HAZMAT_ALLOWED = ("crypto/", "attestation/platforms/")
MSGPACK_ALLOWED = {"protocol/codec.py"}
# Intended exceptions: (module, the rule's message after "<module> ") -> why it stays.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("attestation/anchors.py", "is pure core but imports importlib"):
        "the pinned vendor roots are package data, read through importlib.resources under fixed names and checked "
        "against the SHA-256 constants beside them; no path comes from a caller",
}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _is_pure(path: Path) -> bool:
    return _part(path) in CORE or path.relative_to(ROOT).as_posix() in PURE_MODULES


def _package_of(path: Path) -> list[str]:
    """The dotted package ``path`` belongs to (itself for an ``__init__.py``), as a list of names."""
    return ["cc_kernel", *path.relative_to(ROOT).parent.parts]


def _from_names(path: Path, node: ast.ImportFrom) -> list[str]:
    """The modules ``from ... import ...`` names, relative ones resolved against ``path``'s package. A name
    imported from ``cc_kernel`` itself is its submodule when one exists (``from cc_kernel import enclave``), else
    an attribute of the package (``__version__``)."""
    if node.level == 0:
        base = (node.module or "").split(".")
    else:
        package = _package_of(path)
        if node.level > len(package):
            return ["." * node.level + (node.module or "")]  # beyond cc_kernel: reported as it stands
        base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
    module = ".".join(base)
    if base != ["cc_kernel"]:
        return [module]
    subs = [a.name for a in node.names if (ROOT / a.name).is_dir() or (ROOT / f"{a.name}.py").is_file()]
    return [f"{module}.{name}" for name in subs] or [module]


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports directly, absolute, in source order."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.extend(_from_names(path, node))
    return names


def _io_calls(path: Path) -> list[str]:
    """The I/O that no import shows: the builtin ``open()`` and the clock (``datetime.now``, called or passed on
    as a default)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            found.append(f"open() (line {node.lineno})")
        elif (isinstance(node, ast.Attribute) and node.attr in CLOCK_CALLS
              and ast.unparse(node.value).split(".")[-1] in {"datetime", "date"}):
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def violations(path: Path) -> list[str]:
    """Every rule ``path`` breaks, one message each (``"<module> <what it does>"``), exceptions included."""
    part = _part(path)
    rel = path.relative_to(ROOT).as_posix()
    found: list[str] = []
    for name in _imports(path):
        top = name.split(".")[0]
        if name.startswith("."):
            found.append(f"{rel} imports {name}: a relative import beyond cc_kernel")
        if top == "cc_kernel":
            sub = name.split(".")[1] if "." in name else ""
            if part in ALLOWED and sub and sub not in ALLOWED[part]:
                found.append(f"{rel} imports {name}: {part} may import only {sorted(ALLOWED[part])}")
        if _is_pure(path) and top in IO_MODULES:
            found.append(f"{rel} is pure core but imports {name}")
        if part == "worker" and name.startswith(("cryptography", "ssl")):
            found.append(f"{rel} runs the cells but imports {name}")
        if part in ("enclave", "worker") and top in ENCLAVE_FORBIDDEN:
            found.append(f"{rel} runs in the enclave but imports {name}")
        if part == "worker" and top in WORKER_FORBIDDEN:
            found.append(f"{rel} runs the user's cells but imports {name}")
        if name.startswith("cryptography.hazmat") and not rel.startswith(HAZMAT_ALLOWED):
            found.append(f"{rel} imports {name}; only {HAZMAT_ALLOWED} may")
        if top == "msgpack" and rel not in MSGPACK_ALLOWED:
            found.append(f"{rel} imports msgpack; only protocol/codec.py may")
    if _is_pure(path):
        found.extend(f"{rel} is pure core but calls {call}" for call in _io_calls(path))
    return found


def _excepted(message: str, rel: str) -> bool:
    return any(module == rel and message.startswith(f"{rel} {what}") for module, what in EXCEPTIONS)


MODULES = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_modules_found() -> None:
    assert len(MODULES) > 10


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_rules(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    broken = [v for v in violations(path) if not _excepted(v, rel)]
    if broken:
        raise AssertionError("\n".join(broken))


@pytest.mark.parametrize(("module", "what"), sorted(EXCEPTIONS))
def test_every_exception_is_still_needed(module: str, what: str) -> None:
    """An exception whose violation is gone is removed, so the table never allows more than the code does."""
    assert any(v.startswith(f"{module} {what}") for v in violations(ROOT / module)), f"{module}: {what} is gone"


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


@pytest.mark.parametrize(
    ("part", "source", "expect"),
    [
        ("labkit", "from cc_kernel.teaching import TeachingLab\n", "labkit may import only"),
        ("kernel", "from cc_kernel.labkit.relay import Relay\n", "kernel may import only"),
        ("enclave", "import cc_kernel.labkit.processes\n", "enclave may import only"),
    ],
)
def test_labkit_rule_fires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: str, source: str, expect: str
) -> None:
    """The relay and its kin serve the teaching lab and the tests: labkit imports neither, and neither the kernel
    nor the enclave imports labkit."""
    root = tmp_path / "cc_kernel"
    (root / part).mkdir(parents=True)
    probe = root / part / "probe.py"
    probe.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    with pytest.raises(AssertionError, match=expect):
        test_layer_rules(probe)


def test_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself works: a pure module importing socket is found."""
    bad = tmp_path / "x.py"
    bad.write_text("import socket\nfrom cc_kernel.kernel import app\n")
    assert _imports(bad) == ["socket", "cc_kernel.kernel"]


# --- the checker itself: small synthetic modules, each rule firing with its message -------------------------------


def _probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str, source: str) -> Path:
    """``source`` written as ``cc_kernel/<rel>`` in a tree of empty parts, which the checker then reads."""
    root = tmp_path / "cc_kernel"
    for part in ALLOWED:
        (root / part).mkdir(parents=True, exist_ok=True)
    probe = root / rel
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    return probe


WORKER_ONLY = "worker may import only ['errors', 'logsetup', 'memory', 'protocol', 'worker']"
KERNEL_ONLY = ("kernel may import only ['attestation', 'audit', 'channel', 'clientkey', 'crypto', 'errors', 'kernel', "
               "'links', 'measure', 'memory', 'protocol', 'simstore']")


@pytest.mark.parametrize(
    ("rel", "source", "expect"),
    [
        # the table, whatever the import's form
        ("worker/probe.py", "import cc_kernel.audit.receipts\n",
         f"worker/probe.py imports cc_kernel.audit.receipts: {WORKER_ONLY}"),
        ("worker/probe.py", "from cc_kernel import enclave\n",
         f"worker/probe.py imports cc_kernel.enclave: {WORKER_ONLY}"),
        ("worker/probe.py", "from cc_kernel import __version__, crypto\n",
         f"worker/probe.py imports cc_kernel.crypto: {WORKER_ONLY}"),
        ("worker/probe.py", "from ..audit import receipts\n",
         f"worker/probe.py imports cc_kernel.audit: {WORKER_ONLY}"),
        ("worker/probe.py", "from .. import dataset\n", f"worker/probe.py imports cc_kernel.dataset: {WORKER_ONLY}"),
        ("worker/deep/probe.py", "from ... import broker\n",
         f"worker/deep/probe.py imports cc_kernel.broker: {WORKER_ONLY}"),
        ("kernel/probe.py", "from ..enclave.monitor import Monitor\n",
         f"kernel/probe.py imports cc_kernel.enclave.monitor: {KERNEL_ONLY}"),
        ("errors.py", "from .. import anything\n", "errors.py imports ..: a relative import beyond cc_kernel"),
        # the pure layers: no I/O module, no open(), no clock
        ("protocol/probe.py", "import os\n", "protocol/probe.py is pure core but imports os"),
        ("crypto/probe.py", "from pathlib import Path\n", "crypto/probe.py is pure core but imports pathlib"),
        ("audit/probe.py", "import time\n", "audit/probe.py is pure core but imports time"),
        ("dataset/probe.py", "import socket\n", "dataset/probe.py is pure core but imports socket"),
        ("channel/ratls.py", "import ssl\n", "channel/ratls.py is pure core but imports ssl"),
        ("attestation/probe.py", "def load(p):\n    return open(p).read()\n",
         "attestation/probe.py is pure core but calls open() (line 2)"),
        ("dataset/probe.py", "from datetime import UTC, datetime\nSTART = datetime.now(UTC)\n",
         "dataset/probe.py is pure core but calls datetime.now (line 2)"),
        ("errors.py", "import datetime\nSTART = datetime.datetime.utcnow()\n",
         "errors.py is pure core but calls datetime.datetime.utcnow (line 2)"),
        ("audit/probe.py", "import datetime as _dt\ndef f(today=_dt.date.today):\n    return today()\n",
         "audit/probe.py is pure core but calls _dt.date.today (line 2)"),
        # what runs in the enclave, what runs the cells, and the two fences
        ("enclave/probe.py", "import zmq\n", "enclave/probe.py runs in the enclave but imports zmq"),
        ("worker/probe.py", "import ssl\n", "worker/probe.py runs the cells but imports ssl"),
        ("worker/probe.py", "import ipykernel.kernelbase\n",
         "worker/probe.py runs the user's cells but imports ipykernel.kernelbase"),
        ("kernel/probe.py", "from cryptography.hazmat.primitives import hashes\n",
         "kernel/probe.py imports cryptography.hazmat.primitives; only ('crypto/', 'attestation/platforms/') may"),
        ("protocol/messages.py", "import msgpack\n",
         "protocol/messages.py imports msgpack; only protocol/codec.py may"),
    ],
)
def test_each_rule_fires_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str, source: str, expect: str
) -> None:
    probe = _probe(tmp_path, monkeypatch, rel, source)
    assert expect in violations(probe)
    with pytest.raises(AssertionError) as info:
        test_layer_rules(probe)
    assert expect in str(info.value).splitlines()


@pytest.mark.parametrize(
    ("rel", "source"),
    [
        ("channel/transport.py", "import socket\nimport os\nf = open('x')\n"),  # an I/O layer
        ("protocol/probe.py", "from datetime import datetime\nT = datetime.fromisoformat('2025-06-01')\n"),
        ("protocol/probe.py", "from . import codec\nfrom .framing import encode_frame\nfrom cc_kernel import errors\n"),
        ("worker/probe.py", "from cc_kernel import __version__\nfrom .. import protocol\n"),
        ("audit/probe.py", "import io\nclass Log:\n    def open(self):\n        return io.BytesIO()\n"),
    ],
)
def test_allowed_code_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str, source: str) -> None:
    """The rules are no wider than they say: I/O in an I/O layer, parsing a date, imports within the table, a
    method named ``open`` are all fine."""
    probe = _probe(tmp_path, monkeypatch, rel, source)
    assert violations(probe) == []
    test_layer_rules(probe)


def test_an_exception_is_narrow_and_must_stay_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception covers one module and one rule; once the code no longer breaks the rule, it fails."""
    probe = _probe(tmp_path, monkeypatch, "attestation/probe.py", "import os\nimport time\n")
    monkeypatch.setattr(sys.modules[__name__], "EXCEPTIONS", {("attestation/probe.py", "is pure core but imports os"):
                                                                  "a reason"})
    with pytest.raises(AssertionError) as info:
        test_layer_rules(probe)
    assert str(info.value).splitlines()[0] == "attestation/probe.py is pure core but imports time"
    probe.write_text("import os\n")
    test_layer_rules(probe)
    test_every_exception_is_still_needed("attestation/probe.py", "is pure core but imports os")
    probe.write_text("")
    with pytest.raises(AssertionError, match=r"attestation/probe\.py: is pure core but imports os is gone"):
        test_every_exception_is_still_needed("attestation/probe.py", "is pure core but imports os")
