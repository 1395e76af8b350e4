"""The kernel's session log file (kernel/auditlog.py): each entry is in the file when ``write`` returns; every
entry is covered by an fsync that starts after it was written (group commit: at most one fsync per
``sync_interval`` while entries keep coming, at once after a quiet spell); ``close`` fsyncs the rest; failures are
reported, never swallowed."""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from cc_kernel.errors import AuditError
from cc_kernel.kernel.auditlog import AuditFile
from cc_kernel.testing.waiting import wait_until

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
    f = AuditFile(tmp_path, SESSION, sync_interval=30.0, fsync=fsync)
    try:
        f.write(b"x" * 300)
        # the deadline is a third of the interval: the fsync did not wait for it, since the log had been quiet
        wait_until(lambda: f.synced == 1, timeout=10.0, what="fsync 1")
        assert fsync.calls[0][1] == 300  # the fsync started after the entry was written
    finally:
        f.close()


def test_a_burst_is_covered_by_one_more_fsync(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    fsync.release.clear()  # the first fsync is held while the burst is written
    f = AuditFile(tmp_path, SESSION, sync_interval=30.0, fsync=fsync)
    f.write(b"entry 000;")
    assert fsync.entered.wait(10)
    for i in range(1, 40):
        f.write(b"entry %03d;" % i)
    fsync.release.set()
    f.close()  # the interval has not passed: close makes the second fsync
    assert fsync.count == 2 == f.fsyncs
    assert fsync.calls[0][1] == 10  # the first covered the first entry ...
    assert fsync.calls[1][1] == 400 == f.path.stat().st_size  # ... the second all the others
    assert f.synced == f.written == 40


def test_fsyncs_in_a_burst_are_spaced_by_the_interval(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    interval = 0.3
    f = AuditFile(tmp_path, SESSION, sync_interval=interval, fsync=fsync)
    try:
        t0 = time.monotonic()  # the first fsync starts after this
        f.write(b"a")
        wait_until(lambda: f.synced == 1, timeout=10.0, what="fsync 1")
        f.write(b"b")  # right after the first fsync: its own fsync waits for the interval, with no other write
        wait_until(lambda: f.synced == 2, timeout=10.0, what="fsync 2")
        assert fsync.calls[1][0] >= t0 + interval  # a lower bound only: a slow machine cannot make it fail
        assert fsync.calls[1][1] == 2
    finally:
        f.close()


def test_close_fsyncs_what_is_pending_without_waiting_for_the_interval(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    f = AuditFile(tmp_path, SESSION, sync_interval=3600.0, fsync=fsync)
    f.write(b"one")
    wait_until(lambda: f.synced == 1, timeout=10.0, what="fsync 1")
    f.write(b"two")  # the next fsync is an hour away: waiting for it would end in the test's timeout
    f.close()
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


def test_writes_racing_close_are_either_refused_or_fsynced(tmp_path: Path) -> None:
    for round_ in range(20):
        f = AuditFile(tmp_path / str(round_), SESSION, fsync=RecordingFsync())
        accepted = 0
        start = threading.Event()

        def writer(f: AuditFile = f, start: threading.Event = start) -> None:
            nonlocal accepted
            start.wait()
            for _ in range(200):
                try:
                    f.write(b"e")
                except AuditError:
                    return
                accepted += 1

        t = threading.Thread(target=writer)
        t.start()
        start.set()
        f.close()
        t.join(10)
        assert f.written == accepted == f.synced  # nothing accepted without being fsynced before close returned
        assert f.path.stat().st_size == accepted


def test_a_failed_fsync_is_reported_by_the_next_write_and_by_close(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    fsync.fail = OSError(5, "Input/output error")
    f = AuditFile(tmp_path, SESSION, fsync=fsync)
    f.write(b"entry")
    wait_until(lambda: fsync.count == 1, timeout=10.0, what="fsync 1")
    # the thread records the failure right after the call returns
    refused: list[AuditError] = []

    def next_write_refused() -> bool:
        try:
            f.write(b"next")
        except AuditError as exc:
            refused.append(exc)
        return bool(refused)

    wait_until(next_write_refused, timeout=10.0, what="a write refused after the failed fsync", interval=0)
    assert re.search(r"writing the audit log .* failed: .*Input/output error", str(refused[0]))
    assert f.synced == 0  # never claimed durable
    with pytest.raises(AuditError, match=r"could not be fsynced .*Input/output error.*may not be on disk"):
        f.close()


def test_a_failed_write_sticks_and_earlier_entries_are_still_fsynced(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    f = AuditFile(tmp_path, SESSION, sync_interval=30.0, fsync=fsync)
    f.write(b"a")
    wait_until(lambda: f.synced == 1, timeout=10.0, what="fsync 1")
    f.write(b"b")  # pending: the next fsync is 30 s away
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, f._fd)  # the disk fills up underneath: the next write fails with ENOSPC
    finally:
        os.close(full)
    with pytest.raises(AuditError, match="failed"):
        f.write(b"c")
    with pytest.raises(AuditError, match="failed"):
        f.write(b"d")
    f.close()  # no fsync failed: close succeeds, having fsynced "b" too
    assert f.written == 2 == f.synced and fsync.count == 2


def test_a_hung_fsync_does_not_block_writes_and_close_says_so(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    fsync.release.clear()
    f = AuditFile(tmp_path, SESSION, fsync=fsync)
    f.write(b"a")
    assert fsync.entered.wait(10)
    for _ in range(100):
        f.write(b"b")  # never waits for the disk
    with pytest.raises(AuditError, match=r"not fsynced within 0.2 s; 101 entries may not be on disk"):
        f.close(timeout=0.2)  # the fsync is held for 10 s: had close waited for it, 101 entries would be synced
    assert f.synced == 0
    fsync.release.set()
    f.close()  # the disk came back: everything is fsynced and the file closed
    assert f.synced == 101 and f._fd == -1
