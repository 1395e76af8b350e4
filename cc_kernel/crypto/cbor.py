"""Pure crypto layer (the CBOR fence): the one strict CBOR decoder for evidence, on top of ``cbor2``.

Used for AWS Nitro attestation documents (COSE_Sign1) and the CCC interoperable RA-TLS extension. Both are
small, signed or hashed structures made of integers, byte and text strings, arrays and maps, with at most one
tag on the outermost item; anything else in them is a fault. One set of rules, in the order they are checked:

1. **size**: at most the caller's ``max_size`` bytes, checked before decoding;
2. **well-formed**: ``cbor2`` decodes one item with definite lengths only, no duplicate map keys, hashable
   (integer or text) map keys, valid UTF-8 text and at most ``MAX_DEPTH`` nested arrays/maps;
3. **one item**: no byte after it;
4. **preferred serialisation** (RFC 8949 §4.1): the bytes are exactly what an encoder writing the shortest
   heads writes for the decoded value, so a non-minimal length, a bignum for a small integer or a tag that
   ``cbor2`` folds into a value (self-describe, shared values) cannot hide behind an equivalent value;
5. **kinds**: only unsigned and negative integers of at most 64 bits, byte strings, text strings, arrays,
   maps with integer or text keys, and ``null``; no booleans, floats, ``undefined`` or other simple values;
6. **tags**: only on the outermost item, and only where the caller allows one (``tagged=True``); which tag
   numbers are acceptable is the caller's check.

Every fault raises ``MalformedEvidence`` with the caller's ``check``, a message ``"<what> is not valid CBOR:
<rule> (byte N)"`` and ``index`` = N, the byte offset where the fault was found; never a ``cbor2`` error,
``ValueError``, ``RecursionError`` or ``EOFError``. ``encode`` writes the preferred serialisation.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import cbor2

from cc_kernel.errors import MalformedEvidence

__all__ = ["MAX_DEPTH", "CborTag", "decode_strict", "encode"]

#: Arrays and maps nest at most this deep (a Nitro payload needs 2, the RA-TLS extension 2).
MAX_DEPTH: Final = 4

_INT_LIMIT: Final = 1 << 64
_DECODE_ERRORS: Final = (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, EOFError)


@dataclass(frozen=True, slots=True)
class CborTag:
    """A tagged outermost item: its tag number and its (checked) value."""

    tag: int
    value: object


def encode(value: object) -> bytes:
    """The preferred (shortest-head) CBOR serialisation of ``value``; a ``CborTag`` is written as a tag.

    Raises:
        ValueError: ``value`` holds something CBOR cannot encode.
    """
    try:
        return bytes(cbor2.dumps(_to_cbor2(value)))
    except (cbor2.CBOREncodeError, TypeError) as exc:
        raise ValueError(f"cannot encode as CBOR: {exc}") from exc


def _to_cbor2(value: object) -> object:
    if isinstance(value, CborTag):
        return cbor2.CBORTag(value.tag, _to_cbor2(value.value))
    if isinstance(value, list | tuple):
        return [_to_cbor2(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_cbor2(v) for k, v in value.items()}
    return value


def _head_size(argument: int) -> int:
    """The length of a preferred-serialisation head whose argument is ``argument``."""
    for size, limit in ((1, 24), (2, 1 << 8), (3, 1 << 16), (5, 1 << 32)):
        if argument < limit:
            return size
    return 9


_Fault = Callable[[str, int], MalformedEvidence]


def _check(value: object, offset: int, depth: int, fault: _Fault, *, tag_allowed: bool) -> tuple[object, int]:
    """Rules 5 and 6 on a value decoded from preferred-serialisation bytes: (plain value, its encoded size).

    ``offset`` is where the value starts; in preferred serialisation every item's size follows from its value,
    so the offsets of faults are exact.
    """
    if isinstance(value, bool) or value is None:
        if value is None:
            return None, 1
        raise fault(f"a boolean ({str(value).lower()}) is not allowed", offset)
    if isinstance(value, int):
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise fault("an integer outside the 64-bit range is not allowed", offset)
        return value, _head_size(value if value >= 0 else -1 - value)
    if isinstance(value, bytes):
        return value, _head_size(len(value)) + len(value)
    if isinstance(value, str):
        size = len(value.encode("utf-8"))
        return value, _head_size(size) + size
    if isinstance(value, list | tuple):
        out: list[object] = []
        pos = offset + _head_size(len(value))
        for item in value:
            plain, size = _check(item, pos, depth + 1, fault, tag_allowed=False)
            out.append(plain)
            pos += size
        return out, pos - offset
    if isinstance(value, Mapping):  # cbor2 gives a dict, or a frozendict inside a tag
        mapping: dict[object, object] = {}
        pos = offset + _head_size(len(value))
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise fault(f"a map key of type {type(key).__name__} (only integers and text)", pos)
            plain_key, size = _check(key, pos, depth + 1, fault, tag_allowed=False)
            pos += size
            mapping[plain_key], size = _check(item, pos, depth + 1, fault, tag_allowed=False)
            pos += size
        return mapping, pos - offset
    if isinstance(value, cbor2.CBORTag):
        if not tag_allowed:
            where = "here" if depth == 0 else "inside another item (only the outermost item may carry one)"
            raise fault(f"tag {value.tag} is not allowed {where}", offset)
        head = _head_size(value.tag)
        inner, size = _check(value.value, offset + head, depth + 1, fault, tag_allowed=False)
        return CborTag(value.tag, inner), head + size
    kind = "a float" if isinstance(value, float) else f"a {type(value).__name__} value"
    raise fault(f"{kind} is not allowed (only integers, strings, arrays, maps and null)", offset)


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def decode_strict(data: bytes, *, what: str, check: str, max_size: int, tagged: bool = False) -> object:
    """Decode the one CBOR item that makes up all of ``data`` under the rules of the module docstring.

    Returns ints, bytes, str, ``None``, lists and dicts (never ``cbor2`` types); with ``tagged=True`` the
    outermost item may be a ``CborTag``.

    Raises:
        MalformedEvidence: ``check``: a rule is broken; the message names ``what``, the rule and the offset.
        TypeError: ``data`` is not bytes.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"CBOR input must be bytes, not {type(data).__name__}")

    def fault(rule: str, offset: int) -> MalformedEvidence:
        return MalformedEvidence(
            f"{what} is not valid CBOR: {rule} (byte {offset})", check=check, got=len(data), index=offset
        )

    # 1. size
    if len(data) > max_size:
        raise fault(f"{len(data)} bytes, more than the {max_size} allowed", max_size)
    # 2. well-formed (the decoder is built outside the try: an API mismatch must be a loud TypeError)
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        max_depth=MAX_DEPTH,
        read_size=1,
    )
    try:
        value = decoder.decode()
    except _DECODE_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        if exc.__cause__ is not None:  # e.g. the UnicodeDecodeError behind "error decoding text string"
            reason = f"{reason} ({exc.__cause__})"
        raise fault(reason, stream.tell()) from exc
    # 3. one item
    end = stream.tell()
    if end != len(data):
        raise fault(f"{len(data) - end} trailing byte(s) after the item", end)
    # 4. preferred serialisation
    try:
        again = bytes(cbor2.dumps(value))
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError) as exc:
        raise fault(f"a value this format never uses ({exc})", 0) from exc
    if again != data:
        raise fault(
            "not in preferred serialisation (a non-minimal head, or a tag or value folded into another)",
            _first_difference(data, again),
        )
    # 5. and 6. kinds and tags
    plain, _ = _check(value, 0, 0, fault, tag_allowed=tagged)
    return plain
