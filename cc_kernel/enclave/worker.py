"""Enclave: one session on one connected socket — TLS 1.3 server, attestation, then the IPython shell.

Threads: the MAIN thread owns the IPython shell (so SIGINT can interrupt a running cell) and handles requests
in arrival order from a work queue; the I/O thread runs an asyncio loop that owns the TLS channel: it reads
frames, answers Ping, applies Interrupt/Credit/InputReply at once, and queues everything else. Output made by
a cell is sent from the thread that produced it, in order, and blocks while more than ``OUTPUT_WINDOW`` bytes
are unacknowledged by the kernel (credit-based backpressure: memory stays bounded however much a cell prints).

Invariants: no user code runs before the kernel has sent its first application message (which its protocol
state allows only after it verified our evidence); nothing of a session is written to disk; logging goes to
the saved original stderr, never into the captured fds (which would loop into the notebook).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cc_kernel import __version__
from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.audit.format import STATUSES, OutputDigester, UploadInfo
from cc_kernel.audit.receipts import ReceiptSigner, comm_input_text
from cc_kernel.channel.ratls import STARTUP_NONCE, STARTUP_SESSION_ID
from cc_kernel.channel.transport import FramedChannel, accept_server
from cc_kernel.crypto.keys import AuditKey, TlsIdentity, make_tls_identity, new_tls_key, spki_der_of_key
from cc_kernel.enclave.evidence import EvidenceSource
from cc_kernel.errors import CCKernelError, ChannelError, ProtocolError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import OUTPUT_MESSAGES, Connection, Role
from cc_kernel.protocol.flow import output_cost
from cc_kernel.protocol.framing import DEFAULT_MAX_FRAME_SIZE

log = logging.getLogger("cc_kernel.enclave")

#: Unacknowledged output bytes the enclave may have in flight before a printing cell blocks.
OUTPUT_WINDOW = 8 * 1024 * 1024
#: Seconds a client has, after the TLS handshake, to send Hello and its AttestRequest (the kernel gives up
#: after 15 s by default); then the session ends, so silent clients cannot hold enclave processes.
ATTEST_TIMEOUT = 30.0
#: Largest upload accepted into the enclave (held in memory: nothing is written to disk).
MAX_UPLOAD = 4 * 1024 * 1024 * 1024
UPLOAD_FORMATS = ("bytes", "text", "npy")


class _Stop(Exception):  # noqa: N818 - internal control flow
    """The session is over (channel closed or broken, or shutdown)."""


@dataclass
class _Upload:
    name: str
    size: int
    fmt: str
    buffer: bytearray
    req_id: int
    code: str
    execution_count: int
    cell_id: str | None


_STOP = object()


class Session:
    """Serve one kernel session on a connected socket. Call ``run()`` on the main thread."""

    def __init__(
        self,
        *,
        source: EvidenceSource,
        shell_factory: Callable[[Any, Callable[[str, bool], str]], Any],
        tls_key: Any = None,
        audit_key: AuditKey | None = None,
    ) -> None:
        self._sock: socket.socket | None = None
        self._source = source
        self._audit_key = audit_key or AuditKey()
        key = tls_key or new_tls_key()
        self._spki = spki_der_of_key(key)
        # Start-up evidence in the certificate (nonce and session id zero): binds the key at birth.
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
        self._shell_factory = shell_factory
        self._work: queue.Queue[Any] = queue.Queue()
        self._inputs: queue.Queue[m.InputReply | object] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: FramedChannel | None = None
        self._io_task: asyncio.Task[None] | None = None
        self._window = threading.Condition()
        self._outstanding = 0
        self._stopped = threading.Event()
        self._current_req = 0
        self._running_req: int | None = None  # the request the main thread handles now (read by the I/O thread)
        self._shell: Any = None
        self._uploads: dict[int, _Upload] = {}
        self._signer: ReceiptSigner | None = None
        self._digester: OutputDigester | None = None
        self._redact = False
        self._execution_count = 0  # the kernel's current count: non-cell receipts carry it (docs/audit-log.md)
        self.stop_reason = ""

    # -- main thread -------------------------------------------------------------------------------------

    def run(
        self, sock: socket.socket | None = None, *, sock_provider: Callable[[], socket.socket] | None = None
    ) -> int:
        """Serve the session until shutdown or disconnect. Returns a process exit status.

        With ``sock`` the TLS handshake and attestation overlap with building the shell; with
        ``sock_provider`` (a pre-started spare worker) the shell is built first, then the socket awaited.
        """
        io_thread = threading.Thread(target=self._io_main, name="cc-enclave-io", daemon=True)
        try:
            if sock is not None:
                self._sock = sock
                io_thread.start()
                self._shell = self._shell_factory(self._emit, self._input)
            else:
                if sock_provider is None:
                    raise TypeError("run() needs sock or sock_provider")
                self._shell = self._shell_factory(self._emit, self._input)
                self._sock = sock_provider()
                io_thread.start()
        except BaseException:
            self._stopped.set()
            raise
        try:
            while True:
                item = self._work.get()
                if item is _STOP:
                    break
                self._running_req = getattr(item, "req_id", None)
                try:
                    self._handle(item)
                except _Stop:
                    break
                except KeyboardInterrupt:  # an interrupt that arrived between cells
                    continue
                finally:
                    self._running_req = None
        finally:
            self._stopped.set()
            with self._window:
                self._window.notify_all()
            with contextlib.suppress(Exception):
                self._shell.close()
            if self._loop is not None and self._io_task is not None:
                with contextlib.suppress(RuntimeError):  # the loop already finished
                    self._loop.call_soon_threadsafe(self._io_task.cancel)
            if io_thread.is_alive():
                io_thread.join(timeout=2)
        log.info("session ended: %s", self.stop_reason or "shutdown")
        return 0

    def _send(self, msg: m.Message) -> None:
        """Send from a non-I/O thread, waiting for the I/O loop (TLS backpressure)."""
        if self._stopped.is_set() or self._loop is None or self._channel is None:
            raise _Stop
        loop = self._loop
        future = asyncio.run_coroutine_threadsafe(self._channel.send(msg), loop)
        while True:
            try:
                future.result(timeout=0.25)
                return
            except concurrent.futures.TimeoutError:
                if not loop.is_running():  # the I/O loop ended: the send can never complete
                    future.cancel()
                    raise _Stop from None
            except (ChannelError, ProtocolError) as exc:
                self._stop(f"sending failed: {exc}")
                raise _Stop from exc

    def _emit(self, kind: str, content: dict[str, Any]) -> None:
        """OutputSink for the shell: one output message, with credit-based flow control."""
        msg = _checked_output(_output_message(kind, content, self._current_req))
        digester = self._digester
        if digester is not None:
            digester.add(msg)
        size = output_cost(msg)
        with self._window:
            while self._outstanding > OUTPUT_WINDOW and not self._stopped.is_set():
                self._window.wait(0.5)
            self._outstanding += size
        self._send(msg)

    def _input(self, prompt: str, password: bool) -> str:
        """input()/getpass() inside a cell: ask the kernel, wait for the user's answer."""
        self._send(m.InputRequest(req_id=self._current_req, prompt=prompt, password=password))
        while True:
            reply = self._inputs.get()
            if reply is _STOP:
                raise KeyboardInterrupt("the session ended while waiting for input")
            assert isinstance(reply, m.InputReply)
            if reply.cancelled:
                raise KeyboardInterrupt("input cancelled")
            return reply.value

    def _handle(self, msg: m.Message) -> None:
        shell = self._shell
        if isinstance(msg, m.AuditStart):
            if self._signer is not None and not self._signer.started:
                self._signer.start(msg.opening_hash)
                self._redact = msg.redact_code
            return
        if isinstance(msg, m.Shutdown):
            # the reason first: the kernel closes the connection as soon as it has the reply, and the I/O
            # thread's "peer closed" must not become the logged reason of a clean shutdown
            self.stop_reason = "shutdown requested by the kernel"
            if self._signer is not None and self._signer.started and not self._signer.closed:
                closing = self._signer.sign_closing(
                    ended_ms=_now_ms(), reason="restart" if msg.restart else "shutdown")
                self._send(m.AuditReceipt(req_id=0, receipt=closing))
            self._send(m.ShutdownReply(restart=msg.restart))
            self._stop(self.stop_reason)
            raise _Stop
        if isinstance(msg, m.ExecuteRequest):
            self._current_req = msg.req_id
            self._execution_count = msg.execution_count
            started = self._begin_receipt()
            shell.set_parent(msg.parent_msg_id)
            reply = shell.execute(
                msg.code, silent=msg.silent, store_history=msg.store_history,
                user_expressions=msg.user_expressions, allow_stdin=msg.allow_stdin,
                execution_count=msg.execution_count, cell_id=msg.cell_id,
            )
            out = _execute_reply(msg.req_id, reply, msg.execution_count)
            status = "interrupted" if out.ename == "KeyboardInterrupt" else out.status
            self._send(out)
            self._receipt(msg.req_id, started, kind="silent" if msg.silent else "cell", code=msg.code,
                          execution_count=msg.execution_count, status=status, cell_id=msg.cell_id)
        elif isinstance(msg, m.CompleteRequest):
            started = self._begin_receipt()
            r = shell.complete(msg.code, msg.cursor_pos)
            self._send(m.CompleteReply(
                req_id=msg.req_id, status=r.get("status", "ok"), matches=list(r["matches"]),
                cursor_start=r["cursor_start"], cursor_end=r["cursor_end"], metadata=r.get("metadata", {}),
            ))
            self._receipt(msg.req_id, started, kind="complete", code=msg.code, status=r.get("status", "ok"))
        elif isinstance(msg, m.InspectRequest):
            started = self._begin_receipt()
            r = shell.inspect(msg.code, msg.cursor_pos, msg.detail_level)
            self._send(m.InspectReply(
                req_id=msg.req_id, status=r.get("status", "ok"), found=bool(r.get("found")),
                data=r.get("data", {}), metadata=r.get("metadata", {}),
            ))
            self._receipt(msg.req_id, started, kind="inspect", code=msg.code, status=r.get("status", "ok"))
        elif isinstance(msg, m.IsCompleteRequest):
            started = self._begin_receipt()  # IPython's input transformers, which user code can register, run
            r = shell.is_complete(msg.code)
            self._send(m.IsCompleteReply(req_id=msg.req_id, status=r["status"], indent=r.get("indent", "")))
            self._receipt(msg.req_id, started, kind="is_complete", code=msg.code, status="ok")
        elif isinstance(msg, m.HistoryRequest):
            r = shell.history(
                hist_access_type=msg.hist_access_type, output=msg.output, raw=msg.raw, session=msg.session,
                start=msg.start, stop=msg.stop, n=msg.n, pattern=msg.pattern, unique=msg.unique,
            )
            self._send(m.HistoryReply(req_id=msg.req_id, status=r.get("status", "ok"), history=r["history"]))
        elif isinstance(msg, m.CommInfoRequest):
            r = shell.comm_info(msg.target_name)
            self._send(m.CommInfoReply(req_id=msg.req_id, comms=r.get("comms", {})))
        elif isinstance(msg, m.CommOpen | m.CommMsg | m.CommClose):
            self._current_req = msg.req_id
            kind = {m.CommOpen: "comm_open", m.CommMsg: "comm_msg", m.CommClose: "comm_close"}[type(msg)]
            content: dict[str, Any] = {"comm_id": msg.comm_id, "data": msg.data}
            if isinstance(msg, m.CommOpen):
                content["target_name"] = msg.target_name
            started = self._begin_receipt()
            shell.set_parent(msg.parent_msg_id)
            shell.handle_comm(kind, content, metadata=msg.metadata, buffers=list(msg.buffers))
            target = msg.target_name if isinstance(msg, m.CommOpen) else None
            comm_text = comm_input_text(kind, msg.comm_id, msg.data, target)
            self._receipt(msg.req_id, started, kind="comm", code=comm_text, status="ok")
        elif isinstance(msg, m.UploadStart | m.UploadChunk | m.UploadEnd):
            self._handle_upload(msg)
        else:
            log.warning("ignoring unexpected message %s", type(msg).__name__)

    def _handle_upload(self, msg: m.UploadStart | m.UploadChunk | m.UploadEnd) -> None:
        if isinstance(msg, m.UploadStart):
            if msg.size > MAX_UPLOAD or msg.fmt not in UPLOAD_FORMATS or not msg.name.isidentifier():
                self._uploads.pop(msg.req_id, None)
                self._send(m.UploadReply(req_id=msg.req_id, status="error", message=(
                    f"refused upload {msg.name!r}: name must be a Python identifier, format one of "
                    f"{UPLOAD_FORMATS}, size at most {MAX_UPLOAD} bytes")))
                return
            self._uploads[msg.req_id] = _Upload(msg.name, msg.size, msg.fmt, bytearray(), msg.req_id, msg.code,
                                               msg.execution_count, msg.cell_id)
            return
        upload = self._uploads.get(msg.req_id)
        if upload is None:
            return  # refused at start; the kernel already has the error reply
        if isinstance(msg, m.UploadChunk):
            if len(upload.buffer) + len(msg.data) > upload.size:
                del self._uploads[msg.req_id]
                self._send(m.UploadReply(req_id=msg.req_id, status="error", message="more data than announced"))
                return
            upload.buffer += msg.data
            return
        del self._uploads[msg.req_id]
        data = bytes(upload.buffer)
        digest = hashlib.sha256(data).digest()
        if len(data) != upload.size or digest != msg.sha256:
            self._send(m.UploadReply(req_id=msg.req_id, status="error", message=(
                f"upload {upload.name!r} arrived incomplete or altered ({len(data)} of {upload.size} bytes)")))
            return
        try:
            value: Any
            if upload.fmt == "text":
                value = data.decode("utf-8")
            elif upload.fmt == "npy":
                import numpy as np

                value = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                value = data
        except (UnicodeDecodeError, ValueError, OSError) as exc:
            self._send(m.UploadReply(req_id=msg.req_id, status="error", message=(
                f"cannot decode {upload.name!r} as {upload.fmt}: {exc}")))
            return
        self._shell.ipython.user_ns[upload.name] = value
        if self._signer is not None and self._signer.started:
            started = self._begin_receipt()
            self._receipt(msg.req_id, started, kind="upload", code=upload.code, status="ok",
                          execution_count=upload.execution_count, cell_id=upload.cell_id,
                          upload=UploadInfo(name=upload.name, sha256=digest, size=len(data), fmt=upload.fmt))
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            summary = f"numpy array {value.shape} {value.dtype}"
        elif isinstance(value, str):
            summary = f"str of {len(value)} characters"
        else:
            summary = f"bytes of {len(value)} bytes"
        self._send(m.UploadReply(req_id=msg.req_id, status="ok", message=(
            f"{upload.name} = {summary} (sha256 {digest.hex()[:16]}…)")))

    def _begin_receipt(self) -> int:
        """Start collecting output digests for the request about to run; returns its start time (ms)."""
        if self._signer is not None and self._signer.started:
            self._digester = OutputDigester()
        return _now_ms()

    def _receipt(self, req_id: int, started_ms: int, *, kind: str, code: str, status: str,
                 execution_count: int | None = None, cell_id: str | None = None,
                 upload: UploadInfo | None = None) -> None:
        """Sign and send the receipt of a finished request, if the kernel keeps a log.

        Called right after the request's reply is sent, so signing does not delay the reply."""
        digester, self._digester = self._digester, None
        signer = self._signer
        if signer is None or not signer.started or signer.closed:
            return
        count = self._execution_count if execution_count is None else execution_count
        receipt = signer.sign_receipt(
            kind=kind, execution_count=count, code=code,
            outputs=(digester or OutputDigester()).result(), status=status if status in STATUSES else "error",
            started_ms=started_ms, ended_ms=_now_ms(), cell_id=cell_id, redact_code=self._redact, upload=upload,
        )
        self._send(m.AuditReceipt(req_id=req_id, receipt=receipt))

    def _stop(self, reason: str) -> None:
        if not self._stopped.is_set() and not self.stop_reason:
            self.stop_reason = reason
        self._stopped.set()
        self._work.put(_STOP)
        self._inputs.put(_STOP)
        with self._window:
            self._window.notify_all()

    # -- I/O thread ----------------------------------------------------------------------------------------

    def _io_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._io_task = loop.create_task(self._io())
            loop.run_until_complete(self._io_task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # the session is over whatever happened; say why in the log
            self._stop(f"I/O failed: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            # keep the loop object alive for run_coroutine_threadsafe callers; they see _stopped first

    async def _io(self) -> None:
        assert self._sock is not None
        try:
            channel = await accept_server(self._sock, self._identity, Connection(Role.ENCLAVE))
            self._channel = channel
            try:  # a client that goes silent before its challenge must not hold this process forever
                async with asyncio.timeout(ATTEST_TIMEOUT):
                    hello = await channel.receive()
                    if not isinstance(hello, m.Hello):
                        raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
                    version = m.negotiate([m.PROTOCOL_VERSION], hello.versions)
                    await channel.send(
                        m.Hello(role="enclave", versions=[version], software=f"cc-kernel {__version__}")
                    )
                    challenge = await channel.receive()
            except TimeoutError:
                raise TimeoutError(f"no attestation challenge within {ATTEST_TIMEOUT} s") from None
            if not isinstance(challenge, m.AttestRequest):
                raise ProtocolError(f"expected AttestRequest, got {type(challenge).__name__}")
            env = self._source.collect(
                expected_report_data(
                    tls_spki=self._spki, audit_pub=self._audit_key.public_bytes, nonce=challenge.nonce,
                    session_id=challenge.session_id,
                ),
                audit_pub=self._audit_key.public_bytes, session_id=challenge.session_id, nonce=challenge.nonce,
            )
            self._signer = ReceiptSigner(self._audit_key, challenge.session_id)
            await channel.send(m.AttestResponse(envelope=encode_envelope(env)))
            while not self._stopped.is_set():
                msg = await channel.receive()
                self._dispatch(msg)
                if isinstance(msg, m.Shutdown):
                    # keep reading until the main thread has replied and closed the channel
                    continue
        except (CCKernelError, OSError) as exc:
            self._stop(f"{type(exc).__name__}: {exc}")
            if self._shell is not None:
                self._shell.interrupt()
        finally:
            if self._channel is not None:
                await self._channel.aclose()

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.Ping):
            assert self._loop is not None and self._channel is not None
            self._loop.create_task(self._channel.send(m.Pong(seq=msg.seq)))
        elif isinstance(msg, m.Interrupt):
            # only a request the kernel had allocated when its user interrupted (never a later one)
            running = self._running_req
            if self._shell is not None and running is not None and running < msg.before:
                self._shell.interrupt()
        elif isinstance(msg, m.Credit):
            with self._window:
                self._outstanding = max(0, self._outstanding - msg.nbytes)
                self._window.notify_all()
        elif isinstance(msg, m.InputReply):
            self._inputs.put(msg)
        elif isinstance(msg, m.Fatal):
            self._stop(f"the kernel closed the session: {msg.reason}")
        else:
            self._work.put(msg)


def _output_message(kind: str, content: dict[str, Any], req_id: int) -> m.Message:
    if kind == "stream":
        return m.Stream(req_id=req_id, name=content["name"], text=content["text"])
    if kind == "display_data":
        return m.DisplayData(req_id=req_id, data=content["data"], metadata=content.get("metadata", {}),
                             transient=content.get("transient", {}))
    if kind == "update_display_data":
        return m.UpdateDisplayData(req_id=req_id, data=content["data"], metadata=content.get("metadata", {}),
                                   transient=content.get("transient", {}))
    if kind == "execute_result":
        return m.ExecuteResult(req_id=req_id, execution_count=content["execution_count"], data=content["data"],
                               metadata=content.get("metadata", {}))
    if kind == "error":
        return m.Error(req_id=req_id, ename=content["ename"], evalue=content["evalue"],
                       traceback=list(content["traceback"]))
    if kind == "clear_output":
        return m.ClearOutput(req_id=req_id, wait=bool(content.get("wait", False)))
    if kind in ("comm_open", "comm_msg", "comm_close"):
        cls: type[m.Message] = {"comm_open": m.CommOpen, "comm_msg": m.CommMsg, "comm_close": m.CommClose}[kind]
        fields: dict[str, Any] = {
            "req_id": req_id, "comm_id": content["comm_id"], "data": content.get("data", {}),
            "metadata": content.get("metadata", {}), "buffers": [bytes(b) for b in content.get("buffers", [])],
        }
        if kind == "comm_open":
            fields["target_name"] = content.get("target_name", "")
        return cls(**fields)
    raise ValueError(f"unknown output kind {kind!r}")


#: Output larger than this is replaced by a notice (a frame must fit DEFAULT_MAX_FRAME_SIZE with headroom).
MAX_OUTPUT_COST = DEFAULT_MAX_FRAME_SIZE - 1024 * 1024


def _now_ms() -> int:
    return int(time.time() * 1000)


def _checked_output(msg: m.Message) -> m.Message:
    """The message itself if it can be sent; else a stderr notice saying why it was not.

    A field the protocol cannot carry (NaN in JSON, an oversized value) would otherwise put the connection
    into ERROR and end the session; the user sees what happened instead.
    """
    req_id = getattr(msg, "req_id", 0)
    cost = output_cost(msg)
    if cost > MAX_OUTPUT_COST:
        return m.Stream(req_id=req_id, name="stderr", text=(
            f"[cc-kernel] an output of about {cost // (1024 * 1024)} MiB exceeds the channel's "
            f"{MAX_OUTPUT_COST // (1024 * 1024)} MiB message limit and was not sent.\n"))
    if isinstance(msg, m.Stream):
        return msg
    try:
        m.encode_message(msg)
    except ProtocolError as exc:
        return m.Stream(req_id=req_id, name="stderr", text=f"[cc-kernel] an output could not be sent: {exc}\n")
    return msg


def _execute_reply(req_id: int, r: dict[str, Any], count: int) -> m.ExecuteReply:
    return m.ExecuteReply(
        req_id=req_id, status=r.get("status", "ok"), execution_count=r.get("execution_count", count),
        user_expressions=r.get("user_expressions", {}), payload=list(r.get("payload", [])),
        ename=r.get("ename", ""), evalue=r.get("evalue", ""), traceback=list(r.get("traceback", [])),
    )


assert all(c in OUTPUT_MESSAGES for c in (m.Stream, m.DisplayData, m.Error))
