"""crypto.x509load on hostile certificates that ``cryptography`` loads lazily: each is built with the certificate
builder and then edited byte for byte (DER surgery), and every loader must refuse it with
``MalformedEvidence(check="x509.parse")`` up front, never a raw ``cryptography`` exception later."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from conftest import SNP_VERIFY_AT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.platforms.sev_snp import verify_report
from cc_kernel.crypto import x509load
from cc_kernel.crypto.x509load import load_amd_certificate, load_certificate, load_certificate_bundle
from cc_kernel.errors import MalformedEvidence

Vector = Callable[[str], bytes]

KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())
PUBLIC_POINT = KEY.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def build(
    *,
    extensions: tuple[x509.ExtensionType, ...] = (),
    common_name: str = "placeholder",
    not_before: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    name: x509.Name | None = None,
) -> bytes:
    """A well-formed self-signed DER certificate (the starting point of every edit)."""
    name = name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(datetime(2060, 1, 1, tzinfo=UTC))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def edit(der: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the one occurrence of ``old`` by ``new`` (same length: no DER length changes)."""
    assert len(old) == len(new)
    assert der.count(old) == 1, old.hex()
    return der.replace(old, new)


def pem(*ders: bytes) -> bytes:
    out = b""
    for der in ders:
        body = base64.encodebytes(der).replace(b"\n", b"")
        lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        out += b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"
    return out


def _version_3() -> bytes:
    # [0] EXPLICIT INTEGER 2 (v3) -> 3, a version X.509 does not define
    return edit(build(), bytes.fromhex("a003020102"), bytes.fromhex("a003020103"))


