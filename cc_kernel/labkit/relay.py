"""Lab tools: the recording, tampering TCP relay — a man in the middle, as an untrusted host or network is.

Layer: I/O (asyncio streams on the caller's event loop), part of ``labkit``; used by the teaching lab and the
test harness. Invariants: the relay forwards every byte both ways unchanged and in order, keeping a copy
(``Chunk``s, with connection, direction and time), and carries a half-close across; it changes at most one byte
per connection, by the one tamper rule ``Flip`` — one bit of a TLS record's payload, never of a record header,
so the damage always hits authenticated data and never the framing; every change is reported (``tampered``).
Directions are named from the client's side: ``"c2s"`` (client -> server, e.g. kernel -> enclave) and ``"s2c"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal

from cc_kernel.channel.transport import STREAM_LIMIT, Address, parse_address
from cc_kernel.labkit.tls import APPLICATION_DATA, TlsRecordWalker

__all__ = ["DIRECTIONS", "Chunk", "Direction", "Flip", "Recorded", "Relay", "RelayedConnection", "Tampering",
           "dialable"]

#: Byte streams of a relayed connection: client -> server, and back.
Direction = Literal["c2s", "s2c"]
DIRECTIONS: Final[tuple[Direction, Direction]] = ("c2s", "s2c")
#: Address kinds the relay (and the harness's raw TLS client) can dial; vsock is tested with its own sockets.
_DIALABLE_KINDS: Final = ("unix", "tcp")
_FLIP_MASK: Final = 0x01  # one bit


def dialable(target: Address | str | socket.socket, who: str) -> Address | socket.socket:
    """``target`` as an Address (text is parsed by ``channel.transport.parse_address``) or the socket itself.

    Raises:
        ConfigError: ``target`` is text that is not an address.
        ValueError: an address of a kind ``who`` cannot dial (vsock).
        TypeError: ``target`` is neither an Address, text nor a socket.
    """
    if isinstance(target, socket.socket):
        return target
    if isinstance(target, str):
        target = parse_address(target)
    if not isinstance(target, Address):
        raise TypeError(f"{who} target must be an Address, an address string or a socket, not {type(target).__name__}")
    if target.kind not in _DIALABLE_KINDS:
        raise ValueError(
            f"{who} cannot dial {target}: only {' and '.join(_DIALABLE_KINDS)} addresses are supported, "
            f"not {target.kind}"
        )
    return target


@dataclass(frozen=True)
class Chunk:
    """Bytes a relay forwarded: on which ``channel``, in which connection, which way, when (s after start)."""

    channel: str
    conn: int
    direction: Direction
    at: float
    data: bytes


class Recorded:
    """What relays forwarded, as ``Chunk``s: one relay, or several seen as one."""

    @property
    def chunks(self) -> list[Chunk]:
        """Everything forwarded so far, in the order it was forwarded."""
        raise NotImplementedError

    def data(self, direction: Direction | None = None, *, channel: str | None = None, conn: int | None = None) -> bytes:
        """Every byte forwarded (after any flip), optionally of one direction, channel or connection, in order."""
        return b"".join(
            c.data
            for c in self.chunks
            if (direction is None or c.direction == direction)
            and (channel is None or c.channel == channel)
            and (conn is None or c.conn == conn)
        )


@dataclass(frozen=True)
class Flip:
    """The tamper rule: in each relayed connection, flip one bit of the first TLS record-payload byte going
    ``direction`` at that connection's stream offset ``at`` or later, once the client has sent
    ``after_client_records`` application-data records in that connection (0: at once)."""

    direction: Direction
    at: int = 0
    after_client_records: int = 0

    @classmethod
    def after_handshake(cls) -> Flip:
        """The server's first bytes after the handshake is over: the client's first application-data record is
        its (encrypted) Finished, its second the first application data."""
        return cls("s2c", after_client_records=2)


@dataclass(frozen=True)
class Tampering:
    """A byte the relay changed: in which connection and direction, where, from what to what."""

    conn: int
    direction: Direction
    stream_offset: int
    record_index: int
    before: int
    after: int


class RelayedConnection:
    """One connection through a relay: walks the TLS records of both directions and applies the relay's rule."""

    def __init__(self, relay: Relay, index: int) -> None:
        self.relay = relay
        self.index = index
        self.walkers: dict[Direction, TlsRecordWalker] = {d: TlsRecordWalker() for d in DIRECTIONS}
        self.flipped = False

    def feed(self, direction: Direction, data: bytes) -> bytes:
        """The next bytes going ``direction``, as the relay forwards them (at most one bit changed)."""
        walker = self.walkers[direction]
        start = walker.offset
        spans = walker.feed(data)  # always walk, to know the record boundaries
        flip = self.relay.flip
        if flip is None or self.flipped or flip.direction != direction:
            return data
        if self.walkers["c2s"].count(APPLICATION_DATA) < flip.after_client_records:
            return data
        for lo, hi, header in spans:
            index = max(lo, flip.at - start)
            if index < hi:
                out = bytearray(data)
                out[index] ^= _FLIP_MASK
                self.flipped = True
                self.relay.tampered.append(
                    Tampering(self.index, direction, start + index, header.index, data[index], out[index])
                )
                return bytes(out)
        return data


