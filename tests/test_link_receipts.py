"""The kernel's EnclaveLink and the enclave's audit receipts, over a real attested channel (an in-process enclave
answering the handshake with simulated evidence; the receipts are really signed with its attested audit key and
really checked by a LogWriter opened on the attestation result). The test plays the enclave's part after the
handshake, so it can also misbehave:

* a good receipt is checked and appended without waiting for another request, and never before the reply
  that came with it has reached its request; every receipted kind, in order, with and without redaction, gives
  a log that verifies, with the closing entry last;
* audit fails closed: a missing receipt (revealed by the reply, an output or an input request of a later
  request, by the closing entry, or by the end of the session), an extra one (a duplicate, or any receipt when
  the session keeps no log), reordered receipts, a foreign one (valid signature, other code, kind or request id)
  and one that does not verify each stop the session. Each test checks the reason names what was wrong, that
  nothing but ``Shutdown`` with that reason was sent afterwards, that waiting and later requests fail with it,
  and what the log holds: a valid receipt is kept (the chain goes through it), and the closing entry only if it
  states the kernel's reason — else the log stays unterminated.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.audit.format import ClosingEntry, OutputDigester, UploadInfo, code_hash
from cc_kernel.audit.receipts import LogWriter, ReceiptSigner, comm_input_text, make_opening
from cc_kernel.audit.render import report_lines
from cc_kernel.audit.verify import LogReport, verify_log
from cc_kernel.channel.transport import FramedChannel
from cc_kernel.enclave.evidence import SimulatedSource
from cc_kernel.errors import ChannelError, EnclaveError
from cc_kernel.kernel.link import EnclaveLink, LaunchSpec
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import messages as m
from cc_kernel.testing.enclaves import InProcessEnclave


class PairLink(EnclaveLink):
    """An EnclaveLink whose "launch" is one end of a socketpair (the other end: an in-process enclave)."""

    def __init__(self, sock: socket.socket, **kwargs: object) -> None:
        super().__init__(LaunchSpec(), **kwargs)  # type: ignore[arg-type]
        self._sock = sock

    def _launch(self) -> socket.socket:
        return self._sock


@dataclass
class Session:
    link: PairLink
    enclave: FramedChannel
    signer: ReceiptSigner
    log: list[bytes]  # what the LogWriter appended, entry by entry (opening first)
    anchors: TrustAnchors
    redact: bool = False
    sent: list[m.Message] = field(default_factory=list)  # every message the kernel sent after the handshake
    outputs: list[m.Message] = field(default_factory=list)  # what the link handed to Jupyter
    events: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)

    def report(self) -> LogReport:
        return verify_log(b"".join(self.log), policy=None, anchors=hardware_anchors(),
                          simulation_anchors=self.anchors)

    def sign(self, kind: str, code: str, *, count: int = 1, upload: UploadInfo | None = None) -> bytes:
        return self.signer.sign_receipt(kind=kind, execution_count=count, code=code,
                                        outputs=OutputDigester().result(), status="ok", started_ms=10, ended_ms=11,
                                        redact_code=self.redact, upload=upload)


async def open_session(authority: SimulationAuthority, policy: Policy, anchors: TrustAnchors, *,
                       audit: bool = True, redact: bool = False) -> Session:
    enclave = InProcessEnclave(SimulatedSource(authority=authority, measurement=enclave_measurement()))
    kernel_sock, enclave_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = asyncio.ensure_future(enclave.accept(enclave_sock))
    log: list[bytes] = []
    events: list[str] = []
    closed: list[str] = []
    closed_event = asyncio.Event()

    def sink(data: bytes) -> None:
        log.append(data)
        events.append(f"entry {len(log) - 1}")

    def on_closed(reason: str) -> None:
        closed.append(reason)
        closed_event.set()

    outputs: list[m.Message] = []
    link = PairLink(kernel_sock, policy=policy, simulation_anchors=anchors, on_output=outputs.append,
                    on_closed=on_closed)
    attested = await link.start(timeout=10)
    channel = await server
    sent: list[m.Message] = []
    real_send = attested.channel.send

    async def recording_send(msg: m.Message) -> None:
        sent.append(msg)
        await real_send(msg)

    attested.channel.send = recording_send  # type: ignore[method-assign]
    peer = attested.peer
    if audit:
        writer = LogWriter(sink)
        writer.open(make_opening(result=peer.result, envelope_bytes=peer.envelope_bytes, tls_spki=peer.tls_spki,
                                 policy=policy, opened_ms=1, versions={"test": "1"}))
        await link.start_audit(writer, redact_code=redact)
        start = await channel.receive()
        assert isinstance(start, m.AuditStart) and start.redact_code is redact
        signer = ReceiptSigner(enclave.audit_key, peer.result.session_id, opening_hash=start.opening_hash)
    else:
        await link.audit_off()
        assert isinstance(await channel.receive(), m.AuditOff)
        # what a misbehaving enclave could still sign with its attested key
        signer = ReceiptSigner(enclave.audit_key, peer.result.session_id, opening_hash=b"\x01" * 32)
    sent.clear()
    events.clear()  # the opening entry
    return Session(link, channel, signer, log, anchors, redact, sent, outputs, events, closed, closed_event)


def reply(req_id: int) -> m.ExecuteReply:
    return m.ExecuteReply(req_id=req_id, status="ok", execution_count=req_id, user_expressions={}, payload=[],
                          ename="", evalue="", traceback=[])


def request(req_id: int, code: str = "x = 1", *, silent: bool = False) -> m.ExecuteRequest:
    return m.ExecuteRequest(req_id=req_id, code=code, silent=silent, store_history=not silent,
                            user_expressions={}, allow_stdin=False, execution_count=req_id, cell_id=None,
                            kind="silent" if silent else "cell")


def comm(req_id: int, data: str) -> m.CommMsg:
    return m.CommMsg(req_id=req_id, comm_id="c1", data={"value": data}, metadata={}, buffers=[])


def receipt_bytes(s: Session, count: int) -> bytes:
    return s.sign("cell", "x = 1", count=count)


async def run_cell(s: Session, answer: Callable[[int], Awaitable[None]], code: str = "x = 1"
                   ) -> m.Message | BaseException:
    """The kernel sends a request; the enclave answers it with ``answer(req_id)``; returns what the request got."""
    req_id, q = s.link.new_request()

    async def wait_for_reply() -> m.Message | BaseException:  # as the kernel's do_execute waits
        got = await q.get()
        s.events.append(f"reply {req_id}")
        return got

    waiter = asyncio.ensure_future(wait_for_reply())
    await s.link.send(request(req_id, code))
    assert isinstance(await s.enclave.receive(), m.ExecuteRequest)
    await answer(req_id)
    got = await asyncio.wait_for(waiter, 5)
    s.link.finish_request(req_id)
    return got


async def send_comm(s: Session, data: str) -> int:
    req_id, _q = s.link.new_request()
    await s.link.send(comm(req_id, data))
    s.link.finish_request(req_id)
    assert isinstance(await s.enclave.receive(), m.CommMsg)
    return req_id


async def stopped(s: Session, *, closing: str | None = "echo") -> str:
    """The session stopped: the enclave gets exactly Shutdown(restart=False, reason) and nothing else; it signs
    a closing entry (``closing``: "echo" the kernel's reason, another reason, or None: no closing entry) and
    replies; the kernel then ends the channel. Returns the reason, after checking that no further request can
    be sent and that a new one learns the reason at once."""
    await asyncio.wait_for(s.closed_event.wait(), 5)
    reason = s.link.stop_reason
    assert reason is not None
    assert len(s.closed) == 1 and reason in s.closed[0] and "stopped the session" in s.closed[0]
    with pytest.raises(EnclaveError, match="stopped the session"):
        await s.link.send(request(s.link.next_request_id))
    _req_id, q = s.link.new_request()
    item = await asyncio.wait_for(q.get(), 5)
    assert isinstance(item, EnclaveError) and reason in str(item)

    async def enclave_side() -> None:
        shutdown = await s.enclave.receive()
        assert shutdown == m.Shutdown(restart=False, reason=reason)
        if closing is not None:
            text = reason if closing == "echo" else closing
            await s.enclave.send(m.AuditReceipt(req_id=0, receipt=s.signer.sign_closing(ended_ms=12, reason=text)))
        await s.enclave.send(m.ShutdownReply(restart=False))

    answering = asyncio.ensure_future(enclave_side())
    await asyncio.wait_for(s.link.shutdown(), 10)  # sends nothing more; waits for the enclave's answer
    await answering
    with pytest.raises(ChannelError):  # the kernel closed the channel; nothing followed the Shutdown
        await s.enclave.receive()
    assert sent_requests(s)[-1] is m.Shutdown and sent_requests(s).count(m.Shutdown) == 1
    assert s.closed == [s.closed[0]]  # told once
    return reason


def sent_requests(s: Session) -> list[type[m.Message]]:
    return [type(x) for x in s.sent if not isinstance(x, m.Credit)]


def closing_reason(report: LogReport) -> str | None:
    return report.closing.reason if isinstance(report.closing, ClosingEntry) else None


@pytest.fixture(scope="module")
def policy(sim_policy_path: os.PathLike[str]) -> Policy:
    with open(sim_policy_path, "rb") as fh:
        return load_policy(fh.read(), source=str(sim_policy_path))


Fixture = tuple[SimulationAuthority, Policy, TrustAnchors]


@pytest.fixture
def env(sim_authority: SimulationAuthority, policy: Policy, sim_anchors: TrustAnchors) -> Fixture:
    return sim_authority, policy, sim_anchors


def run(env: Fixture, body: Callable[[Session], Awaitable[None]], *, audit: bool = True,
        redact: bool = False) -> Session:
    """Open a session, run ``body`` on it, close both ends; returns the session (its log, what was sent)."""
    async def main() -> Session:
        s = await open_session(*env, audit=audit, redact=redact)
        try:
            await body(s)
        finally:
            await s.link.kill()
            await s.enclave.aclose()
        return s

    return asyncio.run(main())


# -- a good session ---------------------------------------------------------------------------------------------


def test_a_receipt_is_logged_after_its_reply_without_another_request(env: Fixture) -> None:
    async def body(s: Session) -> None:
        for count in (1, 2, 3):
            async def answer(req_id: int, count: int = count) -> None:
                # reply and receipt back to back, as the enclave sends them (usually one read for the kernel)
                await s.enclave.send(reply(req_id))
                await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, count)))

            got = await run_cell(s, answer)
            assert isinstance(got, m.ExecuteReply) and got.status == "ok"
            # no further request, no timer: the receipt is checked and in the log within a few loop turns
            # (its bytes are already in the socket: the enclave sent them before the reply was awaited)
            for _ in range(20):
                if len(s.log) == 1 + count:
                    break
                await asyncio.sleep(0)
            assert len(s.log) == 1 + count, "the receipt waited for a timer or for another request"
        assert s.events == ["reply 1", "entry 1", "reply 2", "entry 2", "reply 3", "entry 3"]
        assert s.closed == [] and s.link.expected_receipts == ()

    run(env, body)


@pytest.mark.parametrize("redact", [False, True], ids=["code", "redacted"])
def test_every_receipted_kind_in_order_gives_a_valid_log(env: Fixture, redact: bool) -> None:
    """Cell, silent, complete, inspect, is_complete, the three comm messages and an upload, each answered as the
    enclave answers it; history and comm_info get no receipt. A clean shutdown ends the log with its closing
    entry, and the log verifies with every receipt's kind and code hash the kernel expected."""
    upload_code = "%cc_upload data.bin data"
    sent_codes: list[tuple[str, str]] = []

    async def body(s: Session) -> None:
        async def ask(msg: m.Message, kind: str | None, code: str, answer: m.Message | None) -> None:
            await s.link.send(msg)
            assert type(await s.enclave.receive()) is type(msg)
            if answer is not None:
                await s.enclave.send(answer)
            if kind is not None:
                await s.enclave.send(m.AuditReceipt(req_id=getattr(msg, "req_id", 0), receipt=s.sign(kind, code)))
                sent_codes.append((kind, code))

        link = s.link
        r, _ = link.new_request()
        await ask(request(r, "print(1)"), "cell", "print(1)", reply(r))
        r, _ = link.new_request()
        await ask(request(r, "vars()", silent=True), "silent", "vars()", reply(r))
        r, _ = link.new_request()
        await ask(m.CompleteRequest(req_id=r, code="pri", cursor_pos=3), "complete", "pri",
                  m.CompleteReply(req_id=r, status="ok", matches=["print"], cursor_start=0, cursor_end=3,
                                  metadata={}))
        r, _ = link.new_request()
        await ask(m.InspectRequest(req_id=r, code="len", cursor_pos=3, detail_level=0), "inspect", "len",
                  m.InspectReply(req_id=r, status="ok", found=False, data={}, metadata={}))
        r, _ = link.new_request()
        await ask(m.IsCompleteRequest(req_id=r, code="for x in y:"), "is_complete", "for x in y:",
                  m.IsCompleteReply(req_id=r, status="incomplete", indent="    "))
        r, _ = link.new_request()
        await ask(m.HistoryRequest(req_id=r, hist_access_type="tail", output=False, raw=True, session=0, start=0,
                                   stop=None, n=10, pattern="", unique=False), None, "",
                  m.HistoryReply(req_id=r, status="ok", history=[]))
        r, _ = link.new_request()
        await ask(m.CommInfoRequest(req_id=r, target_name=None), None, "", m.CommInfoReply(req_id=r, comms={}))
        r, _ = link.new_request()
        await ask(m.CommOpen(req_id=r, comm_id="w1", target_name="jupyter.widget", data={"a": 1}, metadata={},
                             buffers=[]), "comm", comm_input_text("comm_open", "w1", {"a": 1}, "jupyter.widget"),
                  None)
        r, _ = link.new_request()
        await ask(m.CommMsg(req_id=r, comm_id="w1", data={"b": [2]}, metadata={}, buffers=[]), "comm",
                  comm_input_text("comm_msg", "w1", {"b": [2]}), None)
        r, _ = link.new_request()
        await ask(m.CommClose(req_id=r, comm_id="w1", data={}, metadata={}, buffers=[]), "comm",
                  comm_input_text("comm_close", "w1", {}), None)
        # an upload: one request id from UploadStart to UploadEnd; the receipt names the %cc_upload cell
        r, q = link.new_request()
        await link.send(m.UploadStart(req_id=r, name="data", size=3, fmt="bytes", code=upload_code,
                                      execution_count=7, cell_id=None))
        await link.send(m.UploadChunk(req_id=r, data=b"abc"))
        await link.send(m.UploadEnd(req_id=r, sha256=bytes(32)))
        for kind in (m.UploadStart, m.UploadChunk, m.UploadEnd):
            assert type(await s.enclave.receive()) is kind
        info = UploadInfo(name="data", sha256=bytes(32), size=3, fmt="bytes")
        await s.enclave.send(m.AuditReceipt(req_id=r, receipt=s.sign("upload", upload_code, upload=info)))
        sent_codes.append(("upload", upload_code))
        await s.enclave.send(m.UploadReply(req_id=r, status="ok", message="data = bytes"))
        assert isinstance(await asyncio.wait_for(q.get(), 5), m.UploadReply)
        link.finish_request(r)

        async def enclave_shuts_down() -> None:
            shutdown = await s.enclave.receive()
            assert shutdown == m.Shutdown(restart=False, reason="")
            await s.enclave.send(m.AuditReceipt(req_id=0, receipt=s.signer.sign_closing(ended_ms=20)))
            await s.enclave.send(m.ShutdownReply(restart=False))

        answering = asyncio.ensure_future(enclave_shuts_down())
        await link.shutdown()
        await answering
        assert link.stop_reason is None and s.closed == ["the enclave shut down"]
        assert link.expected_receipts == ()

    s = run(env, body, redact=redact)
    report = s.report()  # the log, re-verified offline: every receipt in order, with the code the kernel sent
    assert report.status == "valid", report.findings
    receipts = [entry for _index, entry in report.receipts()]
    assert [(r.kind, r.code_sha256) for r in receipts] == [(k, code_hash(c)) for k, c in sent_codes]
    assert len(receipts) == 9 and [k for k, _c in sent_codes][-1] == "upload"
    assert [r.code for r in receipts] == ([None] * 9 if redact else [c for _k, c in sent_codes])
    assert closing_reason(report) == "shutdown"
    assert "closed cleanly (shutdown)" in report_lines(report)[0]


def test_output_after_a_receipt_gets_a_background_receipt(env: Fixture) -> None:
    """Output a cell's thread prints after the cell's receipt carries that cell's request id; the enclave signs
    it into a ``background`` receipt before the next request's receipt, and the log verifies."""
    async def body(s: Session) -> None:
        async def first(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 1)))
            await s.enclave.send(m.Stream(req_id=req_id, name="stdout", text="from a thread\n"))

        async def second(req_id: int) -> None:
            await s.enclave.send(m.AuditReceipt(req_id=req_id - 1, receipt=s.sign("background", "", count=1)))
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 2)))

        await run_cell(s, first)
        assert isinstance(await run_cell(s, second), m.ExecuteReply)
        await s.link.send(request(s.link.next_request_id))  # checks what arrived, then sends
        assert s.link.stop_reason is None and s.closed == [] and len(s.log) == 4
        assert [type(o) for o in s.outputs] == [m.Stream]
        assert [r.kind for _i, r in s.report().receipts()] == ["cell", "background", "cell"]

    run(env, body)


