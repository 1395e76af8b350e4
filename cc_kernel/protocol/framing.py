"""Pure protocol layer: length-prefixed frames (4-byte big-endian length ‖ codec body), incremental decoder.

Invariants: no I/O; a frame body is 1..max_frame_size bytes; a length header over the limit (or zero) is a
RemoteProtocolError as soon as the header is seen, before any buffering for its body, so memory is bounded by
what the peer actually sent plus one frame; decoding is linear, with one copy per frame body: whole frames are
copied straight out of the fed bytes (split off as they are fed, returned in order by ``next_frame``); only
an unfinished frame is copied into a reusable buffer, which grows by doubling and is released once it grew
beyond ``_RETAIN`` bytes and emptied.
"""

from __future__ import annotations

import collections
import enum
import struct
from typing import Any, Final

from cc_kernel.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError
from cc_kernel.protocol import codec

#: Default cap on one frame's body. The header itself could express up to 4 GiB - 1.
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
HEADER_SIZE: Final = 4
_MAX_EXPRESSIBLE: Final = 2**32 - 1
# Capacity of the unfinished-frame buffer kept while it is empty (reused, not freed and re-allocated for every
# frame: large allocations are fresh mmap()ed pages, and faulting them in costs more than decoding).
_RETAIN: Final = 4 * 1024 * 1024 + 4
#: Room made beyond what has arrived of an unfinished frame (bounded by the frame's announced size).
_AHEAD: Final = 32 * 1024
_LENGTH: Final = struct.Struct(">I")


class NeedData(enum.Enum):
    """Type of the ``NEED_DATA`` sentinel: "feed me more bytes before asking again"."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``FrameDecoder.next_frame`` and ``Connection.next_event`` when the buffer holds no whole frame.
NEED_DATA: Final = NeedData.NEED_DATA


def check_max_frame_size(max_frame_size: int) -> int:
    """Return ``max_frame_size`` if a 4-byte header can express it and it is positive.

    Raises:
        TypeError: not an int.
        ValueError: outside 1..2**32-1.
    """
    if type(max_frame_size) is not int:
        raise TypeError(f"max_frame_size must be int, got {type(max_frame_size).__name__}")
    if not 1 <= max_frame_size <= _MAX_EXPRESSIBLE:
        raise ValueError(f"max_frame_size must be in 1..{_MAX_EXPRESSIBLE}, got {max_frame_size}")
    return max_frame_size


def encode_frame(obj: Any, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode ``obj`` with the codec and prefix its length: the bytes to write for one frame.

    Raises:
        LocalProtocolError: ``obj`` cannot be encoded (e.g. a lone surrogate in a str).
        MessageTooLarge: its body exceeds ``max_size`` bytes (a LocalProtocolError).
        ValueError/TypeError: ``max_size`` is not a valid frame size.
    """
    check_max_frame_size(max_size)
    try:
        body = codec.packb(obj)
    except ValueError as exc:
        raise LocalProtocolError(f"cannot encode frame: {exc}") from exc
    if len(body) > max_size:
        raise MessageTooLarge(
            f"frame of {len(body)} bytes exceeds the limit of {max_size}", size=len(body), limit=max_size
        )
    return len(body).to_bytes(HEADER_SIZE, "big") + body


