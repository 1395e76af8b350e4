"""Kernel side: the session log file — one per kernel session, mode 0600, each entry appended at once and fsynced.

Durability (docs/audit-log.md §2.1):

* ``write`` appends the entry with ``os.write`` before it returns, so the entry is in the file (the OS page
  cache) as soon as its receipt was checked: a crash of the kernel or the enclave process loses nothing that
  was written, only the request in flight.
* ``fsync`` runs on a background thread (an fsync takes 0.2–4 ms on this kind of disk; it must not delay a
  cell). It is a *group commit*: every entry is covered by an fsync that starts after the entry was written,
  at most ``sync_interval`` after the previous fsync started. An entry written when the log has been quiet for
  ``sync_interval`` is fsynced at once; in a burst (back-to-back cells, a frontend's silent executions) one
  fsync covers the entries of its interval. An OS crash or power loss can therefore cost the entries of the
  last ``sync_interval`` (plus the fsync's own duration), never an older one.
* ``close`` fsyncs whatever is left, then closes the file.

``LogWriter`` (pure, cc_kernel.audit) has already checked every receipt's signature and chain before it
reaches this sink.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cc_kernel.errors import AuditError

ENV_AUDIT_DIR = "CC_KERNEL_AUDIT_DIR"

#: Longest time between an entry's write and the start of the fsync that covers it, while entries keep coming (s).
SYNC_INTERVAL = 0.02


def default_audit_dir() -> Path:
    """``CC_KERNEL_AUDIT_DIR``, else ``<jupyter data dir>/cc_kernel/audit``."""
    env = os.environ.get(ENV_AUDIT_DIR)
    if env:
        return Path(env).expanduser()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "cc_kernel" / "audit"


class AuditFile:
    """An append-only session log file: ``write`` (the ``LogWriter`` sink) appends at once; a background thread
    fsyncs (group commit, see the module docstring). ``fsync`` is injectable for tests."""

    def __init__(
        self,
        directory: Path,
        session_hex: str,
        *,
        sync_interval: float = SYNC_INTERVAL,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = directory / f"session-{stamp}-{session_hex}.cclog"
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot create the audit log {self.path}: {exc.strerror}") from exc
        self._interval = sync_interval
        self._fsync = fsync
        self._write_error: OSError | None = None
        self._sync_error: OSError | None = None
        self._cv = threading.Condition()
        self._written = 0  # entries written so far
        self._synced = 0  # entries covered by a completed fsync
        self._fsyncs = 0  # completed fsyncs
        self._syncer_idle = False  # the syncer waits without a deadline: a write must wake it
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="cc-audit-fsync", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        """Entries appended to the file so far."""
        return self._written

    @property
    def synced(self) -> int:
        """Entries known to be on stable storage (covered by a completed fsync)."""
        return self._synced

    @property
    def fsyncs(self) -> int:
        """Fsyncs completed so far (fewer than entries during bursts: group commit)."""
        return self._fsyncs

    def _failed(self) -> AuditError:
        return AuditError(f"writing the audit log {self.path} failed: {self._write_error or self._sync_error}")

    def write(self, data: bytes) -> None:
        """Append one entry (all of ``data``) now; its fsync follows on the background thread. Thread-safe: the
        check, the write and the count happen under one lock, which ``close`` takes too.

        Raises:
            AuditError: the file is closed, an earlier write or fsync failed, or this write failed.
        """
        with self._cv:
            if self._write_error is not None or self._sync_error is not None:
                raise self._failed()
            if self._closing or self._fd < 0:
                raise AuditError(f"the audit log {self.path} is closed")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                self._write_error = exc
                raise self._failed() from exc
            self._written += 1
            if self._syncer_idle:
                self._cv.notify()

    def _run(self) -> None:
        last_start = -math.inf
        while True:
            with self._cv:
                while True:
                    # after a failed write, what was written before it is still fsynced; after a failed fsync,
                    # nothing more can be known to be on disk
                    if self._synced == self._written or self._sync_error is not None:
                        if self._closing:
                            return
                        self._syncer_idle = True
                        self._cv.wait()
                        self._syncer_idle = False
                        continue
                    wait = last_start + self._interval - time.monotonic()
                    if wait > 0 and not self._closing:
                        self._cv.wait(wait)  # writes do not wake it now; close does
                        continue
                    target = self._written
                    break
            last_start = time.monotonic()
            try:
                self._fsync(self._fd)
            except OSError as exc:
                with self._cv:
                    self._sync_error = exc
            else:
                with self._cv:
                    self._synced = target
                    self._fsyncs += 1

    def close(self, timeout: float = 5.0) -> None:
        """Fsync what was written and close the file. Idempotent; no write is accepted once it started.

        Raises:
            AuditError: not every entry is known to be on disk: an fsync failed, or it did not finish within
                ``timeout`` (the file then stays open for the fsync thread).
        """
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise AuditError(f"the audit log {self.path} was not fsynced within {timeout:g} s; "
                             f"{self._written - self._synced} entries may not be on disk")
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._sync_error is not None:
            raise AuditError(f"the audit log {self.path} could not be fsynced ({self._sync_error}); "
                             f"{self._written - self._synced} entries may not be on disk")
