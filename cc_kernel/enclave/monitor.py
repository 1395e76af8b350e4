"""Monitor: the trusted half of one enclave session — TLS, keys, evidence, receipts, the worker's lifecycle.

Layer: runs inside the TEE, in the measured monitor process. It owns the TLS key and channel, the audit key
and receipt signer and the evidence source (opened before any worker exists); it starts the worker (the
user's cells, :mod:`cc_kernel.worker`) as a sandboxed child process on a private socketpair and relays
between the two. Invariants:

* **Evidence only for the monitor's own keys.** Evidence is collected here, for this process's TLS and audit
  keys, and nowhere else; the worker has no handle on the evidence source, the keys or this process.
* **Receipts over what the monitor relayed.** The monitor hands the worker one request at a time and signs
  each receipt over the code *it* handed in and the digests of the outputs *it* forwarded, with the status of
  the reply it forwarded; a cell can neither choose nor suppress its receipt. Every receipted request gets
  exactly one receipt, also when it fails, is refused or its worker dies. Output forwarded while no request
  is in hand (a thread a cell started) is signed into a ``background`` receipt before the next request is
  handed in, or before the closing entry: nothing leaves the monitor outside a receipt.
* **Audit fails closed.** No application request is handed to the worker before the kernel said AuditStart
  or AuditOff.
* **The worker is untrusted input.** Each worker message is decoded under the frame cap and the strict schema,
  must be of a type the link carries (:mod:`cc_kernel.protocol.privsep`), must answer the request in hand,
  and must respect the output window (the kernel's credits). Anything else ends the worker (SIGKILL) and the
  session, with the reason in the closing entry.
* A dead worker is reported with its exit status or signal, its request answered with an error and
  receipted; then the session closes (closing entry, Fatal).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.audit.format import STATUSES, OutputDigester, UploadInfo
from cc_kernel.audit.receipts import ReceiptSigner, comm_input_text
from cc_kernel.channel import PRE_ATTESTATION_TIMEOUT
from cc_kernel.channel.accept import accept_session
from cc_kernel.channel.clients import AuthorizedClients
from cc_kernel.channel.ratls import STARTUP_NONCE, STARTUP_SESSION_ID
from cc_kernel.channel.transport import FramedChannel
from cc_kernel.crypto.keys import AuditKey, TlsIdentity, make_tls_identity, new_tls_key, spki_der_of_key
from cc_kernel.enclave.datasets import Datasets
from cc_kernel.enclave.evidence import EvidenceSource
from cc_kernel.enclave.workerproc import WorkerProcess, WorkerSpec, spawn_worker
from cc_kernel.errors import CCKernelError, ChannelError, ProtocolError, RemoteProtocolError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import DEFAULT_OUTPUT_WINDOW, OUTPUT_MESSAGES, OutputWindow
from cc_kernel.protocol.flow import output_cost
from cc_kernel.protocol.privsep import REPLY_FOR, WORKER_TO_MONITOR, LinkDecoder, encode

log = logging.getLogger("cc_kernel.enclave")

#: Seconds the worker has to import IPython, apply its sandbox and say WorkerReady.
WORKER_START_TIMEOUT = 120.0
#: Seconds a worker has to answer Shutdown before it is killed.
WORKER_STOP_TIMEOUT = 2.0
#: The output window (``output_cost`` units), the same number the worker waits on.
OUTPUT_WINDOW = DEFAULT_OUTPUT_WINDOW
#: Largest upload accepted into the worker (held in its memory: nothing is written to disk).
MAX_UPLOAD = 4 * 1024 * 1024 * 1024
#: Protections a hardware session requires (the worker's report must say each is in force).
REQUIRED_PROTECTIONS = ("no_new_privs", "landlock", "seccomp", "monitor_not_dumpable")

_RECEIPT_KIND: dict[type[m.Message], str] = {
    m.CompleteRequest: "complete", m.InspectRequest: "inspect", m.IsCompleteRequest: "is_complete",
    m.CommOpen: "comm", m.CommMsg: "comm", m.CommClose: "comm", m.UploadStart: "upload",
}


class WorkerGone(Exception):  # noqa: N818 - internal control flow
    """The worker died or broke the link protocol; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Request:
    """One request from the kernel, in the monitor's hands until its reply was forwarded and receipted."""

    msg: m.Message
    req_id: int
    started_ms: int = 0
    digester: OutputDigester | None = None
    # uploads: what the monitor itself received (the receipt's digest is the monitor's, not the worker's)
    upload_hash: Any = None
    upload_size: int = 0
    upload_refused: str = ""
    upload_ended: bool = False
    pending_chunks: list[m.UploadChunk | m.UploadEnd] = field(default_factory=list)


