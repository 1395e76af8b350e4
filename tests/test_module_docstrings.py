"""Every module of cc_kernel opens with a docstring whose first line names its layer (house style: a module
docstring states its layer, its invariants and its check names; design notes go to docs/).

The first line reads ``<Layer>[ <part> layer][ (<qualifier>)]: <what the module is>``, and ``<Layer>`` is the one
the module's place in the package layout of docs/architecture.md gives it (``LAYER_OF``): the pure core says
``Pure``, the trusted half inside the TEE ``Monitor``, the cells' process ``Worker``, the Jupyter side ``Kernel
side``, and so on. The body states the module's invariants and names its check names (or says where they are
listed); that part is read by people, not by this test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cc_kernel"

#: The agreed vocabulary: each layer of docs/architecture.md's package layout, and where it lives. A key is a
#: module path relative to cc_kernel/ (most specific first: a file, then its package, then the top-level part).
LAYER_OF: dict[str, str] = {
    "__init__.py": "Package",
    "__main__.py": "Command line",
    "cli.py": "Command line",
    "cli_data.py": "Command line",
    "errors.py": "Pure",
    "protocol": "Pure",
    "crypto": "Pure",
    "attestation": "Pure",
    "audit": "Pure",
    "dataset": "Pure",
    "channel/ratls.py": "Pure",
    "channel": "I/O",
    "measure.py": "I/O",
    "simstore.py": "I/O",
    "clientkey.py": "I/O",
    "logsetup.py": "I/O",
    "broker": "I/O",
    "memory.py": "Process set-up",
    "links.py": "Process set-up",
    "enclave": "Monitor",
    "worker": "Worker",
    "kernel": "Kernel side",
    "testing": "Test helpers",
    "teaching": "Teaching",
    "labkit": "Lab tools",
}
LAYERS = frozenset(LAYER_OF.values())
FIRST_LINE = re.compile(r"^(?P<layer>[A-Z][A-Za-z/ -]*?)(?: [a-z]+ layer)?(?: \([^)]+\))?: \S")



def expected_layer(rel: str) -> str:
    """The layer ``LAYER_OF`` gives the module at ``rel`` (a path relative to cc_kernel/)."""
    parts = rel.split("/")
    for key in (rel, *("/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1))):
        if key in LAYER_OF:
            return LAYER_OF[key]
    raise KeyError(f"{rel}: no layer in LAYER_OF; add its part to the vocabulary")


def problem(rel: str, source: str) -> str | None:
    """What is wrong with the opening of the module at ``rel`` whose text is ``source``, or None."""
    doc = ast.get_docstring(ast.parse(source), clean=True)
    if not doc:
        return f"{rel}: no module docstring"
    first = doc.splitlines()[0]
    match = FIRST_LINE.match(first)
    want = expected_layer(rel)
    if match is None or match["layer"] not in LAYERS:
        return f"{rel}: first line does not open with '<Layer>: ' (one of {sorted(LAYERS)}): {first!r}"
    if match["layer"] != want:
        return f"{rel}: first line names layer {match['layer']!r}, its place in the layout says {want!r}"
    return None


def modules() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("rel", modules())
def test_module_opens_with_its_layer(rel: str) -> None:
    assert problem(rel, (ROOT / rel).read_text()) is None


def test_check_fires_on_synthetic_modules() -> None:
    assert problem("crypto/x.py", "import os\n") == "crypto/x.py: no module docstring"
    assert problem("crypto/x.py", '"""   """\n') == "crypto/x.py: no module docstring"
    no_layer = problem("crypto/x.py", '"""The one DER reader.\n\nMore."""\n')
    assert no_layer is not None and "does not open with" in no_layer
    unknown = problem("crypto/x.py", '"""Helpers: the one DER reader."""\n')
    assert unknown is not None and "does not open with" in unknown
    wrong = problem("worker/x.py", '"""Monitor: runs cells."""\n')
    assert wrong is not None and "'Monitor'" in wrong and "'Worker'" in wrong
    assert problem("crypto/x.py", '"""Pure crypto layer (the ASN.1 fence): the DER reader."""\n') is None
    assert problem("channel/ratls.py", '"""Pure: the RA-TLS peer check."""\n') is None
    assert problem("channel/transport.py", '"""Pure: sockets."""\n') is not None
    assert problem("kernel/x.py", '"""Kernel side: the badge."""\n') is None
    with pytest.raises(KeyError):
        expected_layer("newpart/x.py")


def test_vocabulary_is_the_one_docs_architecture_states() -> None:
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    paragraph = doc[doc.index("Every module's docstring opens with its layer"):].split("\n\n")[0]
    assert set(re.findall(r"`([A-Z][A-Za-z/ -]+)`", paragraph)) == LAYERS
