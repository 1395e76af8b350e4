"""The DCAP quote parser: structure of the real vectors, every structural rule, truncation at every offset,
trailing bytes, the PCK SGX extension reader, and a bit-flip sweep that may only ever raise our errors."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import dcap_support as ds
import pytest
from conftest import read_vector

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.platforms.intel_dcap import verify_quote
from cc_kernel.attestation.platforms.intel_pck import SGX_EXTENSION_OID, pck_extensions
from cc_kernel.attestation.platforms.intel_quote import (
    MAX_QUOTE_SIZE,
    SgxReportBody,
    TdReportBody,
    parse_quote_unverified,
)
from cc_kernel.crypto.x509load import load_certificate
from cc_kernel.errors import ChainError, MalformedEvidence, VerificationError

QUOTES = {
    "gotdx-spr-e4-v4": "tdx/gotdx-spr-e4-v4.quote.dat",
    "gotdx-v5": "tdx/gotdx-v5.quote.dat",
    "trustee-v5": "tdx/trustee-v5.quote.dat",
    "trustee-occlum-v3-debug": "sgx/trustee-occlum-v3-debug.quote.dat",
}
#: (version, body kind, body type, signed length, structure length, trailing bytes) per vector.
SHAPES = {
    "gotdx-spr-e4-v4": (4, "td10", None, 632, 4935, 39),
    "gotdx-v5": (5, "td15", 3, 702, 5006, 0),
    "trustee-v5": (5, "td15", 3, 702, 5006, 0),
    "trustee-occlum-v3-debug": (3, "sgx", None, 432, 4733, 0),
}
CHAIN_ONLY_AT = datetime(2026, 2, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki() -> ds.TestPki:
    return ds.make_pki()


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_vector_structure(name: str) -> None:
    raw = read_vector(QUOTES[name])
    quote = parse_quote_unverified(raw)
    version, kind, body_type, signed, end, trailing = SHAPES[name]
    assert (quote.version, quote.body_kind, quote.body_type) == (version, kind, body_type)
    assert quote.signed_end == signed and quote.signed_bytes == raw[:signed]
    assert quote.end == end and len(quote.trailing) == trailing and quote.raw == raw
    assert quote.header.att_key_type == 2
    assert quote.header.qe_vendor_id.hex() == "939a7233f79c4ca9940a0db3957f0607"
    assert quote.certification_data_type == (5 if version == 3 else 6)
    assert len(quote.qe_auth_data) == 32
    assert quote.pck_chain_pem.count(b"-----BEGIN CERTIFICATE-----") == 3
    if kind == "sgx":
        assert isinstance(quote.body, SgxReportBody) and not quote.is_tdx
        assert (quote.header.qe_svn, quote.header.pce_svn) == (8, 13)  # v3 header: QE_SVN, PCE_SVN
    else:
        assert isinstance(quote.body, TdReportBody) and quote.is_tdx
        assert (quote.body.tee_tcb_svn2 is not None) == (kind == "td15")
        assert quote.header.qe_svn is None


def test_the_spr_quote_carries_39_unsigned_trailing_bytes() -> None:
    quote = parse_quote_unverified(read_vector(QUOTES["gotdx-spr-e4-v4"]))
    assert quote.trailing == b"\nextra bytes(only for testing purpose)\n"
    ev = verify_quote(quote.raw, anchors=hardware_anchors(), now=CHAIN_ONLY_AT)
    assert "trailing-bytes" in ev.warnings
    assert ev.claims["trailing_bytes"] == 39 and ev.claims["quote_length"] == 4935
    # the trailing bytes are not authenticated: any other trailing content verifies the same way
    other = verify_quote(quote.raw[:4935] + b"\x00" * 7, anchors=hardware_anchors(), now=CHAIN_ONLY_AT)
    assert other.claims["trailing_bytes"] == 7 and other.measurement == ev.measurement
    clean = verify_quote(quote.raw[:4935], anchors=hardware_anchors(), now=CHAIN_ONLY_AT)
    assert "trailing-bytes" not in clean.warnings and clean.claims["trailing_bytes"] == 0


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_truncation_at_every_offset_is_malformed_evidence(name: str) -> None:
    raw = read_vector(QUOTES[name])
    end = SHAPES[name][4]
    checks: set[str] = set()
    for cut in range(end):
        with pytest.raises(MalformedEvidence) as info:
            parse_quote_unverified(raw[:cut])
        checks.add(info.value.check)
    assert checks == {"dcap.truncated", "dcap.signature_data.size"}
    for cut in range(end, len(raw) + 1):  # past the structure: only trailing bytes are lost
        assert len(parse_quote_unverified(raw[:cut]).trailing) == cut - end


def test_truncation_reports_the_offset_of_the_missing_field() -> None:
    raw = read_vector(QUOTES["gotdx-v5"])
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(raw[:100])
    assert info.value.check == "dcap.truncated" and info.value.index == 54
    assert "report body" in info.value.message


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_verify_truncated_quotes_only_raise_malformed_evidence(name: str) -> None:
    raw = read_vector(QUOTES[name])
    for cut in range(0, SHAPES[name][4], 37):
        with pytest.raises(MalformedEvidence):
            verify_quote(raw[:cut], anchors=hardware_anchors(), now=CHAIN_ONLY_AT)


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_flipping_any_byte_only_raises_our_errors(name: str) -> None:
    """Every 5th byte of the whole quote flipped: a verification error (of our tree) or, only where the byte is
    not covered by any check (trailing bytes, base64 bits PEM decoding ignores), an unchanged result."""
    raw = read_vector(QUOTES[name])
    good = verify_quote(raw, anchors=hardware_anchors(), now=CHAIN_ONLY_AT)
    parsed = parse_quote_unverified(raw)
    pem_start = parsed.end - len(parsed.pck_chain_pem)
    accepted = 0
    for pos in range(0, len(raw), 5):
        mutated = bytearray(raw)
        mutated[pos] ^= 0x41
        try:
            ev = verify_quote(bytes(mutated), anchors=hardware_anchors(), now=CHAIN_ONLY_AT)
        except VerificationError:
            continue
        accepted += 1
        assert pos >= pem_start, f"a flip at {pos} (signed or binary signature data) was accepted"
        assert ev.measurement == good.measurement and ev.report_data == good.report_data
        assert ev.claims["pck"] == good.claims["pck"]  # incl. the PCK's SHA-256: the same certificate
    assert accepted < len(raw) // 50


# --- structural rules (test-built quotes: everything else in them is valid) -----------------------------


def _patch(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "check"),
    [
        (0, (6).to_bytes(2, "little"), "dcap.version"),
        (0, (2).to_bytes(2, "little"), "dcap.version"),
        (2, (3).to_bytes(2, "little"), "dcap.att_key_type"),
        (4, (0x82).to_bytes(4, "little"), "dcap.tee_type"),
        (12, b"\x00" * 16, "dcap.qe_vendor_id"),
    ],
)
def test_header_rules(pki: ds.TestPki, offset: int, value: bytes, check: str) -> None:
    raw = _patch(ds.build_quote(pki), offset, value)
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(raw)
    assert info.value.check == check


def test_a_version_3_quote_cannot_be_a_td_quote(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki, version=3)
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(raw)
    assert info.value.check == "dcap.tee_type"


@pytest.mark.parametrize(
    ("version", "tdx", "body_type", "check"),
    [
        (5, True, 1, "dcap.body_type"),
        (5, False, 2, "dcap.body_type"),
        (5, True, 4, "dcap.body_type"),
    ],
)
def test_v5_body_type_must_fit_the_tee(pki: ds.TestPki, version: int, tdx: bool, body_type: int, check: str) -> None:
    body = ds.td_body() if tdx else ds.sgx_body()
    raw = ds.build_quote(pki, version=version, tee_type=0x81 if tdx else 0, body=body, body_type=body_type)
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(raw)
    assert info.value.check == check


def test_v5_body_size_must_match_the_type(pki: ds.TestPki) -> None:
    raw = _patch(ds.build_quote(pki, version=5, body_type=3), 50, (584).to_bytes(4, "little"))
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(raw)
    assert info.value.check == "dcap.body_size" and info.value.got == 584


def test_signature_data_length_past_the_end(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki)
    declared = int.from_bytes(raw[632:636], "little")
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(_patch(raw, 632, (declared + 1).to_bytes(4, "little")))
    assert info.value.check == "dcap.signature_data.size"


def test_signature_data_with_unexplained_bytes_inside(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki)
    declared = int.from_bytes(raw[632:636], "little")
    grown = _patch(raw, 632, (declared + 3).to_bytes(4, "little")) + b"\x00\x00\x00"
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(grown)
    assert info.value.check == "dcap.certification_data.size" and info.value.got == 3


def test_type_6_with_unexplained_bytes_inside(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki)
    sig_len = int.from_bytes(raw[632:636], "little")
    outer = int.from_bytes(raw[636 + 130 : 636 + 134], "little")
    grown = _patch(_patch(raw, 632, (sig_len + 2).to_bytes(4, "little")), 636 + 130, (outer + 2).to_bytes(4, "little"))
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(grown + b"\x00\x00")
    assert info.value.check == "dcap.certification_data.size"
    assert "type 6" in info.value.message


@pytest.mark.parametrize(
    ("version", "offset_from_sig", "value", "expected"),
    [
        (4, 128, 5, 6),  # v4 outer certification data must be type 6
        (4, 134 + 384 + 64 + 2 + 32, 4, 5),  # nested must be type 5 (4 = PCK leaf only)
        (3, 128 + 384 + 64 + 2 + 32, 6, 5),  # v3 certification data must be type 5
    ],
)
def test_certification_data_types(
    pki: ds.TestPki, version: int, offset_from_sig: int, value: int, expected: int
) -> None:
    if version == 3:
        raw, sig = ds.sgx_quote(pki), 48 + 384 + 4
    else:
        raw, sig = ds.build_quote(pki), 632 + 4
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(_patch(raw, sig + offset_from_sig, value.to_bytes(2, "little")))
    assert info.value.check == "dcap.certification_data.type"
    assert (info.value.got, info.value.expected) == (value, expected)


def test_oversized_and_wrongly_typed_input(pki: ds.TestPki) -> None:
    with pytest.raises(MalformedEvidence) as info:
        parse_quote_unverified(ds.build_quote(pki, trailing=bytes(MAX_QUOTE_SIZE)))
    assert info.value.check == "dcap.size"
    with pytest.raises(TypeError):
        parse_quote_unverified("not bytes")  # type: ignore[arg-type]


def test_all_body_shapes_parse(pki: ds.TestPki) -> None:
    v4 = parse_quote_unverified(ds.build_quote(pki, version=4))
    v5_10 = parse_quote_unverified(ds.build_quote(pki, version=5, body_type=2))
    v5_15 = parse_quote_unverified(ds.build_quote(pki, version=5, body_type=3))
    sgx3, sgx4, sgx5 = (parse_quote_unverified(ds.sgx_quote(pki, version=v)) for v in (3, 4, 5))
    assert [q.body_kind for q in (v4, v5_10, v5_15, sgx3, sgx4, sgx5)] == ["td10", "td10", "td15", "sgx", "sgx", "sgx"]
    assert [q.signed_end for q in (v4, v5_10, v5_15, sgx3, sgx4, sgx5)] == [632, 638, 702, 432, 432, 438]
    assert isinstance(v5_15.body, TdReportBody) and v5_15.body.mr_servicetd == b"\x5d" * 48
    assert sgx5.body_type == 1 and v5_10.body_type == 2


# --- the PCK certificate chain in certification data type 5 -------------------------------------------------


def test_pck_chain_with_only_two_certificates(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki, chain_pem=ds.pem(pki.pck, pki.ca))
    with pytest.raises(MalformedEvidence) as info:
        verify_quote(raw, anchors=pki.anchors, now=ds.TEST_NOW)
    assert info.value.check == "dcap.pck_chain.length" and info.value.got == 2


def test_pck_chain_with_text_between_certificates(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki, chain_pem=ds.pem(pki.pck) + b"junk\n" + ds.pem(pki.ca, pki.root))
    with pytest.raises(MalformedEvidence) as info:
        verify_quote(raw, anchors=pki.anchors, now=ds.TEST_NOW)
    assert info.value.check == "dcap.pck_chain.pem"


def test_pck_chain_with_a_broken_certificate(pki: ds.TestPki) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    raw = ds.build_quote(pki, chain_pem=broken + ds.pem(pki.ca, pki.root))
    with pytest.raises(MalformedEvidence) as info:
        verify_quote(raw, anchors=pki.anchors, now=ds.TEST_NOW)
    assert info.value.check == "dcap.pck_chain.pem"


def test_nul_terminated_pck_chain_is_accepted(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki, chain_pem=pki.chain_pem() + b"\x00")
    pck = verify_quote(raw, anchors=pki.anchors, now=ds.TEST_NOW).claims["pck"]
    assert isinstance(pck, dict) and pck["fmspc"] == ds.TEST_FMSPC.hex()


# --- the SGX extension ----------------------------------------------------------------------------------


def _pem_certs(quote: bytes) -> list[bytes]:
    chain = parse_quote_unverified(quote).pck_chain_pem
    return [m.group(0) for m in re.finditer(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", chain, re.S)]


@pytest.mark.parametrize(
    ("name", "fmspc", "pcesvn", "components", "sgx_type"),
    [
        ("gotdx-spr-e4-v4", "50806f000000", 11, [3, 3, 2, 2, 2, 1, 0, 2], 1),
        ("gotdx-v5", "90c06f000000", 13, [4, 4, 2, 2, 4, 1, 0, 5], 1),
        ("trustee-v5", "90c06f000000", 13, [1, 1, 2, 2, 3, 1, 0, 3], 1),
        ("trustee-occlum-v3-debug", "00606a000000", 11, [4, 4, 3, 3, 255, 255, 0, 0], 1),
    ],
)
def test_pck_extension_of_the_vectors(name: str, fmspc: str, pcesvn: int, components: list[int], sgx_type: int) -> None:
    pck = load_certificate(_pem_certs(read_vector(QUOTES[name]))[0])
    ext = pck_extensions(pck)
    assert ext.fmspc.hex() == fmspc and ext.pcesvn == pcesvn and ext.sgx_type == sgx_type
    assert list(ext.tcb_components) == components + [0] * 8
    assert ext.pce_id == bytes(2) and len(ext.ppid) == 16 and len(ext.cpusvn) == 16


def test_pck_extension_of_the_test_pki(pki: ds.TestPki) -> None:
    ext = pck_extensions(pki.pck)
    assert ext.tcb_components == pki.spec.components and ext.pcesvn == 13 and ext.fmspc == ds.TEST_FMSPC
    assert ext.platform_instance_id == b"\x22" * 16
    assert dict(ext.configuration) == {"dynamic_platform": False, "cached_keys": True, "smt_enabled": True}


def test_a_certificate_without_the_sgx_extension_is_not_a_pck(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        pck_extensions(pki.ca)
    assert info.value.check == "dcap.pck.extension"


_SPEC = ds.PckSpec()


@pytest.mark.parametrize(
    "ext",
    [
        ds.sgx_extension(_SPEC, drop=f"{SGX_EXTENSION_OID}.4"),  # no FMSPC
        ds.sgx_extension(_SPEC, drop=f"{SGX_EXTENSION_OID}.2"),  # no TCB
        ds.sgx_extension(_SPEC, extra=ds.der_pair(f"{SGX_EXTENSION_OID}.4", ds.der_tlv(0x04, bytes(6)))),  # twice
        ds.sgx_extension(ds.PckSpec(fmspc=bytes(5))),  # FMSPC of 5 bytes
        ds.sgx_extension(_SPEC)[:-1],  # truncated
        ds.sgx_extension(_SPEC) + b"\x00",  # trailing byte
        ds.der_seq(ds.der_pair(f"{SGX_EXTENSION_OID}.4", ds.der_int(5))),  # FMSPC as INTEGER
        ds.sgx_extension(ds.PckSpec(components=(256,) + (0,) * 15)),  # component out of range
        ds.der_tlv(0x04, b"not a sequence"),
        b"\x30\x81\x05" + bytes(5),  # non-minimal length
    ],
    ids=[
        "no-fmspc",
        "no-tcb",
        "duplicate",
        "short-fmspc",
        "truncated",
        "trailing",
        "wrong-type",
        "range",
        "not-sequence",
        "non-minimal-length",
    ],
)
def test_malformed_sgx_extensions(pki: ds.TestPki, ext: bytes) -> None:
    cert = pki.with_pck(sgx_ext=ext).pck
    with pytest.raises(MalformedEvidence) as info:
        pck_extensions(cert)
    assert info.value.check == "dcap.pck.extension"
    quote = ds.build_quote(pki.with_pck(sgx_ext=ext))
    with pytest.raises(MalformedEvidence):
        verify_quote(quote, anchors=pki.anchors, now=ds.TEST_NOW)


def test_pck_pem_round_trip_of_a_vector_is_byte_exact() -> None:
    """Guards the bit-flip helper used by the vector twins: re-encoding a decoded PCK gives the same PEM."""
    pem = _pem_certs(read_vector(QUOTES["gotdx-v5"]))[0]
    body = b"".join(pem.splitlines()[1:-1])
    der = base64.b64decode(body)
    again = base64.encodebytes(der).replace(b"\n", b"")
    assert again == body