def test_output_after_a_receipt_without_its_background_receipt_stops_the_session(env: Fixture) -> None:
    async def body(s: Session) -> None:
        async def first(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 1)))
            await s.enclave.send(m.Stream(req_id=req_id, name="stdout", text="unlogged?\n"))

        async def second(req_id: int) -> None:  # no background receipt: straight to the next reply
            await s.enclave.send(reply(req_id))

        await run_cell(s, first)
        assert isinstance(await run_cell(s, second), EnclaveError)
        reason = await stopped(s)
        assert reason == "missing audit receipt: request 1 (background) got no receipt before the reply of request 2"

    run(env, body)


def test_output_of_a_request_older_than_the_last_receipt_stops_the_session(env: Fixture) -> None:
    """Once a later request was receipted, an earlier one's output is in no receipt: the enclave never sends
    that (it signs a background receipt before it hands in the next request)."""
    async def body(s: Session) -> None:
        async def answer(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, req_id)))

        await run_cell(s, answer)
        await run_cell(s, answer)
        await s.enclave.send(m.Stream(req_id=1, name="stdout", text="late\n"))
        reason = await stopped(s)
        assert reason == "unreceipted output: an output of request 1 arrived after the receipt of request 2"
        assert s.outputs == []

    run(env, body)


# -- audit fails closed -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("later", "before"),
    [
        (lambda r: reply(r), "the reply of request 2"),
        (lambda r: m.Stream(req_id=r, name="stdout", text="out"), "an output of request 2"),
        (lambda r: m.InputRequest(req_id=r, prompt="name? ", password=False), "an input request of request 2"),
    ],
    ids=["reply", "output", "input_request"],
)
def test_a_missing_receipt_is_revealed_by_a_later_request(
    env: Fixture, later: Callable[[int], m.Message], before: str
) -> None:
    async def body(s: Session) -> None:
        async def no_receipt(req_id: int) -> None:
            await s.enclave.send(reply(req_id))  # and no receipt

        await run_cell(s, no_receipt)
        r2, q2 = s.link.new_request()
        await s.link.send(request(r2, "y = 2"))  # the kernel cannot know yet
        assert isinstance(await s.enclave.receive(), m.ExecuteRequest)
        await s.enclave.send(later(r2))
        item = await asyncio.wait_for(q2.get(), 5)  # the waiting cell learns why, not the enclave's message
        assert isinstance(item, EnclaveError)
        reason = await stopped(s)
        assert reason == f"missing audit receipt: request 1 (cell) got no receipt before {before}"
        assert reason in str(item)
        assert s.outputs == []  # nothing of the later request reached Jupyter
        assert sent_requests(s) == [m.ExecuteRequest, m.ExecuteRequest, m.Shutdown]
        report = s.report()
        assert report.status == "valid" and closing_reason(report) == reason and report.receipts() == []

    run(env, body)


