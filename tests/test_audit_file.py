"""The kernel's session log file (kernel/auditlog.py): each entry is in the file when ``write`` returns; every
entry is covered by an fsync that starts after it was written (group commit: at most one fsync per
``sync_interval`` while entries keep coming, at once after a quiet spell); ``close`` fsyncs the rest; failures are
reported, never swallowed."""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from cc_kernel.errors import AuditError
from cc_kernel.kernel.auditlog import AuditFile

SESSION = "ab" * 16


class RecordingFsync:
    """An fsync stand-in: records (time, file size) per call, can be held (blocked) or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail: OSError | None = None
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        started = time.monotonic()
        size = os.fstat(fd).st_size
        self.entered.set()
        self.release.wait(10)
        with self._lock:
            self.calls.append((started, size))
        if self.fail is not None:
            raise self.fail

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.calls)


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def test_file_is_private_and_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda *_: "20261129T000000Z")  # two opens in "the same second"
    f = AuditFile(tmp_path / "logs", SESSION)
    try:
        assert stat.S_IMODE(os.stat(f.path).st_mode) == 0o600
        assert f.path == tmp_path / "logs" / f"session-20261129T000000Z-{SESSION}.cclog"
        f.write(b"kept")
    finally:
        f.close()
    with pytest.raises(AuditError, match=r"cannot create the audit log .*exists"):
        AuditFile(tmp_path / "logs", SESSION)  # O_EXCL: an existing log is never reopened or truncated
    assert f.path.read_bytes() == b"kept"


def test_entry_is_in_the_file_before_any_fsync(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    fsync.release.clear()  # every fsync blocks until released
    f = AuditFile(tmp_path, SESSION, fsync=fsync)
    try:
        f.write(b"first entry")
        f.write(b"second")
        # both writes returned while the fsync is held: a kernel crash now loses nothing that was written
        assert f.path.read_bytes() == b"first entry" + b"second"
        assert f.written == 2
        assert f.synced == 0
    finally:
        fsync.release.set()
        f.close()
    assert f.synced == 2


def test_a_lone_entry_is_fsynced_at_once(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    f = AuditFile(tmp_path, SESSION, sync_interval=10.0, fsync=fsync)
    try:
        t0 = time.monotonic()
        f.write(b"x" * 300)
        wait_until(lambda: f.synced == 1, timeout=2.0)
        assert fsync.calls[0][0] - t0 < 1.0  # not after the 10 s interval: the log had been quiet
        assert fsync.calls[0][1] == 300  # the fsync started after the entry was written
    finally:
        f.close()


def test_a_burst_is_covered_by_few_fsyncs_spaced_by_the_interval(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    interval = 0.15
    f = AuditFile(tmp_path, SESSION, sync_interval=interval, fsync=fsync)
    try:
        for i in range(40):
            f.write(b"entry %03d;" % i)
            time.sleep(0.002)
        wait_until(lambda: f.synced == 40, timeout=2.0)
        size = f.path.stat().st_size
    finally:
        f.close()
    times = [t for t, _ in fsync.calls]
    assert 2 <= len(times) < 10, times  # grouped, not one per entry
    assert all(b - a >= interval * 0.5 for  # (not 2 ms apart, as the writes were)
               a, b in itertools.pairwise(times))
    assert fsync.calls[-1][1] == size  # the last fsync covered every entry
    assert f.fsyncs == len(times)


def test_entries_keep_getting_fsynced_after_the_interval(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    f = AuditFile(tmp_path, SESSION, sync_interval=0.05, fsync=fsync)
    try:
        f.write(b"a")
        wait_until(lambda: f.synced == 1)
        f.write(b"b")  # within the interval: waits for it, then is fsynced without another write
        wait_until(lambda: f.synced == 2, timeout=1.0)
        assert fsync.calls[-1][1] == 2
    finally:
        f.close()


def test_close_fsyncs_what_is_pending_without_waiting_for_the_interval(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    f = AuditFile(tmp_path, SESSION, sync_interval=30.0, fsync=fsync)
    f.write(b"one")
    wait_until(lambda: f.synced == 1)
    f.write(b"two")  # the next fsync is 30 s away
    t0 = time.monotonic()
    f.close()
    assert time.monotonic() - t0 < 2.0
    assert f.synced == 2 and fsync.calls[-1][1] == 6
    f.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        f.write(b"late")
    assert f.path.read_bytes() == b"onetwo"


def test_close_of_an_unused_file_does_not_fsync(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    f = AuditFile(tmp_path, SESSION, fsync=fsync)
    f.close()
    assert fsync.count == 0 and f.path.read_bytes() == b""


def test_a_failed_fsync_is_reported_by_the_next_write(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    fsync.fail = OSError(5, "Input/output error")
    f = AuditFile(tmp_path, SESSION, fsync=fsync)
    try:
        f.write(b"entry")
        wait_until(lambda: fsync.count == 1)
        wait_until(lambda: f._error is not None)
        with pytest.raises(AuditError, match=r"writing the audit log .* failed: .*Input/output error"):
            f.write(b"next")
        assert f.synced == 0  # never claimed durable
        assert f.path.read_bytes() == b"entry"  # the failed log is not appended to
    finally:
        f.close()


def test_a_failed_write_is_reported_and_sticks(tmp_path: Path) -> None:
    f = AuditFile(tmp_path, SESSION, fsync=RecordingFsync())
    try:
        os.close(f._fd)
        with pytest.raises(AuditError, match="failed"):
            f.write(b"entry")
        with pytest.raises(AuditError, match="failed"):
            f.write(b"again")
    finally:
        f._fd = -1
        f.close()


def test_a_hung_fsync_does_not_block_writes_and_close_gives_up(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    fsync.release.clear()
    f = AuditFile(tmp_path, SESSION, fsync=fsync)
    f.write(b"a")
    assert fsync.entered.wait(2)
    for _ in range(100):
        f.write(b"b")  # never waits for the disk
    t0 = time.monotonic()
    f.close(timeout=0.2)
    assert time.monotonic() - t0 < 2.0
    assert f.synced == 0
    fsync.release.set()
    f._thread.join(5)
