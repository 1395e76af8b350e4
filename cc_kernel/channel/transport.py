"""I/O: the one module with sockets and TLS. TLS 1.3 only (stdlib ssl), asyncio streams, protocol frames.

Invariants: every connection is TLS 1.3 (no fallback); the client does not verify the certificate through a CA
(stdlib ssl has no custom verify callback) — the attested peer check in ``channel.ratls`` does that before any
application byte is sent, and ``protocol.Connection`` refuses to encode application messages before it; the
server's private key is loaded from memory (a memfd), never written to disk; socket and TLS failures surface
as BrokenChannelError / ConnectError, never as raw OSError/ssl.SSLError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cc_kernel.crypto.keys import TlsIdentity
from cc_kernel.errors import (
    BrokenChannelError,
    ClosedChannelError,
    ConfigError,
    ConnectError,
    RemoteProtocolError,
)
from cc_kernel.protocol.connection import Connection, ConnectionClosed
from cc_kernel.protocol.framing import NEED_DATA
from cc_kernel.protocol.messages import Message

READ_CHUNK = 256 * 1024
#: asyncio stream buffer limits: a slow consumer pauses reading instead of buffering without bound.
STREAM_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Address:
    """Where an enclave server listens: a Unix socket path or a TCP host and port."""

    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``unix:PATH``, ``tcp://HOST:PORT`` or ``HOST:PORT``.

    Raises:
        ConfigError: the address has no recognisable form or the port is not a number in 0..65535.
    """
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError(f"unix address {text!r} has no path")
        return Address("unix", path=path)
    rest = text[len("tcp://") :] if text.startswith("tcp://") else text
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"cannot parse address {text!r}: use unix:/path/to.sock or tcp://HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return Address("tcp", host=host, port=int(port_text))


def _tls13_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS 1.3 client context. Certificate checking is done by the attested peer check, not by a CA."""
    ctx = _tls13_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """TLS 1.3 server context presenting ``identity``; its key is loaded from memory, never from disk."""
    ctx = _tls13_context(ssl.Purpose.CLIENT_AUTH)
    ctx.num_tickets = 0  # no session resumption: every connection is attested afresh
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
    return ctx


class FramedChannel:
    """A TLS stream carrying protocol frames. One task reads; sends are serialised by a lock."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.conn = conn
        self._send_lock = asyncio.Lock()
        self._closed = False
        ssl_obj = writer.get_extra_info("ssl_object")
        if ssl_obj is None or ssl_obj.version() != "TLSv1.3":
            raise ConnectError(f"channel is not TLS 1.3 (negotiated {ssl_obj and ssl_obj.version()})")
        cert = ssl_obj.getpeercert(binary_form=True)
        self.peer_cert_der: bytes | None = cert
        #: bytes of ciphertext read and written (for benchmarks and teaching)
        self.bytes_received = 0

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
            data = self.conn.send(msg)
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                raise BrokenChannelError(f"sending failed: {exc}") from exc

    async def receive(self) -> Message:
        """Return the next message from the peer.

        Raises:
            BrokenChannelError: EOF, reset or a TLS record failure (e.g. a tampered record).
            RemoteProtocolError: the peer sent a malformed or out-of-order frame.
            ClosedChannelError: we closed the channel.
        """
        while True:
            if self._closed:
                raise ClosedChannelError("the channel was closed")
            event = self.conn.next_event()
            if isinstance(event, ConnectionClosed):
                raise BrokenChannelError(f"the peer closed the channel: {event.reason}")
            if event is not NEED_DATA:
                return event
            try:
                data = await self._reader.read(READ_CHUNK)
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                raise BrokenChannelError(f"receiving failed: {type(exc).__name__}: {exc}") from exc
            self.bytes_received += len(data)
            if not data:
                try:
                    self.conn.receive_data(b"")
                except RemoteProtocolError as exc:
                    raise BrokenChannelError(f"the peer closed the channel mid-frame: {exc}") from exc
                event = self.conn.next_event()
                if isinstance(event, ConnectionClosed) or event is NEED_DATA:
                    raise BrokenChannelError("the peer closed the channel")
                return event
            self.conn.receive_data(data)

    async def aclose(self) -> None:
        """Close the channel (idempotent). Pending sends fail with ClosedChannelError."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), timeout=1.0)


async def open_client(
    address: Address | socket.socket, conn: Connection, *, timeout: float = 10.0
) -> FramedChannel:
    """Connect (TCP, Unix socket, or an already connected socket) and complete the TLS 1.3 handshake.

    Raises:
        ConnectError: nothing listens there, the handshake failed or timed out.
    """
    ctx = client_context()
    try:
        async with asyncio.timeout(timeout):
            if isinstance(address, socket.socket):
                reader, writer = await asyncio.open_connection(
                    sock=address, ssl=ctx, server_hostname="", limit=STREAM_LIMIT
                )
            elif address.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(
                    address.path, ssl=ctx, server_hostname="", limit=STREAM_LIMIT
                )
            else:
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, ssl=ctx, server_hostname="", limit=STREAM_LIMIT
                )
    except TimeoutError as exc:
        raise ConnectError(f"connecting to {address} timed out after {timeout} s") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(f"cannot connect to {address}: {exc}") from exc
    return FramedChannel(reader, writer, conn)


async def accept_server(
    sock: socket.socket, identity: TlsIdentity, conn: Connection, *, timeout: float = 10.0
) -> FramedChannel:
    """Run the server side of the TLS 1.3 handshake on an accepted (or socketpair) socket.

    Raises:
        ConnectError: the client did not complete a TLS 1.3 handshake in time.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=server_context(identity), ssl_handshake_timeout=timeout
            )
    except TimeoutError as exc:
        raise ConnectError(f"TLS handshake did not complete within {timeout} s") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(f"TLS handshake failed: {exc}") from exc
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return FramedChannel(reader, writer, conn)


def listen(address: Address, *, backlog: int = 16) -> socket.socket:
    """Create a listening socket (Unix sockets get mode 0600 and replace a stale socket file).

    Raises:
        ConnectError: the address is in use or not permitted.
    """
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