def test_a_refused_upload_without_a_receipt_is_a_missing_receipt(env: Fixture) -> None:
    """Today's enclave refuses an upload (here: a name that is not an identifier) with an error reply and no
    receipt; the kernel requires one for every outcome, and the next request reveals it is missing."""
    async def body(s: Session) -> None:
        r1, q1 = s.link.new_request()
        await s.link.send(m.UploadStart(req_id=r1, name="1bad", size=1, fmt="bytes", code="%cc_upload f 1bad",
                                        execution_count=1, cell_id=None))
        await s.link.send(m.UploadEnd(req_id=r1, sha256=bytes(32)))
        assert isinstance(await s.enclave.receive(), m.UploadStart)
        assert isinstance(await s.enclave.receive(), m.UploadEnd)
        await s.enclave.send(m.UploadReply(req_id=r1, status="error", message="refused upload '1bad'"))
        assert isinstance(await asyncio.wait_for(q1.get(), 5), m.UploadReply)
        s.link.finish_request(r1)

        async def answer(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 2)))

        got = await run_cell(s, answer)
        assert isinstance(got, EnclaveError)
        reason = await stopped(s)
        assert reason == "missing audit receipt: request 1 (upload) got no receipt before the reply of request 2"
        report = s.report()  # the later cell's (valid) receipt is kept: the closing entry chains to it
        assert report.status == "valid" and closing_reason(report) == reason
        assert [e.kind for _i, e in report.receipts()] == ["cell"]

    run(env, body)


