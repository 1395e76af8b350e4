"""Robustness of the Nitro parser and verifier: truncation at every offset, every layer; Hypothesis-generated
bytes, CBOR values and mutations of real documents; one-bit flips across a real document. The only exception
the parser may raise is ``MalformedEvidence`` (never IndexError, ValueError, a cbor2 or cryptography error), and
the verifier only ``VerificationError`` subclasses.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nitro_support import (
    ES384_PROTECTED,
    TEST_NOW,
    VECTORS,
    VECTORS_BY_NAME,
    NitroVector,
    build_document,
    cose_sign1,
    default_pki,
    payload_fields,
    split_cose,
)

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.platforms.nitro import DOCUMENT_FIELDS, parse_document_unverified, verify_document
from cc_kernel.errors import MalformedEvidence, VerificationError

BLINDAI = VECTORS_BY_NAME["blindai-2023-03-22-debug"]
REAL = BLINDAI.document()
FUZZ = settings(deadline=None, database=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def parse_or_malformed(data: bytes) -> None:
    """Parse ``data``; the only acceptable failure is MalformedEvidence with a ``nitro.*`` check name."""
    try:
        parse_document_unverified(data)
    except MalformedEvidence as exc:
        assert exc.check.startswith("nitro."), exc.check
        assert str(exc)  # renders


# --- truncation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: c.name)
def test_truncation_at_every_offset_is_malformed(case: NitroVector) -> None:
    document = case.document()
    anchors = hardware_anchors()
    for end in range(len(document)):
        with pytest.raises(MalformedEvidence) as info:
            parse_document_unverified(document[:end])
        assert info.value.check in ("nitro.size", "nitro.cbor"), (end, info.value.check)
        with pytest.raises(MalformedEvidence):
            verify_document(document[:end], anchors=anchors, now=case.verify_at)


def test_truncated_payload_in_a_correctly_signed_document_is_malformed() -> None:
    """Every prefix of a real payload, re-wrapped in a well-formed COSE_Sign1: the payload decoder's turn."""
    pki = default_pki()
    payload = split_cose(REAL)[2]
    for end in range(1, len(payload)):
        document = cose_sign1(payload[:end], key=None, signature=bytes(96))
        with pytest.raises(MalformedEvidence) as info:
            parse_document_unverified(document)
        assert info.value.check == "nitro.cbor", (end, info.value)
    # and one that is correctly signed, for the record: a shorter payload that still decodes is refused by schema
    short = cose_sign1(b"\xa1" + payload[1:].split(b"\x66digest")[0], key=pki.leaf_key)
    with pytest.raises(MalformedEvidence) as info:
        parse_document_unverified(short)
    assert info.value.check == "nitro.digest"


def test_truncated_certificates_are_malformed() -> None:
    pki = default_pki()
    leaf = payload_fields(pki)["certificate"]
    assert isinstance(leaf, bytes)
    for end in range(1, len(leaf)):
        with pytest.raises(MalformedEvidence) as info:
            parse_document_unverified(build_document(certificate=leaf[:end]))
        assert info.value.check == "nitro.certificate", end


def test_truncated_protected_header_is_malformed() -> None:
    payload = split_cose(REAL)[2]
    for end in range(len(ES384_PROTECTED)):
        document = cose_sign1(payload, key=None, protected=ES384_PROTECTED[:end], signature=bytes(96))
        with pytest.raises(MalformedEvidence) as info:
            parse_document_unverified(document)
        assert info.value.check in ("nitro.cbor", "nitro.cose.protected")


# --- Hypothesis ------------------------------------------------------------------------------------------------

CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.integers(-40, 40) | st.text(max_size=12) | st.sampled_from(DOCUMENT_FIELDS), children, max_size=6
        )
        | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 18, 24, 98, 55799]), children)
    ),
    max_leaves=24,
)


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xd2")
@example(b"\xd2\x84")
@example(b"\x84\x40\xa0\x40\x40")
@example(b"\x9f\xff")
@example(b"\xff")
@example(b"\x1b" + b"\xff" * 8)
def test_arbitrary_bytes(data: bytes) -> None:
    parse_or_malformed(data)


