"""I/O: the one module with TLS (the only import of ``ssl``): TLS 1.3 over asyncio protocols, protocol frames.

Invariants: every connection is TLS 1.3 (no fallback); the client does not verify the certificate through a CA
(stdlib ssl has no custom verify callback) — the attested peer check in ``channel.ratls`` does that before any
application byte is sent, and ``protocol.Connection`` refuses to encode application messages before it; the
server's private key is loaded from memory (a memfd) on Linux, never written to disk (elsewhere: a private
temporary file, removed at once); socket and TLS failures surface as BrokenChannelError / ConnectError, never
as raw OSError/ssl.SSLError.

Client keys (mutual TLS): a server given ``AuthorizedClients`` requires a client certificate whose chain ends
at one of the listed self-signed certificates (they are its only trust anchors; OpenSSL checks the signature,
validity and clientAuth usage at the handshake), then checks again that the certificate's SPKI SHA-256 is
listed (``FramedChannel.client_key_sha256``). A refused handshake's alert reaches the client (asyncio alone
would drop it) and the connection is closed gracefully, so the client can say why. A server given no
``AuthorizedClients`` requests no client certificate (local mode, or an explicitly unsafe server).

Busy servers: ``cc-kernel enclave serve`` answers a client it cannot serve with one plaintext line
(``busy_line``) instead of a TLS handshake; ``open_client`` recognises it and raises ``ServerBusy``. The line is
unauthenticated: it is shown as a hint, never trusted.

Receiving: asyncio's TLS transport decrypts into one reusable buffer of ``_ChannelProtocol`` (an
``asyncio.BufferedProtocol``), whose bytes go straight into ``Connection.receive_data``; ``FramedChannel.receive``
takes messages from the Connection and waits on a future when it needs more. Memory stays bounded: once the
bytes fed to the Connection and not yet returned as messages exceed ``RECEIVE_HIGH_WATER`` (not counting an
unfinished frame, itself at most ``max_frame_size``), reading pauses until the consumer brings them down to
``RECEIVE_LOW_WATER`` — before the Connection is READY, already above twice its (pre-READY) frame limit, so a
client that was not attested yet cannot make the server hold more than a few frames. Sending: writes wait for
the transport's buffer to drain below its low-water mark.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import socket
import ssl
import tempfile
from asyncio import sslproto
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cc_kernel.channel.clients import AuthorizedClients, ClientIdentity, refusal_message
from cc_kernel.crypto.clientcert import certificate_spki_sha256
from cc_kernel.crypto.keys import TlsIdentity
from cc_kernel.errors import (
    BrokenChannelError,
    ClientNotAuthorized,
    ClosedChannelError,
    ConfigError,
    ConnectError,
    RemoteProtocolError,
    ServerBusy,
)
from cc_kernel.protocol.connection import Connection, ConnectionClosed
from cc_kernel.protocol.framing import NEED_DATA
from cc_kernel.protocol.messages import Fatal, Message

#: Size of the buffer the TLS transport decrypts into: at most this many bytes are handed to the Connection per
#: callback. Larger than the 256 KiB asyncio reads from the socket at a time, so one read is one callback.
READ_CHUNK = 1024 * 1024
#: asyncio stream buffer limits (the streams in ``cc_kernel.testing``): a slow consumer pauses reading instead
#: of buffering without bound.
STREAM_LIMIT = 4 * 1024 * 1024
#: Received bytes waiting in the Connection (whole frames not yet taken by ``receive``) above which reading
#: pauses, and below which it resumes.
RECEIVE_HIGH_WATER = STREAM_LIMIT
RECEIVE_LOW_WATER = STREAM_LIMIT // 2


#: AF_VSOCK context ids and ports (Linux ``<linux/vm_sockets.h>``), defined here so that addresses parse on
#: every system; only opening a vsock socket needs ``socket.AF_VSOCK``.
VMADDR_CID_ANY = 0xFFFFFFFF  # listen on every context id of this machine
VMADDR_CID_LOCAL = 1  # this machine (loopback; needs the kernel's vsock_loopback transport)
VMADDR_CID_HOST = 2  # the host / hypervisor side (e.g. a Nitro enclave's parent instance is CID 3)
VMADDR_PORT_ANY = 0xFFFFFFFF  # "any port": not accepted in addresses, the peer must know the port
#: Largest TCP port (port 0 is accepted: listening on it picks a free port).
_TCP_PORT_MAX = 65535


@dataclass(frozen=True)
class Address:
    """Where an enclave server listens: a Unix socket path, a TCP host and port, or a vsock CID and port."""

    kind: str  # "unix" | "tcp" | "vsock"
    path: str = ""
    host: str = ""
    port: int = 0
    cid: int = 0  # vsock only; VMADDR_CID_ANY to listen on every context id

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "vsock":
            cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
            return f"vsock://{cid}:{self.port}"
        return f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``unix:PATH``, ``tcp://HOST:PORT``, ``HOST:PORT`` or ``vsock://CID:PORT``.

    A vsock CID is a number (e.g. a Nitro enclave's CID, ``1`` for this machine) or ``any`` (listen on every
    CID, as an enclave does); ``str()`` of the result parses back to an equal address.

    Numbers are ASCII digits only (``str.isdigit`` also accepts ``'²'`` and ``'７８００'``). TCP port 0 is
    accepted: listening on it picks a free port (``--listen 127.0.0.1:0``).

    Raises:
        ConfigError: the address has no recognisable form, a TCP port is not a number in 0..65535, or a vsock
            CID/port is not a number in its range; the message names the offending text.
    """
    text = text.strip()
    if text.startswith("vsock:"):
        return _parse_vsock(text)
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError(f"unix address {text!r} has no path")
        return Address("unix", path=path)
    form = "use unix:/path/to.sock or tcp://HOST:PORT"
    rest = text[len("tcp://") :] if text.startswith("tcp://") else text
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text:
        raise ConfigError(f"cannot parse address {text!r}: {form}")
    port = _ascii_number(port_text, _TCP_PORT_MAX)
    if port is None:
        raise ConfigError(f"TCP port {port_text!r} in {text!r} is not a number from 0 to {_TCP_PORT_MAX}: {form}")
    host = host.strip("[]") or "127.0.0.1"
    return Address("tcp", host=host, port=port)