class FrameDecoder:
    """Incremental frame splitter: ``feed`` bytes in any chunking, take whole bodies from ``next_frame``.

    Feeding the same bytes whole or one byte at a time yields the same frames.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        """Raises TypeError/ValueError if ``max_frame_size`` is not in 1..2**32-1."""
        self.max_frame_size = check_max_frame_size(max_frame_size)
        self._frames: collections.deque[bytes] = collections.deque()  # whole bodies, not yet returned
        # the bytes after them: an unfinished frame (or an invalid header and what followed it) is _buf[:_end];
        # len(_buf) is the capacity
        self._buf = bytearray()
        self._end = 0
        self._buffered = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a frame."""
        return self._buffered

    @property
    def at_eof(self) -> bool:
        """True once ``eof()`` (or ``close()``) was called."""
        return self._eof

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied: the caller may reuse ``data``). Never raises for their content;
        ``next_frame`` judges it.

        Raises:
            ValueError: called after ``eof()``.
        """
        if self._eof:
            raise ValueError("feed() after eof()")
        with memoryview(data) as raw, raw.cast("B") as view:
            n = len(view)
            self._buffered += n
            pos = self._finish(view) if self._end else 0
            while pos < n:
                length = self._length(view, pos, n)
                if length is None or pos + HEADER_SIZE + length > n:  # unfinished or invalid: keep the rest
                    if length is not None:
                        self._reserve(HEADER_SIZE + length, n - pos)
                    self._append(view[pos:])
                    return
                start = pos + HEADER_SIZE
                pos = start + length
                self._frames.append(bytes(view[start:pos]))

    def _finish(self, view: memoryview) -> int:
        """Complete the buffered unfinished frame from the start of ``view``; how many bytes of it were used."""
        pos = 0
        if self._end < HEADER_SIZE:
            pos = min(HEADER_SIZE - self._end, len(view))
            self._append(view[:pos])
        length = self._length(self._buf, 0, self._end)
        if length is None:  # still no whole header, or an invalid one: everything else is kept behind it
            self._append(view[pos:])
            return len(view)
        take = min(HEADER_SIZE + length - self._end, len(view) - pos)
        self._reserve(HEADER_SIZE + length, take)
        self._append(view[pos : pos + take])
        if self._end == HEADER_SIZE + length:
            with memoryview(self._buf) as buf:
                self._frames.append(bytes(buf[HEADER_SIZE : self._end]))
            self._end = 0
            if len(self._buf) > _RETAIN:
                self._buf = bytearray()
        return pos + take

    def _reserve(self, total: int, incoming: int) -> None:
        """Make room for ``incoming`` more bytes of an unfinished frame of ``total`` bytes (header included):
        never beyond ``total``, and never more than twice what is buffered plus ``_AHEAD`` (a header alone,
        however large its announced length, costs no memory). Copies through a memoryview (once)."""
        need = self._end + incoming
        if need <= len(self._buf):
            return
        capacity = min(total, max(2 * len(self._buf), need + _AHEAD))
        grown = bytearray(max(capacity, need))
        with memoryview(self._buf) as old:
            grown[: self._end] = old[: self._end]
        self._buf = grown

    def _append(self, part: memoryview) -> None:
        n = len(part)
        end = self._end
        if end + n > len(self._buf):
            grown = bytearray(max(2 * len(self._buf), end + n))
            with memoryview(self._buf) as old:
                grown[:end] = old[:end]
            self._buf = grown
        self._buf[end : end + n] = part  # same length: written in place, never resizes
        self._end = end + n

    def _length(self, buf: bytearray | memoryview, at: int, end: int) -> int | None:
        """The body length announced by the header at ``at``; None if incomplete or invalid (see ``_header``)."""
        if end - at < HEADER_SIZE:
            return None
        (length,) = _LENGTH.unpack_from(buf, at)
        return int(length) if 0 < length <= self.max_frame_size else None

    def _header(self) -> None:
        """Raise if the buffered bytes start with a complete, invalid header."""
        if self._end < HEADER_SIZE:
            return
        (length,) = _LENGTH.unpack_from(self._buf, 0)
        if length == 0:
            raise RemoteProtocolError("zero-length frame")
        if length > self.max_frame_size:
            raise RemoteProtocolError(f"frame length {length} exceeds the limit of {self.max_frame_size}")

    def next_frame(self) -> bytes | NeedData:
        """The next whole frame body, or ``NEED_DATA`` if the buffer does not hold one yet.

        Raises:
            RemoteProtocolError: the next header announces a zero-length frame or one over the limit (raised
                as soon as the 4 header bytes are here, whatever follows; the decoder stays unusable).
        """
        if self._frames:
            frame = self._frames.popleft()
            self._buffered -= HEADER_SIZE + len(frame)
            return frame
        self._header()
        return NEED_DATA

    def eof(self) -> None:
        """The peer closed its side. Whole frames still buffered remain available from ``next_frame``.

        Raises:
            RemoteProtocolError: the buffered bytes end inside a frame ("peer closed mid-frame"), or a
                buffered header is invalid.
        """
        self._eof = True
        if self._end:
            self._header()
            raise RemoteProtocolError(f"peer closed mid-frame ({self._end} bytes of an unfinished frame)")

    close = eof
