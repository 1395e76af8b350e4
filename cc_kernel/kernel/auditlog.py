"""Kernel side: the session log file — one per kernel session, mode 0600, each entry appended and fsynced.

Writes happen on a dedicated thread, in order, so an fsync (0.5–4 ms on this kind of disk) never delays a
cell's reply; ``LogWriter`` (pure, cc_kernel.audit) has already checked every receipt's signature and chain
before it reaches this sink. If the kernel dies, at most the entries still queued (the cell in flight) are
missing, and the log verifies as "unterminated", never as tampered.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

from cc_kernel.errors import AuditError

ENV_AUDIT_DIR = "CC_KERNEL_AUDIT_DIR"


def default_audit_dir() -> Path:
    """``CC_KERNEL_AUDIT_DIR``, else ``<jupyter data dir>/cc_kernel/audit``."""
    env = os.environ.get(ENV_AUDIT_DIR)
    if env:
        return Path(env).expanduser()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "cc_kernel" / "audit"


class AuditFile:
    """An append-only, fsync-per-entry file written by a background thread. Call ``write`` (the sink)."""

    def __init__(self, directory: Path, session_hex: str) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = directory / f"session-{stamp}-{session_hex}.cclog"
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot create the audit log {self.path}: {exc.strerror}") from exc
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="cc-audit-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Queue one entry; raises AuditError if an earlier write failed."""
        if self._error is not None:
            raise AuditError(f"writing the audit log {self.path} failed: {self._error}")
        self._queue.put(bytes(data))

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError as exc:
                self._error = exc

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued and close the file (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