@pytest.mark.parametrize("closing", [0, 1, None], ids=["closing-entry", "closing-entry-as-its-receipt",
                                                    "end-of-session"])
def test_a_missing_receipt_at_shutdown_leaves_the_log_unterminated(env: Fixture, closing: int | None) -> None:
    """A comm message gets no reply, only its receipt. If the enclave's closing entry (sent as such, or in place
    of the comm's receipt) or, without one, the end of the session comes instead, the kernel leaves the closing
    entry out: a valid log never hides a missing receipt. The user's Shutdown had already gone out, so the
    kernel sends nothing more."""
    async def body(s: Session) -> None:
        await send_comm(s, "a")

        async def enclave_side() -> None:
            assert await s.enclave.receive() == m.Shutdown(restart=False, reason="")
            if closing is not None:
                await s.enclave.send(m.AuditReceipt(req_id=closing, receipt=s.signer.sign_closing(ended_ms=12)))
            await s.enclave.send(m.ShutdownReply(restart=False))

        answering = asyncio.ensure_future(enclave_side())
        await asyncio.wait_for(s.link.shutdown(), 10)
        await answering
        before = "the closing entry" if closing is not None else "the end of the session"
        assert s.link.stop_reason == f"missing audit receipt: request 1 (comm) got no receipt before {before}"
        assert len(s.closed) == 1 and s.link.stop_reason in s.closed[0]
        assert sent_requests(s) == [m.CommMsg, m.Shutdown]
        report = s.report()
        assert report.status == "unterminated" and len(s.log) == 1

    run(env, body)


