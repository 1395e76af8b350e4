"""Pure crypto layer (the ASN.1 fence): the one strict DER reader for the few values we split ourselves.

``cryptography`` parses certificates; this reader is for what it cannot or should not: Intel's SGX extension of
a PCK certificate, AMD's VCEK/VLEK extension values and the split of an RA-TLS certificate into its signed
bytes, signature and key. Every caller names the ``check`` and the place (``where``) its errors carry.

Rules (each fault is ``MalformedEvidence`` with the caller's ``check``, a message starting with ``where``, the
offending bytes as ``got`` and the element's offset as ``index``; never ``IndexError``/``ValueError``):

* **single-byte tags**: tag number 31 (a multi-byte tag) does not occur in what we read and is refused;
* **definite lengths only**: the indefinite form (``0x80``) is BER, not DER;
* **minimal lengths**: the short form below 128, the long form without leading zero octets, and at most
  ``MAX_LENGTH_OCTETS`` of them (16 MiB; certificates and extensions are kilobytes);
* **bounds**: an element never runs past its container, and ``single`` and ``elements`` leave no byte over;
* INTEGERs read by ``unsigned`` are non-empty, non-negative, minimally encoded and at most ``maximum``;
  OBJECT IDENTIFIERs read by ``object_identifier`` have minimal arcs and a complete last arc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cc_kernel.errors import MalformedEvidence

__all__ = [
    "BIT_STRING",
    "BOOLEAN",
    "ENUMERATED",
    "IA5STRING",
    "INTEGER",
    "MAX_LENGTH_OCTETS",
    "NULL",
    "OBJECT_IDENTIFIER",
    "OCTET_STRING",
    "SEQUENCE",
    "DerReader",
    "Tlv",
    "encode_length",
]

BOOLEAN: Final = 0x01
INTEGER: Final = 0x02
BIT_STRING: Final = 0x03
OCTET_STRING: Final = 0x04
NULL: Final = 0x05
OBJECT_IDENTIFIER: Final = 0x06
ENUMERATED: Final = 0x0A
IA5STRING: Final = 0x16
SEQUENCE: Final = 0x30

#: The long form may use at most this many length octets (lengths below 16 MiB).
MAX_LENGTH_OCTETS: Final = 3


@dataclass(frozen=True, slots=True)
class Tlv:
    """One DER element of a buffer: its tag and the offsets of the element, its content and its end."""

    tag: int
    start: int
    content: int
    end: int


class DerReader:
    """Reads DER under the rules of the module docstring; faults are ``MalformedEvidence(check=check)``."""

    def __init__(self, check: str, where: str) -> None:
        self.check = check
        self.where = where

    def fail(self, message: str, got: object = None, *, index: int | None = None) -> MalformedEvidence:
        """The error this reader raises: ``"<where>: <message>"`` with the caller's check."""
        return MalformedEvidence(f"{self.where}: {message}", check=self.check, got=got, index=index)

    def tlv(self, buf: bytes, pos: int = 0, end: int | None = None) -> Tlv:
        """The element at ``pos`` of ``buf[:end]``.

        Raises:
            MalformedEvidence: truncated, a multi-byte tag, an indefinite, non-minimal or too long length, or
                content that runs past ``end``.
        """
        end = len(buf) if end is None else end
        if end - pos < 2:
            raise self.fail("truncated DER element", buf[pos:end].hex(), index=pos)
        tag, first = buf[pos], buf[pos + 1]
        if tag & 0x1F == 0x1F:
            raise self.fail("multi-byte DER tags are not used here", hex(tag), index=pos)
        if first < 0x80:
            length, start = first, pos + 2
        else:
            count = first & 0x7F
            if count == 0:
                raise self.fail("indefinite DER length (BER only) is unsupported", hex(first), index=pos)
            if count > MAX_LENGTH_OCTETS:
                raise self.fail(
                    f"unsupported DER length of {count} octets (at most {MAX_LENGTH_OCTETS})", hex(first), index=pos
                )
            if end - pos < 2 + count:
                raise self.fail("truncated DER length", buf[pos:end].hex(), index=pos)
            raw = buf[pos + 2 : pos + 2 + count]
            length, start = int.from_bytes(raw, "big"), pos + 2 + count
            if raw[0] == 0 or length < 0x80:
                raise self.fail("non-minimal DER length", raw.hex(), index=pos)
        if length > end - start:
            raise self.fail(
                f"DER length {length} runs past its container ({end - start} bytes left)",
                buf[pos : pos + 6].hex(),
                index=pos,
            )
        return Tlv(tag, pos, start, start + length)

    def elements(self, buf: bytes, start: int = 0, end: int | None = None) -> list[Tlv]:
        """Every element of ``buf[start:end]``, which they must fill exactly (the content of a constructed value)."""
        end = len(buf) if end is None else end
        out: list[Tlv] = []
        pos = start
        while pos < end:
            element = self.tlv(buf, pos, end)
            out.append(element)
            pos = element.end
        return out

    def items(self, content: bytes) -> list[tuple[int, bytes]]:
        """``(tag, content)`` of every element of ``content``, which they must fill exactly."""
        return [(e.tag, content[e.content : e.end]) for e in self.elements(content)]

    def single(self, value: bytes, tag: int) -> bytes:
        """The content of the one element with ``tag`` that makes up all of ``value``.

        Raises:
            MalformedEvidence: another tag, a fault of ``tlv``, or trailing bytes after the element.
        """
        element = self.tlv(value)
        if element.tag != tag:
            raise self.fail(f"expected DER tag 0x{tag:02x}, got 0x{element.tag:02x}", value.hex(), index=0)
        if element.end != len(value):
            raise self.fail(f"{len(value) - element.end} trailing byte(s) after the DER value", value.hex())
        return value[element.content :]

    def unsigned(self, content: bytes, what: str, maximum: int) -> int:
        """A non-negative DER INTEGER's value from its content octets.

        Raises:
            MalformedEvidence: empty, negative, not minimally encoded, or above ``maximum``.
        """
        if not content:
            raise self.fail(f"{what} is an empty INTEGER")
        if content[0] & 0x80:
            raise self.fail(f"{what} is a negative INTEGER", content.hex())
        if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
            raise self.fail(f"{what} is a non-minimal INTEGER encoding", content.hex())
        value = int.from_bytes(content, "big")  # a leading 0x00 (02 02 00 d9 = 217) is just a sign octet
        if value > maximum:
            raise self.fail(f"{what} = {value} is out of range: too large (max {maximum})", value)
        return value

    def object_identifier(self, content: bytes) -> str:
        """The dotted form of an OBJECT IDENTIFIER's content octets.

        Raises:
            MalformedEvidence: empty, an unfinished last arc, or an arc with a leading ``0x80`` octet.
        """
        if not content or content[-1] & 0x80:
            raise self.fail("malformed OBJECT IDENTIFIER", content.hex())
        arcs: list[int] = []
        value = 0
        start = True
        for byte in content:
            if start and byte == 0x80:
                raise self.fail("non-minimal OBJECT IDENTIFIER arc", content.hex())
            value = value << 7 | (byte & 0x7F)
            start = not byte & 0x80
            if start:
                arcs.append(value)
                value = 0
        head = arcs[0]
        first, second = (0, head) if head < 40 else ((1, head - 40) if head < 80 else (2, head - 80))
        return ".".join(str(a) for a in (first, second, *arcs[1:]))


def encode_length(length: int) -> bytes:
    """The minimal DER length octets for ``length`` (to rebuild an element whose content was changed)."""
    if length < 0:
        raise ValueError("a DER length is not negative")
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(raw) > MAX_LENGTH_OCTETS:
        raise ValueError(f"a DER length needs at most {MAX_LENGTH_OCTETS} octets here")
    return bytes([0x80 | len(raw)]) + raw
