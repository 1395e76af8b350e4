"""The monitor's rules, driven message by message: what it accepts from the worker, what it receipts, when it
refuses. No processes: the worker and the kernel's channel are recorders, so each rule is shown exactly (the
end-to-end attacks from a real cell are in test_trust_boundary.py)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from monitor_support import attested_monitor

from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.audit.format import (
    ClosingEntry,
    ReceiptEntry,
    code_hash,
    decode_body_unverified,
    decode_payload_unverified,
    stream_digest,
)
from cc_kernel.enclave import monitor as mon_mod
from cc_kernel.enclave.monitor import OUTPUT_WINDOW, Monitor
from cc_kernel.enclave.workerproc import WorkerSpec
from cc_kernel.errors import RemoteProtocolError
from cc_kernel.protocol import messages as m


class Recorder:
    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    async def send(self, msg: m.Message) -> None:
        self.sent.append(msg)


def _execute(req_id: int, code: str = "print(1)", *, allow_stdin: bool = False) -> m.ExecuteRequest:
    return m.ExecuteRequest(req_id=req_id, code=code, silent=False, store_history=True, user_expressions={},
                            allow_stdin=allow_stdin, execution_count=req_id, cell_id=None, kind="cell")


def _reply(req_id: int) -> m.ExecuteReply:
    return m.ExecuteReply(req_id=req_id, status="ok", execution_count=req_id, user_expressions={}, payload=[],
                          ename="", evalue="", traceback=[])


def _receipts(sent: list[m.Message]) -> list[Any]:
    return [decode_body_unverified(decode_payload_unverified(x.receipt)[0]) for x in sent
            if isinstance(x, m.AuditReceipt)]


class Harness:
    """A monitor whose worker and kernel are recorders; attestation done, the worker ready."""

    def __init__(self, authority: SimulationAuthority, *, audit: bool | None = True) -> None:
        self.kernel = Recorder()
        self.worker: list[m.Message] = []

        async def to_worker(msg: m.Message) -> None:
            self.worker.append(msg)

        self.monitor = attested_monitor(authority, measurement=bytes(48), channel=self.kernel, to_worker=to_worker)
        self._audit = audit

    async def start(self) -> None:
        if self._audit is True:
            await self.kernel_says(m.AuditStart(opening_hash=b"h" * 32, redact_code=False))
        elif self._audit is False:
            await self.kernel_says(m.AuditOff())

    async def kernel_says(self, msg: m.Message) -> bool:
        return await self.monitor._from_kernel(msg)  # type: ignore[attr-defined, no-any-return]

    async def worker_says(self, msg: m.Message) -> None:
        await self.monitor._from_worker(msg)  # type: ignore[attr-defined]

    async def upload(self, *chunks: bytes, size: int | None = None, digest: bytes | None = None,
                     end: bool = True) -> None:
        """The kernel uploads ``chunks`` as ``x`` (request 1): its start (``size``: announced, default their
        total), the chunks, and unless ``end`` is False its end with ``digest`` (default: theirs)."""
        data = b"".join(chunks)
        await self.kernel_says(m.UploadStart(req_id=1, name="x", size=len(data) if size is None else size,
                                             fmt="bytes", code="%cc_upload f x", execution_count=1, cell_id=None))
        for chunk in chunks:
            await self.kernel_says(m.UploadChunk(req_id=1, data=chunk))
        if end:
            await self.kernel_says(m.UploadEnd(req_id=1, sha256=hashlib.sha256(data).digest() if digest is None
                                               else digest))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_one_request_at_a_time_and_a_receipt_over_what_the_monitor_relayed(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(_execute(1, "print('a')"))
        await h.kernel_says(_execute(2, "print('b')"))
        assert [type(x) for x in h.worker] == [m.ExecuteRequest]  # the second waits for the first's reply
        await h.worker_says(m.Stream(req_id=77, name="stdout", text="a\n"))  # a wrong req_id is rewritten
        await h.worker_says(_reply(1))
        assert [x.req_id for x in h.worker if isinstance(x, m.ExecuteRequest)] == [1, 2]
        stream, reply, receipt = h.kernel.sent[:3]
        assert isinstance(stream, m.Stream) and stream.req_id == 1
        assert isinstance(reply, m.ExecuteReply) and isinstance(receipt, m.AuditReceipt) and receipt.req_id == 1
        (entry,) = _receipts(h.kernel.sent)
        assert isinstance(entry, ReceiptEntry) and entry.kind == "cell" and entry.code == "print('a')"
        assert entry.code_sha256 == code_hash("print('a')")
        assert dict(entry.streams) == {"stdout": stream_digest("stdout", hashlib.sha256(b"a\n").digest())}

    run(main())


@pytest.mark.parametrize(
    ("bad", "expect"),
    [
        (_reply(9), "does not answer the request in hand"),
        (m.CompleteReply(req_id=1, status="ok", matches=[], cursor_start=0, cursor_end=0, metadata={}),
         "does not answer the request in hand"),
        (m.InputRequest(req_id=1, prompt="?", password=False), "input request outside a cell that allows stdin"),
        (m.WorkerReady(pid=1, protections={}), "WorkerReady sent twice"),
    ],
)
def test_a_worker_message_that_answers_nothing_in_hand_is_refused(
    sim_authority: SimulationAuthority, bad: m.Message, expect: str
) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(_execute(1))
        with pytest.raises(RemoteProtocolError, match=expect):
            await h.worker_says(bad)

    run(main())


def test_a_reply_while_idle_is_refused(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        with pytest.raises(RemoteProtocolError, match="while no request is in hand"):
            await h.worker_says(_reply(1))

    run(main())


def test_output_beyond_the_window_is_a_worker_ignoring_flow_control(sim_authority: SimulationAuthority) -> None:
    big = "x" * (OUTPUT_WINDOW // 2 + 1024)

    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(_execute(1))
        await h.worker_says(m.Stream(req_id=1, name="stdout", text=big))
        with pytest.raises(RemoteProtocolError, match="ignored flow control"):
            await h.worker_says(m.Stream(req_id=1, name="stdout", text=big))
        forwarded = [x for x in h.kernel.sent if isinstance(x, m.Stream)]
        assert len(forwarded) == 1  # the refused frame never reached the kernel

    run(main())


def test_credit_from_the_kernel_reopens_the_window_and_reaches_the_worker(sim_authority: SimulationAuthority) -> None:
    big = "x" * (OUTPUT_WINDOW // 2 + 1024)

    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(_execute(1))
        await h.worker_says(m.Stream(req_id=1, name="stdout", text=big))
        await h.kernel_says(m.Credit(nbytes=OUTPUT_WINDOW))
        await h.worker_says(m.Stream(req_id=1, name="stdout", text=big))
        assert m.Credit(nbytes=OUTPUT_WINDOW) in h.worker

    run(main())


def test_nothing_runs_before_the_kernel_said_how_to_log(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority, audit=None)
        assert await h.kernel_says(_execute(1)) is True  # the session is over
        assert h.worker == []
        (fatal,) = h.kernel.sent
        assert isinstance(fatal, m.Fatal) and "before AuditStart or AuditOff" in fatal.reason

    run(main())


def test_audit_start_twice_is_refused(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        with pytest.raises(RemoteProtocolError, match="twice"):
            await h.kernel_says(m.AuditOff())

    run(main())


def test_without_a_log_no_receipt_is_made(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority, audit=False)
        await h.start()
        await h.kernel_says(_execute(1))
        await h.worker_says(_reply(1))
        assert [type(x) for x in h.kernel.sent] == [m.ExecuteReply]

    run(main())


def test_a_refused_upload_is_answered_and_receipted_by_the_monitor(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(m.UploadStart(req_id=1, name="not an identifier", size=3, fmt="bytes",
                                          code="%cc_upload f.bin x", execution_count=1, cell_id=None))
        await h.kernel_says(m.UploadChunk(req_id=1, data=b"abc"))
        assert h.worker == []  # nothing of it reached the worker
        reply = next(x for x in h.kernel.sent if isinstance(x, m.UploadReply))
        assert reply.status == "error" and "Python identifier" in reply.message
        (entry,) = _receipts(h.kernel.sent)
        assert entry.kind == "upload" and entry.status == "error" and entry.code == "%cc_upload f.bin x"

    run(main())


def test_an_upload_is_hashed_by_the_monitor(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.upload(b"abc", b"def")
        await h.worker_says(m.UploadReply(req_id=1, status="ok", message="x = bytes of 6 bytes"))
        (entry,) = _receipts(h.kernel.sent)
        assert entry.upload is not None and entry.upload.sha256 == hashlib.sha256(b"abcdef").digest()
        assert entry.upload.size == 6 and entry.status == "ok"

    run(main())


@pytest.mark.parametrize("length", [20, m.MAX_REASON])
def test_a_plain_uploads_reply_ends_with_the_digest_its_receipt_holds(sim_authority: SimulationAuthority,
                                                                      length: int) -> None:
    """However long the worker's text (a hostile worker may end it with a digest of its own), the monitor's
    digest is the last thing in the reply."""
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.upload(b"abc")
        fake = " (sha256 0000000000000000…)"
        await h.worker_says(m.UploadReply(req_id=1, status="ok", message=("x" * length)[: length - len(fake)] + fake))
        reply = next(x for x in h.kernel.sent if isinstance(x, m.UploadReply))
        assert reply.status == "ok" and len(reply.message) <= m.MAX_REASON
        assert reply.message.endswith(f" (sha256 {hashlib.sha256(b'abc').hexdigest()[:16]}…)")

    run(main())


def test_a_worker_claiming_an_incomplete_upload_succeeded_is_overruled(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.upload(b"abc", size=6, end=False)
        await h.worker_says(m.UploadReply(req_id=1, status="ok", message="all there"))
        reply = next(x for x in h.kernel.sent if isinstance(x, m.UploadReply))
        assert reply.status == "error" and "incomplete (3 of 6 bytes)" in reply.message
        assert _receipts(h.kernel.sent)[0].status == "error"

    run(main())


def test_a_dead_worker_is_answered_receipted_and_closed_with_the_reason(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(_execute(1, "boom()"))
        await h.monitor._worker_died("the worker process ended (killed by signal SIGKILL)")  # type: ignore[attr-defined]
        types = [type(x) for x in h.kernel.sent]
        assert types == [m.Error, m.ExecuteReply, m.AuditReceipt, m.AuditReceipt, m.Fatal]
        shown, reply = h.kernel.sent[:2]
        assert isinstance(shown, m.Error) and "SIGKILL" in shown.evalue
        assert isinstance(reply, m.ExecuteReply) and reply.status == "error" and "SIGKILL" in reply.evalue
        cell, closing = _receipts(h.kernel.sent)
        assert cell.code == "boom()" and cell.status == "error" and [o[0] for o in cell.outputs] == ["error"]
        assert isinstance(closing, ClosingEntry) and closing.reason.startswith("worker died: ")

    run(main())


def test_an_interrupt_reaches_only_a_request_allocated_before_it(
    sim_authority: SimulationAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(mon_mod.os, "kill", lambda pid, sig: signals.append((pid, sig)))

    class Proc:
        pid = 4242

    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        h.monitor._worker = SimpleNamespace(proc=Proc())  # type: ignore[assignment]
        await h.kernel_says(m.Interrupt(before=5))  # idle: nothing to interrupt
        await h.kernel_says(_execute(3))
        await h.kernel_says(m.Interrupt(before=3))  # allocated after request 3 started? no: 3 is not < 3
        assert signals == []
        await h.kernel_says(m.Interrupt(before=4))
        assert signals == [(4242, mon_mod.signal.SIGINT)]

    run(main())


@pytest.mark.parametrize("required", [True, False])
def test_a_hardware_monitor_refuses_a_session_whose_sandbox_is_incomplete(
    sim_authority: SimulationAuthority, monkeypatch: pytest.MonkeyPatch, required: bool
) -> None:
    from cc_kernel.enclave import sandbox_check

    monkeypatch.setattr(sandbox_check, "check_from_outside", lambda pid, report: [])

    async def main() -> None:
        h = Harness(sim_authority, audit=None)
        mon: Any = h.monitor
        mon._worker_spec = WorkerSpec(required=required)
        mon._monitor_protections = {"monitor_not_dumpable": {"in_force": True, "detail": "prctl"}}
        mon._ready = asyncio.get_running_loop().create_future()
        mon._ready.set_result(m.WorkerReady(pid=1, protections={
            "no_new_privs": {"in_force": True, "detail": "prctl"},
            "landlock": {"in_force": False, "detail": "landlock_create_ruleset: ENOSYS (kernel without Landlock)"},
            "seccomp": {"in_force": True, "detail": "filter"},
        }))
        mon._worker = None
        if required:
            with pytest.raises(Exception, match="could not be fully applied"):
                await mon._announce(h.kernel)
            (fatal,) = h.kernel.sent
            assert isinstance(fatal, m.Fatal) and "landlock: landlock_create_ruleset: ENOSYS" in fatal.reason
        else:
            await mon._announce(h.kernel)
            (info,) = h.kernel.sent
            assert isinstance(info, m.SessionInfo) and info.complete is False
            assert info.protections["landlock"]["in_force"] is False

    run(main())


def test_the_worker_report_is_checked_against_the_kernels_view(
    sim_authority: SimulationAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cc_kernel.enclave import sandbox_check

    monkeypatch.setattr(sandbox_check, "check_from_outside",
                        lambda pid, report: ["seccomp: claimed in force, but Seccomp is 0 (expected 2, filter mode)"])

    class Proc:
        pid = 4242

    async def main() -> None:
        h = Harness(sim_authority, audit=None)
        mon: Any = h.monitor
        mon._ready = asyncio.get_running_loop().create_future()
        mon._ready.set_result(m.WorkerReady(pid=4242, protections={"seccomp": {"in_force": True, "detail": "x"}}))
        mon._worker = SimpleNamespace(proc=Proc())
        await mon._announce(h.kernel)
        (info,) = h.kernel.sent
        assert isinstance(info, m.SessionInfo) and not info.complete
        seccomp = info.protections["seccomp"]
        assert seccomp["in_force"] is False and "Seccomp is 0" in seccomp["detail"]

    run(main())


def test_an_upload_altered_on_its_way_is_refused_and_never_reaches_the_namespace(
    sim_authority: SimulationAuthority,
) -> None:
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.upload(b"abc", digest=hashlib.sha256(b"abd").digest())
        assert not any(isinstance(x, m.UploadEnd) for x in h.worker)  # the worker binds nothing
        reply = next(x for x in h.kernel.sent if isinstance(x, m.UploadReply))
        assert reply.status == "error" and "altered" in reply.message
        (entry,) = _receipts(h.kernel.sent)
        assert entry.status == "error" and entry.upload is not None
        assert entry.upload.sha256 == hashlib.sha256(b"abc").digest()  # what the monitor really handed in

    run(main())


class _StopHereError(Exception):
    pass


@pytest.mark.parametrize("fd_mode", [True, False])
def test_the_evidence_source_is_open_before_any_worker_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fd_mode: bool
) -> None:
    """Local mode starts the worker early (overlapping the monitor's imports), but only after the evidence
    source is open; a server spare opens its source and builds its monitor without any worker."""
    from cc_kernel.enclave import process

    events: list[str] = []
    real_source = process._evidence_source

    def source(args: Any) -> Any:
        events.append("source opened")
        return real_source(args)

    def spawn(spec: WorkerSpec) -> Any:
        events.append("worker spawned")
        raise _StopHereError

    def monitor_init(self: Any, **kwargs: Any) -> None:
        events.append("monitor built")
        raise _StopHereError

    monkeypatch.setattr(process, "_evidence_source", source)
    monkeypatch.setattr(process, "spawn_worker", spawn)
    monkeypatch.setattr(process, "harden_process", lambda: SimpleNamespace(not_dumpable=True))
    monkeypatch.setattr(Monitor, "__init__", monitor_init)
    monkeypatch.setattr(process, "log_to_saved_stderr", lambda *a: None)
    a, b = socket.socketpair()
    mode = ["--fd", str(b.fileno())] if fd_mode else ["--control-fd", str(b.fileno()), "--unsafe-serve-any-client"]
    try:
        with pytest.raises(_StopHereError):
            process.main([*mode, "--platform", "simulation", "--sim-dir", str(tmp_path / "sim")])
    finally:
        a.close()
        b.close()
    assert events == (["source opened", "worker spawned"] if fd_mode else ["source opened", "monitor built"])


def test_no_worker_when_no_evidence_can_be_produced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cc_kernel.enclave import process
    from cc_kernel.errors import ConfigError

    spawned: list[WorkerSpec] = []

    def broken_source(args: Any) -> Any:
        raise ConfigError("no TEE interface answered")

    monkeypatch.setattr(process, "_evidence_source", broken_source)
    monkeypatch.setattr(process, "spawn_worker", spawned.append)
    monkeypatch.setattr(process, "harden_process", lambda: SimpleNamespace(not_dumpable=True))
    monkeypatch.setattr(process, "log_to_saved_stderr", lambda *a: None)
    a, b = socket.socketpair()
    try:
        assert process.main(["--fd", str(b.fileno()), "--platform", "simulation",
                             "--sim-dir", str(tmp_path / "sim")]) == 3
    finally:
        a.close()
        b.close()
    assert spawned == []


def test_output_while_no_request_is_in_hand_gets_a_background_receipt(sim_authority: SimulationAuthority) -> None:
    """A thread a cell started prints after the cell's reply: the output is forwarded under that cell's id and
    signed into a ``background`` receipt before the next request reaches the worker (or the log closes)."""
    async def main() -> None:
        h = Harness(sim_authority)
        await h.start()
        await h.kernel_says(_execute(1))
        await h.worker_says(_reply(1))
        await h.worker_says(m.Stream(req_id=0, name="stdout", text="late\n"))
        late = h.kernel.sent[-1]
        assert isinstance(late, m.Stream) and late.req_id == 1
        assert len(_receipts(h.kernel.sent)) == 1  # nothing signed yet: more may come
        await h.kernel_says(_execute(2))
        background = h.kernel.sent[-1]
        assert isinstance(background, m.AuditReceipt) and background.req_id == 1
        assert isinstance(h.worker[-1], m.ExecuteRequest) and h.worker[-1].req_id == 2  # handed in after it
        entry = _receipts(h.kernel.sent)[-1]
        assert entry.kind == "background" and entry.code == "" and entry.status == "ok"
        assert dict(entry.streams) == {"stdout": stream_digest("stdout", hashlib.sha256(b"late\n").digest())}
        await h.worker_says(_reply(2))
        await h.worker_says(m.Stream(req_id=0, name="stderr", text="later\n"))
        await h.monitor._close_log("shutdown")  # type: ignore[attr-defined]
        *_, last, closing = _receipts(h.kernel.sent)
        assert last.kind == "background" and dict(last.streams).keys() == {"stderr"}
        assert isinstance(closing, ClosingEntry)

    run(main())


def test_without_a_log_output_between_requests_is_forwarded_and_not_signed(sim_authority: SimulationAuthority) -> None:
    async def main() -> None:
        h = Harness(sim_authority, audit=False)
        await h.start()
        await h.kernel_says(_execute(1))
        await h.worker_says(_reply(1))
        await h.worker_says(m.Stream(req_id=0, name="stdout", text="late\n"))
        await h.kernel_says(_execute(2))
        assert isinstance(h.kernel.sent[-1], m.Stream) and h.kernel.sent[-1].req_id == 1
        assert _receipts(h.kernel.sent) == []

    run(main())