@pytest.mark.parametrize("how", ["replayed", "signed-twice"])
def test_a_duplicated_receipt_stops_the_session(env: Fixture, how: str) -> None:
    async def body(s: Session) -> None:
        first = receipt_bytes(s, 1)

        async def twice(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=first))
            again = first if how == "replayed" else receipt_bytes(s, 1)
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=again))

        await run_cell(s, twice)
        reason = await stopped(s)
        assert reason.startswith("extra audit receipt: the enclave sent a")
        assert "receipt for request 1, but no request awaits one" in reason
        assert sent_requests(s) == [m.ExecuteRequest, m.Shutdown]
        report = s.report()
        if how == "replayed":  # the copy fails the chain (entry.seq): not appended, the log ends before it
            assert "nor does it verify" in reason and "entry.seq" in reason
            assert report.status == "unterminated" and len(report.receipts()) == 1
        else:  # a second, valid receipt for the same request: kept (the chain goes through it), then closed
            assert report.status == "valid" and len(report.receipts()) == 2 and closing_reason(report) == reason

    run(env, body)


def test_reordered_receipts_stop_the_session(env: Fixture) -> None:
    """Two comm messages in flight; the enclave sends the second one's receipt first."""
    async def body(s: Session) -> None:
        r1 = await send_comm(s, "first")
        r2 = await send_comm(s, "second")
        second = s.sign("comm", comm_input_text("comm_msg", "c1", {"value": "second"}))
        first = s.sign("comm", comm_input_text("comm_msg", "c1", {"value": "first"}))
        await s.enclave.send(m.AuditReceipt(req_id=r2, receipt=second))
        await s.enclave.send(m.AuditReceipt(req_id=r1, receipt=first))
        reason = await stopped(s)
        assert reason.startswith("mismatched audit receipt: the receipt due next is that of request 1 (comm), "
                                 "but it is for request 2; it covers other code")
        assert "its kind" not in reason
        assert sent_requests(s) == [m.CommMsg, m.CommMsg, m.Shutdown]
        report = s.report()  # both receipts verify and are kept in arrival order; the closing entry says why
        assert report.status == "valid" and closing_reason(report) == reason
        assert report_lines(report)[0].endswith(f"the session was closed for this reason: {reason}")
        assert [e.code_sha256 for _i, e in report.receipts()] == [
            code_hash(comm_input_text("comm_msg", "c1", {"value": v})) for v in ("second", "first")]

    run(env, body)


