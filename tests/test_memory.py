"""cc_kernel.memory: the allocator set-up every process applies (glibc's mmap and trim thresholds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import os, resource, sys
from cc_kernel.memory import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else None
chunk = os.urandom(1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    bytes(bytearray(chunk))  # two 1 MiB buffers allocated, filled and freed: one upload chunk's copies
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_are_reused_instead_of_faulted_in_afresh() -> None:
    applied, tuned = _faults("tuned")
    assert applied == "True"
    _, stock = _faults("stock")
    # untuned, each 1 MiB buffer is a fresh mmap: ~256 page faults each, 400 buffers -> ~100k faults
    assert stock > 20_000, stock
    assert tuned < stock / 10, (tuned, stock)