class Relay(Recorded):
    """A TCP relay on 127.0.0.1 in front of ``target`` (a unix or TCP address, as an ``Address`` or as text for
    ``parse_address``, or one already connected socket), recording what it forwards and tampering by ``flip``.

    Raises:
        ConfigError: ``target`` is text that is not an address.
        ValueError: ``target`` is a vsock address (the relay dials unix and TCP addresses only).
    """

    def __init__(
        self, target: Address | str | socket.socket, *, flip: Flip | None = None, channel: str = "tcp"
    ) -> None:
        self.target = dialable(target, "the relay")
        #: The tamper rule (None: forward unchanged); ``arm_flip`` replaces it.
        self.flip = flip
        #: The name its chunks carry (e.g. one of a kernel's ZMQ sockets).
        self.channel = channel
        #: Every byte it changed, in order.
        self.tampered: list[Tampering] = []
        #: Where clients connect (after ``start``).
        self.address: Address | None = None
        self._connections: list[RelayedConnection] = []
        self._chunks: list[Chunk] = []
        self._lock = threading.Lock()  # the chunks are read from other threads (a notebook's)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._used_socket = False
        self._t0 = time.monotonic()

    @property
    def connections(self) -> int:
        """How many connections it accepted."""
        return len(self._connections)

    @property
    def port(self) -> int:
        """The TCP port it listens on (0 before ``start``)."""
        return self.address.port if self.address is not None else 0

    @property
    def chunks(self) -> list[Chunk]:
        with self._lock:
            return list(self._chunks)

    def new_connection(self) -> RelayedConnection:
        """Count one more relayed connection and return its state (``_handle`` calls this for each client)."""
        connection = RelayedConnection(self, len(self._connections))
        self._connections.append(connection)
        return connection

    def arm_flip(self, direction: Direction, *, after: int = 0) -> None:
        """Flip the first record-payload byte at least ``after`` bytes beyond what the newest connection has
        forwarded in ``direction`` (once more in every connection)."""
        newest = self._connections[-1].walkers[direction].offset if self._connections else 0
        for connection in self._connections:
            connection.flipped = False
        self.flip = Flip(direction, at=newest + after)

    @property
    def flipped_at(self) -> tuple[Direction, int] | None:
        """(direction, stream offset) of the byte flipped last, or None (not armed, or not reached)."""
        if not self.tampered:
            return None
        return self.tampered[-1].direction, self.tampered[-1].stream_offset

    async def start(self) -> Address:
        """Listen on 127.0.0.1 (a free port); return the address clients should dial."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=STREAM_LIMIT)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = Address("tcp", host=host, port=port)
        return self.address

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, socket.socket):
            if self._used_socket:
                raise ConnectionRefusedError("the relay's target socket was already used")
            self._used_socket = True
            return await asyncio.open_connection(sock=self.target, limit=STREAM_LIMIT)
        if self.target.kind == "unix":
            return await asyncio.open_unix_connection(self.target.path, limit=STREAM_LIMIT)
        return await asyncio.open_connection(self.target.host, self.target.port, limit=STREAM_LIMIT)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        connection = self.new_connection()
        self._writers.append(c_writer)
        try:
            s_reader, s_writer = await self._dial()
        except OSError:
            c_writer.close()
            return
        self._writers.append(s_writer)
        up = asyncio.ensure_future(self._pump(c_reader, s_writer, connection, "c2s"))
        down = asyncio.ensure_future(self._pump(s_reader, c_writer, connection, "s2c"))
        self._tasks.update((up, down))
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._tasks.difference_update((up, down))
            for writer in (c_writer, s_writer):
                writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: RelayedConnection,
        direction: Direction,
    ) -> None:
        try:
            while True:
                data = await reader.read(64 * 1024)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()  # half-close, as TCP would carry it
                    return
                data = connection.feed(direction, data)
                with self._lock:
                    self._chunks.append(
                        Chunk(self.channel, connection.index, direction, time.monotonic() - self._t0, data)
                    )
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.close()