@pytest.mark.parametrize(
    ("forge", "wrong"),
    [
        (lambda s, r: m.AuditReceipt(req_id=r, receipt=s.sign("cell", "import os")),
         "but it covers other code (code hash"),
        (lambda s, r: m.AuditReceipt(req_id=r, receipt=s.sign("silent", "x = 1")), "but its kind is 'silent'"),
        (lambda s, r: m.AuditReceipt(req_id=r + 6, receipt=s.sign("cell", "x = 1")), "but it is for request 7"),
    ],
    ids=["other-code", "other-kind", "other-request-id"],
)
@pytest.mark.parametrize("redact", [False, True], ids=["code", "redacted"])
def test_a_foreign_receipt_with_a_valid_signature_stops_the_session(
    env: Fixture, forge: Callable[[Session, int], m.AuditReceipt], wrong: str, redact: bool
) -> None:
    async def body(s: Session) -> None:
        async def answer(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(forge(s, req_id))

        got = await run_cell(s, answer)
        assert isinstance(got, m.ExecuteReply)  # the reply itself was already delivered
        reason = await stopped(s)
        assert reason.startswith("mismatched audit receipt: the receipt due next is that of request 1 (cell), ")
        assert wrong in reason and reason.count("; ") == 0  # only what was wrong is named
        assert sent_requests(s) == [m.ExecuteRequest, m.Shutdown]
        report = s.report()  # the foreign receipt verifies: kept, so the closing entry with the reason chains
        assert report.status == "valid" and closing_reason(report) == reason and len(report.receipts()) == 1

    run(env, body, redact=redact)


def test_a_closing_entry_without_the_kernels_reason_is_left_out(env: Fixture) -> None:
    """After a stop the closing entry must state the kernel's reason; one that says plain "shutdown" would make
    the log look like an ordinary session, so the kernel leaves it out and the log stays unterminated."""
    async def body(s: Session) -> None:
        async def answer(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=s.sign("cell", "import os")))

        await run_cell(s, answer)
        reason = await stopped(s, closing="shutdown")
        assert "covers other code" in reason
        report = s.report()
        assert report.status == "unterminated" and len(report.receipts()) == 1

    run(env, body)


