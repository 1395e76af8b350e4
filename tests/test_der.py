"""The one strict DER reader (cc_kernel.crypto.der): each rule accepts what DER allows and refuses the rest."""

from __future__ import annotations

import pytest

from cc_kernel.crypto import der
from cc_kernel.errors import MalformedEvidence

READER = der.DerReader("test.der", "the value")


def refused(call: object, match: str) -> MalformedEvidence:
    assert callable(call)
    with pytest.raises(MalformedEvidence, match=match) as info:
        call()
    assert info.value.check == "test.der"
    assert info.value.message.startswith("the value: ")
    return info.value


def test_short_and_long_form_lengths_are_read() -> None:
    assert READER.tlv(b"\x04\x02ab") == der.Tlv(tag=0x04, start=0, content=2, end=4)
    long = b"\x04\x81\x80" + bytes(128)
    assert READER.tlv(long) == der.Tlv(tag=0x04, start=0, content=3, end=131)
    longer = b"\x04\x82\x01\x00" + bytes(256)
    assert READER.single(longer, der.OCTET_STRING) == bytes(256)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated DER element"),
        (b"\x04", "truncated DER element"),
        (b"\x1f\x01\x00", "multi-byte DER tags are not used here"),
        (b"\x30\x80\x00\x00", r"indefinite DER length \(BER only\) is unsupported"),
        (b"\x04\x84\x00\x00\x00\x01\x00", "unsupported DER length of 4 octets"),
        (b"\x04\x82\x01", "truncated DER length"),
        (b"\x04\x81\x05" + bytes(5), "non-minimal DER length"),
        (b"\x04\x82\x00\x80" + bytes(128), "non-minimal DER length"),
        (b"\x04\x03ab", r"DER length 3 runs past its container \(2 bytes left\)"),
    ],
    ids=["empty", "tag-only", "multi-byte-tag", "indefinite", "five-octet-length", "truncated-length",
         "long-form-for-short", "leading-zero-length", "past-container"],
)
def test_tlv_rules(data: bytes, message: str) -> None:
    exc = refused(lambda: READER.tlv(data), message)
    assert exc.index == 0


def test_an_element_cannot_run_past_its_container() -> None:
    # the inner OCTET STRING claims 3 bytes but its SEQUENCE holds only 2 of them
    data = b"\x30\x04\x04\x03ab" + b"c"
    outer = READER.tlv(data, 0, 6)
    refused(lambda: READER.elements(data, outer.content, outer.end), "runs past its container")


def test_elements_and_items_walk_a_constructed_value() -> None:
    content = b"\x02\x01\x05\x04\x00"
    assert READER.items(content) == [(der.INTEGER, b"\x05"), (der.OCTET_STRING, b"")]
    assert [e.start for e in READER.elements(b"\x30\x05" + content, 2)] == [2, 5]


def test_single_wants_one_element_with_its_tag() -> None:
    assert READER.single(b"\x02\x01\x05", der.INTEGER) == b"\x05"
    refused(lambda: READER.single(b"\x04\x01\x05", der.INTEGER), "expected DER tag 0x02, got 0x04")
    refused(lambda: READER.single(b"\x02\x01\x05\x00", der.INTEGER), r"1 trailing byte\(s\) after the DER value")


@pytest.mark.parametrize(
    ("content", "expected"), [(b"\x00", 0), (b"\x7f", 127), (b"\x00\x80", 128), (b"\x00\xd9", 217), (b"\xff", None)]
)
def test_unsigned_integers(content: bytes, expected: int | None) -> None:
    if expected is None:
        refused(lambda: READER.unsigned(content, "SVN", 0xFF), "SVN is a negative INTEGER")
    else:
        assert READER.unsigned(content, "SVN", 0xFF) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "SVN is an empty INTEGER"),
        (b"\x00\x05", "SVN is a non-minimal INTEGER encoding"),
        (b"\x01\x00", r"SVN = 256 is out of range: too large \(max 255\)"),
    ],
)
def test_unsigned_integer_rules(content: bytes, message: str) -> None:
    refused(lambda: READER.unsigned(content, "SVN", 0xFF), message)


def test_object_identifiers() -> None:
    assert READER.object_identifier(bytes.fromhex("2a864886f84d010d01")) == "1.2.840.113741.1.13.1"
    assert READER.object_identifier(b"\x0f") == "0.15"
    assert READER.object_identifier(b"\x88\x37") == "2.999"
    refused(lambda: READER.object_identifier(b""), "malformed OBJECT IDENTIFIER")
    refused(lambda: READER.object_identifier(b"\x2a\x86"), "malformed OBJECT IDENTIFIER")
    refused(lambda: READER.object_identifier(b"\x2a\x80\x01"), "non-minimal OBJECT IDENTIFIER arc")


def test_encode_length_is_minimal_and_reads_back() -> None:
    for length in (0, 127, 128, 255, 256, 65535, 65536, 2**24 - 1):
        encoded = der.encode_length(length)
        element = READER.tlv(b"\x04" + encoded + bytes(length))
        assert element.end - element.content == length
    with pytest.raises(ValueError, match="at most 3 octets"):
        der.encode_length(2**24)
    with pytest.raises(ValueError, match="not negative"):
        der.encode_length(-1)