@FUZZ
@given(CBOR_VALUES)
def test_arbitrary_cbor_as_the_document(value: Any) -> None:
    parse_or_malformed(cbor2.dumps(value))


@FUZZ
@given(CBOR_VALUES)
def test_arbitrary_cbor_as_the_payload(value: Any) -> None:
    parse_or_malformed(cose_sign1(cbor2.dumps(value), key=None, signature=bytes(96)))


@FUZZ
@given(CBOR_VALUES)
def test_arbitrary_cbor_as_the_protected_header(value: Any) -> None:
    parse_or_malformed(cose_sign1(split_cose(REAL)[2], key=None, protected=cbor2.dumps(value), signature=bytes(96)))


@FUZZ
@given(st.sampled_from(DOCUMENT_FIELDS), CBOR_VALUES)
def test_one_field_replaced_by_arbitrary_cbor(name: str, value: Any) -> None:
    """The real payload with one field's value replaced (re-encoded, so the schema rules get their turn)."""
    fields = cbor2.loads(split_cose(REAL)[2])
    fields[name] = value
    parse_or_malformed(cose_sign1(cbor2.dumps(fields), key=None, signature=bytes(96)))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["replace", "insert", "delete"]),
            st.integers(0, len(REAL) - 1),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutations_of_a_real_document(edits: list[tuple[str, int, bytes]]) -> None:
    data = bytearray(REAL)
    for kind, offset, blob in edits:
        offset = min(offset, len(data))
        if kind == "replace":
            data[offset : offset + len(blob)] = blob
        elif kind == "insert":
            data[offset:offset] = blob
        else:
            del data[offset : offset + len(blob)]
    parse_or_malformed(bytes(data))


LEAF_DER = parse_document_unverified(REAL).certificate


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(LEAF_DER) - 1), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutated_certificate_bytes(edits: list[tuple[int, int]]) -> None:
    """The real leaf certificate with a few bytes replaced, re-wrapped: x509 faults surface as nitro.certificate."""
    leaf = bytearray(LEAF_DER)
    for offset, value in edits:
        leaf[offset] = value
    fields = cbor2.loads(split_cose(REAL)[2])
    fields["certificate"] = bytes(leaf)
    parse_or_malformed(cose_sign1(cbor2.dumps(fields), key=None, signature=bytes(96)))


@settings(deadline=None, database=None, max_examples=60)
@given(st.integers(0, len(REAL) - 1), st.integers(0, 7))
def test_a_one_bit_flip_never_verifies(offset: int, bit: int) -> None:
    data = bytearray(REAL)
    data[offset] ^= 1 << bit
    with pytest.raises(VerificationError):
        verify_document(bytes(data), anchors=hardware_anchors(), now=BLINDAI.verify_at)


def test_one_bit_flips_across_the_whole_document() -> None:
    """Every 5th byte (and every byte of the COSE framing, protected header and signature), lowest bit flipped:
    always refused, with a VerificationError subclass."""
    anchors = hardware_anchors()
    framing = set(range(16)) | set(range(len(REAL) - 100, len(REAL)))
    offsets = sorted(framing | set(range(0, len(REAL), 5)))
    kinds: set[str] = set()
    for offset in offsets:
        data = bytearray(REAL)
        data[offset] ^= 1
        with pytest.raises(VerificationError) as info:
            verify_document(bytes(data), anchors=anchors, now=BLINDAI.verify_at)
        kinds.add(type(info.value).__name__)
    assert {"MalformedEvidence", "SignatureInvalid", "UntrustedRoot", "ChainError"} <= kinds


def test_the_throwaway_document_survives_the_same_fuzz_shape() -> None:
    # sanity: the generator's own documents parse, tagged or not (so the fuzz above starts from valid input)
    for tagged in (False, True):
        assert parse_document_unverified(build_document(tagged=tagged)).timestamp < TEST_NOW