def test_a_receipt_when_the_session_keeps_no_log_stops_it(env: Fixture) -> None:
    async def body(s: Session) -> None:
        async def answer(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 1)))

        await run_cell(s, answer)
        reason = await stopped(s, closing=None)
        assert reason == ("extra audit receipt: the enclave sent a receipt for request 1, but this session keeps "
                          "no log")
        assert sent_requests(s) == [m.ExecuteRequest, m.Shutdown]
        assert s.log == []  # no log was ever written

    run(env, body, audit=False)


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        (lambda r: r[:-1] + bytes([r[-1] ^ 1]), "entry.signature"),  # last byte: inside the signature
        (lambda r: b"\x92\x01\x02", "entry.decode"),  # not a payload map
    ],
    ids=["flipped-signature", "garbage"],
)
def test_a_receipt_that_does_not_verify_stops_the_session(
    env: Fixture, tamper: Callable[[bytes], bytes], check: str
) -> None:
    async def body(s: Session) -> None:
        async def good(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 1)))

        async def bad(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=tamper(receipt_bytes(s, 2))))

        await run_cell(s, good)
        got = await run_cell(s, bad)
        assert isinstance(got, m.ExecuteReply)  # the reply itself was already delivered
        reason = await stopped(s)
        assert reason.startswith("invalid audit receipt for request 2: ") and check in reason
        assert sent_requests(s) == [m.ExecuteRequest, m.ExecuteRequest, m.Shutdown]
        report = s.report()  # opening and the good receipt; nothing of the bad one, so no closing entry either
        assert report.status == "unterminated" and len(s.log) == 2

    run(env, body)


