"""Monitor: sealed datasets (``%cc_dataset``) — the key release over the kernel's relay, decryption, the rules.

Layer: runs inside the TEE, in the monitor (never in the worker). The kernel streams a sealed file as an upload
with ``fmt = "ccdata"``; the monitor, not the kernel and not the worker:

1. reads the header from the stream (``dataset.format.Unsealer``) and asks the kernel to relay a TCP connection
   to the broker the header names (``RelayOpen``); over it, the monitor runs its own TLS 1.3 connection to the
   broker, authenticated by the broker key the header pins (``broker.client.connect_broker``), and the release
   exchange (``release_exchange``): its evidence binds the broker's nonce, the dataset and a fresh release key,
   so the data key is readable only here (the kernel carries ciphertext and is trusted by neither end);
2. opens the owner's log on the same connection (``OwnerLog``; docs/dataset.md §3.6), then tells the kernel to
   send the rest (``DatasetKeyed``), decrypts each chunk once it authenticated and hands the worker only
   plaintext, as an ordinary upload in the format the header names (the worker binds it as for
   ``%cc_upload``), then records the dataset as open under the owner's rules and reports it (``DatasetInfo``);
3. enforces those rules on every later request (``refusal``): under ``approved-code`` only cells whose code
   digest (``audit.format.code_hash``, what ``cc-kernel data approve`` prints) the owner approved reach the
   worker; completions, inspections, comm messages and plain uploads are refused too (they run or change code
   the owner did not approve); an approved-code dataset is bound only into a session in which no unapproved
   code ran before (``rules.fresh_session``);
4. signs every receipted request into each open dataset's owner log and holds the next request until the
   broker acknowledged it (``hold``); a lost owner's log makes ``refusal`` refuse everything.

Invariants: the kernel's honest order is the first chunk (holding the header), then, after ``DatasetKeyed``,
the rest; ciphertext sent before the key was released is buffered up to ``MAX_AHEAD`` and refused beyond; a
sealed file that fails any check (``TamperedDataset``), a refusal by the broker, a wrong broker key or a broken
relay ends the upload with an error reply naming the check, and nothing of the dataset is bound (the worker gets
no ``UploadEnd``); the data key and the sealed bytes never reach the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.audit.format import code_hash
from cc_kernel.audit.receipts import ReceiptSigner
from cc_kernel.broker.client import connect_broker, release_exchange
from cc_kernel.broker.wire import receive, send
from cc_kernel.crypto.keys import AuditKey
from cc_kernel.dataset.format import NEED_DATA, ChunkData, DatasetHeader, Unsealer
from cc_kernel.dataset.release import LogAck, LogEntry, LogOpen, LogOpened, ReleasedKey, ReleaseRefusal
from cc_kernel.dataset.rules import Rules
from cc_kernel.enclave.evidence import EvidenceSource
from cc_kernel.errors import CCKernelError, ConnectError, DatasetError
from cc_kernel.protocol import messages as m

log = logging.getLogger("cc_kernel.enclave")

#: Sealed bytes the monitor buffers while it waits for the key (an honest kernel sends only the header first).
MAX_AHEAD: Final = 64 * 1024 * 1024
#: Largest plaintext piece handed to the worker in one message.
WORKER_PIECE: Final = 1024 * 1024
#: Seconds the broker has for each message of the release exchange (the relay included).
RELEASE_TIMEOUT: Final = 30.0
#: Seconds the owner's broker has to acknowledge a log entry before the session stops using its dataset.
ACK_TIMEOUT: Final = 30.0
#: Characters of the kernel's reason for ending a relay that the monitor quotes to the user.
RELAY_END_SHOWN: Final = 400

#: ``reply(req, msg, status)``: the monitor forwards ``msg`` (None: none), receipts ``req`` and goes on.
Reply = Callable[[Any, m.Message | None, str | None], Awaitable[None]]
Send = Callable[[m.Message], Awaitable[None]]
#: ``emit(req, output)``: an output the monitor shows for ``req`` (charged, digested, forwarded).
Emit = Callable[[Any, m.Message], Awaitable[None]]


@dataclass(frozen=True)
class OpenDataset:
    """A dataset bound in this session: the name it has there, what its header says and the owner's rules."""

    name: str
    owner: str
    dataset_id: bytes
    broker: str
    rules: Rules
    session: int
    plaintext_size: int
    owner_log: OwnerLog | None = field(default=None, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """JSON for the badge (``DatasetInfo``): name, owner, id, broker, mode, expiry, release number, the state
        of the owner's log."""
        log_state = "none" if self.owner_log is None else (
            f"lost: {self.owner_log.lost}" if self.owner_log.lost is not None else "open")
        return {
            "name": self.name, "owner": self.owner, "dataset_id": self.dataset_id.hex(), "broker": self.broker,
            "mode": self.rules.mode, "not_after": self.rules.not_after.isoformat(), "session": self.session,
            "max_sessions": self.rules.max_sessions, "rules_sha256": self.rules.sha256.hex(),
            "size": self.plaintext_size, "owner_log": log_state,
        }


class OwnerLog:
    """The owner's log of one open dataset: the monitor's TLS connection to the owner's broker (through the
    kernel's relay), kept open after the release, and the signer of its entries (the session's audit key,
    the log's own session id). Entries are sent one at a time: the monitor hands the worker no request while
    an entry is unacknowledged (``waiting``); a broken connection, a refused entry or an acknowledgement later
    than ``ACK_TIMEOUT`` makes the log ``lost``, after which nothing more runs in the session."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, signer: ReceiptSigner,
                 *, on_change: Callable[[], Awaitable[None]]) -> None:
        self._reader = reader
        self._writer = writer
        self.signer = signer
        self._on_change = on_change
        self.sent = 1  # entries in the broker's file once all are acknowledged (the opening one included)
        self.acked = 1
        self.lost: str | None = None
        self._acked = asyncio.Event()
        self._task = asyncio.create_task(self._acks())
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        """An entry is on its way and not acknowledged yet."""
        return self.lost is None and self.acked < self.sent

    async def append(self, entry: bytes) -> None:
        """Send one signed entry (nothing if the log is lost)."""
        if self.lost is not None:
            return
        self.sent += 1
        self._acked.clear()
        try:
            await send(self._writer, LogEntry(receipt=entry))
        except (CCKernelError, OSError) as exc:
            await self._lose(f"the connection to the owner's broker broke: {exc}")
            return
        expected = self.sent
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(ACK_TIMEOUT, lambda: self._late(expected))

    def _late(self, expected: int) -> None:
        if self.lost is None and self.acked < expected:
            task = asyncio.ensure_future(self._lose(
                f"the owner's broker did not acknowledge a log entry within {ACK_TIMEOUT:g} s"))
            task.add_done_callback(lambda t: t.exception())

    async def _acks(self) -> None:
        try:
            while True:
                msg = await receive(self._reader, timeout=None)
                if isinstance(msg, LogAck) and self.acked < msg.count <= self.sent:
                    self.acked = msg.count
                    if self.acked == self.sent:
                        self._acked.set()
                    await self._on_change()
                elif isinstance(msg, ReleaseRefusal):
                    await self._lose(f"the owner's broker refused a log entry: {msg.message}")
                    return
                else:
                    await self._lose(f"the owner's broker answered a log entry with {type(msg).__name__}")
                    return
        except (CCKernelError, OSError) as exc:
            await self._lose(f"the connection to the owner's broker was lost: {exc}")

    async def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        log.error("owner's log lost: %s", reason)
        self._acked.set()
        await self._on_change()

    async def close(self, *, ended_ms: int, reason: str, timeout: float = 5.0) -> None:
        """Sign and send the closing entry, wait (at most ``timeout``) for its acknowledgement, disconnect."""
        if self.lost is None and self.signer.started and not self.signer.closed:
            await self.append(self.signer.sign_closing(ended_ms=ended_ms, reason=reason[:1000]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), timeout)
        if self._timer is not None:
            self._timer.cancel()
        self._task.cancel()
        await _close(self._writer)


@dataclass
class _Pending:
    """The sealed upload in the monitor's hands (at most one: the monitor hands in one request at a time)."""

    req: Any
    start: m.UploadStart
    unsealer: Unsealer = field(default_factory=Unsealer)
    header: DatasetHeader | None = None
    released: ReleasedKey | None = None
    release_task: asyncio.Task[None] | None = None
    owner_log: OwnerLog | None = None
    relay_writer: asyncio.StreamWriter | None = None
    relay_task: asyncio.Task[None] | None = None
    #: why the kernel ended the relay, if it said (untrusted: shown to the user as the kernel's words)
    relay_end: str = ""
    ahead: int = 0
    worker_started: bool = False
    ended: bool = False
    done: bool = False


class Datasets:
    """The monitor's datasets: one pending sealed upload, the open datasets and their rules."""

    def __init__(self, *, source: EvidenceSource, spki_der: bytes, audit_key: AuditKey, to_kernel: Send,
                 to_worker: Send, reply: Reply, emit: Emit, resume: Callable[[], Awaitable[None]]) -> None:
        self._source = source
        self._spki = spki_der
        self._audit_key = audit_key
        self._resume = resume
        self._requester = hashlib.sha256(spki_der).digest()
        self._to_kernel = to_kernel
        self._to_worker = to_worker
        self._reply = reply
        self._emit = emit
        self._pending: _Pending | None = None
        self.open: list[OpenDataset] = []
        #: Digests of code that ran in this session before and while datasets were open (cells, silent ones).
        self._ran: set[bytes] = set()
        #: Something other than a cell ran user-controlled input (a comm, a plain upload).
        self._ran_other = False
        self._announced_lost: tuple[str, ...] = ()
        #: The monitor's ends of the relays to brokers, by request id (they outlive the upload: owner's logs).
        self._relay_writers: dict[int, asyncio.StreamWriter] = {}
        self._relay_tasks: dict[int, asyncio.Task[None]] = {}

    # -- the rules, on every request ----------------------------------------------------------------------

    def _approved_code(self) -> list[OpenDataset]:
        return [d for d in self.open if d.rules.mode == "approved-code"]

    def refusal(self, msg: m.Message) -> str | None:
        """Why the open datasets' rules forbid handing ``msg`` to the worker, or None (then it is noted as run)."""
        for d in self.open:
            if d.owner_log is not None and d.owner_log.lost is not None:
                return (f"the owner's log of dataset {d.name!r} ({d.owner}) is lost ({d.owner_log.lost}): nothing "
                        "more runs in this session, as every request must be logged to the data owner while its "
                        "dataset is open. Restart the kernel (and open the dataset again) to go on")
        strict = self._approved_code()
        if isinstance(msg, m.ExecuteRequest):
            digest = code_hash(msg.code)
            unapproved = [d for d in strict if not d.rules.approves(digest)]
            if unapproved:
                names = ", ".join(f"{d.name!r} ({d.owner})" for d in unapproved)
                return (f"refused by the data owner's rules: dataset {names} is open in approved-code mode and "
                        f"this cell's code digest is not approved. Send its owner the digest {digest.hex()} "
                        "(`cc-kernel data approve NOTEBOOK.ipynb` prints it) to have the cell approved")
            self._ran.add(digest)
            return None
        if isinstance(msg, m.UploadStart) and msg.fmt == "ccdata":
            return None
        if strict and isinstance(msg, m.CompleteRequest | m.InspectRequest | m.CommOpen | m.CommMsg |
                                  m.CommClose | m.UploadStart):
            names = ", ".join(repr(d.name) for d in strict)
            return (f"refused by the data owner's rules: dataset {names} is open in approved-code mode, where "
                    f"only approved cells run ({msg.TYPE} is not one)")
        if isinstance(msg, m.CommOpen | m.CommMsg | m.CommClose | m.UploadStart):
            self._ran_other = True
        return None

    async def refuse(self, req: Any, reason: str) -> None:
        """Answer ``req`` with an error naming ``reason``; it never reaches the worker (it is receipted)."""
        msg = req.msg
        if isinstance(msg, m.ExecuteRequest):
            if not msg.silent:
                await self._emit(req, m.Error(req_id=req.req_id, ename="DatasetRules", evalue=reason,
                                              traceback=[f"DatasetRules: {reason}"]))
            await self._reply(req, m.ExecuteReply(
                req_id=req.req_id, status="error", execution_count=msg.execution_count, user_expressions={},
                payload=[], ename="DatasetRules", evalue=reason, traceback=[f"DatasetRules: {reason}"]), None)
        elif isinstance(msg, m.CompleteRequest):
            await self._reply(req, m.CompleteReply(req_id=req.req_id, status="error", matches=[],
                                                   cursor_start=msg.cursor_pos, cursor_end=msg.cursor_pos,
                                                   metadata={}), None)
        elif isinstance(msg, m.InspectRequest):
            await self._reply(req, m.InspectReply(req_id=req.req_id, status="error", found=False,
                                                  data={"text/plain": reason}, metadata={}), None)
        elif isinstance(msg, m.UploadStart):
            await self._reply(req, m.UploadReply(req_id=req.req_id, status="error", message=reason), None)
        else:
            await self._reply(req, None, "error")

    async def announce(self) -> None:
        """Tell the kernel which datasets are open and in what state (``DatasetInfo``, for the badge)."""
        with contextlib.suppress(CCKernelError, OSError):
            await self._to_kernel(m.DatasetInfo(datasets=[d.describe() for d in self.open]))

    def hold(self) -> bool:
        """True while an owner's log entry is unacknowledged: the next request waits (``resume`` is called)."""
        return any(d.owner_log is not None and d.owner_log.waiting for d in self.open)

    async def receipt(self, fields: dict[str, Any]) -> None:
        """Sign a request's receipt into every open dataset's owner log (``ReceiptSigner.sign_receipt`` fields;
        the code is never redacted there: the owner's log is for the owner)."""
        for d in self.open:
            owner_log = d.owner_log
            if owner_log is None or owner_log.lost is not None or owner_log.signer.closed:
                continue
            await owner_log.append(owner_log.signer.sign_receipt(**fields, redact_code=False))

    async def close_logs(self, *, ended_ms: int, reason: str) -> None:
        """Close every open dataset's owner log with ``reason`` (the session ends)."""
        for d in self.open:
            if d.owner_log is not None:
                await d.owner_log.close(ended_ms=ended_ms, reason=reason)

    # -- a sealed upload ----------------------------------------------------------------------------------

    def owns(self, req: Any) -> bool:
        """``req`` is the sealed upload in hand."""
        return self._pending is not None and self._pending.req is req

    async def start(self, req: Any, msg: m.UploadStart) -> None:
        """A sealed upload begins (the monitor checked its name and size): nothing reaches the worker yet."""
        await self._drop()
        self._pending = _Pending(req=req, start=msg)

    async def part(self, req: Any, msg: m.UploadChunk | m.UploadEnd) -> None:
        """The next sealed bytes (the monitor counted and hashed them), or their end (its digest checked)."""
        p = self._pending
        if p is None or p.req is not req or p.done:
            return
        try:
            if isinstance(msg, m.UploadChunk):
                if p.released is None:
                    p.ahead += len(msg.data)
                    if p.ahead > MAX_AHEAD:
                        raise DatasetError(
                            f"the kernel sent more than {MAX_AHEAD} sealed bytes before the key was released",
                            check="dataset.ahead")
                p.unsealer.feed(msg.data)
                await self._drain(p)
            else:
                p.ended = True
                await self._finish(p)
        except CCKernelError as exc:
            await self._fail(p, str(exc))

    async def _drain(self, p: _Pending) -> None:
        while True:
            event = p.unsealer.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, DatasetHeader):
                p.header = event
                await self._begin_release(p, event)
            elif isinstance(event, ChunkData):
                await self._hand_in(p, event)

    async def _hand_in(self, p: _Pending, chunk: ChunkData) -> None:
        header = p.header
        assert header is not None
        start = p.start
        if not p.worker_started:
            p.worker_started = True
            await self._to_worker(m.UploadStart(
                req_id=start.req_id, name=start.name, size=header.plaintext_size, fmt=header.format,
                code=start.code, execution_count=start.execution_count, cell_id=start.cell_id))
        if len(chunk.data) <= WORKER_PIECE:  # the CLI's 1 MiB chunks: handed on as decrypted, no copy
            await self._to_worker(m.UploadChunk(req_id=start.req_id, data=chunk.data))
            return
        view = memoryview(chunk.data)
        for i in range(0, len(view), WORKER_PIECE):
            await self._to_worker(m.UploadChunk(req_id=start.req_id, data=bytes(view[i : i + WORKER_PIECE])))

    async def _finish(self, p: _Pending) -> None:
        if p.ended and p.header is None:
            p.unsealer.end()  # raises TamperedDataset: the file ends inside its header
        if not p.ended or p.released is None or p.done:
            return
        p.unsealer.end()  # raises TamperedDataset for a file cut short
        p.done = True
        # the dataset's identity, not a digest of its plaintext: an analyst who could read one could confirm a
        # guess of the whole dataset, outside the owner's rules (the worker shows no digest; the monitor's
        # receipt holds the sealed file's)
        await self._to_worker(m.UploadEnd(req_id=p.start.req_id, sha256=p.unsealer.header_sha256))

    async def _fail(self, p: _Pending, reason: str) -> None:
        if p.done:
            return
        p.done = True
        log.warning("dataset upload %d refused: %s", p.start.req_id, reason)
        if p.owner_log is not None:
            with contextlib.suppress(CCKernelError, OSError):
                await p.owner_log.close(ended_ms=_now_ms(), reason=f"the dataset was not opened: {reason}")
        await self._close_relay(p, reason)
        await self._reply(p.req, m.UploadReply(req_id=p.start.req_id, status="error", message=(
            f"the sealed dataset was not opened, nothing was bound: {reason}")[: m.MAX_REASON]), None)

    async def bound(self, req: Any, reply: m.UploadReply) -> m.UploadReply:
        """The worker answered the sealed upload: record the dataset as open (if bound) and say so."""
        p = self._pending
        if p is None or p.req is not req:
            return reply
        self._pending = None
        if reply.status != "ok" or p.released is None or p.header is None:
            if p.owner_log is not None:
                with contextlib.suppress(CCKernelError, OSError):
                    await p.owner_log.close(ended_ms=_now_ms(), reason=f"the worker did not bind it: {reply.message}")
            await self._close_relay(p, "")
            return reply
        dataset = OpenDataset(
            name=p.start.name, owner=p.header.owner, dataset_id=p.header.dataset_id, broker=p.header.broker,
            rules=p.released.rules, session=p.released.session, plaintext_size=p.header.plaintext_size,
            owner_log=p.owner_log)
        self.open = [d for d in self.open if d.name != dataset.name] + [dataset]
        await self.announce()
        rules = dataset.rules
        ours = (f"; dataset of {dataset.owner!r} under the owner's rules: mode {rules.mode}, release "
                f"{dataset.session} of {rules.max_sessions}, until {rules.not_after.isoformat()}")
        return m.UploadReply(req_id=reply.req_id, status="ok", message=(  # ours last, whatever the worker wrote
            reply.message[: max(0, m.MAX_REASON - len(ours))] + ours)[: m.MAX_REASON])

    # -- the release, over the kernel's relay ---------------------------------------------------------------

    async def _begin_release(self, p: _Pending, header: DatasetHeader) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        theirs.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=theirs)
        p.relay_writer = self._relay_writers[p.start.req_id] = writer
        p.relay_task = self._relay_tasks[p.start.req_id] = asyncio.create_task(self._relay_out(p, reader))
        await self._to_kernel(m.RelayOpen(req_id=p.start.req_id, address=header.broker))
        p.release_task = asyncio.create_task(self._release(p, header, ours))

    async def _relay_out(self, p: _Pending, reader: asyncio.StreamReader) -> None:
        """The monitor's TLS bytes to the kernel, which carries them to the broker."""
        req_id = p.start.req_id
        with contextlib.suppress(CCKernelError, OSError):
            while data := await reader.read(64 * 1024):
                await self._to_kernel(m.RelayData(req_id=req_id, data=data))

    async def relay(self, msg: m.RelayData | m.RelayEnd) -> None:
        """Bytes from the broker (or its end), carried by the kernel: into the monitor's TLS connection."""
        writer = self._relay_writers.get(msg.req_id)
        if writer is None:
            return  # a relay that ended already: late bytes are dropped
        p = self._pending
        if isinstance(msg, m.RelayEnd) and msg.reason and p is not None and p.start.req_id == msg.req_id:
            p.relay_end = msg.reason
        with contextlib.suppress(OSError):
            if isinstance(msg, m.RelayData):
                writer.write(msg.data)
                await writer.drain()
            elif writer.can_write_eof():
                writer.write_eof()

    async def _release(self, p: _Pending, header: DatasetHeader, sock: socket.socket) -> None:
        async def collect(report_data: bytes, release_pub: bytes, dataset_id: bytes, nonce: bytes) -> bytes:
            env = self._source.collect(report_data, audit_pub=release_pub, session_id=dataset_id, nonce=nonce)
            return encode_envelope(env)

        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await connect_broker(header.broker, header, timeout=RELEASE_TIMEOUT, sock=sock)
            released = await release_exchange(
                reader, writer, header, p.unsealer.header_sha256, collect=collect,
                requester_spki_sha256=self._requester, timeout=RELEASE_TIMEOUT)
            if not p.done:
                unapproved = (self.unapproved_before(released.rules) if released.rules.mode == "approved-code"
                              else [])
                if unapproved:
                    raise DatasetError(
                        "its owner's rules (approved-code) allow it only into a session in which no unapproved "
                        f"code ran before, and this one ran {', '.join(unapproved)}: restart the kernel and open "
                        "the dataset first", check="rules.fresh_session")
                p.owner_log = await self._open_owner_log(reader, writer, released)
        except (CCKernelError, OSError) as exc:
            if writer is not None:
                await _close(writer)
            sock.close()
            # the TLS connection never came up and the kernel said why: its words, quoted (it is not trusted)
            why = (f"{exc}; the kernel ended the relay saying {p.relay_end[:RELAY_END_SHOWN]!r}"
                   if p.relay_end and isinstance(exc, ConnectError) else str(exc))
            await self._fail(p, f"the owner's broker did not release the key: {why}")
            return
        except asyncio.CancelledError:
            if writer is not None:
                writer.close()
            sock.close()
            raise
        if p.done:
            if p.owner_log is not None:
                await p.owner_log.close(ended_ms=_now_ms(), reason="the dataset was not opened")
            return
        p.released = released
        p.unsealer.set_key(released.data_key)
        await self._to_kernel(m.DatasetKeyed(req_id=p.start.req_id))
        try:
            await self._drain(p)
            await self._finish(p)
        except CCKernelError as exc:
            await self._fail(p, str(exc))

    async def _open_owner_log(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              released: ReleasedKey) -> OwnerLog:
        """Open the owner's log on the release connection: evidence binding this monitor's TLS and audit keys,
        the broker's nonce and a fresh log session id, as a session's start-up evidence does."""
        session_id = os.urandom(16)
        audit_pub = self._audit_key.public_bytes
        env = self._source.collect(
            expected_report_data(tls_spki=self._spki, audit_pub=audit_pub, nonce=released.nonce,
                                 session_id=session_id),
            audit_pub=audit_pub, session_id=session_id, nonce=released.nonce)
        await send(writer, LogOpen(session_id=session_id, tls_spki=self._spki, audit_pub=audit_pub,
                                   evidence=encode_envelope(env)))
        reply = await receive(reader, timeout=RELEASE_TIMEOUT)
        if isinstance(reply, ReleaseRefusal):
            raise DatasetError(f"the broker refused the owner's log: {reply.message}", check=reply.check)
        if not isinstance(reply, LogOpened):
            raise DatasetError(f"the broker answered the log's opening with {type(reply).__name__}",
                               check="log.open")
        signer = ReceiptSigner(self._audit_key, session_id, opening_hash=reply.opening_hash)
        return OwnerLog(reader, writer, signer, on_change=self._log_changed)

    async def _log_changed(self) -> None:
        """An owner's log was acknowledged or lost: a lost one changes the badge; either may free the queue."""
        if any(d.owner_log is not None and d.owner_log.lost is not None for d in self.open):
            lost = tuple(d.name for d in self.open if d.owner_log is not None and d.owner_log.lost is not None)
            if lost != self._announced_lost:
                self._announced_lost = lost
                await self.announce()
        await self._resume()

    async def _close_relay(self, p: _Pending, reason: str) -> None:
        writer, p.relay_writer = p.relay_writer, None
        self._relay_writers.pop(p.start.req_id, None)
        self._relay_tasks.pop(p.start.req_id, None)
        if writer is None:
            return
        await _close(writer)
        if p.relay_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(p.relay_task, 1.0)
        with contextlib.suppress(CCKernelError, OSError):
            await self._to_kernel(m.RelayEnd(req_id=p.start.req_id, reason=reason[: m.MAX_REASON]))

    async def _drop(self) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        for task in (p.release_task, p.relay_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if p.relay_writer is not None:
            p.relay_writer.close()

    async def aclose(self, reason: str = "the session ended") -> None:
        """Stop a release in progress and close the owner's logs still open (the session ends)."""
        await self._drop()
        with contextlib.suppress(CCKernelError, OSError):
            await self.close_logs(ended_ms=_now_ms(), reason=reason)
        for writer in self._relay_writers.values():
            await _close(writer)
        for task in self._relay_tasks.values():
            task.cancel()
        self._relay_writers.clear()
        self._relay_tasks.clear()

    def unapproved_before(self, rules: Rules) -> list[str]:
        """Digests of code that ran in this session and that ``rules`` do not approve (hex)."""
        found = sorted(d.hex() for d in self._ran if not rules.approves(d))
        if self._ran_other and rules.mode == "approved-code":
            found.append("a comm message or a plain upload")
        return found


async def _close(writer: asyncio.StreamWriter, timeout: float = 2.0) -> None:
    """Close a stream and wait (briefly) until its transport is closed."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout)


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["ACK_TIMEOUT", "MAX_AHEAD", "Datasets", "OpenDataset", "OwnerLog"]
