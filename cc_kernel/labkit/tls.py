"""Lab tools (pure): the TLS-record walker — where the records of one direction of a TLS connection start, and which
bytes are their payload, for a stream fed in pieces of any size.

Layer: pure (bytes in, values out), part of ``labkit``. Invariants: the walker reads only the 5-byte record
headers (content type, legacy version, length; RFC 8446 §5.1) and never decrypts; feeding a stream whole or one
byte at a time yields the same headers and the same payload bytes; a trailing partial record is never reported
as a whole one by ``tls_records``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["APPLICATION_DATA", "HEADER_SIZE", "TLS_CONTENT_TYPES", "RecordHeader", "TlsRecord", "TlsRecordWalker",
           "tls_records"]

#: TLS record content types (RFC 8446 §5.1).
TLS_CONTENT_TYPES: Final[Mapping[int, str]] = {
    20: "change_cipher_spec",
    21: "alert",
    22: "handshake",
    23: "application_data",
}
#: The content type of encrypted records (in TLS 1.3 also the encrypted handshake after ServerHello).
APPLICATION_DATA: Final = 23
#: A record header: content type (1), legacy version (2), length (2).
HEADER_SIZE: Final = 5


@dataclass(frozen=True)
class RecordHeader:
    """One record's header: its index in the direction (from 0), content type, payload length, and the stream
    offset where the header starts."""

    index: int
    content_type: int
    length: int
    offset: int

    @property
    def kind(self) -> str:
        """The content type's name (``"type N"`` for one RFC 8446 does not name)."""
        return TLS_CONTENT_TYPES.get(self.content_type, f"type {self.content_type}")


@dataclass(frozen=True)
class TlsRecord(RecordHeader):
    """One whole TLS record seen on the wire: its header and its payload."""

    body: bytes = field(repr=False)


class TlsRecordWalker:
    """Follows the record boundaries of one direction of a TLS stream, fed in pieces of any size."""

    def __init__(self) -> None:
        #: Bytes fed so far (the stream offset of the next byte).
        self.offset = 0
        #: Every record whose header is complete, in order.
        self.headers: list[RecordHeader] = []
        self._header = bytearray()
        self._left = 0  # payload bytes of the current record still to come

    def count(self, content_type: int | None = None) -> int:
        """How many record headers were seen (of ``content_type`` only, if given)."""
        if content_type is None:
            return len(self.headers)
        return sum(1 for h in self.headers if h.content_type == content_type)

    def feed(self, data: bytes | bytearray) -> list[tuple[int, int, RecordHeader]]:
        """The half-open index ranges of ``data`` (the next bytes of the stream) that are record payload, each with
        the header of its record; headers completed by ``data`` are appended to ``headers``."""
        out: list[tuple[int, int, RecordHeader]] = []
        i = 0
        while i < len(data):
            if self._left == 0:
                take = min(HEADER_SIZE - len(self._header), len(data) - i)
                self._header += data[i : i + take]
                i += take
                if len(self._header) == HEADER_SIZE:
                    length = int.from_bytes(self._header[3:5], "big")
                    start = self.offset + i - HEADER_SIZE
                    self.headers.append(RecordHeader(len(self.headers), self._header[0], length, start))
                    self._left = length
                    self._header.clear()
            else:
                take = min(self._left, len(data) - i)
                out.append((i, i + take, self.headers[-1]))
                i += take
                self._left -= take
        self.offset += len(data)
        return out


def tls_records(stream: bytes) -> list[TlsRecord]:
    """Split one direction of a TLS connection into whole records (a trailing partial record is left out)."""
    walker = TlsRecordWalker()
    walker.feed(stream)
    whole = [h for h in walker.headers if h.offset + HEADER_SIZE + h.length <= len(stream)]
    return [
        TlsRecord(h.index, h.content_type, h.length, h.offset, stream[h.offset + HEADER_SIZE :][: h.length])
        for h in whole
    ]
