"""Helpers for the interoperable RA-TLS tests: the real vectors, and synthetic certificates built with
``cryptography`` (correctly self-signed, so that only the property under test fails)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.evidence import VerifiedEvidence, seal_verified
from cc_kernel.attestation.platforms.ratls_interop import CCC_EVIDENCE_OID, parse_interop_certificate

VECTORS = Path(__file__).resolve().parent / "vectors" / "ratls"
GRAMINE = "ccc-gramine-sgx-debug.cert.pem"
SGXSDK = "ccc-intel-sgxsdk-sgx-debug.cert.pem"
ALL_VECTORS = (GRAMINE, SGXSDK)
#: testvectors/README.md: the pin that works for every RA-TLS vector.
NOW = datetime(2024, 1, 1, tzinfo=UTC)
GRAMINE_MRENCLAVE = bytes.fromhex("0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585")
#: Each vector's certificate validity (from the certificates; asserted by a test).
VALIDITY = {
    GRAMINE: (datetime(2001, 1, 1, tzinfo=UTC), datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)),
    SGXSDK: (datetime(2021, 4, 1, tzinfo=UTC), datetime(2050, 12, 31, 23, 59, 59, tzinfo=UTC)),
}
#: SGX DCAP quote v3: 48-byte header, REPORT_DATA at offset 320 of the report body.
SGX_V3_REPORT_DATA = slice(48 + 320, 48 + 384)

GRAMINE_LEGACY_OID = "0.6.9.42.840.113741.1337.6"
INTEL_SDK_OID = "1.2.840.113741.1.13.1"


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def new_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def spki_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def hash_entry(alg_id: int, digest: bytes) -> bytes:
    return bytes(cbor2.dumps([alg_id, digest]))


def pubkey_hash_for(key: ec.EllipticCurvePrivateKey, alg_id: int = 1) -> bytes:
    name = {1: "sha256", 7: "sha384", 8: "sha512"}[alg_id]
    return hash_entry(alg_id, hashlib.new(name, spki_der(key)).digest())


def claims_buffer(claims: object) -> bytes:
    return bytes(cbor2.dumps(claims))


def evidence_value(quote: Any, claims: Any, *, tag: int = 60000) -> bytes:
    """The CBOR the CCC extension carries, built from arbitrary parts (so tests can break any of them)."""
    return bytes(cbor2.dumps(cbor2.CBORTag(tag, [quote, claims])))


def make_cert(
    key: ec.EllipticCurvePrivateKey,
    extensions: Sequence[tuple[str, bytes, bool]],
    *,
    not_before: datetime = datetime(2023, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    common_name: str = "synthetic RA-TLS",
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
) -> bytes:
    """A DER certificate self-signed by ``key`` with the given (oid, value, critical) extensions."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    for oid, value, critical in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical)
    cert = builder.sign(key, hash_algorithm or hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def ccc_cert(key: ec.EllipticCurvePrivateKey, value: bytes, **kwargs: Any) -> bytes:
    return make_cert(key, [(CCC_EVIDENCE_OID.dotted_string, value, False)], **kwargs)


def resigned(name: str, key: ec.EllipticCurvePrivateKey, *, keep_legacy: bool = True, **kwargs: Any) -> bytes:
    """The vector's CCC extension (and legacy extensions) in a new certificate self-signed by ``key``."""
    parsed = parse_interop_certificate(vector(name))
    value = evidence_value(parsed.quote, parsed.claims_bytes)
    extensions = [(CCC_EVIDENCE_OID.dotted_string, value, False)]
    if keep_legacy:
        extensions += [(leg.oid, leg.value, False) for leg in parsed.legacy]
    return make_cert(key, extensions, **kwargs)


SYNTHETIC_PREFIX = b"SYNTHETIC-QUOTE-NOT-EVIDENCE:"
SYNTHETIC_MRENCLAVE = b"\x11" * 32


def fake_quote(report_data: bytes, mrenclave: bytes = SYNTHETIC_MRENCLAVE) -> bytes:
    """Synthetic 'quote' for the orchestration tests: prefix || MRENCLAVE (32) || REPORT_DATA (64)."""
    assert len(report_data) == 64 and len(mrenclave) == 32
    return SYNTHETIC_PREFIX + mrenclave + report_data


def fake_verify_quote(
    quote: bytes, *, anchors: object, now: datetime, collateral: object | None = None
) -> VerifiedEvidence:
    """Stand-in for the DCAP verifier in tests of this module's own steps (never of quote authenticity)."""
    if not quote.startswith(SYNTHETIC_PREFIX) or len(quote) != len(SYNTHETIC_PREFIX) + 96:
        raise AssertionError("the stand-in verifier only accepts synthetic quotes")
    mrenclave, report_data = quote[-96:-64], quote[-64:]
    return seal_verified(
        platform="sgx-dcap",
        product="synthetic",
        measurement=mrenclave,
        report_data=report_data,
        debug=False,
        signer="pck",
        anchor_sha256=b"\xa0" * 32,
        evidence_sha256=hashlib.sha256(quote).digest(),
        verified_at=now,
        measurements={"mrenclave": mrenclave, "mrsigner": b"\x22" * 32},
        tcb={},
        tcb_status=None,
        claims={"isv_prod_id": 0},
        warnings=("tcb-collateral-missing",),
    )


def later(moment: datetime, **delta: float) -> datetime:
    return moment + timedelta(**delta)