def _ascii_number(text: str, maximum: int) -> int | None:
    """``text`` as an int if it is ASCII digits only (leading zeros allowed) and at most ``maximum``, else None.

    ``str.isdigit`` alone is not enough: it accepts ``'²'`` (``int`` refuses it) and ``'７８００'`` (``int``
    reads 7800), and ``int`` refuses more than 4300 digits with a ValueError.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits)
    return value if value <= maximum else None


def _parse_vsock(text: str) -> Address:
    form = "use vsock://CID:PORT, e.g. vsock://16:5005 to connect or vsock://any:5005 to listen"
    if not text.startswith("vsock://"):
        raise ConfigError(f"cannot parse vsock address {text!r}: {form}")
    cid_text, sep, port_text = text[len("vsock://") :].rpartition(":")
    if not sep or not cid_text:
        raise ConfigError(f"vsock address {text!r} needs a CID and a port: {form}")
    cid = VMADDR_CID_ANY if cid_text.lower() == "any" else _ascii_number(cid_text, VMADDR_CID_ANY)
    if cid is None:
        raise ConfigError(
            f"vsock CID {cid_text!r} in {text!r} is not a number from 0 to {VMADDR_CID_ANY} or 'any': {form}"
        )
    port = _ascii_number(port_text, VMADDR_PORT_ANY - 1)
    if port is None:
        raise ConfigError(
            f"vsock port {port_text!r} in {text!r} is not a number from 0 to {VMADDR_PORT_ANY - 1}: {form}"
        )
    return Address("vsock", cid=cid, port=port)


def _vsock_socket(address: Address, action: str) -> socket.socket:
    """A new AF_VSOCK stream socket (Linux only).

    Raises:
        ConnectError: this system has no AF_VSOCK, or the kernel refuses to create the socket.
    """
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise ConnectError(f"cannot {action} {address}: this system has no AF_VSOCK sockets (Linux only)")
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectError(f"cannot {action} {address}: AF_VSOCK is not available here ({exc})") from exc


def _tls13_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def client_context(client_identity: ClientIdentity | None = None) -> ssl.SSLContext:
    """TLS 1.3 client context. Certificate checking is done by the attested peer check, not by a CA.

    With ``client_identity`` the client presents that key and certificate when the server asks for one."""
    ctx = _tls13_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_identity is not None:
        _load_identity(ctx, client_identity.tls)
    return ctx


def server_context(identity: TlsIdentity, clients: AuthorizedClients | None = None) -> ssl.SSLContext:
    """TLS 1.3 server context presenting ``identity``; its key is loaded from memory, never from disk.

    With ``clients`` a client certificate is required and must chain to one of the authorised, self-signed
    certificates, which are the context's only trust anchors (no system store is loaded). Without, no client
    certificate is requested.

    Raises:
        ConfigError: ``clients`` lists no certificate (such a server could serve nobody).
    """
    ctx = _tls13_context(ssl.Purpose.CLIENT_AUTH)
    ctx.num_tickets = 0  # no session resumption: every connection is attested afresh
    _load_identity(ctx, identity)
    if clients is not None:
        if not len(clients):
            raise ConfigError(f"{clients.source} lists no authorised client key")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=clients.anchors_der())
    return ctx


def _load_identity(ctx: ssl.SSLContext, identity: TlsIdentity) -> None:
    """Load a key and certificate into ``ctx`` from memory (a memfd) on Linux; elsewhere from a private temporary
    file, removed at once."""
    pem = identity.key_pem + identity.cert_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cc-kernel-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    else:  # pragma: no cover - non-Linux: a private, immediately removed temporary file
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "identity.pem"
            path.touch(mode=0o600)
            path.write_bytes(pem)
            ctx.load_cert_chain(str(path))


# --- busy servers --------------------------------------------------------------------------------------------

#: The start of the plaintext line a full enclave server sends instead of a TLS handshake.
BUSY_PREFIX = b"CC-KERNEL-BUSY"
_BUSY_RE = re.compile(rb"CC-KERNEL-BUSY active=(\d{1,6}) max=(\d{1,6})\n")
#: Bytes of the server's first answer a client keeps, to recognise a busy line.
_SNIFF_SIZE = 64


def busy_line(active: int, maximum: int) -> bytes:
    """The line a full server sends before closing: ``CC-KERNEL-BUSY active=N max=M\\n`` (ASCII)."""
    return b"CC-KERNEL-BUSY active=%d max=%d\n" % (active, maximum)


def parse_busy_line(data: bytes) -> tuple[int, int] | None:
    """(active, maximum) if ``data`` starts with a busy line, else None (unauthenticated: a hint only)."""
    match = _BUSY_RE.match(data)
    return (int(match[1]), int(match[2])) if match else None


def _server_busy(data: bytes, address: object) -> ServerBusy | None:
    if not data.startswith(BUSY_PREFIX):
        return None
    parsed = parse_busy_line(data)
    if parsed is None:
        return ServerBusy(f"the enclave server at {address} is busy (it runs as many sessions as it may); "
                          "try again later")
    active, maximum = parsed
    return ServerBusy(
        f"the enclave server at {address} is busy: {active} of {maximum} sessions are active; try again later",
        active=active, maximum=maximum,
    )


# --- TLS handshakes ------------------------------------------------------------------------------------------
# asyncio's own TLS protocol (``asyncio.sslproto.SSLProtocol``, Python >= 3.11) does the handshakes, with two
# additions that the public API does not offer: the client keeps the first bytes it received (a busy server
# answers with a plaintext line, which OpenSSL would only report as a record error), and the server sends the
# alert of a refused handshake (asyncio closes without writing it, so a refused client would see a bare reset).


class _ClientTLS(sslproto.SSLProtocol):
    """The client's TLS protocol; ``first_bytes`` holds the start of what the server sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_bytes = bytearray()
        self._view: memoryview | None = None

    def get_buffer(self, n: int) -> memoryview:
        view = super().get_buffer(n)
        self._view = view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if len(self.first_bytes) < _SNIFF_SIZE and self._view is not None:
            self.first_bytes += self._view[: min(nbytes, _SNIFF_SIZE - len(self.first_bytes))]
        super().buffer_updated(nbytes)