def _duplicate_extension() -> bytes:
    der = build(
        extensions=(
            x509.UnrecognizedExtension(ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
            x509.UnrecognizedExtension(ObjectIdentifier("1.2.3.5"), b"\x05\x00"),
        )
    )
    return edit(der, bytes.fromhex("06032a0305"), bytes.fromhex("06032a0304"))  # 1.2.3.5 -> 1.2.3.4


def _general_name(tag: int) -> bytes:
    # dNSName [2] IMPLICIT IA5String -> the constructed x400Address [3] / ediPartyName [5] cryptography refuses
    der = build(extensions=(x509.SubjectAlternativeName([x509.DNSName("example.com")]),))
    return edit(der, b"\x82\x0bexample.com", bytes([tag]) + b"\x0bexample.com")


def _invalid_utf8_name() -> bytes:
    # subject and issuer CN: UTF8String "abcd" -> four bytes that are not UTF-8
    der = build(common_name="abcd")
    assert der.count(b"\x0c\x04abcd") == 2
    return der.replace(b"\x0c\x04abcd", b"\x0c\x04\xff\xfe\xfd\xfc")


def _year_zero() -> bytes:
    # notBefore GeneralizedTime 2051 -> year 0000, which rust-asn1 accepts and datetime cannot represent
    der = build(not_before=datetime(2051, 1, 1, tzinfo=UTC))
    return edit(der, b"20510101000000Z", b"00000101000000Z")


def _point_not_on_curve() -> bytes:
    return edit(build(), PUBLIC_POINT, b"\x04" + bytes(64))


def _unknown_key_algorithm() -> bytes:
    # id-ecPublicKey 1.2.840.10045.2.1 -> 1.2.840.10045.2.9
    return edit(build(), bytes.fromhex("06072a8648ce3d0201"), bytes.fromhex("06072a8648ce3d0209"))


def _unknown_curve() -> bytes:
    # prime256v1 1.2.840.10045.3.1.7 -> 1.2.840.10045.3.1.9
    return edit(build(), bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06082a8648ce3d030109"))


#: name -> (hostile certificate, what the message must say). Comments name what cryptography 50 raises.
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    # x509.InvalidVersion, at load time
    "version-3": (_version_3, "InvalidVersion: 3 is not a valid X509 version"),
    # x509.DuplicateExtension, on .extensions
    "duplicate-extension": (
        _duplicate_extension,
        "its extensions cannot be parsed: DuplicateExtension: Duplicate 1.2.3.4 extension found",
    ),
    # x509.UnsupportedGeneralNameType, on .extensions
    "x400-address": (
        lambda: _general_name(0xA3),
        "its extensions cannot be parsed: UnsupportedGeneralNameType: x400Address/EDIPartyName are not supported",
    ),
    "edi-party-name": (
        lambda: _general_name(0xA5),
        "its extensions cannot be parsed: UnsupportedGeneralNameType: x400Address/EDIPartyName are not supported",
    ),
    # ValueError, on .subject
    "invalid-utf8-name": (_invalid_utf8_name, "its subject name cannot be parsed: error parsing asn1 value"),
    # ValueError, on .not_valid_before_utc
    "year-zero": (_year_zero, "its validity cannot be parsed: year 0 is out of range"),
    # ValueError, on .public_key()
    "point-not-on-curve": (_point_not_on_curve, "its public key cannot be parsed: Invalid key"),
    # UnsupportedAlgorithm (cryptography 44: ValueError), on .public_key(); the message is the same
    "unknown-key-algorithm": (
        _unknown_key_algorithm,
        "its public key cannot be parsed: Unknown key type: 1.2.840.10045.2.9",
    ),
    "unknown-curve": (
        _unknown_curve,
        "its public key cannot be parsed: Curve 1.2.840.10045.3.1.9 is not supported",
    ),
}

LOADERS: dict[str, Callable[[bytes], x509.Certificate]] = {
    "load_certificate": load_certificate,
    "load_amd_certificate": load_amd_certificate,
}


def test_the_unedited_certificate_loads_and_every_field_reads() -> None:
    cert = load_certificate(build(extensions=(x509.SubjectAlternativeName([x509.DNSName("example.com")]),)))
    assert cert.subject.rfc4514_string() == "CN=placeholder"
    assert cert.not_valid_before_utc == datetime(2024, 1, 1, tzinfo=UTC)
    assert len(cert.extensions) == 1
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("encoding", ["der", "pem"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_certificates_are_malformed_evidence(case: str, encoding: str, loader: str) -> None:
    make, message = HOSTILE[case]
    der = make()
    with pytest.raises(MalformedEvidence) as info:
        LOADERS[loader](der if encoding == "der" else pem(der))
    assert info.value.check == "x509.parse"
    assert info.value.message.startswith("not a valid X.509 certificate: ")
    assert message in info.value.message
    assert info.value.index is None


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_certificate_in_a_bundle_is_malformed_evidence_at_its_index(case: str) -> None:
    make, message = HOSTILE[case]
    with pytest.raises(MalformedEvidence) as info:
        load_certificate_bundle(pem(build(), make()))
    assert info.value.check == "x509.parse"
    assert message in info.value.message
    if case == "version-3":  # refused by load_pem_x509_certificates itself, which does not say which one
        assert info.value.message.startswith("not a valid PEM certificate bundle: ")
        assert info.value.index is None
    else:
        assert info.value.message.startswith("certificate 1 of the bundle is not a valid X.509 certificate: its ")
        assert info.value.index == 1


# --- callers: the SEV-SNP verifier refuses such a VEK or ASK as x509.parse ----------------------------------

CCF_REPORT = "sev-snp/ccf-milan-v3.report.bin"
CCF_VCEK = "sev-snp/ccf-milan-v3.vcek.pem"

# AMD's TEE SPL extension OID 1.3.6.1.4.1.3704.1.3.2 and its BL SPL twin ...3.1 (same length)
TEE_SPL_OID = bytes.fromhex("060a2b060104019c78010302")
BL_SPL_OID = bytes.fromhex("060a2b060104019c78010301")


def test_a_real_vcek_with_a_duplicate_amd_extension_is_refused_by_verify_report(
    vector: Vector, hw_anchors: TrustAnchors
) -> None:
    vcek_der = load_amd_certificate(vector(CCF_VCEK)).public_bytes(serialization.Encoding.DER)
    hostile = edit(vcek_der, TEE_SPL_OID, BL_SPL_OID)
    with pytest.raises(MalformedEvidence) as info:
        verify_report(vector(CCF_REPORT), vek_der=hostile, anchors=hw_anchors, now=SNP_VERIFY_AT)
    assert info.value.check == "x509.parse"
    assert "DuplicateExtension: Duplicate 1.3.6.1.4.1.3704.1.3.1 extension found" in info.value.message


def test_a_presented_ask_with_version_3_is_refused_by_verify_report(vector: Vector, hw_anchors: TrustAnchors) -> None:
    ask, _ark = load_certificate_bundle(vector("roots/amd-milan-vcek-ask-ark.pem"))
    hostile_ask = edit(
        ask.public_bytes(serialization.Encoding.DER), bytes.fromhex("a003020102"), bytes.fromhex("a003020103")
    )
    with pytest.raises(MalformedEvidence) as info:
        verify_report(
            vector(CCF_REPORT),
            vek_der=vector(CCF_VCEK),
            ask_der=hostile_ask,
            anchors=hw_anchors,
            now=SNP_VERIFY_AT,
        )
    assert info.value.check == "x509.parse"
    assert "InvalidVersion: 3 is not a valid X509 version" in info.value.message


@pytest.mark.parametrize(
    ("names", "expected"),
    [(["Intel SGX TCB Signing"], "Intel SGX TCB Signing"), ([], None), (["SEV-VCEK", "SEV-VLEK"], None)],
    ids=["one", "none", "two"],
)
def test_common_name_is_the_one_subject_cn(names: list[str], expected: str | None) -> None:
    cns = [x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names]
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"), *cns])
    assert x509load.common_name(load_certificate(build(name=subject))) == expected
