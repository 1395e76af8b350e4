"""cc_kernel.protocol is only a package: its names live in their submodules, and importing one submodule
imports no other."""

from __future__ import annotations

import subprocess
import sys


def test_the_package_re_exports_nothing() -> None:
    """Each name has one import path, its owner's (``cc_kernel.protocol.messages``, ``.framing``, ...)."""
    code = "import cc_kernel.protocol as p\nprint([n for n in vars(p) if not n.startswith('_')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_codec_does_not_build_the_message_registry() -> None:
    """What keeps the enclave's start-up short: the evidence envelope needs only the codec."""
    code = ("import sys\nimport cc_kernel.protocol.codec\n"
            "print(sorted(m for m in sys.modules if m.startswith('cc_kernel.protocol')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['cc_kernel.protocol', 'cc_kernel.protocol.codec']"