class _ServerTLS(sslproto.SSLProtocol):
    """The server's TLS protocol: a failed handshake's alert (e.g. an unknown client certificate) is written
    to the socket before asyncio closes it."""

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()  # type: ignore[attr-defined]  # the alert OpenSSL queued
        super()._on_handshake_complete(handshake_exc)


#: TLS alerts (OpenSSL reason names) with which a server refuses a client certificate.
_CLIENT_REFUSED_ALERTS = (
    "CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_EXPIRED", "CERTIFICATE_UNKNOWN",
    "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_REVOKED",
)
#: ``Fatal.reason`` of a server whose post-handshake key check refused the client (it starts with this).
CLIENT_REFUSED_REASON = "client key not authorised"


def client_refusal(exc: BaseException | None, client_identity: ClientIdentity | None) -> ClientNotAuthorized | None:
    """A ClientNotAuthorized if ``exc`` (what ended a fresh connection) is a server refusing our client key:
    a TLS alert about our certificate, or the server's Fatal saying so. None otherwise."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        reason = getattr(exc, "reason", None)
        if isinstance(exc, ssl.SSLError) and isinstance(reason, str) and any(
            reason.endswith(alert) for alert in _CLIENT_REFUSED_ALERTS
        ) and "ALERT" in reason:
            break
        if CLIENT_REFUSED_REASON in str(exc):
            break
        exc = exc.__cause__ or exc.__context__
    else:
        return None
    line = client_identity.line if client_identity is not None else ""
    return ClientNotAuthorized(refusal_message(client_identity), line=line)


class _ChannelProtocol(asyncio.BufferedProtocol):
    """The asyncio side of a FramedChannel: decrypted bytes into the Connection, wake-ups, flow control.

    Callbacks never raise (asyncio would log a traceback): what happened is recorded for ``FramedChannel``.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._loop = asyncio.get_running_loop()
        self._view = memoryview(bytearray(READ_CHUNK))  # reused: the Connection copies what it is fed
        self.transport: asyncio.Transport | None = None
        self.bytes_received = 0
        # bytes fed to the Connection and not yet taken by receive() as messages; of those, ``unfinished`` are
        # the start of a frame still arriving (set when receive() last found no whole frame)
        self.backlog = 0
        self.unfinished = 0
        self.reading_paused = False
        self.eof = False  # the peer closed its side (TLS close_notify, or the connection ended without error)
        self.lost = False  # connection_lost() was called
        self.error: Exception | None = None  # the failure that ended the connection, if one did
        self.feed_error: Exception | None = None  # Connection.receive_data refused bytes (it is in ERROR)
        self._waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lost_future = self._loop.create_future()

    # --- asyncio callbacks -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # asyncio's TLS transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        if self.feed_error is None:
            try:
                with self._view[:nbytes] as data:
                    self.conn.receive_data(data)
            except Exception as exc:  # the Connection is in ERROR: receive() raises that error
                self.feed_error = exc
                self.pause_reading()
            else:
                self.backlog += nbytes
                if self.backlog - self.unfinished > min(RECEIVE_HIGH_WATER, 2 * self.conn.receive_frame_limit):
                    self.pause_reading()
        self.wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.wake()
        return False  # the transport closes itself (asyncio's TLS transport always does)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is None:
            self.eof = True
        else:
            self.error = exc
        self.wake()
        self.wake_senders()
        if not self._lost_future.done():
            self._lost_future.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.wake_senders()

    # --- for FramedChannel -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the task waiting in ``wait_for_data``, if any."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def wake_senders(self) -> None:
        """Wake the tasks waiting in ``drain``."""
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()

    async def wait_for_data(self) -> None:
        """Wait for more bytes, EOF or the end of the connection; the Connection holds no whole frame.

        Raises:
            RuntimeError: another task is already waiting (one task reads).
        """
        if self._waiter is not None:
            raise RuntimeError("receive() called while another task is already waiting for a message")
        self.unfinished = self.backlog  # all of it is the start of one frame: it must be read on
        self.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark (until it drained below the low).

        Raises:
            OSError: the connection is lost (ConnectionResetError, or the failure that ended it).
        """
        if self.error is not None:
            raise self.error
        if self.transport is not None and self.transport.is_closing():
            await asyncio.sleep(0)  # let a scheduled connection_lost() run first
        if self.lost:
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._drain_waiters.remove(waiter)
        if self.lost:
            raise self.error or ConnectionResetError("Connection lost")

    async def wait_lost(self) -> None:
        await asyncio.shield(self._lost_future)


class FramedChannel:
    """A TLS stream carrying protocol frames. One task reads; sends are serialised by a lock.

    Made by ``open_client`` and ``accept_server``.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _ChannelProtocol) -> None:
        """Raises ConnectError if the connection is not TLS 1.3 (the transport is then closed)."""
        self._transport = transport
        self._protocol = protocol
        self.conn = protocol.conn
        self._send_lock = asyncio.Lock()
        self._closed = False
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is None or ssl_obj.version() != "TLSv1.3":
            transport.close()
            raise ConnectError(f"channel is not TLS 1.3 (negotiated {ssl_obj and ssl_obj.version()})")
        cert = ssl_obj.getpeercert(binary_form=True)
        self.peer_cert_der: bytes | None = cert
        #: Server side: the SPKI SHA-256 of the client's authorised key (set by ``accept_server`` after its
        #: check); None when the server serves any client, and always on the client side.
        self.client_key_sha256: bytes | None = None

    @property
    def bytes_received(self) -> int:
        """Bytes of TLS plaintext received so far (for benchmarks and teaching)."""
        return self._protocol.bytes_received

    async def send(self, msg: Message) -> None:
        """Encode and send one message, waiting while the peer is slow (backpressure).

        Raises:
            ClosedChannelError: we closed the channel.
            BrokenChannelError: the peer or the network broke it.
            LocalProtocolError: the protocol state does not allow this message (e.g. before attestation).
        """
        if self._closed:
            raise ClosedChannelError("the channel was closed")
        async with self._send_lock:
            if self._closed:
                raise ClosedChannelError("the channel was closed")
            data = self.conn.send(msg)
            try:
                self._transport.write(data)
                await self._protocol.drain()
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                if self._closed:
                    raise ClosedChannelError("the channel was closed") from exc
                raise BrokenChannelError(f"sending failed: {exc}") from exc
            if self._closed:  # closed while we waited for the peer to read
                raise ClosedChannelError("the channel was closed")

    async def receive(self) -> Message:
        """Return the next message from the peer. Messages that arrived whole before the connection failed
        or ended are returned first.

        Raises:
            BrokenChannelError: EOF, reset or a TLS record failure (e.g. a tampered record).
            RemoteProtocolError: the peer sent a malformed or out-of-order frame.
            ClosedChannelError: we closed the channel.
        """
        conn, protocol = self.conn, self._protocol
        while True:
            if self._closed:
                raise ClosedChannelError("the channel was closed")
            event = conn.next_event()
            if event is NEED_DATA:
                if protocol.feed_error is not None:  # pragma: no cover - next_event raised the Connection's error
                    raise BrokenChannelError(f"receiving failed: {protocol.feed_error}") from protocol.feed_error
                if protocol.error is not None:
                    exc = protocol.error
                    raise BrokenChannelError(f"receiving failed: {type(exc).__name__}: {exc}") from exc
                if protocol.eof:
                    try:
                        conn.receive_data(b"")
                    except RemoteProtocolError as exc:
                        raise BrokenChannelError(f"the peer closed the channel mid-frame: {exc}") from exc
                    conn.next_event()  # no whole frame was left: this closes the Connection
                    raise BrokenChannelError("the peer closed the channel")
                await protocol.wait_for_data()
                continue
            if isinstance(event, ConnectionClosed):
                raise BrokenChannelError(f"the peer closed the channel: {event.reason}")
            protocol.backlog -= conn.last_frame_size
            protocol.unfinished = 0  # the first frame taken after NEED_DATA is the one that was arriving
            if protocol.reading_paused and protocol.backlog <= RECEIVE_LOW_WATER:
                protocol.resume_reading()
            return event

    async def aclose(self) -> None:
        """Close the channel (idempotent). Pending sends and receives fail with ClosedChannelError."""
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        protocol.wake()
        protocol.wake_senders()
        protocol.resume_reading()  # the TLS shutdown reads on: do not leave reading paused
        self._transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(protocol.wait_lost(), timeout=1.0)


