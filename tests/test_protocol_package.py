"""cc_kernel.protocol re-exports its submodules' names lazily (PEP 562)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cc_kernel.protocol as protocol


def test_every_exported_name_resolves_to_its_owner() -> None:
    for name in protocol.__all__:
        value = getattr(protocol, name)
        owner = getattr(value, "__module__", None)
        assert owner is None or owner.startswith("cc_kernel.protocol"), (name, owner)
    from cc_kernel.protocol.connection import Connection
    from cc_kernel.protocol.framing import NEED_DATA
    assert protocol.Connection is Connection and protocol.NEED_DATA is NEED_DATA


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nonsense'"):
        protocol.Nonsense  # noqa: B018


def test_importing_the_codec_does_not_build_the_message_registry() -> None:
    """What keeps the enclave's start-up short: the evidence envelope needs only the codec."""
    code = ("import sys\nimport cc_kernel.protocol.codec\n"
            "print(sorted(m for m in sys.modules if m.startswith('cc_kernel.protocol')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['cc_kernel.protocol', 'cc_kernel.protocol.codec']"
