"""Pure protocol layer: length-prefixed frames (4-byte big-endian length ‖ codec body), incremental decoder.

Invariants: no I/O; a frame body is 1..max_frame_size bytes; a length header over the limit (or zero) is a
RemoteProtocolError as soon as the header is seen, before any buffering for its body, so memory is bounded by
what the peer actually sent plus one frame; buffering is amortised linear (bytearray + read offset,
compacted once the consumed prefix is at least half the buffer).
"""

from __future__ import annotations

import enum
from typing import Any, Final

from cc_kernel.errors import LocalProtocolError, RemoteProtocolError
from cc_kernel.protocol import codec

#: Default cap on one frame's body. The header itself could express up to 4 GiB - 1.
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
HEADER_SIZE: Final = 4
_MAX_EXPRESSIBLE: Final = 2**32 - 1
# Compact only once at least this many bytes are dead, so tiny frames do not cause a copy each.
_COMPACT_MIN: Final = 64 * 1024


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
        LocalProtocolError: ``obj`` cannot be encoded (e.g. a lone surrogate in a str) or its body exceeds
            ``max_size`` bytes.
        ValueError/TypeError: ``max_size`` is not a valid frame size.
    """
    check_max_frame_size(max_size)
    try:
        body = codec.packb(obj)
    except ValueError as exc:
        raise LocalProtocolError(f"cannot encode frame: {exc}") from exc
    if len(body) > max_size:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the limit of {max_size}")
    return len(body).to_bytes(HEADER_SIZE, "big") + body


class FrameDecoder:
    """Incremental frame splitter: ``feed`` bytes in any chunking, take whole bodies from ``next_frame``.

    Feeding the same bytes whole or one byte at a time yields the same frames.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        """Raises TypeError/ValueError if ``max_frame_size`` is not in 1..2**32-1."""
        self.max_frame_size = check_max_frame_size(max_frame_size)
        self._buf = bytearray()
        self._offset = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a frame."""
        return len(self._buf) - self._offset

    @property
    def at_eof(self) -> bool:
        """True once ``eof()`` (or ``close()``) was called."""
        return self._eof

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Never raises for their content; ``next_frame`` judges it.

        Raises:
            ValueError: called after ``eof()``.
        """
        if self._eof:
            raise ValueError("feed() after eof()")
        if not data:
            return
        if self._offset:
            dead = self._offset
            if dead == len(self._buf):
                self._buf.clear()
                self._offset = 0
            elif dead >= _COMPACT_MIN and 2 * dead >= len(self._buf):
                del self._buf[:dead]
                self._offset = 0
        self._buf += data

    def _header(self, at: int) -> int | None:
        """The validated body length of the frame whose header starts at ``at``, or None if incomplete."""
        if len(self._buf) - at < HEADER_SIZE:
            return None
        length = int.from_bytes(self._buf[at : at + HEADER_SIZE], "big")
        if length == 0:
            raise RemoteProtocolError("zero-length frame")
        if length > self.max_frame_size:
            raise RemoteProtocolError(f"frame length {length} exceeds the limit of {self.max_frame_size}")
        return length

    def next_frame(self) -> bytes | NeedData:
        """The next whole frame body, or ``NEED_DATA`` if the buffer does not hold one yet.

        Raises:
            RemoteProtocolError: the next header announces a zero-length frame or one over the limit (raised
                as soon as the 4 header bytes are here, whatever follows; the decoder stays unusable).
        """
        length = self._header(self._offset)
        if length is None:
            return NEED_DATA
        start = self._offset + HEADER_SIZE
        end = start + length
        if len(self._buf) < end:
            return NEED_DATA
        with memoryview(self._buf) as view, view[start:end] as part:
            frame = bytes(part)
        if end == len(self._buf):
            self._buf.clear()
            self._offset = 0
        else:
            self._offset = end
        return frame

    def eof(self) -> None:
        """The peer closed its side. Whole frames still buffered remain available from ``next_frame``.

        Raises:
            RemoteProtocolError: the buffered bytes end inside a frame ("peer closed mid-frame"), or a
                buffered header is invalid.
        """
        self._eof = True
        at = self._offset
        while at < len(self._buf):
            length = self._header(at)
            if length is None or len(self._buf) < at + HEADER_SIZE + length:
                raise RemoteProtocolError(f"peer closed mid-frame ({len(self._buf) - at} bytes of an unfinished frame)")
            at += HEADER_SIZE + length

    close = eof