async def open_client(
    address: Address | socket.socket, conn: Connection, *, timeout: float = 10.0,
    client_identity: ClientIdentity | None = None,
) -> FramedChannel:
    """Connect (TCP, Unix socket, vsock, or an already connected socket) and complete the TLS 1.3 handshake,
    presenting ``client_identity`` if the server asks for a client certificate.

    In TLS 1.3 the server judges the client certificate after the client's side of the handshake is done: a
    refusal surfaces on the first receive (see ``client_refusal``), not here.

    Raises:
        ServerBusy: the server answered that it runs as many sessions as it may (its plaintext busy line).
        ConnectError: nothing listens there, the handshake failed or timed out.
    """
    ctx = client_context(client_identity)
    loop = asyncio.get_running_loop()
    protocol = _ChannelProtocol(conn)
    handshake: asyncio.Future[None] = loop.create_future()
    tls = _ClientTLS(loop, protocol, ctx, handshake, server_side=False, server_hostname=None,
                     ssl_handshake_timeout=timeout)
    raw: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout):
            if isinstance(address, socket.socket):
                raw, _ = await loop.create_connection(lambda: tls, sock=address)
            elif address.kind == "vsock":
                raw = await _open_vsock(address, tls)
            elif address.kind == "unix":
                raw, _ = await loop.create_unix_connection(lambda: tls, address.path)
            else:
                raw, _ = await loop.create_connection(lambda: tls, address.host, address.port)
            await handshake
    except TimeoutError as exc:
        _close_quietly(raw, tls)
        raise ConnectError(f"connecting to {address} timed out after {timeout} s") from exc
    except (OSError, ssl.SSLError) as exc:
        _close_quietly(raw, tls)
        busy = _server_busy(bytes(tls.first_bytes), address)
        if busy is not None:
            raise busy from exc
        raise ConnectError(f"cannot connect to {address}: {exc}") from exc
    except BaseException:
        _close_quietly(raw, tls)
        raise
    assert protocol.transport is not None  # connection_made ran before the handshake future was resolved
    return FramedChannel(protocol.transport, protocol)


