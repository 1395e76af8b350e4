"""The kernel's EnclaveLink and the enclave's audit receipts, over a real attested channel (an in-process enclave
answering the handshake with simulated evidence; the receipts are really signed with its attested audit key and
really checked by a LogWriter opened on the attestation result):

* a good receipt is checked and appended without waiting for another request, and never before the reply
  that came with it has reached its request;
* a receipt that does not verify stops the session: the reason names the failed check, no further request is
  sent, and nothing of the bad receipt reaches the log.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.audit.format import OutputDigester
from cc_kernel.audit.receipts import LogWriter, ReceiptSigner, make_opening
from cc_kernel.channel.transport import FramedChannel
from cc_kernel.enclave.evidence import SimulatedSource
from cc_kernel.errors import EnclaveError
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
    events: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


async def open_session(authority: SimulationAuthority, policy: Policy, anchors: TrustAnchors) -> Session:
    enclave = InProcessEnclave(SimulatedSource(authority=authority, measurement=enclave_measurement()))
    kernel_sock, enclave_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = asyncio.ensure_future(enclave.accept(enclave_sock))
    log: list[bytes] = []
    writer = LogWriter(log.append)
    events: list[str] = []
    closed: list[str] = []

    def on_receipt(msg: m.AuditReceipt) -> None:
        events.append(f"receipt {msg.req_id}")
        writer.append(msg.receipt)

    link = PairLink(kernel_sock, policy=policy, simulation_anchors=anchors, on_output=lambda _msg: None,
                    on_closed=closed.append, on_receipt=on_receipt)
    attested = await link.start(timeout=10)
    channel = await server
    peer = attested.peer
    opening = make_opening(result=peer.result, envelope_bytes=peer.envelope_bytes, tls_spki=peer.tls_spki,
                           policy=policy, opened_ms=1, versions={"test": "1"})
    signer = ReceiptSigner(enclave.audit_key, peer.result.session_id, opening_hash=writer.open(opening))
    return Session(link, channel, signer, log, events, closed)


def reply(req_id: int) -> m.ExecuteReply:
    return m.ExecuteReply(req_id=req_id, status="ok", execution_count=req_id, user_expressions={}, payload=[],
                          ename="", evalue="", traceback=[])


def request(req_id: int) -> m.ExecuteRequest:
    return m.ExecuteRequest(req_id=req_id, code="x = 1", silent=False, store_history=True, user_expressions={},
                            allow_stdin=False, execution_count=req_id, cell_id=None, kind="cell")


def receipt_bytes(s: Session, count: int) -> bytes:
    return s.signer.sign_receipt(kind="cell", execution_count=count, code="x = 1", outputs=OutputDigester().result(),
                                 status="ok", started_ms=10, ended_ms=11)


async def run_cell(s: Session, answer: Callable[[int], Awaitable[None]]) -> m.Message | BaseException:
    """The kernel sends a request; the enclave answers it with ``answer(req_id)``; returns what the request got."""
    req_id, q = s.link.new_request()

    async def wait_for_reply() -> m.Message | BaseException:  # as the kernel's do_execute waits
        got = await q.get()
        s.events.append(f"reply {req_id}")
        return got

    waiter = asyncio.ensure_future(wait_for_reply())
    await s.link.send(request(req_id))
    assert isinstance(await s.enclave.receive(), m.ExecuteRequest)
    await answer(req_id)
    got = await asyncio.wait_for(waiter, 5)
    s.link.finish_request(req_id)
    return got


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


@pytest.fixture(scope="module")
def policy(sim_policy_path: os.PathLike[str]) -> Policy:
    with open(sim_policy_path, "rb") as fh:
        return load_policy(fh.read(), source=str(sim_policy_path))


def test_a_receipt_is_logged_after_its_reply_without_another_request(
    sim_authority: SimulationAuthority, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    async def main() -> None:
        s = await open_session(sim_authority, policy, sim_anchors)
        try:
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
            assert s.events == ["reply 1", "receipt 1", "reply 2", "receipt 2", "reply 3", "receipt 3"]
            assert s.closed == []
        finally:
            await s.link.kill()
            await s.enclave.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        (lambda r: r[:-1] + bytes([r[-1] ^ 1]), "entry.signature"),  # last byte: inside the signature
        (lambda r: b"\x92\x01\x02", "entry.decode"),  # not a payload map
    ],
    ids=["flipped-signature", "garbage"],
)
def test_a_receipt_that_does_not_verify_stops_the_session(
    sim_authority: SimulationAuthority, policy: Policy, sim_anchors: TrustAnchors,
    tamper: Callable[[bytes], bytes], check: str,
) -> None:
    async def main() -> None:
        s = await open_session(sim_authority, policy, sim_anchors)
        try:
            async def good(req_id: int) -> None:
                await s.enclave.send(reply(req_id))
                await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=receipt_bytes(s, 1)))

            async def bad(req_id: int) -> None:
                await s.enclave.send(reply(req_id))
                await s.enclave.send(m.AuditReceipt(req_id=req_id, receipt=tamper(receipt_bytes(s, 2))))

            await run_cell(s, good)
            await until(lambda: len(s.log) == 2)
            got = await run_cell(s, bad)
            assert isinstance(got, m.ExecuteReply)  # the reply itself was already delivered
            await until(lambda: bool(s.closed))
            [reason] = s.closed
            assert "invalid audit receipt" in reason and check in reason and "session stopped" in reason
            assert len(s.log) == 2  # opening and the good receipt; nothing of the bad one
            with pytest.raises(EnclaveError, match="invalid audit receipt"):
                await s.link.send(request(s.link.next_request_id))  # no further request goes out
            _req_id, q = s.link.new_request()  # and a new request learns at once why
            item = await asyncio.wait_for(q.get(), 1)
            assert isinstance(item, EnclaveError) and "invalid audit receipt" in str(item)
        finally:
            await s.link.kill()
            await s.enclave.aclose()

    asyncio.run(main())


def test_a_request_sent_right_after_a_bad_receipt_arrived_is_refused(
    sim_authority: SimulationAuthority, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """Even a task that sends before the scheduled check has run (here: the one woken by the reply, in the same
    step) finds the bad receipt checked first: nothing more goes to that enclave."""

    async def main() -> None:
        s = await open_session(sim_authority, policy, sim_anchors)
        try:
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
            assert len(s.log) == 1  # the opening only
        finally:
            await s.link.kill()
            await s.enclave.aclose()

    asyncio.run(main())
