"""I/O: where the enclave's two processes (monitor and worker) write their own log lines.

To a private duplicate of the original stderr, never to fds 1 and 2 themselves: the worker captures those
into the notebook, so a log line written there would loop back into the cells' output. Nothing else here: the
worker may import this module (it holds nothing but this function)."""

from __future__ import annotations

import logging
import os


def log_to_saved_stderr(name: str, level: str) -> None:
    """Send the ``cc_kernel`` loggers' records at ``level`` and above, prefixed ``[name PID]``, to a duplicate
    of fd 2 taken now. Raises ValueError for an unknown level name."""
    stream = os.fdopen(os.dup(2), "w", buffering=1, closefd=True)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"[{name} %(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("cc_kernel")
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