def _close_quietly(transport: asyncio.BaseTransport | None, tls: sslproto.SSLProtocol | None = None) -> None:
    """Close the raw transport and the TLS protocol's application transport (which asyncio creates with the
    protocol, and warns about if it is never closed) after a failed connection."""
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
    if tls is not None:
        with contextlib.suppress(Exception):
            tls._get_app_transport().close()  # type: ignore[attr-defined]


async def _open_vsock(address: Address, tls: asyncio.BaseProtocol) -> asyncio.BaseTransport:
    """Connect an AF_VSOCK stream socket to ``address`` and run the TLS client handshake over it, exactly as
    over TCP. The socket is closed if anything fails or the caller is cancelled (by us while connecting, by
    asyncio's transport once the handshake has started).

    Raises:
        ConnectError: ``address`` is a listening address (CID any), or this system has no AF_VSOCK.
        OSError, ssl.SSLError: connecting or the handshake failed.
    """
    if address.cid == VMADDR_CID_ANY:
        raise ConnectError(
            f"cannot connect to {address}: 'any' is for listening; connect to the enclave's CID "
            "(e.g. vsock://16:5005)"
        )
    loop = asyncio.get_running_loop()
    sock = _vsock_socket(address, "connect to")
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (address.cid, address.port))
    except BaseException:
        sock.close()
        raise
    transport, _ = await loop.create_connection(lambda: tls, sock=sock)
    return transport


