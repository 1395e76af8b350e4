"""Interoperable RA-TLS (CCC format) certificates: parsing, the certificate and key binding, the claims
binding, legacy extensions, and the real Gramine / Intel SGX SDK vectors end to end.

Tests of this module's own steps (a, b, d, e) that need a quote to pass use a stand-in for the DCAP verifier
(``ratls_support.fake_verify_quote``, which accepts only byte strings marked as synthetic); the real vectors
are verified with the real DCAP verifier.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.evidence import VerifiedEvidence, seal_bound
from cc_kernel.attestation.platforms import ratls_interop
from cc_kernel.attestation.platforms.ratls_interop import (
    CCC_EVIDENCE_OID,
    MAX_EXTENSION_SIZE,
    build_interop_extension,
    encode_interop_claims,
    interop_report_data,
    parse_interop_certificate,
    parse_interop_extension,
    pubkey_hash_value,
    verify_interop_certificate,
)
from cc_kernel.attestation.policy import default_hardware_policy, load_policy
from cc_kernel.errors import (
    BindingMismatch,
    CertificateExpired,
    MalformedEvidence,
    PolicyViolation,
    SignatureInvalid,
    StaleEvidence,
    VerificationError,
)
from tests.ratls_support import (
    ALL_VECTORS,
    GRAMINE,
    GRAMINE_LEGACY_OID,
    GRAMINE_MRENCLAVE,
    INTEL_SDK_OID,
    NOW,
    SGX_V3_REPORT_DATA,
    SGXSDK,
    VALIDITY,
    ccc_cert,
    claims_buffer,
    evidence_value,
    fake_quote,
    fake_verify_quote,
    hash_entry,
    later,
    make_cert,
    new_key,
    pubkey_hash_for,
    resigned,
    spki_der,
    vector,
)


def raises(exc_type: type[VerificationError], check: str, fn: Callable[[], object]) -> VerificationError:
    with pytest.raises(exc_type) as info:
        fn()
    assert info.value.check == check, str(info.value)
    return info.value


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratls_interop, "verify_quote", fake_verify_quote)


def synthetic(
    key: ec.EllipticCurvePrivateKey | None = None, *, alg_id: int = 1, extra: dict[str, bytes] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, bytes, dict[str, bytes]]:
    """A correctly bound synthetic certificate (quote = stand-in carrying SHA-256(claims) || 0^32)."""
    key = key or new_key()
    claims = {"pubkey-hash": pubkey_hash_for(key, alg_id), **(extra or {})}
    ext = build_interop_extension(fake_quote(interop_report_data(claims)), claims)
    return key, ccc_cert(key, ext.value), claims


# --- the real vectors: parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_vector_parses_and_its_claims_bind_its_key(name: str) -> None:
    ev = parse_interop_certificate(vector(name))
    assert ev.tag == 60000
    assert ev.pubkey_hash_alg == "sha-256"
    assert ev.pubkey_hash_alg_id == 1
    assert ev.pubkey_hash == hashlib.sha256(ev.spki_der).digest()
    assert ev.spki_der.startswith(bytes.fromhex("3076301006072a8648ce3d020106052b81040022"))  # P-384 SPKI
    assert set(ev.claims) == {"pubkey-hash"}
    assert ev.nonce is None
    assert ev.endorsements is None
    assert not ev.evidence_critical
    assert (ev.not_valid_before, ev.not_valid_after) == VALIDITY[name]
    # REPORT_DATA (read at its SGX v3 offset here; verified by the DCAP verifier below) commits to the claims
    assert ev.quote[SGX_V3_REPORT_DATA] == hashlib.sha256(ev.claims_bytes).digest() + bytes(32)
    assert ev.expected_report_data == ev.quote[SGX_V3_REPORT_DATA]
    assert int.from_bytes(ev.quote[0:2], "little") == 3


def test_gramine_vector_quirks_and_legacy_extension() -> None:
    ev = parse_interop_certificate(vector(GRAMINE))
    assert ev.signature_params_null  # explicit NULL in the ECDSA AlgorithmIdentifier, handled
    (legacy,) = ev.legacy
    assert legacy.kind == "gramine-legacy-quote"
    assert legacy.oid == GRAMINE_LEGACY_OID
    assert legacy.intended_oid == "1.2.840.113741.1337.6"
    assert not legacy.identical_to_evidence
    # the legacy quote binds SHA-256(SPKI) directly (Gramine < 1.8 scheme)
    assert legacy.value[SGX_V3_REPORT_DATA] == hashlib.sha256(ev.spki_der).digest() + bytes(32)
    assert ev.quote[112:144] == GRAMINE_MRENCLAVE  # MRENCLAVE at body offset 64 (verified below with DCAP)


def test_sgxsdk_vector_legacy_extension_is_the_same_quote() -> None:
    ev = parse_interop_certificate(vector(SGXSDK))
    assert not ev.signature_params_null
    (legacy,) = ev.legacy
    assert (legacy.kind, legacy.oid) == ("intel-sgx-sdk-quote", INTEL_SDK_OID)
    assert legacy.identical_to_evidence
    assert legacy.value == ev.quote


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_pem_and_der_give_the_same_result(name: str) -> None:
    from_pem = parse_interop_certificate(vector(name))
    from_der = parse_interop_certificate(from_pem.certificate_der)
    assert from_der == from_pem
    assert from_der.certificate_der == from_pem.certificate_der


def test_vector_extension_is_preferred_cbor_that_rebuilds_byte_for_byte() -> None:
    for name in ALL_VECTORS:
        ev = parse_interop_certificate(vector(name))
        value = evidence_value(ev.quote, ev.claims_bytes)
        assert parse_interop_extension(value)[1:3] == (ev.quote, ev.claims_bytes)


# --- (a) the certificate itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_expired_and_not_yet_valid(name: str) -> None:
    not_before, not_after = VALIDITY[name]
    for moment in (later(not_after, seconds=1), later(not_after, days=400), later(not_before, seconds=-1)):
        exc = raises(
            CertificateExpired,
            "ratls.certificate.validity",
            functools.partial(verify_interop_certificate, vector(name), anchors=hardware_anchors(), now=moment),
        )
        assert exc.expected == [not_before.isoformat(), not_after.isoformat()]


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_interop_certificate(vector(SGXSDK), anchors=hardware_anchors(), now=datetime(2024, 1, 1))


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_tampered_signed_bytes_fail_the_self_signature(name: str) -> None:
    der = parse_interop_certificate(vector(name)).certificate_der
    subject_cn = der.index(b"RATLS" if name == GRAMINE else b"Intel SGX Enclave")
    tampered = _flip(der, subject_cn)
    raises(
        SignatureInvalid,
        "ratls.certificate.signature",
        lambda: verify_interop_certificate(tampered, anchors=hardware_anchors(), now=NOW),
    )
    # and a flipped bit in the signature itself (last byte of the DER: inside the ECDSA s value)
    raises(
        SignatureInvalid,
        "ratls.certificate.signature",
        lambda: verify_interop_certificate(_flip(der, len(der) - 1), anchors=hardware_anchors(), now=NOW),
    )


def _drop_null(der: bytes, *, occurrences: int) -> bytes:
    """Remove the explicit NULL from the first ``occurrences`` ECDSA AlgorithmIdentifiers, fixing lengths."""
    with_null = bytes.fromhex("300c06082a8648ce3d0403020500")
    without = bytes.fromhex("300a06082a8648ce3d040302")
    assert der.count(with_null) == 2
    body = der[4:].replace(with_null, without, occurrences)
    # Certificate and TBSCertificate lengths both use the 2-byte long form in this vector
    if occurrences >= 1:
        tbs_len = int.from_bytes(body[2:4], "big") - 2
        body = body[:2] + tbs_len.to_bytes(2, "big") + body[4:]
    return b"\x30\x82" + len(body).to_bytes(2, "big") + body


def test_gramine_normalisation_never_changes_what_the_signature_covers() -> None:
    der = parse_interop_certificate(vector(GRAMINE)).certificate_der
    # both NULLs dropped: a well-formed certificate, but its signed bytes differ -> the signature fails
    both = _drop_null(der, occurrences=2)
    assert not parse_interop_certificate(both).signature_params_null
    raises(
        SignatureInvalid,
        "ratls.certificate.signature",
        lambda: verify_interop_certificate(both, anchors=hardware_anchors(), now=NOW),
    )


def test_inner_and_outer_signature_algorithms_must_agree() -> None:
    der = parse_interop_certificate(vector(GRAMINE)).certificate_der
    one = _drop_null(der, occurrences=1)  # TBS algorithm without NULL, outer one still with it
    raises(MalformedEvidence, "ratls.signature_algorithm", lambda: parse_interop_certificate(one))


# --- (b) the claims bind this certificate's key -------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_same_extension_in_a_certificate_of_another_key_is_a_binding_mismatch(name: str) -> None:
    key = new_key(ec.SECP384R1())
    forged = resigned(name, key, not_before=datetime(2023, 1, 1, tzinfo=UTC))
    parsed = parse_interop_certificate(forged)
    assert parsed.quote == parse_interop_certificate(vector(name)).quote
    exc = raises(
        BindingMismatch,
        "binding.pubkey_hash",
        lambda: verify_interop_certificate(forged, anchors=hardware_anchors(), now=NOW),
    )
    assert exc.expected == hashlib.sha256(spki_der(key)).digest()
    assert exc.got == parse_interop_certificate(vector(name)).pubkey_hash


@pytest.mark.parametrize("alg_id", [1, 7, 8])
def test_sha256_384_512_pubkey_hashes_are_supported(alg_id: int, stand_in: None) -> None:
    key, cert, _ = synthetic(alg_id=alg_id)
    ev = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW)
    ratls = ev.claims["ratls"]
    assert isinstance(ratls, Mapping)
    assert ratls["pubkey_hash_alg"] == {1: "sha-256", 7: "sha-384", 8: "sha-512"}[alg_id]
    name = {1: "sha256", 7: "sha384", 8: "sha512"}[alg_id]
    assert ratls["pubkey_hash"] == hashlib.new(name, spki_der(key)).digest()
    # the same hash over another key fails
    other, _, _ = synthetic(alg_id=alg_id)
    claims = {"pubkey-hash": pubkey_hash_for(other, alg_id)}
    ext = build_interop_extension(fake_quote(interop_report_data(claims)), claims)
    raises(
        BindingMismatch,
        "binding.pubkey_hash",
        lambda: verify_interop_certificate(ccc_cert(key, ext.value), anchors=hardware_anchors(), now=NOW),
    )


# --- (d) the quote commits to the claims; (e) result ----------------------------------------------------------


def test_synthetic_certificate_verifies_and_reports_its_claims(stand_in: None) -> None:
    key, cert, claims = synthetic(extra={"nonce": b"n" * 16, "key_0": b"other"})
    ev = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW)
    assert ev.platform == "sgx-dcap"
    assert ev.report_data == hashlib.sha256(encode_interop_claims(claims)).digest() + bytes(32)
    assert ev.evidence_sha256 == hashlib.sha256(cert).digest()
    assert ev.measurement == b"\x11" * 32  # the quote verifier's fields, unchanged
    assert ev.warnings == ("tcb-collateral-missing",)
    assert ev.claims["isv_prod_id"] == 0
    ratls = ev.claims["ratls"]
    assert isinstance(ratls, Mapping)
    assert ratls["claims"] == claims
    assert ratls["nonce"] == b"n" * 16
    assert ratls["nonce_checked"] is False
    assert ratls["spki_sha256"] == hashlib.sha256(spki_der(key)).digest()
    assert ratls["certificate_sha256"] == hashlib.sha256(cert).digest()
    assert ratls["legacy_extensions"] == ()


def test_result_appraises_and_serialises(stand_in: None) -> None:
    key, cert, _ = synthetic(extra={"nonce": b"\x05" * 8})
    ev = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW)
    bound = seal_bound(
        evidence=ev, tls_spki_sha256=hashlib.sha256(spki_der(key)).digest(), audit_pub=b"", nonce=b"", session_id=b""
    )
    policy = load_policy(
        f'version = 1\n[[accept]]\nplatform = "sgx-dcap"\nmrenclave = ["{"11" * 32}"]\n'
        "unsafe_skip_tcb_collateral = true\n"
    )
    result = appraise(bound, policy, now=NOW)
    assert result.status == "warning"
    assert result.unsafe_flags_used == ("unsafe_skip_tcb_collateral",)
    data = json.loads(json.dumps(result.to_json_dict()))
    ratls = data["claims"]["ratls"]
    assert ratls["format"] == "ccc-interoperable-ra-tls"
    assert ratls["nonce"] == "05" * 8
    assert ratls["spki_sha256"] == hashlib.sha256(spki_der(key)).hexdigest()
    assert data["evidence_sha256"] == hashlib.sha256(cert).hexdigest()


def test_claims_that_the_quote_does_not_commit_to_are_rejected(stand_in: None) -> None:
    key = new_key()
    signed_claims = {"pubkey-hash": pubkey_hash_for(key)}
    quote = fake_quote(interop_report_data(signed_claims))
    shown_claims = {"pubkey-hash": pubkey_hash_for(key), "nonce": b"added later"}
    cert = ccc_cert(key, evidence_value(quote, claims_buffer(shown_claims)))
    exc = raises(
        BindingMismatch,
        "binding.claims_hash",
        lambda: verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW),
    )
    assert exc.got == interop_report_data(signed_claims)
    assert exc.expected == interop_report_data(shown_claims)


def test_nonce_is_checked_when_asked(stand_in: None) -> None:
    _, cert, _ = synthetic(extra={"nonce": b"\x01" * 32})
    ok = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW, expected_nonce=b"\x01" * 32)
    assert ok.claims["ratls"]["nonce_checked"] is True  # type: ignore[index]
    raises(
        StaleEvidence,
        "freshness.nonce",
        lambda: verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW, expected_nonce=b"\x02" * 32),
    )
    _, without, _ = synthetic()
    raises(
        StaleEvidence,
        "freshness.nonce",
        lambda: verify_interop_certificate(without, anchors=hardware_anchors(), now=NOW, expected_nonce=b"\x01" * 32),
    )


def _with_legacy(legacy_quote: bytes) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = new_key()
    claims = {"pubkey-hash": pubkey_hash_for(key)}
    ext = build_interop_extension(fake_quote(interop_report_data(claims)), claims)
    return key, make_cert(key, [(ext.oid.dotted_string, ext.value, False), (GRAMINE_LEGACY_OID, legacy_quote, False)])


def test_legacy_quote_is_reported_and_verified_only_on_request(stand_in: None) -> None:
    key = new_key()
    claims = {"pubkey-hash": pubkey_hash_for(key)}
    ext = build_interop_extension(fake_quote(interop_report_data(claims)), claims)
    legacy = fake_quote(hashlib.sha256(spki_der(key)).digest() + bytes(32))
    cert = make_cert(key, [(ext.oid.dotted_string, ext.value, False), (GRAMINE_LEGACY_OID, legacy, False)])
    plain = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW)
    (entry,) = plain.claims["ratls"]["legacy_extensions"]  # type: ignore[index]
    assert (entry["verified"], entry["identical_to_evidence_quote"]) == (False, False)
    checked = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW, verify_legacy=True)
    (entry,) = checked.claims["ratls"]["legacy_extensions"]  # type: ignore[index]
    assert entry["verified"] is True


def test_legacy_quote_binding_another_key_or_enclave_fails_when_checked(stand_in: None) -> None:
    _, other_key_cert = _with_legacy(fake_quote(hashlib.sha256(b"another SPKI").digest() + bytes(32)))
    verify_interop_certificate(other_key_cert, anchors=hardware_anchors(), now=NOW)  # ignored unless asked
    raises(
        BindingMismatch,
        "ratls.legacy.binding",
        lambda: verify_interop_certificate(other_key_cert, anchors=hardware_anchors(), now=NOW, verify_legacy=True),
    )
    key = new_key()
    claims = {"pubkey-hash": pubkey_hash_for(key)}
    ext = build_interop_extension(fake_quote(interop_report_data(claims)), claims)
    other_enclave = fake_quote(hashlib.sha256(spki_der(key)).digest() + bytes(32), mrenclave=b"\x33" * 32)
    cert = make_cert(key, [(ext.oid.dotted_string, ext.value, False), (GRAMINE_LEGACY_OID, other_enclave, False)])
    raises(
        BindingMismatch,
        "ratls.legacy.enclave",
        lambda: verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW, verify_legacy=True),
    )


def test_steps_a_and_b_run_before_the_quote_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    def record(quote: bytes, **kwargs: object) -> VerifiedEvidence:
        calls.append(quote)
        raise AssertionError("must not be reached")

    monkeypatch.setattr(ratls_interop, "verify_quote", record)
    forged = resigned(SGXSDK, new_key())
    with pytest.raises(BindingMismatch):
        verify_interop_certificate(forged, anchors=hardware_anchors(), now=NOW)
    with pytest.raises(CertificateExpired):
        verify_interop_certificate(vector(SGXSDK), anchors=hardware_anchors(), now=datetime(2051, 1, 1, tzinfo=UTC))
    assert calls == []


# --- missing extension, critical extensions ------------------------------------------------------------------


def test_missing_extension() -> None:
    key = new_key()
    exc = raises(MalformedEvidence, "ratls.extension", lambda: parse_interop_certificate(make_cert(key, [])))
    assert exc.expected == "2.23.133.5.4.9"
    # a legacy extension alone is not accepted instead of the CCC one
    legacy_value = parse_interop_certificate(vector(GRAMINE)).legacy[0].value
    only_legacy = make_cert(key, [(GRAMINE_LEGACY_OID, legacy_value, False)])
    exc = raises(MalformedEvidence, "ratls.extension", lambda: parse_interop_certificate(only_legacy))
    assert "legacy" in exc.message


def test_unknown_critical_extension_is_refused_and_a_critical_ccc_extension_accepted(stand_in: None) -> None:
    key, _, claims = synthetic()
    value = build_interop_extension(fake_quote(interop_report_data(claims)), claims).value
    critical = make_cert(key, [(CCC_EVIDENCE_OID.dotted_string, value, True)])
    assert parse_interop_certificate(critical).evidence_critical
    verify_interop_certificate(critical, anchors=hardware_anchors(), now=NOW)
    unknown = make_cert(key, [(CCC_EVIDENCE_OID.dotted_string, value, False), ("1.3.6.1.4.1.99999.1", b"x", True)])
    raises(MalformedEvidence, "ratls.critical_extension", lambda: parse_interop_certificate(unknown))


def test_not_a_certificate() -> None:
    for data in (b"", b"\x30\x00", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", b"hello"):
        raises(MalformedEvidence, "ratls.certificate", functools.partial(parse_interop_certificate, data))
    two = vector(SGXSDK) + vector(SGXSDK)
    raises(MalformedEvidence, "ratls.certificate", lambda: parse_interop_certificate(two))
    with pytest.raises(TypeError):
        parse_interop_certificate("not bytes")  # type: ignore[arg-type]


# --- malformed CBOR ------------------------------------------------------------------------------------------

PKH = hash_entry(1, b"\x00" * 32)
GOOD_CLAIMS = claims_buffer({"pubkey-hash": PKH})
QUOTE = b"quote-bytes"
ZERO32 = b"\x00" * 32


def _with_pkh(entry: bytes) -> bytes:
    return evidence_value(QUOTE, claims_buffer({"pubkey-hash": entry}))


def _tagged(value: object) -> bytes:
    return bytes(cbor2.dumps(cbor2.CBORTag(60000, value)))


MALFORMED: list[tuple[str, bytes, str]] = [
    ("tag-60001-report", evidence_value(QUOTE, GOOD_CLAIMS, tag=60001), "ratls.tag"),
    ("tag-60002-legacy-report", evidence_value(QUOTE, GOOD_CLAIMS, tag=60002), "ratls.tag"),
    ("tag-1234", evidence_value(QUOTE, GOOD_CLAIMS, tag=1234), "ratls.tag"),
    ("tag-pre-iana-rats-tls", evidence_value(QUOTE, GOOD_CLAIMS, tag=0x1A7501), "ratls.tag"),
    ("untagged-array", bytes(cbor2.dumps([QUOTE, GOOD_CLAIMS])), "ratls.tag"),
    ("untagged-bytes", bytes(cbor2.dumps(QUOTE)), "ratls.tag"),
    ("array-of-1", _tagged([QUOTE]), "ratls.evidence"),
    ("array-of-3", _tagged([QUOTE, GOOD_CLAIMS, b"x"]), "ratls.evidence"),
    ("array-of-0", _tagged([]), "ratls.evidence"),
    ("map-not-array", _tagged({"q": GOOD_CLAIMS}), "ratls.evidence"),
    ("quote-is-text", evidence_value("q", GOOD_CLAIMS), "ratls.evidence"),
    ("claims-is-a-map-not-bstr", evidence_value(QUOTE, {"pubkey-hash": PKH}), "ratls.evidence"),
    ("claims-is-int", evidence_value(QUOTE, 7), "ratls.evidence"),
    ("empty-quote", evidence_value(b"", GOOD_CLAIMS), "ratls.evidence"),
    ("claims-array", evidence_value(QUOTE, claims_buffer([PKH])), "ratls.claims"),
    # integer map keys are CBOR the strict decoder accepts (Nitro uses them); claim names must be text
    ("claims-int-key", evidence_value(QUOTE, claims_buffer({1: PKH})), "ratls.claims"),
    # byte-string map keys and booleans are kinds the strict decoder refuses in every evidence format
    ("claims-bytes-key", evidence_value(QUOTE, claims_buffer({b"pubkey-hash": PKH})), "ratls.cbor"),
    ("claim-value-text", evidence_value(QUOTE, claims_buffer({"pubkey-hash": "text"})), "ratls.claims"),
    ("no-pubkey-hash", evidence_value(QUOTE, claims_buffer({"nonce": b"n"})), "ratls.claims"),
    ("empty-claims", evidence_value(QUOTE, claims_buffer({})), "ratls.claims"),
    ("pkh-not-array", _with_pkh(b"\x01"), "ratls.pubkey_hash"),
    ("pkh-array-of-1", _with_pkh(bytes(cbor2.dumps([1]))), "ratls.pubkey_hash"),
    ("pkh-alg-text", _with_pkh(bytes(cbor2.dumps(["sha-256", ZERO32]))), "ratls.pubkey_hash"),
    ("pkh-alg-bool", _with_pkh(bytes(cbor2.dumps([True, ZERO32]))), "ratls.cbor"),
    ("pkh-hash-text", _with_pkh(bytes(cbor2.dumps([1, "00" * 32]))), "ratls.pubkey_hash"),
    ("pkh-sha256-short", _with_pkh(hash_entry(1, b"\x00" * 31)), "ratls.pubkey_hash.length"),
    ("pkh-sha384-32-bytes", _with_pkh(hash_entry(7, ZERO32)), "ratls.pubkey_hash.length"),
    ("pkh-alg-negative", _with_pkh(hash_entry(-1, ZERO32)), "ratls.pubkey_hash.algorithm"),
]


@pytest.mark.parametrize(("value", "check"), [pytest.param(v, c, id=i) for i, v, c in MALFORMED])
def test_malformed_evidence_values(value: bytes, check: str) -> None:
    raises(MalformedEvidence, check, lambda: parse_interop_extension(value))


@pytest.mark.parametrize(
    ("alg_id", "named"),
    [(2, "sha-256-128 (truncated)"), (10, "sha3-256"), (99, "unknown id 99"), (16, "unknown id 16")],
)
def test_unknown_or_refused_hash_algorithm_is_named(alg_id: int, named: str) -> None:
    value = _with_pkh(hash_entry(alg_id, ZERO32))
    exc = raises(MalformedEvidence, "ratls.pubkey_hash.algorithm", lambda: parse_interop_extension(value))
    assert named in exc.message
    assert exc.got == alg_id
    assert exc.expected == [1, 7, 8]
    # and through a whole certificate
    cert = ccc_cert(new_key(), value)
    raises(MalformedEvidence, "ratls.pubkey_hash.algorithm", lambda: parse_interop_certificate(cert))


def _head(major: int, n: int, width: int) -> bytes:
    """A CBOR head with an explicit argument width (1, 2, 4 or 8 bytes): non-minimal for small ``n``."""
    code = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | code]) + n.to_bytes(width, "big")


def _cb(value: object) -> bytes:
    return bytes(cbor2.dumps(value))


KEY = _cb("pubkey-hash")
NOT_STRICT: list[tuple[str, bytes]] = [
    ("array-length-non-minimal", bytes.fromhex("d9ea60") + _head(4, 2, 1) + _cb(QUOTE) + _cb(GOOD_CLAIMS)),
    ("quote-length-non-minimal", bytes.fromhex("d9ea6082") + _head(2, len(QUOTE), 2) + QUOTE + _cb(GOOD_CLAIMS)),
    ("tag-argument-8-bytes", _head(6, 60000, 8) + _cb([QUOTE, GOOD_CLAIMS])),
    ("indefinite-array", bytes.fromhex("d9ea609f") + _cb(QUOTE) + _cb(GOOD_CLAIMS) + b"\xff"),
    ("indefinite-quote", bytes.fromhex("d9ea60825f") + _cb(QUOTE) + b"\xff" + _cb(GOOD_CLAIMS)),
    ("trailing-byte", evidence_value(QUOTE, GOOD_CLAIMS) + b"\x00"),
    ("self-describe-prefix", bytes.fromhex("d9d9f7") + evidence_value(QUOTE, GOOD_CLAIMS)),
    ("claims-duplicate-key", evidence_value(QUOTE, bytes.fromhex("a2") + (KEY + _cb(PKH)) * 2)),
    ("claims-indefinite-map", evidence_value(QUOTE, bytes.fromhex("bf") + KEY + _cb(PKH) + b"\xff")),
    ("claims-trailing-byte", evidence_value(QUOTE, GOOD_CLAIMS + b"\xa0")),
    ("claims-bignum-value", evidence_value(QUOTE, bytes.fromhex("a1") + KEY + bytes.fromhex("c24101"))),
    ("pkh-alg-non-minimal", _with_pkh(bytes.fromhex("821801") + _cb(ZERO32))),
    ("pkh-alg-bignum", _with_pkh(bytes.fromhex("82c24101") + _cb(ZERO32))),
    ("empty", b""),
    ("break-byte", b"\xff"),
    ("reserved-head", b"\x1c"),
]


@pytest.mark.parametrize("value", [pytest.param(v, id=i) for i, v in NOT_STRICT])
def test_non_strict_cbor_is_refused(value: bytes) -> None:
    raises(MalformedEvidence, "ratls.cbor", lambda: parse_interop_extension(value))


def test_oversized_extension() -> None:
    value = evidence_value(b"q" * MAX_EXTENSION_SIZE, GOOD_CLAIMS)
    raises(MalformedEvidence, "ratls.extension.size", lambda: parse_interop_extension(value))


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_truncated_extension_value_at_every_offset(name: str) -> None:
    ev = parse_interop_certificate(vector(name))
    value = evidence_value(ev.quote, ev.claims_bytes)
    for cut in range(len(value)):
        with pytest.raises(MalformedEvidence):
            parse_interop_extension(value[:cut])


def test_truncated_extension_inside_a_certificate_at_every_offset() -> None:
    key = new_key()
    ev = parse_interop_certificate(vector(GRAMINE))
    value = evidence_value(ev.quote, ev.claims_bytes)
    for cut in range(len(value)):
        cert = ccc_cert(key, value[:cut])
        with pytest.raises(MalformedEvidence):
            verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW)


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_truncated_certificate_at_every_offset(name: str) -> None:
    der = parse_interop_certificate(vector(name)).certificate_der
    for cut in range(len(der)):
        with pytest.raises(MalformedEvidence):
            parse_interop_certificate(der[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_extension_bytes_only_raise_malformed_evidence(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        parse_interop_extension(data)


_SGXSDK_PARTS = parse_interop_certificate(vector(SGXSDK))
_SGXSDK_VALUE = evidence_value(_SGXSDK_PARTS.quote, _SGXSDK_PARTS.claims_bytes)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_SGXSDK_VALUE) - 1), st.integers(1, 255))
def test_mutated_real_extension_only_raises_malformed_evidence(offset: int, xor: int) -> None:
    mutated = _SGXSDK_VALUE[:offset] + bytes([_SGXSDK_VALUE[offset] ^ xor]) + _SGXSDK_VALUE[offset + 1 :]
    with contextlib.suppress(MalformedEvidence):
        parsed = parse_interop_extension(mutated)
        assert parsed[1:3] != (_SGXSDK_PARTS.quote, _SGXSDK_PARTS.claims_bytes)  # a change is never invisible


_GRAMINE_DER = parse_interop_certificate(vector(GRAMINE)).certificate_der


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_GRAMINE_DER) - 1), st.integers(1, 255))
def test_any_changed_certificate_byte_is_malformed_or_unsigned(offset: int, delta: int) -> None:
    """No byte of the certificate (explicit-NULL quirk included) can change without failing before the quote."""
    changed = bytearray(_GRAMINE_DER)
    changed[offset] = (changed[offset] + delta) % 256
    with pytest.raises((MalformedEvidence, SignatureInvalid)):
        verify_interop_certificate(bytes(changed), anchors=hardware_anchors(), now=NOW)


# --- building our own extension (design note: TDX/SGX only) -------------------------------------------------


def test_build_interop_extension_round_trip(stand_in: None) -> None:
    key = new_key(ec.SECP384R1())
    claims: dict[str, object] = {"pubkey-hash": pubkey_hash_value(spki_der(key)), "cc-kernel-audit-pub": b"\x07" * 32}
    quote = fake_quote(interop_report_data(claims))
    ext = build_interop_extension(quote, claims)
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert ext.oid == CCC_EVIDENCE_OID
    cert = make_cert(key, [(ext.oid.dotted_string, ext.value, False)], hash_algorithm=hashes.SHA384())
    parsed = parse_interop_certificate(cert)
    assert parsed.quote == quote
    assert dict(parsed.claims) == claims
    assert parsed.claims_bytes == encode_interop_claims(claims)
    assert parsed.expected_report_data == interop_report_data(claims)
    ev = verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW)
    assert ev.claims["ratls"]["claims"]["cc-kernel-audit-pub"] == b"\x07" * 32  # type: ignore[index]


def test_build_interop_extension_refuses_bad_input() -> None:
    key = new_key()
    with pytest.raises(ValueError, match="pubkey-hash"):
        build_interop_extension(b"q", {"nonce": b"n"})
    with pytest.raises(ValueError, match="byte strings"):
        build_interop_extension(b"q", {"pubkey-hash": pubkey_hash_value(spki_der(key)), "n": 5})
    with pytest.raises(ValueError, match="quote"):
        build_interop_extension(b"", {"pubkey-hash": pubkey_hash_value(spki_der(key))})
    with pytest.raises(ValueError, match="pubkey-hash"):
        build_interop_extension(b"q", {"pubkey-hash": b"\x01"})
    with pytest.raises(ValueError, match="hash algorithm id"):
        pubkey_hash_value(spki_der(key), alg_id=2)


# --- the real vectors end to end (DCAP) ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_vector_is_authentic_bound_sgx_and_debug(name: str) -> None:
    ev = verify_interop_certificate(vector(name), anchors=hardware_anchors(), now=NOW)
    parsed = parse_interop_certificate(vector(name))
    assert ev.platform == "sgx-dcap"
    assert ev.debug is True
    assert ev.report_data == hashlib.sha256(parsed.claims_bytes).digest() + bytes(32)
    assert ev.evidence_sha256 == hashlib.sha256(parsed.certificate_der).digest()
    ratls = ev.claims["ratls"]
    assert ratls["pubkey_hash"] == hashlib.sha256(parsed.spki_der).digest()  # type: ignore[index]
    assert ratls["quote_evidence_sha256"] == hashlib.sha256(parsed.quote).digest()  # type: ignore[index]
    if name == GRAMINE:
        assert ev.measurement == GRAMINE_MRENCLAVE
    (legacy,) = ratls["legacy_extensions"]  # type: ignore[index]
    assert legacy["verified"] is (name == SGXSDK)  # the SDK's is the same quote; Gramine's only on request


def test_gramine_legacy_quote_verifies_on_request() -> None:
    ev = verify_interop_certificate(vector(GRAMINE), anchors=hardware_anchors(), now=NOW, verify_legacy=True)
    (legacy,) = ev.claims["ratls"]["legacy_extensions"]  # type: ignore[index]
    assert legacy["verified"] is True
    assert legacy["oid"] == GRAMINE_LEGACY_OID


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_genuine_quote_with_someone_elses_claims_is_rejected(name: str) -> None:
    """A genuine quote moved into an attacker's certificate whose claims name the attacker's key."""
    key = new_key()
    quote = parse_interop_certificate(vector(name)).quote
    cert = ccc_cert(key, evidence_value(quote, claims_buffer({"pubkey-hash": pubkey_hash_for(key)})))
    raises(
        BindingMismatch,
        "binding.claims_hash",
        lambda: verify_interop_certificate(cert, anchors=hardware_anchors(), now=NOW),
    )


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_default_policy_rejects_the_debug_vectors(name: str) -> None:
    ev = verify_interop_certificate(vector(name), anchors=hardware_anchors(), now=NOW)
    parsed = parse_interop_certificate(vector(name))
    # the RA-TLS binding was checked by verify_interop_certificate; seal it as the binding layer would
    bound = seal_bound(
        evidence=ev,
        tls_spki_sha256=hashlib.sha256(parsed.spki_der).digest(),
        audit_pub=b"",
        nonce=b"",
        session_id=b"",
    )
    with pytest.raises(PolicyViolation) as info:
        appraise(bound, default_hardware_policy(), now=NOW)
    assert "policy.debug" in [f.check for f in info.value.failures]
    # accepting it needs the explicit weakenings, and the result says so
    policy = load_policy(
        'version = 1\n[[accept]]\nplatform = "sgx-dcap"\n'
        f'mrenclave = ["{ev.measurement.hex()}"]\n'
        "unsafe_allow_debug = true\nunsafe_skip_tcb_collateral = true\n"
        'unsafe_accept_tcb_status = ["SWHardeningNeeded", "OutOfDate", "ConfigurationNeeded", '
        '"OutOfDateConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"]\n'
    )
    result = appraise(bound, policy, now=NOW)
    assert result.status == "warning"
    assert "unsafe_allow_debug" in result.unsafe_flags_used
    assert result.trust_vector["runtime-opaque"] == "contraindicated"
