"""The one strict CBOR decoder (cc_kernel.crypto.cbor): each rule, with the value it accepts and the one it refuses."""

from __future__ import annotations

import cbor2
import pytest

from cc_kernel.crypto import cbor
from cc_kernel.errors import MalformedEvidence


def decode(data: bytes, *, tagged: bool = False, max_size: int = 1024) -> object:
    return cbor.decode_strict(data, what="the item", check="test.cbor", max_size=max_size, tagged=tagged)


def refused(data: bytes, message: str, *, index: int | None = None, tagged: bool = False) -> MalformedEvidence:
    with pytest.raises(MalformedEvidence, match=message) as info:
        decode(data, tagged=tagged)
    exc = info.value
    assert exc.check == "test.cbor"
    assert exc.message.startswith("the item is not valid CBOR: ")
    assert exc.index is not None and exc.message.endswith(f"(byte {exc.index})")
    if index is not None:
        assert exc.index == index
    return exc


def test_accepted_values_come_back_as_plain_python() -> None:
    value = {1: -35, "pcrs": {0: bytes(48)}, "list": [0, 23, 24, 255, 256, 2**64 - 1, -(2**64)], "none": None}
    assert decode(cbor2.dumps(value)) == value
    tagged = decode(cbor2.dumps(cbor2.CBORTag(18, [b"p", {}, b"x", b"s"])), tagged=True)
    assert tagged == cbor.CborTag(18, [b"p", {}, b"x", b"s"])
    assert isinstance(tagged, cbor.CborTag) and isinstance(tagged.value, list) and isinstance(tagged.value[1], dict)


def test_encode_writes_preferred_serialisation_and_reads_back() -> None:
    value = cbor.CborTag(60000, [b"quote", {"pubkey-hash": b"x", 1: [2**40, -3, "t", None]}])
    data = cbor.encode(value)
    assert data == cbor2.dumps(cbor2.CBORTag(60000, [b"quote", {"pubkey-hash": b"x", 1: [2**40, -3, "t", None]}]))
    assert decode(data, tagged=True) == value
    with pytest.raises(ValueError, match="cannot encode as CBOR"):
        cbor.encode(object())


def test_rule_1_size_is_checked_before_decoding() -> None:
    data = cbor2.dumps(b"x" * 21)
    assert decode(data, max_size=len(data)) == b"x" * 21
    expected = r"the item is not valid CBOR: 22 bytes, more than the 21 allowed \(byte 21\)"
    with pytest.raises(MalformedEvidence, match=expected):
        decode(data, max_size=21)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "premature end of stream"),
        (b"\x82\x01", "premature end of stream"),
        (b"\x5b" + (2**63).to_bytes(8, "big"), "premature end of stream"),
        (b"\x9b" + (2**63).to_bytes(8, "big"), "premature end of stream"),
        (b"\x9f\x01\xff", "indefinite"),
        (b"\x5f\x41\x00\xff", "indefinite"),
        (b"\xa2\x01\x00\x01\x00", "(?i)duplicate map key: 1"),
        (b"\x62\xc3\x28", "error decoding text string .*'utf-8' codec can't decode"),
        (b"\x1c", "unknown unsigned integer subtype"),
        (b"\xff", "break"),
        (b"\x81" * 5 + b"\x00", r"maximum container nesting depth \(4\) exceeded"),
    ],
    ids=["empty", "truncated", "huge-length", "huge-count", "indefinite-array", "indefinite-bytes",
         "duplicate-key", "invalid-utf8", "reserved-info", "lone-break", "too-deep"],
)
def test_rule_2_well_formed(data: bytes, message: str) -> None:
    refused(data, message)


def test_rule_2_depth_limit_allows_max_depth() -> None:
    assert decode(b"\x81" * cbor.MAX_DEPTH + b"\x00") == [[[[0]]]]


def test_rule_3_no_trailing_bytes() -> None:
    refused(b"\x01\x00\x00", r"2 trailing byte\(s\) after the item", index=1)


@pytest.mark.parametrize(
    ("data", "index"),
    [
        (b"\x18\x17", 0),  # 23 with a one-byte argument
        (b"\x82\x01\x19\x00\xff", 2),  # 255 with a two-byte argument, inside an array
        (b"\x98\x01\x00", 0),  # an array head with a one-byte count
        (b"\xc2\x41\x01", 0),  # the bignum 1 (cbor2 folds it into the integer)
        (b"\xd9\xd9\xf7\x01", 0),  # the self-describe tag (cbor2 drops it)
    ],
    ids=["int-head", "nested-int-head", "array-head", "small-bignum", "self-describe"],
)
def test_rule_4_preferred_serialisation(data: bytes, index: int) -> None:
    refused(data, "not in preferred serialisation", index=index)


@pytest.mark.parametrize(
    ("value", "message", "index"),
    [
        ({"a": True}, r"a boolean \(true\) is not allowed", 3),
        ([0, False], r"a boolean \(false\) is not allowed", 2),
        ([1.5], "a float is not allowed", 1),
        ([cbor2.undefined], "a UndefinedType value is not allowed", 1),
        ([cbor2.CBORSimpleValue(99)], "a CBORSimpleValue value is not allowed", 1),
        ({b"k": 1}, "a map key of type bytes", 1),
        (2**64, "an integer outside the 64-bit range", 0),
    ],
    ids=["true", "false", "float", "undefined", "simple", "bytes-key", "bignum"],
)
def test_rule_5_kinds(value: object, message: str, index: int) -> None:
    refused(cbor2.dumps(value), message, index=index)


def test_rule_6_a_tag_only_where_the_caller_allows_it_and_only_outermost() -> None:
    refused(cbor2.dumps(cbor2.CBORTag(18, [])), "tag 18 is not allowed here", index=0)
    refused(
        cbor2.dumps([0, cbor2.CBORTag(24, b"x")]),
        r"tag 24 is not allowed inside another item \(only the outermost item may carry one\)",
        index=2,
    )
    refused(cbor2.dumps(cbor2.CBORTag(18, cbor2.CBORTag(18, []))), "tag 18 is not allowed inside", index=1, tagged=True)


def test_only_bytes_are_decoded() -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        cbor.decode_strict("text", what="x", check="c", max_size=9)  # type: ignore[arg-type]