#: Bytes and seconds a server reads (and discards) from a refused client before closing, so that the close
#: is a FIN after the alert rather than a reset that could overtake it.
_REFUSED_DRAIN_BYTES = 64 * 1024
_REFUSED_DRAIN_SECONDS = 1.0


async def accept_server(
    sock: socket.socket, identity: TlsIdentity, conn: Connection, *, clients: AuthorizedClients | None,
    timeout: float = 10.0,
) -> FramedChannel:
    """Run the server side of the TLS 1.3 handshake on an accepted (or socketpair) socket.

    ``clients``: the authorised client keys; the client must present one (checked by OpenSSL against them as
    trust anchors, then its SPKI SHA-256 against the list, constant time), which the channel's
    ``client_key_sha256`` then names. None serves any client and requests no certificate: only for the
    kernel's own socketpair (local mode) or a server started with the explicit unsafe option.

    ``sock`` is closed by this function on failure (gracefully: a refused client receives the TLS alert) and
    belongs to the channel on success.

    Raises:
        ClientNotAuthorized: the client presented no certificate, an unknown or expired one (at the handshake),
            or one whose key is not listed (after it).
        ConnectError: the client did not complete a TLS 1.3 handshake in time, or it failed otherwise.
    """
    ctx = server_context(identity, clients)
    loop = asyncio.get_running_loop()
    protocol = _ChannelProtocol(conn)
    handshake: asyncio.Future[None] = loop.create_future()
    tls = _ServerTLS(loop, protocol, ctx, handshake, server_side=True,
                     ssl_handshake_timeout=timeout)  # type: ignore[arg-type]  # typeshed says int; a float works
    # asyncio gets a duplicate: when it closes after a refused handshake, this descriptor keeps the connection
    # open until the alert is followed by an orderly FIN (see _close_gracefully)
    ours = sock
    try:
        theirs = ours.dup()
    except OSError as exc:
        ours.close()
        raise ConnectError(f"cannot accept the connection: {exc}") from exc
    raw: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout):
            raw, _ = await loop.connect_accepted_socket(lambda: tls, theirs)
            await handshake
    except TimeoutError as exc:
        _close_quietly(raw, tls)
        theirs.close()
        ours.close()
        raise ConnectError(f"TLS handshake did not complete within {timeout} s") from exc
    except (OSError, ssl.SSLError) as exc:
        _close_quietly(raw, tls)
        theirs.close()
        await _close_gracefully(ours)
        reason = getattr(exc, "reason", None) or ""
        if clients is not None and reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"):
            raise ClientNotAuthorized(f"client refused at the TLS handshake: {exc}") from exc
        raise ConnectError(f"TLS handshake failed: {exc}") from exc
    except BaseException:
        _close_quietly(raw, tls)
        theirs.close()
        ours.close()
        raise
    ours.close()  # the duplicate asyncio holds carries the connection from here
    assert protocol.transport is not None
    channel = FramedChannel(protocol.transport, protocol)
    if clients is not None:
        # the handshake checked the chain to a listed certificate; check that the key itself is listed
        der = channel.peer_cert_der
        try:
            digest = certificate_spki_sha256(der) if der else b""
        except ValueError:
            digest = b""
        if not digest or not clients.is_authorized(digest):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.send(Fatal(reason=CLIENT_REFUSED_REASON)), 1.0)
            await channel.aclose()
            raise ClientNotAuthorized(
                f"client refused after the TLS handshake: its key (SPKI SHA-256 {digest.hex() or 'none'}) is not "
                f"in {clients.source}"
            )
        channel.client_key_sha256 = digest
    return channel