class Monitor:
    """Serve one kernel session: attest, start the worker, relay and receipt. Call ``run()`` (blocking)."""

    def __init__(
        self,
        *,
        source: EvidenceSource,
        worker: WorkerSpec,
        monitor_protections: dict[str, dict[str, Any]] | None = None,
        clients: AuthorizedClients | None = None,
        pre_attestation_timeout: float = PRE_ATTESTATION_TIMEOUT,
        tls_key: Any = None,
        audit_key: AuditKey | None = None,
        worker_process: WorkerProcess | None = None,
    ) -> None:
        # client keys (None: the kernel's own socketpair, or a server told to serve anyone) and the deadline
        # for a client's handshake, Hello and attestation request
        self._clients = clients
        self._pre_attestation_timeout = pre_attestation_timeout
        #: SPKI SHA-256 of the client's authorised key, once accepted (None without client keys).
        self.client_key_sha256: bytes | None = None
        self._source = source
        self._worker_spec = worker
        self._monitor_protections = dict(monitor_protections or {})
        self._audit_key = audit_key or AuditKey()
        key = tls_key or new_tls_key()
        self._spki = spki_der_of_key(key)
        startup = source.collect(
            expected_report_data(
                tls_spki=self._spki, audit_pub=self._audit_key.public_bytes, nonce=STARTUP_NONCE,
                session_id=STARTUP_SESSION_ID,
            ),
            audit_pub=self._audit_key.public_bytes, session_id=STARTUP_SESSION_ID, nonce=STARTUP_NONCE,
        )
        self._identity: TlsIdentity = make_tls_identity(
            key, now=datetime.now(UTC), evidence_extension=encode_envelope(startup)
        )
        self._channel: FramedChannel | None = None
        self._signer: ReceiptSigner | None = None
        self._audit: bool | None = None  # None until AuditStart/AuditOff
        self._redact = False
        self._execution_count = 0
        self._queue: collections.deque[_Request] = collections.deque()
        self._head: _Request | None = None
        self._last_req = 0
        # output while no request is in hand (a thread a cell started): forwarded with the id of the last
        # receipted request, digested here and signed into a "background" receipt before the next request is
        # handed in (or before the closing entry)
        self._last_receipted = 0
        self._background: OutputDigester | None = None
        self._background_started = 0
        self._window = OutputWindow(OUTPUT_WINDOW)
        self._worker: WorkerProcess | None = worker_process
        self._wreader: asyncio.StreamReader | None = None
        self._wwriter: asyncio.StreamWriter | None = None
        self._decoder = LinkDecoder(WORKER_TO_MONITOR)
        self._ready: asyncio.Future[m.WorkerReady] | None = None
        self._shutdown: m.Shutdown | None = None
        self._worker_done: asyncio.Event | None = None
        self._shutdown_due: asyncio.Event | None = None
        self.stop_reason = ""
        # sealed datasets (%cc_dataset) and the owners' rules: cc_kernel.enclave.datasets
        self.datasets = Datasets(source=source, spki_der=self._spki, audit_key=self._audit_key,
                                 to_kernel=self._to_kernel, to_worker=lambda msg: self._to_worker(msg),
                                 emit=self._emit, resume=lambda: self._pump(),
                                 reply=lambda req, msg, status: self._reply(req, msg, status=status))

    # -- the worker process -------------------------------------------------------------------------------

    def start_worker(self) -> None:
        """Start the worker now, unless it was started before this monitor existed (local mode). Idempotent."""
        if self._worker is None:
            self._worker = spawn_worker(self._worker_spec)

    def _worker_status(self) -> str:
        return self._worker.status() if self._worker is not None else "never started"

    def _kill_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()

    def cleanup(self) -> None:
        """Kill the worker and remove its private directories (idempotent; also on SIGTERM)."""
        if self._worker is not None:
            self._worker.cleanup()

    # -- entry ------------------------------------------------------------------------------------------

    def run(self, sock: socket.socket | None = None, *,
            sock_provider: Callable[[], socket.socket] | None = None) -> int:
        """Serve the session; returns a process exit status. ``sock``: connected (local mode: the worker starts
        at once, overlapping the kernel's attestation); ``sock_provider``: wait for the connection (a spare of a
        server): the worker starts only once the client completed its handshake with an authorised key and
        asked for evidence, so a refused client never causes a worker to exist."""
        try:
            worker_first = sock is not None
            if sock is None:
                if sock_provider is None:
                    raise TypeError("run() needs sock or sock_provider")
                sock = sock_provider()
            else:
                self.start_worker()
            return asyncio.run(self._serve(sock, worker_started=worker_first))
        finally:
            self.cleanup()
            log.info("session ended: %s", self.stop_reason or "shutdown")

    async def _worker_link(self) -> asyncio.Task[None]:
        """Start the worker if it is not running yet; connect its socketpair to this loop; read it."""
        self.start_worker()
        assert self._worker is not None
        self._wreader, self._wwriter = await asyncio.open_unix_connection(sock=self._worker.sock)
        return asyncio.create_task(self._worker_loop())

    async def _serve(self, sock: socket.socket, *, worker_started: bool) -> int:
        self._ready = asyncio.get_running_loop().create_future()
        self._shutdown_due = asyncio.Event()
        self._worker_done = asyncio.Event()
        worker_task = await self._worker_link() if worker_started else None
        try:
            pending = await accept_session(sock, self._identity, clients=self._clients,
                                           timeout=self._pre_attestation_timeout)
            channel = self._channel = pending.channel
            self.client_key_sha256 = pending.client_key_sha256
            log.info("client key %s", pending.client_key_sha256.hex() if pending.client_key_sha256
                     else "none (local mode, or a server that serves any client)")
            if worker_task is None:
                worker_task = await self._worker_link()
            await self._attest(channel, pending.request)
            await self._announce(channel)
            await self._kernel_loop(channel, worker_task)
        except WorkerGone as gone:
            await self._worker_died(gone.reason)
            return 1
        except (CCKernelError, OSError, TimeoutError) as exc:
            self.stop_reason = self.stop_reason or await self._why_closed(exc)
            log.info("session over: %s", self.stop_reason)
        finally:
            await self.datasets.aclose()
            if worker_task is not None:
                worker_task.cancel()
                with contextlib.suppress(BaseException):
                    await worker_task
            if self._channel is not None:
                await self._channel.aclose()
        return 0

    async def _why_closed(self, exc: BaseException) -> str:
        """The reason for the log: a Fatal the kernel sent before it closed (e.g. it refused our evidence while
        we were telling it the session's protections) says more than the failed send it caused."""
        channel = self._channel
        if channel is not None and isinstance(exc, ChannelError):
            with contextlib.suppress(CCKernelError, OSError, TimeoutError):
                async with asyncio.timeout(0.5):
                    while True:
                        msg = await channel.receive()
                        if isinstance(msg, m.Fatal):
                            return f"the kernel closed the session: {msg.reason}"
        return f"{type(exc).__name__}: {exc}"

    async def _attest(self, channel: FramedChannel, challenge: m.AttestRequest) -> None:
        """Evidence for this monitor's own keys, answering the client's challenge (nonce and session id)."""
        env = self._source.collect(
            expected_report_data(
                tls_spki=self._spki, audit_pub=self._audit_key.public_bytes, nonce=challenge.nonce,
                session_id=challenge.session_id,
            ),
            audit_pub=self._audit_key.public_bytes, session_id=challenge.session_id, nonce=challenge.nonce,
        )
        self._signer = ReceiptSigner(self._audit_key, challenge.session_id)
        await channel.send(m.AttestResponse(envelope=encode_envelope(env)))

    async def _announce(self, channel: FramedChannel) -> None:
        """Wait for the worker's report, check it from outside, tell the kernel (or refuse the session)."""
        assert self._ready is not None
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), WORKER_START_TIMEOUT)
        except TimeoutError:
            raise WorkerGone(f"the worker did not start within {WORKER_START_TIMEOUT} s") from None
        protections = dict(self._monitor_protections)
        protections.update(_checked_report(ready))
        if self._worker is not None:
            from cc_kernel.enclave.sandbox_check import check_from_outside

            for finding in check_from_outside(self._worker.proc.pid, ready.protections):
                part = finding.split(":", 1)[0]
                protections[part] = {"in_force": False, "detail": f"the kernel's view contradicts it: {finding}"}
        missing = [name for name in REQUIRED_PROTECTIONS
                   if not (isinstance(protections.get(name), dict) and protections[name].get("in_force"))]
        failed = [name for name, p in protections.items() if isinstance(p, dict) and not p.get("in_force")]
        complete = not missing and not failed
        if self._worker_spec.required and not complete:
            parts = "; ".join(
                f"{name}: {protections.get(name, {}).get('detail', 'not reported')}" for name in (missing + failed)
            )
            reason = f"the worker's sandbox could not be fully applied, so no session is served ({parts})"
            self.stop_reason = reason
            await channel.send(m.Fatal(reason=reason[: m.MAX_REASON]))
            raise CCKernelError(reason)
        await channel.send(m.SessionInfo(protections=protections, complete=complete))

    # -- kernel -> monitor --------------------------------------------------------------------------------

    async def _kernel_loop(self, channel: FramedChannel, worker_task: asyncio.Task[None]) -> None:
        assert self._shutdown_due is not None
        shutdown_due = asyncio.ensure_future(self._shutdown_due.wait())
        try:
            while True:
                receive = asyncio.ensure_future(channel.receive())
                done, _ = await asyncio.wait(
                    {receive, worker_task, shutdown_due}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    with contextlib.suppress(BaseException):
                        await receive
                    if shutdown_due in done:
                        assert self._shutdown is not None
                        await self._finish_shutdown(self._shutdown)
                        return
                    exc = worker_task.exception() if not worker_task.cancelled() else None
                    raise exc if isinstance(exc, WorkerGone) else WorkerGone("the worker link ended")
                if await self._from_kernel(receive.result()):
                    return
        finally:
            shutdown_due.cancel()

    async def _from_kernel(self, msg: m.Message) -> bool:
        """Handle one kernel message; True when the session is over (shutdown complete)."""
        channel = self._channel
        assert channel is not None
        if isinstance(msg, m.Ping):
            await channel.send(m.Pong(seq=msg.seq))
        elif isinstance(msg, m.Credit):
            self._window.credit(min(msg.nbytes, self._window.outstanding))
            await self._to_worker(msg)
        elif isinstance(msg, m.InputReply):
            await self._to_worker(msg)
        elif isinstance(msg, m.Interrupt):
            head = self._head
            if head is not None and head.req_id < msg.before and self._worker is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._worker.proc.pid, signal.SIGINT)
        elif isinstance(msg, m.Fatal):
            self.stop_reason = f"the kernel closed the session: {msg.reason}"
            return True
        elif isinstance(msg, m.AuditStart | m.AuditOff):
            if self._audit is not None:
                raise RemoteProtocolError("the kernel sent AuditStart/AuditOff twice")
            if isinstance(msg, m.AuditStart):
                assert self._signer is not None
                self._signer.start(msg.opening_hash)
                self._redact = msg.redact_code
            self._audit = isinstance(msg, m.AuditStart)
        elif isinstance(msg, m.UploadChunk | m.UploadEnd):
            await self._upload_part(msg)
        elif isinstance(msg, m.RelayData | m.RelayEnd):
            await self.datasets.relay(msg)
        else:
            if self._audit is None:
                reason = (f"{msg.TYPE} before AuditStart or AuditOff: this enclave runs nothing the kernel "
                          "has not said how to log")
                self.stop_reason = reason
                await channel.send(m.Fatal(reason=reason))
                return True
            if isinstance(msg, m.Shutdown):
                self._shutdown = msg
                self._queue.append(_Request(msg=msg, req_id=-1))
            else:
                req_id = getattr(msg, "req_id", 0)
                self._last_req = max(self._last_req, req_id)
                self._queue.append(_Request(msg=msg, req_id=req_id))
            await self._pump()
        return False

    async def _to_worker(self, msg: m.Message) -> None:
        writer = self._wwriter
        if writer is None or writer.is_closing():
            return
        try:
            writer.write(encode(msg))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise WorkerGone(f"the worker link broke: {exc}") from exc

    async def _pump(self) -> None:
        """Hand the next queued request to the worker if it is idle. A Shutdown at the front of the queue is
        left for the kernel loop (which finishes the session), so requests before it complete first."""
        while self._head is None and self._queue:
            if self.datasets.hold():  # an owner's log entry is on its way: resumed when the broker acknowledges
                return
            if isinstance(self._queue[0].msg, m.Shutdown):
                assert self._shutdown_due is not None
                self._shutdown_due.set()
                return
            if self._background is not None:  # signed before the next request; its owner-log entry may hold
                await self._receipt_background()
                continue
            req = self._queue.popleft()
            self._head = req
            req.started_ms = _now_ms()
            if self._audit or self.datasets.open:
                req.digester = OutputDigester()
            msg = req.msg
            if isinstance(msg, m.ExecuteRequest):
                self._execution_count = msg.execution_count
            refusal = self.datasets.refusal(msg)
            if refusal is not None:  # an open dataset's rules forbid it: it never reaches the worker
                await self.datasets.refuse(req, refusal)
                continue
            if isinstance(msg, m.UploadStart):
                if not await self._upload_start(req, msg):
                    continue
                for part in req.pending_chunks:
                    await self._upload_part(part)  # parts that arrived while an earlier request ran
                req.pending_chunks.clear()
                continue
            await self._to_worker(msg)

    # -- uploads: the monitor checks and hashes what it hands in ------------------------------------------

    async def _upload_start(self, req: _Request, msg: m.UploadStart) -> bool:
        req.upload_hash = hashlib.sha256()
        if msg.size > MAX_UPLOAD or not msg.name.isidentifier():
            req.upload_refused = (f"refused upload {msg.name!r}: name must be a Python identifier, size at most "
                                  f"{MAX_UPLOAD} bytes")
            await self._reply(req, m.UploadReply(req_id=msg.req_id, status="error", message=req.upload_refused))
            return False
        if msg.fmt == "ccdata":  # sealed: the monitor opens it and hands the worker the plaintext
            await self.datasets.start(req, msg)
            return True
        await self._to_worker(msg)
        return True

    async def _upload_part(self, msg: m.UploadChunk | m.UploadEnd) -> None:
        head = self._head
        if head is None or head.req_id != msg.req_id or not isinstance(head.msg, m.UploadStart):
            for queued in self._queue:  # the upload waits behind an earlier request
                if queued.req_id == msg.req_id and isinstance(queued.msg, m.UploadStart):
                    queued.pending_chunks.append(msg)
                    return
            return  # refused at start (the kernel already has the error reply) or unknown: dropped
        if isinstance(msg, m.UploadChunk):
            head.upload_size += len(msg.data)
            head.upload_hash.update(msg.data)
        else:
            head.upload_ended = True
            if not hmac.compare_digest(head.upload_hash.digest(), msg.sha256):  # not what the kernel sent
                await self._reply(head, m.UploadReply(req_id=head.req_id, status="error", message=(
                    "upload arrived altered: its SHA-256 is not the one the kernel announced; nothing was bound")))
                return  # the worker never gets the end: it binds nothing, and drops the parts at the next upload
        if self.datasets.owns(head):
            await self.datasets.part(head, msg)
            return
        await self._to_worker(msg)

    # -- worker -> monitor --------------------------------------------------------------------------------

    async def _worker_loop(self) -> None:
        reader = self._wreader
        assert reader is not None
        try:
            while True:
                data = await reader.read(1024 * 1024)
                if not data:
                    self._decoder.eof()
                    status = self._worker_status()
                    raise WorkerGone(f"the enclave's worker process, which runs the cells, ended ({status})")
                self._decoder.feed(data)
                while (msg := self._decoder.next_message()) is not None:
                    await self._from_worker(msg)
        except ProtocolError as exc:
            self._kill_worker()
            raise WorkerGone(f"the worker broke the monitor's protocol and was stopped: {exc}") from exc

    async def _from_worker(self, msg: m.Message) -> None:
        assert self._ready is not None
        if isinstance(msg, m.WorkerReady):
            if self._ready.done():
                raise RemoteProtocolError("WorkerReady sent twice")
            self._ready.set_result(msg)
            return
        if not self._ready.done():
            raise RemoteProtocolError(f"{msg.TYPE} before WorkerReady")
        if isinstance(msg, m.ShutdownReply):
            assert self._worker_done is not None
            self._worker_done.set()
            return
        channel = self._channel
        head = self._head
        if type(msg) in OUTPUT_MESSAGES:
            cost = output_cost(msg)
            if not self._window.charge(cost):
                raise RemoteProtocolError(
                    f"output beyond the window ({self._window.outstanding} + {cost} > {OUTPUT_WINDOW} units "
                    "uncredited): the worker ignored flow control")
            if head is not None:
                req_id = head.req_id
            else:
                req_id = self._last_receipted if self._receipting() and self._last_receipted else self._last_req
                if self._background is None and (self._receipting() or self.datasets.open):
                    self._background, self._background_started = OutputDigester(), _now_ms()
            msg = _with_req_id(msg, req_id)
            digester = head.digester if head is not None else self._background
            if digester is not None:
                digester.add(msg)
            if channel is not None:
                await channel.send(msg)
            return
        if isinstance(msg, m.InputRequest):
            if head is None or not isinstance(head.msg, m.ExecuteRequest) or not head.msg.allow_stdin:
                raise RemoteProtocolError("input request outside a cell that allows stdin")
            if channel is not None:
                await channel.send(_with_req_id(msg, head.req_id))
            return
        # a reply: it must finish the request in hand
        if head is None:
            raise RemoteProtocolError(f"{msg.TYPE} while no request is in hand")
        expected = REPLY_FOR[type(head.msg)]
        if type(msg) is not expected or getattr(msg, "req_id", None) != head.req_id:
            raise RemoteProtocolError(
                f"{msg.TYPE} for request {getattr(msg, 'req_id', '?')} does not answer the request in hand "
                f"({head.msg.TYPE} {head.req_id})")
        if isinstance(msg, m.UploadReply) and msg.status == "ok":
            announced = head.msg.size if isinstance(head.msg, m.UploadStart) else -1
            if head.upload_ended is not True or head.upload_size != announced:
                msg = m.UploadReply(req_id=head.req_id, status="error", message=(
                    f"upload arrived incomplete ({head.upload_size} of {announced} bytes)"))
            elif not self.datasets.owns(head):  # the digest its receipt records (a dataset's: see datasets)
                ours = f" (sha256 {head.upload_hash.hexdigest()[:16]}…)"  # last, whatever the worker wrote
                msg = m.UploadReply(req_id=head.req_id, status="ok", message=(
                    msg.message[: m.MAX_REASON - len(ours)] + ours))
        if isinstance(msg, m.UploadReply):
            msg = await self.datasets.bound(head, msg)

        await self._reply(head, None if isinstance(msg, m.RequestDone) else msg,
                          status=msg.status if isinstance(msg, m.RequestDone) else None)

    async def _to_kernel(self, msg: m.Message) -> None:
        if self._channel is not None:
            await self._channel.send(msg)

    async def _emit(self, req: _Request, output: m.Message) -> None:
        """Show an output of the monitor's own for ``req`` (charged to the window, in its receipt)."""
        self._window.charge(output_cost(output))
        if req.digester is not None:
            req.digester.add(output)
        await self._to_kernel(output)

    async def _reply(self, req: _Request, reply: m.Message | None, *, status: str | None = None) -> None:
        """Forward ``req``'s reply (if it has one), sign its receipt, and hand the worker the next request."""
        channel = self._channel
        if reply is not None and channel is not None:
            await channel.send(reply)
        if status is None:
            status = _status_of(reply)
        await self._receipt(req, status)
        if self._head is req:
            self._head = None
        await self._pump()

    def _receipting(self) -> bool:
        signer = self._signer
        return bool(self._audit) and signer is not None and signer.started and not signer.closed

    async def _receipt_background(self) -> None:
        """Sign the output forwarded while no request was in hand (``background``, for the last receipted
        request's id) into the session's log and the open datasets' owner logs, if there was any."""
        digester, self._background = self._background, None
        if digester is None:
            return
        fields: dict[str, Any] = {
            "kind": "background", "execution_count": self._execution_count, "code": "",
            "outputs": digester.result(), "status": "ok", "started_ms": self._background_started,
            "ended_ms": _now_ms(), "cell_id": None, "upload": None,
        }
        await self.datasets.receipt(fields)
        if self._receipting() and self._last_receipted and self._channel is not None:
            assert self._signer is not None
            receipt = self._signer.sign_receipt(**fields, redact_code=self._redact)
            await self._channel.send(m.AuditReceipt(req_id=self._last_receipted, receipt=receipt))

    async def _receipt(self, req: _Request, status: str) -> None:
        fields = self._receipt_fields(req, status)
        if fields is None:
            return
        await self.datasets.receipt(fields)  # the owners' logs of the open datasets, whatever the session's log
        signer = self._signer
        if not self._receipting() or signer is None:
            return
        receipt = signer.sign_receipt(**fields, redact_code=self._redact)
        if self._channel is not None:
            await self._channel.send(m.AuditReceipt(req_id=req.req_id, receipt=receipt))
            self._last_receipted = req.req_id

    def _receipt_fields(self, req: _Request, status: str) -> dict[str, Any] | None:
        """What ``ReceiptSigner.sign_receipt`` signs for ``req`` (but ``redact_code``), or None: no receipt."""
        msg = req.msg
        upload: UploadInfo | None = None
        execution_count = self._execution_count
        cell_id: str | None = None
        if isinstance(msg, m.ExecuteRequest):
            kind, code = ("silent" if msg.silent else "cell"), msg.code
            execution_count, cell_id = msg.execution_count, msg.cell_id
        elif isinstance(msg, m.CommOpen | m.CommMsg | m.CommClose):
            cname = {m.CommOpen: "comm_open", m.CommMsg: "comm_msg", m.CommClose: "comm_close"}[type(msg)]
            kind = "comm"
            code = comm_input_text(cname, msg.comm_id, msg.data, msg.target_name if isinstance(msg, m.CommOpen)
                                   else None)
        elif isinstance(msg, m.UploadStart):
            kind, code = "upload", msg.code
            execution_count, cell_id = msg.execution_count, msg.cell_id
            digest = req.upload_hash.digest() if req.upload_hash is not None else hashlib.sha256().digest()
            upload = UploadInfo(name=msg.name, sha256=digest, size=req.upload_size, fmt=msg.fmt)
        elif type(msg) in _RECEIPT_KIND:
            kind, code = _RECEIPT_KIND[type(msg)], getattr(msg, "code", "")
        else:
            return None  # history and comm_info run no user code and get no receipt
        return {
            "kind": kind, "execution_count": execution_count, "code": code,
            "outputs": (req.digester or OutputDigester()).result(), "status": status if status in STATUSES else "error",
            "started_ms": req.started_ms or _now_ms(), "ended_ms": _now_ms(), "cell_id": cell_id, "upload": upload,
        }

    # -- the end ------------------------------------------------------------------------------------------

    async def _close_log(self, reason: str) -> None:
        await self._receipt_background()
        with contextlib.suppress(CCKernelError, OSError):
            await self.datasets.close_logs(ended_ms=_now_ms(), reason=reason)
        signer = self._signer
        if self._audit and signer is not None and signer.started and not signer.closed and self._channel:
            closing = signer.sign_closing(ended_ms=_now_ms(), reason=reason)
            await self._channel.send(m.AuditReceipt(req_id=0, receipt=closing))

    async def _finish_shutdown(self, msg: m.Shutdown) -> None:
        self.stop_reason = msg.reason or "shutdown requested by the kernel"
        assert self._worker_done is not None
        with contextlib.suppress(WorkerGone):
            await self._to_worker(m.Shutdown(restart=msg.restart))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._worker_done.wait(), WORKER_STOP_TIMEOUT)
        self._kill_worker()
        channel = self._channel
        assert channel is not None
        await self._close_log(msg.reason or ("restart" if msg.restart else "shutdown"))
        await channel.send(m.ShutdownReply(restart=msg.restart))

    async def _worker_died(self, reason: str) -> None:
        """The worker is gone: answer its request with an error, receipt it, close the log, tell the kernel."""
        self.stop_reason = reason
        log.error("%s", reason)
        self._kill_worker()
        channel = self._channel
        if channel is None:
            return
        with contextlib.suppress(CCKernelError, OSError):
            head = self._head
            if head is not None:
                if isinstance(head.msg, m.ExecuteRequest):  # shown in the notebook, not only in the reply
                    shown = m.Error(req_id=head.req_id, ename="WorkerDied", evalue=reason, traceback=[
                        f"WorkerDied: {reason}. Restart the kernel to start a new session."])
                    self._window.charge(output_cost(shown))
                    if head.digester is not None:
                        head.digester.add(shown)
                    await channel.send(shown)
                reply = _error_reply(head, reason)
                self._head = None
                if reply is not None:
                    await channel.send(reply)
                await self._receipt(head, "error")
            await self._close_log(f"worker died: {reason}")
            await channel.send(m.Fatal(reason=reason[: m.MAX_REASON]))


