"""Lab tools: stopping the processes the teaching lab and the test harness start, and reading an enclave server's
address.

Layer: I/O (signals, waits), part of ``labkit``. Invariants: a process is stopped by its id only — first the
signal it handles (SIGTERM by default: an enclave server then stops the enclaves it started), then, if it
lingers, SIGKILL to its own process group (it was started in a session of its own, so the group is its own and
nobody else's); the stopper always reaps the process and closes the pipe it read from.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from typing import Final

__all__ = ["broker_address", "serving_address", "stop_process"]

#: What ``cc-kernel enclave serve`` prints once it listens.
_SERVING: Final = re.compile(r"serving on (\S+)")
_BROKER_LISTENING: Final = re.compile(r"cc-kernel broker listening on ([^\s,]+)")


def serving_address(output: str) -> str | None:
    """The address in the first "serving on ADDRESS" line of an enclave server's output, or None (not yet)."""
    match = _SERVING.search(output)
    return match.group(1) if match else None


def broker_address(output: str) -> str | None:
    """The ``HOST:PORT`` in a "cc-kernel broker listening on HOST:PORT, ..." line of a broker's output, or None."""
    match = _BROKER_LISTENING.search(output)
    return match.group(1) if match else None


def stop_process(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 8.0) -> int:
    """Send ``sig`` to ``process`` (if it runs) and wait; SIGKILL its process group after ``timeout`` seconds.

    Returns its exit status (negative: the signal that ended it). ``process`` must have been started with
    ``start_new_session=True``.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: pgid == pid
    status = process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return status