async def _close_gracefully(sock: socket.socket) -> None:
    """Close a refused connection after what was sent: FIN, read (and drop) what the peer still sends for a
    bounded time and size, then close, so no reset overtakes the TLS alert."""
    loop = asyncio.get_running_loop()
    try:
        sock.setblocking(False)
        sock.shutdown(socket.SHUT_WR)
        received = 0
        async with asyncio.timeout(_REFUSED_DRAIN_SECONDS):
            while received < _REFUSED_DRAIN_BYTES:
                data = await loop.sock_recv(sock, 16384)
                if not data:
                    break
                received += len(data)
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


def listen(address: Address, *, backlog: int = 16) -> socket.socket:
    """Create a listening socket (Unix sockets get mode 0600 and replace a stale socket file; a vsock address
    binds its CID, usually VMADDR_CID_ANY, and port).

    Raises:
        ConnectError: the address is in use or not permitted, or vsock is not available on this system.
    """
    if address.kind == "vsock":
        sock = _vsock_socket(address, "listen on")
        try:
            sock.bind((address.cid, address.port))
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot listen on {address}: {exc}") from exc
        return sock
    try:
        if address.kind == "unix":
            path = Path(address.path)
            if path.is_socket():
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(address.path)
            finally:
                os.umask(old)
        else:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            family = infos[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
        sock.listen(backlog)
    except OSError as exc:
        raise ConnectError(f"cannot listen on {address}: {exc}") from exc
    return sock
