"""Shared by the benchmark scripts: how busy this shared machine is, waiting until it is quiet, and which code
was measured."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_busy(interval: float) -> float:
    """Fraction of all CPUs busy (any process) over ``interval`` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(
    max_busy: float, timeout: float, log: Callable[[str], None], *, first: float = 0.5, then: float = 1.0
) -> float:
    """Wait (up to ``timeout`` s) until the other processes on this shared machine leave the CPUs mostly idle,
    sampling ``first`` seconds, then ``then`` seconds at a time. This process sleeps meanwhile, so it measures the
    others. Returns the busy fraction last seen (NaN without /proc/stat or with ``max_busy`` >= 1)."""
    if max_busy >= 1 or not os.path.exists("/proc/stat"):
        return float("nan")
    deadline = time.monotonic() + timeout
    busy = cpu_busy(first)
    while busy > max_busy and time.monotonic() < deadline:
        busy = cpu_busy(then)
    if busy > max_busy:
        log(f"  machine still {busy:.0%} busy after {timeout:.0f} s of waiting; measuring anyway")
    return busy


def git_state() -> dict[str, Any]:
    """The checkout measured: HEAD and the tracked files changed since (the numbers belong to that code). Empty
    values when the scripts do not run from a git checkout (e.g. a frozen copy)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"head": git("rev-parse", "HEAD"),
            "changed": git("status", "--porcelain", "--untracked-files=no").splitlines()}