def test_a_request_sent_right_after_a_bad_receipt_arrived_is_refused(env: Fixture) -> None:
    """Even a task that sends before the scheduled check has run (here: the one woken by the reply, in the same
    step) finds the bad receipt checked first: nothing more goes to that enclave."""

    async def body(s: Session) -> None:
        req_id, q = s.link.new_request()
        await s.link.send(request(req_id))
        assert isinstance(await s.enclave.receive(), m.ExecuteRequest)
        outcome: list[str] = []

        async def next_cell_at_once() -> None:
            await q.get()
            try:
                await s.link.send(request(s.link.next_request_id))  # no await before this: same step
                outcome.append("sent")
            except EnclaveError as exc:
                outcome.append(str(exc))

        task = asyncio.ensure_future(next_cell_at_once())
        bad = receipt_bytes(s, 1)
        await s.enclave.send(reply(req_id))
        await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=bad[:-1] + bytes([bad[-1] ^ 1])))
        await asyncio.wait_for(task, 5)
        [said] = outcome
        assert "invalid audit receipt" in said and "entry.signature" in said
        await stopped(s)
        assert sent_requests(s) == [m.ExecuteRequest, m.Shutdown]
        assert len(s.log) == 1  # the opening only

    run(env, body)


def test_the_kernel_shows_the_stop_on_the_badge_and_fails_every_later_cell(env: Fixture) -> None:
    """ConfidentialKernel on a link that stopped: the badge says ENCLAVE STOPPED with the reason, and a later
    cell is not sent but fails with a message naming what was wrong."""
    from cc_kernel.kernel import badge
    from cc_kernel.kernel.kernel import ConfidentialKernel

    kernel = ConfidentialKernel.__new__(ConfidentialKernel)  # no Jupyter session: only these two paths run
    kernel.session_hex = "00" * 16
    kernel._badge_state = badge.BadgeState(state="simulation", session_id=kernel.session_hex, mode="simulation")
    kernel._badge_shown, kernel._parents, kernel._result, kernel._failure = False, {}, None, None
    kernel._stdin_cancel = threading.Event()
    published: list[tuple[str, dict[str, object]]] = []
    kernel.send_response = lambda _socket, msg_type, content: published.append((msg_type, content))  # type: ignore
    kernel.get_parent = lambda _channel="shell": {}  # type: ignore[method-assign]

    async def body(s: Session) -> None:
        kernel._link = s.link

        async def answer(req_id: int) -> None:
            await s.enclave.send(reply(req_id))
            await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=s.sign("silent", "x = 1")))

        await run_cell(s, answer)
        await asyncio.wait_for(s.closed_event.wait(), 5)
        kernel._enclave_closed(s.closed[0])
        reason = s.link.stop_reason
        assert reason is not None and "its kind is 'silent'" in reason
        shown = badge.render(kernel._badge_state)["text/plain"]
        assert kernel._badge_state.state == "stopped" and "ENCLAVE STOPPED" in shown and reason in shown
        result = await kernel._forward_execute("print('later')", False, True, {}, False, None, kind="cell")
        assert result["status"] == "error" and result["ename"] == "AuditError"
        [(msg_type, content)] = published
        traceback = "\n".join(content["traceback"])  # type: ignore[arg-type]
        assert msg_type == "error" and "SESSION STOPPED" in traceback and reason in traceback
        await stopped(s)
        assert sent_requests(s) == [m.ExecuteRequest, m.Shutdown]  # the later cell was never sent

    run(env, body)