def _checked_report(ready: m.WorkerReady) -> dict[str, dict[str, Any]]:
    """The worker's protections, each reduced to ``{"in_force": bool, "detail": str}`` (untrusted shape)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in ready.protections.items():
        if isinstance(value, dict):
            out[str(name)[:64]] = {"in_force": value.get("in_force") is True,
                                   "detail": str(value.get("detail", ""))[:500]}
    return out


def _with_req_id(msg: m.Message, req_id: int) -> m.Message:
    if getattr(msg, "req_id", req_id) == req_id:
        return msg
    return dataclasses.replace(msg, req_id=req_id)  # type: ignore[type-var]


def _status_of(reply: m.Message | None) -> str:
    if isinstance(reply, m.ExecuteReply):
        return "interrupted" if reply.ename == "KeyboardInterrupt" else reply.status
    if isinstance(reply, m.IsCompleteReply):  # its status is the verdict on the code, not an outcome
        return "ok"
    return str(getattr(reply, "status", "ok")) if reply is not None else "ok"


def _error_reply(req: _Request, reason: str) -> m.Message | None:
    msg, rid = req.msg, req.req_id
    if isinstance(msg, m.ExecuteRequest):
        return m.ExecuteReply(req_id=rid, status="error", execution_count=msg.execution_count, user_expressions={},
                              payload=[], ename="WorkerDied", evalue=reason,
                              traceback=[f"WorkerDied: {reason}. Restart the kernel to start a new session."])
    if isinstance(msg, m.CompleteRequest):
        return m.CompleteReply(req_id=rid, status="error", matches=[], cursor_start=msg.cursor_pos,
                               cursor_end=msg.cursor_pos, metadata={})
    if isinstance(msg, m.InspectRequest):
        return m.InspectReply(req_id=rid, status="error", found=False, data={}, metadata={})
    if isinstance(msg, m.IsCompleteRequest):
        return m.IsCompleteReply(req_id=rid, status="unknown", indent="")
    if isinstance(msg, m.HistoryRequest):
        return m.HistoryReply(req_id=rid, status="error", history=[])
    if isinstance(msg, m.CommInfoRequest):
        return m.CommInfoReply(req_id=rid, comms={})
    if isinstance(msg, m.UploadStart):
        return m.UploadReply(req_id=rid, status="error", message=reason[: m.MAX_REASON])
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["Monitor", "WorkerSpec"]
