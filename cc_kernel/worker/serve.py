"""Worker: serve the monitor's requests with the IPython shell, over the private socketpair.

Layer: the worker process (the user's cells). Imports only ``errors``, ``protocol``, the shell and the stdlib:
it holds no key, no evidence source and no receipt signer, so a cell that inspects its own process finds
none. Everything it sends is untrusted input to the monitor, which validates, bounds and receipts it.

Threads: the MAIN thread owns the shell (SIGINT from the monitor interrupts the running cell) and handles one
request at a time (the monitor sends the next only after this one's reply or ``RequestDone``); a reader
thread takes ``Credit`` and ``InputReply`` at once and queues everything else. Output is sent from the thread
that produced it, in order, and blocks while the output window is full (credits come from the kernel,
forwarded by the monitor; the monitor applies the same window and ends a worker that ignores it).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any

from cc_kernel.errors import ProtocolError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import DEFAULT_OUTPUT_WINDOW, OutputWindow
from cc_kernel.protocol.flow import output_cost
from cc_kernel.protocol.framing import DEFAULT_MAX_FRAME_SIZE
from cc_kernel.protocol.privsep import MONITOR_TO_WORKER, LinkDecoder, encode
from cc_kernel.worker.uploads import Assembly

log = logging.getLogger("cc_kernel.worker")

#: Output larger than this is replaced by a notice (a frame must fit DEFAULT_MAX_FRAME_SIZE with headroom).
MAX_OUTPUT_COST = DEFAULT_MAX_FRAME_SIZE - 1024 * 1024

_STOP = object()


class LinkClosed(Exception):  # noqa: N818 - control flow, not an error of the user
    """The link to the monitor is gone, or the monitor asked to shut down."""


@dataclass
class _Upload:
    req_id: int
    name: str
    #: the value, built as the chunks arrive (one copy of the data: see ``worker.uploads``)
    assembly: Assembly


class MonitorLink:
    """The worker's end of the socketpair: blocking, thread-safe sends; one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._decoder = LinkDecoder(MONITOR_TO_WORKER)
        self.closed = threading.Event()

    def send(self, msg: m.Message) -> None:
        data = encode(msg)
        with self._send_lock:
            if self.closed.is_set():
                raise LinkClosed
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self.closed.set()
                raise LinkClosed from exc

    def receive(self) -> m.Message | None:
        """The next message, or None once the monitor closed the link. Raises RemoteProtocolError."""
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                return msg
            try:
                data = self._sock.recv(1024 * 1024)
            except OSError:
                data = b""
            if not data:
                self._decoder.eof()
                return None
            self._decoder.feed(data)


class WorkerServer:
    """Serve requests with ``shell`` (an ``EnclaveShell``-like object) until Shutdown or the link ends."""

    def __init__(self, link: MonitorLink) -> None:
        self._link = link
        self._work: queue.Queue[Any] = queue.Queue()
        self._inputs: queue.Queue[Any] = queue.Queue()
        self._window = OutputWindow(DEFAULT_OUTPUT_WINDOW)
        self._window_cond = threading.Condition()
        self._current_req = 0
        self._pending_upload: _Upload | None = None  # one at a time: the monitor hands over one request at a time
        self.shell: Any = None

    # -- output sink and input, called by the shell (any thread) ----------------------------------------

    def emit(self, kind: str, content: dict[str, Any]) -> None:
        msg = checked_output(output_message(kind, content, self._current_req))
        cost = output_cost(msg)
        with self._window_cond:
            while not self._window.charge(cost):
                if self._link.closed.is_set():
                    raise LinkClosed
                self._window_cond.wait(0.5)
        self._link.send(msg)

    def read_input(self, prompt: str, password: bool) -> str:
        self._link.send(m.InputRequest(req_id=self._current_req, prompt=prompt, password=password))
        reply = self._inputs.get()
        if reply is _STOP:
            raise KeyboardInterrupt("the session ended while waiting for input")
        if reply.cancelled:
            raise KeyboardInterrupt("input cancelled")
        return str(reply.value)

    # -- threads ---------------------------------------------------------------------------------------

    def _reader(self) -> None:
        try:
            while True:
                msg = self._link.receive()
                if msg is None:
                    break
                if isinstance(msg, m.Credit):
                    with self._window_cond:
                        self._window.credit(min(msg.nbytes, self._window.outstanding))
                        self._window_cond.notify_all()
                elif isinstance(msg, m.InputReply):
                    self._inputs.put(msg)
                else:
                    self._work.put(msg)
        except ProtocolError as exc:
            log.error("the monitor sent something invalid: %s", exc)
        finally:
            self._link.closed.set()
            self._work.put(_STOP)
            self._inputs.put(_STOP)
            with self._window_cond:
                self._window_cond.notify_all()

    def serve(self) -> int:
        """Run on the main thread until Shutdown or the monitor's end of the link closes."""
        threading.Thread(target=self._reader, name="cc-worker-reader", daemon=True).start()
        while True:
            try:
                item = self._work.get()
                if item is _STOP:
                    return 0
                if isinstance(item, m.Shutdown):
                    self._link.send(m.ShutdownReply(restart=item.restart))
                    return 0
                self._handle(item)
            except LinkClosed:
                return 0
            except KeyboardInterrupt:  # an interrupt that arrived between requests
                continue

    # -- requests --------------------------------------------------------------------------------------

    def _handle(self, msg: m.Message) -> None:
        shell = self.shell
        send = self._link.send
        if isinstance(msg, m.ExecuteRequest):
            self._current_req = msg.req_id
            shell.set_parent(msg.parent_msg_id)  # get_parent() for ipywidgets' Output and interact
            reply = shell.execute(
                msg.code, silent=msg.silent, store_history=msg.store_history,
                user_expressions=msg.user_expressions, allow_stdin=msg.allow_stdin,
                execution_count=msg.execution_count, cell_id=msg.cell_id,
            )
            send(execute_reply(msg.req_id, reply, msg.execution_count))
        elif isinstance(msg, m.CompleteRequest):
            self._current_req = msg.req_id
            r = shell.complete(msg.code, msg.cursor_pos)
            send(m.CompleteReply(
                req_id=msg.req_id, status=r.get("status", "ok"), matches=list(r["matches"]),
                cursor_start=r["cursor_start"], cursor_end=r["cursor_end"], metadata=r.get("metadata", {}),
            ))
        elif isinstance(msg, m.InspectRequest):
            self._current_req = msg.req_id
            r = shell.inspect(msg.code, msg.cursor_pos, msg.detail_level)
            send(m.InspectReply(
                req_id=msg.req_id, status=r.get("status", "ok"), found=bool(r.get("found")),
                data=r.get("data", {}), metadata=r.get("metadata", {}),
            ))
        elif isinstance(msg, m.IsCompleteRequest):
            self._current_req = msg.req_id
            r = shell.is_complete(msg.code)
            send(m.IsCompleteReply(req_id=msg.req_id, status=r["status"], indent=r.get("indent", "")))
        elif isinstance(msg, m.HistoryRequest):
            r = shell.history(
                hist_access_type=msg.hist_access_type, output=msg.output, raw=msg.raw, session=msg.session,
                start=msg.start, stop=msg.stop, n=msg.n, pattern=msg.pattern, unique=msg.unique,
            )
            send(m.HistoryReply(req_id=msg.req_id, status=r.get("status", "ok"), history=r["history"]))
        elif isinstance(msg, m.CommInfoRequest):
            r = shell.comm_info(msg.target_name)
            send(m.CommInfoReply(req_id=msg.req_id, comms=r.get("comms", {})))
        elif isinstance(msg, m.CommOpen | m.CommMsg | m.CommClose):
            self._current_req = msg.req_id
            kind = {m.CommOpen: "comm_open", m.CommMsg: "comm_msg", m.CommClose: "comm_close"}[type(msg)]
            content: dict[str, Any] = {"comm_id": msg.comm_id, "data": msg.data}
            if isinstance(msg, m.CommOpen):
                content["target_name"] = msg.target_name
            status: Any = "ok"
            shell.set_parent(msg.parent_msg_id)
            try:
                shell.handle_comm(kind, content, metadata=msg.metadata, buffers=list(msg.buffers))
            except Exception:  # the shell reports a handler's error as output; the request still ends
                status = "error"
            send(m.RequestDone(req_id=msg.req_id, status=status))
        elif isinstance(msg, m.UploadStart | m.UploadChunk | m.UploadEnd):
            self._upload(msg)

    def _upload(self, msg: m.UploadStart | m.UploadChunk | m.UploadEnd) -> None:
        send = self._link.send
        if isinstance(msg, m.UploadStart):  # replaces one the monitor refused, if any
            if self._pending_upload is not None:
                self._pending_upload.assembly.close()
            self._pending_upload = _Upload(msg.req_id, msg.name, Assembly(msg.size, msg.fmt))
            return
        upload = self._pending_upload
        if upload is None or upload.req_id != msg.req_id:
            return
        try:
            if isinstance(msg, m.UploadChunk):
                upload.assembly.add(msg.data)
                return
            self._pending_upload = None
            value = upload.assembly.finish()  # the monitor checked the digest of what it handed in
        except Exception as exc:  # the worker goes on (the session's variables with it); the upload is released
            self._pending_upload = None
            upload.assembly.close()
            if isinstance(exc, ValueError):
                reason = str(exc)
            elif isinstance(exc, MemoryError):
                reason = "not enough memory in the enclave's worker"
            else:  # Assembly raises only the two above: this is a fault of ours, said as such
                log.exception("binding upload %r failed", upload.name)
                reason = f"internal error {type(exc).__name__}: {exc}"
            send(m.UploadReply(req_id=msg.req_id, status="error", message=(
                f"cannot bind {upload.name!r} as {upload.assembly.fmt}: {reason}")[: m.MAX_REASON]))
            return
        self.shell.ipython.user_ns[upload.name] = value
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            summary = f"numpy array {value.shape} {value.dtype}"
        elif isinstance(value, str):
            summary = f"str of {len(value)} characters"
        else:
            summary = f"bytes of {len(value)} bytes"
        send(m.UploadReply(req_id=msg.req_id, status="ok", message=f"{upload.name} = {summary}"))


def output_message(kind: str, content: dict[str, Any], req_id: int) -> m.Message:
    """The protocol message for one shell output (``kind`` is a Jupyter IOPub message type)."""
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


def checked_output(msg: m.Message) -> m.Message:
    """The message itself if it can be sent; else a stderr notice saying why it was not.

    A field the protocol cannot carry (NaN in JSON, an oversized value) would otherwise end the session; the
    user sees what happened instead.
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


def execute_reply(req_id: int, r: dict[str, Any], count: int) -> m.ExecuteReply:
    return m.ExecuteReply(
        req_id=req_id, status=r.get("status", "ok"), execution_count=r.get("execution_count", count),
        user_expressions=r.get("user_expressions", {}), payload=list(r.get("payload", [])),
        ename=r.get("ename", ""), evalue=r.get("evalue", ""), traceback=list(r.get("traceback", [])),
    )
