"""The AWS Nitro verifier (``platforms/nitro.py``) on the four real documents at their pinned times, with their
negative twins, and on documents signed by a throwaway PKI for the rules no real document breaks (each one
signed correctly, so that only the intended check fails). Appraisal goes through the existing policy layer.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from datetime import timedelta

import cbor2
import pytest
from conftest import read_vector
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from nitro_support import (
    AWS_ROOT_NAME,
    DROP,
    ES384_PROTECTED,
    TEST_MODULE_ID,
    TEST_NOW,
    TEST_PCRS,
    VECTORS,
    VECTORS_BY_NAME,
    NitroVector,
    build_document,
    cose_sign1,
    default_pki,
    der,
    document_timestamp_ms,
    es384,
    leaf_usage,
    make_pki,
    payload_fields,
    pinned_test_anchors,
    self_signed_tls_certificate,
    spki,
    split_cose,
)

from cc_kernel.attestation.anchors import AWS_NITRO_ROOT_G1_SHA256, TrustAnchors, hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.evidence import BoundEvidence, VerifiedEvidence, seal_bound, seal_verified
from cc_kernel.attestation.platforms.nitro import (
    MAX_DOCUMENT_SIZE,
    check_user_data_is_certificate_spki,
    document_from_certificate_san,
    document_nonce,
    parse_document_unverified,
    sig_structure,
    verify_document,
)
from cc_kernel.attestation.policy import Policy, default_hardware_policy, load_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.errors import (
    BindingMismatch,
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    PolicyViolation,
    SignatureInvalid,
    StaleEvidence,
    UntrustedRoot,
    VerificationError,
)

NONDEBUG = VECTORS_BY_NAME["evervault-2023-01-18-nondebug-in-tls-cert"]
BLINDAI = VECTORS_BY_NAME["blindai-2023-03-22-debug"]
BOUND = VECTORS_BY_NAME["evervault-2023-09-18-debug-bound"]


def fail(exc_type: type[VerificationError], call: Callable[[], object]) -> VerificationError:
    with pytest.raises(exc_type) as info:
        call()
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    return info.value


def verify_vector(case: NitroVector, **kw: object) -> VerifiedEvidence:
    args: dict[str, object] = {"anchors": hardware_anchors(), "now": case.verify_at}
    args.update(kw)
    return verify_document(case.document(), **args)  # type: ignore[arg-type]


def bound(ev: VerifiedEvidence) -> BoundEvidence:
    """Appraisal needs BoundEvidence; the real documents bind Evervault's way (tested separately), not ours."""
    return seal_bound(
        evidence=ev, tls_spki_sha256=b"\x55" * 32, audit_pub=b"\x44" * 32, nonce=b"\x33" * 32, session_id=b"\x22" * 16
    )


def pcr_policy(pcrs: dict[int, bytes], **top: str) -> Policy:
    pins = ", ".join(f'{i} = "{v.hex()}"' for i, v in sorted(pcrs.items()))
    head = "".join(f"{k} = {v}\n" for k, v in top.items())
    return load_policy(f'version = 1\n{head}[[accept]]\nplatform = "nitro"\npcr = {{ {pins} }}\n')


def checks(exc: PolicyViolation) -> list[str]:
    return [f.check for f in exc.failures]


@pytest.fixture
def test_anchors(monkeypatch: pytest.MonkeyPatch) -> TrustAnchors:
    return pinned_test_anchors(default_pki(), monkeypatch)


# --- the real documents --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: c.name)
def test_real_document_is_authentic(case: NitroVector) -> None:
    document = case.document()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = verify_vector(case)
    # the sealed fields the binding and policy layers read
    assert (ev.platform, ev.product, ev.signer) == ("nitro", "Nitro", "nitro-leaf")
    assert ev.anchor_sha256 == AWS_NITRO_ROOT_G1_SHA256
    assert ev.evidence_sha256 == hashlib.sha256(document).digest()
    assert ev.verified_at == case.verify_at
    assert ev.debug is case.debug
    assert ev.measurement == bytes.fromhex(case.pcrs[0])
    assert ev.report_data == case.user_data
    assert set(ev.measurements) == {f"pcr{i}" for i in range(16)}
    for index, value in case.pcrs.items():
        assert ev.measurements[f"pcr{index}"] == bytes.fromhex(value), f"PCR{index}"
    assert dict(ev.tcb) == {} and ev.tcb_status is None and ev.warnings == ()
    # the claims: every documented field
    claims = ev.claims
    assert claims["format"] == "aws-nitro-cose-sign1"
    assert claims["cose_tagged"] is False
    assert claims["module_id"] == case.module_id
    assert claims["digest"] == "SHA384"
    assert claims["timestamp"] == case.timestamp_ms
    assert claims["timestamp_utc"] == case.verify_at.isoformat()
    assert claims["debug_pcrs_zero"] is case.debug
    assert claims["user_data"] == case.user_data.hex()
    assert claims["public_key"] == (None if case.public_key is None else case.public_key.hex())
    assert claims["nonce"] == (None if case.nonce is None else case.nonce.hex())
    assert document_nonce(ev) == case.nonce
    leaf = claims["certificate"]
    assert isinstance(leaf, dict) and (leaf["not_before"], leaf["not_after"]) == case.leaf_valid
    cabundle = claims["cabundle"]
    assert isinstance(cabundle, list) and len(cabundle) == case.cabundle_len
    assert cabundle[0]["sha256"] == AWS_NITRO_ROOT_G1_SHA256.hex()
    assert cabundle[0]["subject"] == AWS_ROOT_NAME


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: c.name)
def test_real_document_parses_unverified(case: NitroVector) -> None:
    doc = parse_document_unverified(case.document())
    assert not doc.tagged
    assert doc.protected == ES384_PROTECTED and len(doc.signature) == 96
    assert (doc.module_id, doc.digest, doc.timestamp_ms) == (case.module_id, "SHA384", case.timestamp_ms)
    assert doc.timestamp == case.verify_at
    assert sorted(doc.pcrs) == list(range(16)) and {len(v) for v in doc.pcrs.values()} == {48}
    assert doc.debug is case.debug and doc.pcr0 == bytes.fromhex(case.pcrs[0])
    assert (doc.user_data, doc.public_key, doc.nonce) == (case.user_data, case.public_key, case.nonce)
    assert len(doc.cabundle) == case.cabundle_len == len(doc.cabundle_certificates)
    assert hashlib.sha256(doc.cabundle[0]).digest() == AWS_NITRO_ROOT_G1_SHA256
    assert doc.leaf.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: c.name)
def test_real_document_one_day_later_is_expired(case: NitroVector) -> None:
    exc = fail(CertificateExpired, lambda: verify_vector(case, now=case.verify_at + timedelta(days=1)))
    assert (exc.check, exc.index) == ("chain.validity", 0)  # the ~3 hour leaf
    assert exc.expected == list(case.leaf_valid)


def test_blindai_document_verifies_until_its_leaf_expires() -> None:
    end = BLINDAI.verify_at + timedelta(hours=3)  # leaf notAfter 17:28:27; blindai's own test fails at 18:28:27
    assert verify_vector(BLINDAI, now=end - timedelta(seconds=1)).debug
    fail(CertificateExpired, lambda: verify_vector(BLINDAI, now=end + timedelta(seconds=1)))
    exc = fail(CertificateExpired, lambda: verify_vector(BLINDAI, now=BLINDAI.verify_at - timedelta(minutes=5)))
    assert "not yet valid" in exc.message


@pytest.mark.parametrize("case", [c for c in VECTORS if c.debug], ids=lambda c: c.name)
def test_default_policy_rejects_debug_documents(case: NitroVector) -> None:
    ev = verify_vector(case)
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), default_hardware_policy(), now=case.verify_at)
    assert checks(info.value) == ["policy.debug"]
    # and a policy pinning the (all-zero) debug PCR0 still refuses it without unsafe_allow_debug ...
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), pcr_policy({0: bytes(48)}), now=case.verify_at)
    assert checks(info.value) == ["policy.debug"]
    # ... and accepts it with the weakening, never better than "warning"
    result = appraise(bound(ev), pcr_policy({0: bytes(48)}, unsafe_allow_debug="true"), now=case.verify_at)
    assert result.status == "warning" and result.unsafe_flags_used == ("unsafe_allow_debug",)
    assert result.trust_vector["runtime-opaque"] == "contraindicated"


def test_default_policy_accepts_the_production_document_as_warning() -> None:
    ev = verify_vector(NONDEBUG)
    result = appraise(bound(ev), default_hardware_policy(), now=NONDEBUG.verify_at)
    assert isinstance(result, AttestationResult)
    assert (result.status, result.platform, result.debug) == ("warning", "nitro", False)
    assert result.unsafe_flags_used == ("unsafe_any_measurement",)
    assert result.measurement == bytes.fromhex(NONDEBUG.pcrs[0])
    assert result.to_json_dict()["claims"]["module_id"] == NONDEBUG.module_id


def test_policy_pinning_the_production_pcrs() -> None:
    ev = verify_vector(NONDEBUG)
    pins = {i: bytes.fromhex(NONDEBUG.pcrs[i]) for i in (0, 1, 2, 8)}
    result = appraise(bound(ev), pcr_policy(pins), now=NONDEBUG.verify_at)
    assert result.status == "affirming"
    assert result.trust_vector["runtime-opaque"] == "affirming"
    wrong = dict(pins)
    wrong[2] = bytes(48)
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), pcr_policy(wrong), now=NONDEBUG.verify_at)
    assert checks(info.value) == ["policy.pcr.2"]
    # the document's timestamp is the freshness clock: six minutes later it is too old for the default 300 s
    later = NONDEBUG.verify_at + timedelta(minutes=6)
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(verify_vector(NONDEBUG, now=later)), pcr_policy(pins), now=later)
    assert checks(info.value) == ["policy.freshness"]


def test_tagged_real_document_verifies_like_the_untagged_one() -> None:
    document = BLINDAI.document()
    tagged = b"\xd2" + document
    ev = verify_document(tagged, anchors=hardware_anchors(), now=BLINDAI.verify_at)
    assert ev.claims["cose_tagged"] is True and ev.evidence_sha256 == hashlib.sha256(tagged).digest()
    assert ev.measurements == verify_vector(BLINDAI).measurements
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(b"\xd1" + document))  # COSE_Mac0's tag
    assert (exc.check, exc.got) == ("nitro.cose.tag", 17)
    assert fail(MalformedEvidence, lambda: parse_document_unverified(b"\xd2\xd2" + document)).check == "nitro.cbor"


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def _payload_offset(document: bytes, needle: bytes) -> int:
    offset = document.find(needle)
    assert offset > 0 and document.find(needle, offset + 1) < 0
    return offset


@pytest.mark.parametrize(
    "needle",
    [
        bytes.fromhex(NONDEBUG.pcrs[0]),
        bytes.fromhex(NONDEBUG.pcrs[8]),
        NONDEBUG.user_data,
        NONDEBUG.nonce,
        cbor2.dumps(NONDEBUG.module_id),  # with its CBOR head: the bare text also names the leaf certificate
        NONDEBUG.timestamp_ms.to_bytes(8, "big")[2:],
    ],
    ids=["pcr0", "pcr8", "user_data", "nonce", "module_id", "timestamp"],
)
def test_a_flipped_payload_bit_breaks_the_cose_signature(needle: bytes | None) -> None:
    assert needle is not None
    document = NONDEBUG.document()
    tampered = _flip(document, _payload_offset(document, needle) + len(needle) // 2)
    exc = fail(SignatureInvalid, lambda: verify_document(tampered, anchors=hardware_anchors(), now=NONDEBUG.verify_at))
    assert exc.check == "nitro.signature"


@pytest.mark.parametrize("where", [0, 47, 48, 95])
def test_a_flipped_signature_bit(where: int) -> None:
    document = NONDEBUG.document()
    tampered = _flip(document, len(document) - 96 + where, bit=3)
    exc = fail(SignatureInvalid, lambda: verify_document(tampered, anchors=hardware_anchors(), now=NONDEBUG.verify_at))
    assert exc.check == "nitro.signature"


def test_every_flipped_protected_header_bit_is_malformed() -> None:
    document = BLINDAI.document()
    start = document.index(ES384_PROTECTED)
    assert start == 2  # 84 44 | a1 01 38 22
    seen = set()
    for offset in range(start, start + 4):
        for bit in range(8):
            exc = fail(MalformedEvidence, lambda o=offset, b=bit: parse_document_unverified(_flip(document, o, b)))
            seen.add(exc.check)
    assert seen == {"nitro.cbor", "nitro.cose.protected", "nitro.cose.alg"}
    # 0x22 -> 0x23: alg -36 (ES512) is named as the algorithm fault
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(_flip(document, start + 3, 0)))
    assert (exc.check, exc.got, exc.expected) == ("nitro.cose.alg", -36, -35)


def test_binding_of_the_evervault_document_to_its_tls_certificate() -> None:
    ev = verify_vector(BOUND)
    certificate = read_vector(BOUND.tls_cert or "")
    assert check_user_data_is_certificate_spki(ev, certificate=certificate) == BOUND.user_data
    other = read_vector(NONDEBUG.tls_cert or "")
    exc = fail(BindingMismatch, lambda: check_user_data_is_certificate_spki(ev, certificate=other))
    assert (exc.check, exc.got, exc.expected) == ("nitro.binding.spki", BOUND.user_data, NONDEBUG.user_data)


def test_the_document_embedded_in_a_tls_certificate_binds_that_certificate() -> None:
    certificate = read_vector(NONDEBUG.tls_cert or "")
    document = document_from_certificate_san(certificate)
    assert len(document) == 4775 and document[:2] == b"\x84\x44"
    ev = verify_document(document, anchors=hardware_anchors(), now=NONDEBUG.verify_at)
    assert check_user_data_is_certificate_spki(ev, certificate=certificate) == NONDEBUG.user_data
    # the SAN certificate's key is P-384; another certificate's key is not bound
    exc = fail(
        BindingMismatch, lambda: check_user_data_is_certificate_spki(ev, certificate=read_vector(BOUND.tls_cert or ""))
    )
    assert exc.check == "nitro.binding.spki"
    _, fresh = self_signed_tls_certificate(curve=ec.SECP384R1())
    fail(BindingMismatch, lambda: check_user_data_is_certificate_spki(ev, certificate=fresh))


def test_placeholder_user_data_binds_no_certificate() -> None:
    ev = verify_vector(VECTORS_BY_NAME["evervault-2022-10-12-debug"])
    exc = fail(
        BindingMismatch, lambda: check_user_data_is_certificate_spki(ev, certificate=read_vector(BOUND.tls_cert or ""))
    )
    assert exc.got == b"hello, world!"


def test_our_binding_scheme_fails_closed_on_foreign_documents() -> None:
    # the real documents carry Evervault's binding, not our 64-byte report_data digest
    ev = verify_vector(BOUND)
    with pytest.raises(BindingMismatch) as info:
        check_binding(ev, tls_spki=BOUND.user_data, audit_pub=b"a" * 32, nonce=b"n" * 32, session_id=b"s" * 16)
    assert info.value.check == "binding.report_data"


# --- COSE envelope and schema rules (throwaway PKI, correctly signed) -----------------------------------------


def test_the_throwaway_document_verifies_with_its_pinned_root(test_anchors: TrustAnchors) -> None:
    for tagged in (False, True):
        ev = verify_document(build_document(tagged=tagged), anchors=test_anchors, now=TEST_NOW)
        assert (ev.platform, ev.debug, ev.measurement) == ("nitro", False, TEST_PCRS[0])
        assert ev.claims["cose_tagged"] is tagged and ev.report_data == b"user data of the test enclave"
        assert ev.claims["timestamp"] == document_timestamp_ms()


def test_sig_structure_is_the_rfc_9052_encoding() -> None:
    for size in (0, 23, 24, 255, 256, 65535, 65536):
        payload = bytes(size)
        assert sig_structure(ES384_PROTECTED, payload) == cbor2.dumps(["Signature1", ES384_PROTECTED, b"", payload])


@pytest.mark.parametrize(
    ("protected", "check", "got"),
    [
        (cbor2.dumps({1: -7}), "nitro.cose.alg", -7),  # ES256
        (cbor2.dumps({1: -36}), "nitro.cose.alg", -36),  # ES512
        (cbor2.dumps({1: -37}), "nitro.cose.alg", -37),  # PS256
        (cbor2.dumps({1: "ES384"}), "nitro.cose.alg", "ES384"),
        (cbor2.dumps({1: -35, 4: b"kid"}), "nitro.cose.protected", ["1", "4"]),
        (cbor2.dumps({}), "nitro.cose.protected", {}),
        (b"", "nitro.cose.protected", {}),
        (cbor2.dumps([1, -35]), "nitro.cose.protected", "list"),
    ],
    ids=["ES256", "ES512", "PS256", "text-alg", "extra-label", "empty-map", "empty-bstr", "array"],
)
def test_protected_header_must_be_exactly_es384(protected: bytes, check: str, got: object) -> None:
    pki = default_pki()
    document = cose_sign1(cbor2.dumps(payload_fields(pki)), key=pki.leaf_key, protected=protected)
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(document))
    assert exc.check == check
    if got is not None:
        assert exc.got == got


def test_protected_header_that_is_not_a_byte_string() -> None:
    pki = default_pki()
    payload = cbor2.dumps(payload_fields(pki))
    document = cbor2.dumps([{1: -35}, {}, payload, es384(pki.leaf_key, sig_structure(ES384_PROTECTED, payload))])
    assert fail(MalformedEvidence, lambda: parse_document_unverified(document)).check == "nitro.cose.protected"


@pytest.mark.parametrize(
    "unprotected", [cbor2.dumps({4: b"kid"}), cbor2.dumps({1: -35}), cbor2.dumps([]), b"\xf6"], ids=str
)
def test_unprotected_header_must_be_an_empty_map(unprotected: bytes) -> None:
    pki = default_pki()
    document = cose_sign1(cbor2.dumps(payload_fields(pki)), key=pki.leaf_key, unprotected=unprotected)
    assert fail(MalformedEvidence, lambda: parse_document_unverified(document)).check == "nitro.cose.unprotected"


@pytest.mark.parametrize(
    ("document", "check"),
    [
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"x"]), "nitro.cose.structure"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"x", b"s", b"extra"]), "nitro.cose.structure"),
        (cbor2.dumps({"payload": b"x"}), "nitro.cose.structure"),
        (cbor2.dumps(b"\x84"), "nitro.cose.structure"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, None, bytes(96)]), "nitro.cose.payload"),  # detached payload
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"", bytes(96)]), "nitro.cose.payload"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, {"module_id": "x"}, bytes(96)]), "nitro.cose.payload"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\xa0", bytes(95)]), "nitro.cose.signature"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\xa0", bytes(97)]), "nitro.cose.signature"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\xa0", "sig"]), "nitro.cose.signature"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\x80", bytes(96)]), "nitro.payload"),
        (cbor2.dumps(cbor2.CBORTag(98, [])), "nitro.cose.tag"),  # COSE_Sign (multi-signer)
        (b"", "nitro.size"),
        (bytes(MAX_DOCUMENT_SIZE + 1), "nitro.size"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_cose_structure(document: bytes, check: str) -> None:
    assert fail(MalformedEvidence, lambda: parse_document_unverified(document)).check == check


def test_strict_cbor() -> None:
    pki = default_pki()
    good = build_document(pki)
    payload = split_cose(good)[2]
    cases = {
        "trailing byte after the document": good + b"\x00",
        "indefinite-length outer array": b"\x9f" + good[1:] + b"\xff",
        "trailing byte after the payload map": cose_sign1(payload + b"\x00", key=pki.leaf_key),
        "indefinite-length payload map": cose_sign1(b"\xbf" + payload[1:] + b"\xff", key=pki.leaf_key),
        "duplicate key": cose_sign1(b"\xaa" + payload[1:] + cbor2.dumps("nonce") + b"\xf6", key=pki.leaf_key),
        "float": cose_sign1(cbor2.dumps(payload_fields(pki, timestamp=1.5e12)), key=pki.leaf_key),
        "true": cose_sign1(cbor2.dumps(payload_fields(pki, nonce=True)), key=pki.leaf_key),
        "tag inside": cose_sign1(cbor2.dumps(payload_fields(pki, nonce=cbor2.CBORTag(24, b"x"))), key=pki.leaf_key),
        "undefined": cose_sign1(cbor2.dumps(payload_fields(pki, nonce=cbor2.undefined)), key=pki.leaf_key),
        "invalid UTF-8": cose_sign1(
            payload.replace(cbor2.dumps(TEST_MODULE_ID), b"\x62\xc3\x28" + cbor2.dumps(TEST_MODULE_ID)[3:]),
            key=pki.leaf_key,
        ),
        "reserved additional info": cose_sign1(b"\xbc" + payload[1:], key=pki.leaf_key),
        "too deep": cose_sign1(cbor2.dumps(payload_fields(pki, nonce=None, pcrs={0: [[[[b""]]]]})), key=pki.leaf_key),
        "array key": cose_sign1(b"\xa1\x81\x00\x00", key=pki.leaf_key),
        "huge count": cose_sign1(b"\xbb" + (2**63).to_bytes(8, "big"), key=pki.leaf_key),
        "huge length": b"\x84\x5b" + (2**63).to_bytes(8, "big"),
    }
    for name, document in cases.items():
        exc = fail(MalformedEvidence, lambda d=document: parse_document_unverified(d))
        assert exc.check == "nitro.cbor", f"{name}: {exc}"
        assert isinstance(exc.index, int)


def test_non_shortest_heads_are_refused_even_when_signed(test_anchors: TrustAnchors) -> None:
    pki = default_pki()
    fields = payload_fields(pki)
    payload = cbor2.dumps(fields)
    assert verify_document(cose_sign1(payload, key=pki.leaf_key), anchors=test_anchors, now=TEST_NOW)
    # re-encode the payload map head (9 entries) with a one-byte argument: same value, other bytes, signed as sent
    long_head = b"\xb8\x09" + payload[1:]
    document = cose_sign1(long_head, key=pki.leaf_key)
    exc = fail(MalformedEvidence, lambda: verify_document(document, anchors=test_anchors, now=TEST_NOW))
    assert exc.check == "nitro.cbor" and exc.index == 0
    assert "payload is not valid CBOR: not in preferred serialisation" in exc.message


REQUIRED = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_required_field(name: str) -> None:
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(build_document(**{name: DROP})))
    assert exc.check == f"nitro.{name}" and name in exc.message


@pytest.mark.parametrize("name", REQUIRED)
def test_null_required_field(name: str) -> None:
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(build_document(**{name: None})))
    assert exc.check == f"nitro.{name}" and name in exc.message


def test_unknown_field() -> None:
    pki = default_pki()
    fields = payload_fields(pki)
    fields["user_data2"] = b"x"
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(cose_sign1(cbor2.dumps(fields), key=pki.leaf_key)))
    assert (exc.check, exc.got) == ("nitro.unknown_field", ["user_data2"])
    fields = payload_fields(pki)
    fields[7] = b"x"  # type: ignore[index]
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(cose_sign1(cbor2.dumps(fields), key=pki.leaf_key)))
    assert (exc.check, exc.got) == ("nitro.unknown_field", ["7"])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


PKI_LEAF_DER = der(default_pki().leaf)

MISTYPED: list[tuple[str, object, str]] = [
    ("module_id", "", "nitro.module_id"),
    ("module_id", 5, "nitro.module_id"),
    ("module_id", b"i-0123", "nitro.module_id"),
    ("digest", "SHA256", "nitro.digest"),
    ("digest", "sha384", "nitro.digest"),
    ("digest", b"SHA384", "nitro.digest"),
    ("timestamp", 0, "nitro.timestamp"),
    ("timestamp", -1, "nitro.timestamp"),
    ("timestamp", "1674047239280", "nitro.timestamp"),
    ("timestamp", 2**63, "nitro.timestamp"),  # beyond year 9999
    ("pcrs", {}, "nitro.pcrs"),
    ("pcrs", [bytes(48)] * 3, "nitro.pcrs"),
    ("pcrs", {**TEST_PCRS, 32: bytes(48)}, "nitro.pcrs"),
    ("pcrs", {**TEST_PCRS, -1: bytes(48)}, "nitro.pcrs"),
    ("pcrs", {"0": bytes(48), 1: bytes(48), 2: bytes(48)}, "nitro.pcrs"),
    ("pcrs", {0: bytes(47), 1: bytes(48), 2: bytes(48)}, "nitro.pcrs"),
    ("pcrs", {0: "00" * 48, 1: bytes(48), 2: bytes(48)}, "nitro.pcrs"),
    ("pcrs", {0: bytes(48), 2: bytes(48)}, "nitro.pcrs"),  # PCR1 missing
    ("pcrs", {i: bytes(48) for i in range(33)}, "nitro.pcrs"),
    ("certificate", b"", "nitro.certificate"),
    ("certificate", b"\x30" * 1025, "nitro.certificate"),
    ("certificate", PKI_LEAF_DER.hex(), "nitro.certificate"),
    ("certificate", _pem(default_pki().leaf), "nitro.certificate"),
    ("certificate", b"\x30\x03\x02\x01\x00", "nitro.certificate"),
    ("certificate", PKI_LEAF_DER[:-1], "nitro.certificate"),
    ("cabundle", [], "nitro.cabundle"),
    ("cabundle", [b""], "nitro.cabundle"),
    ("cabundle", PKI_LEAF_DER, "nitro.cabundle"),
    ("cabundle", [PKI_LEAF_DER, "text"], "nitro.cabundle"),
    ("cabundle", [PKI_LEAF_DER, b"\x30\x00"], "nitro.cabundle"),
    ("public_key", b"", "nitro.public_key"),
    ("public_key", bytes(1025), "nitro.public_key"),
    ("public_key", "key", "nitro.public_key"),
    ("user_data", bytes(513), "nitro.user_data"),
    ("user_data", "hello", "nitro.user_data"),
    ("user_data", 0, "nitro.user_data"),
    ("nonce", bytes(513), "nitro.nonce"),
    ("nonce", [b"n"], "nitro.nonce"),
]


@pytest.mark.parametrize(("name", "value", "check"), MISTYPED, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(MISTYPED)])
def test_mistyped_field(name: str, value: object, check: str) -> None:
    exc = fail(MalformedEvidence, lambda: parse_document_unverified(build_document(**{name: value})))
    assert exc.check == check and name in exc.message, str(exc)


def test_cabundle_index_is_reported() -> None:
    pki = default_pki()
    exc = fail(
        MalformedEvidence, lambda: parse_document_unverified(build_document(cabundle=[*pki.cabundle, b"\x30\x00"]))
    )
    assert (exc.check, exc.index) == ("nitro.cabundle", 3)


def test_optional_fields_at_their_limits(test_anchors: TrustAnchors) -> None:
    document = build_document(public_key=bytes(1024), user_data=bytes(512), nonce=bytes(512))
    ev = verify_document(document, anchors=test_anchors, now=TEST_NOW)
    assert ev.report_data == bytes(512) and document_nonce(ev) == bytes(512)
    document = build_document(public_key=DROP, user_data=b"", nonce=DROP)
    ev = verify_document(document, anchors=test_anchors, now=TEST_NOW)
    assert ev.report_data == b"" and ev.claims["user_data"] == "" and document_nonce(ev) is None
    ev = verify_document(build_document(user_data=None), anchors=test_anchors, now=TEST_NOW)
    assert ev.report_data == b"" and ev.claims["user_data"] is None


def test_pcr_sizes_32_48_64_are_accepted() -> None:
    pcrs = {0: b"\x01" * 32, 1: b"\x02" * 48, 2: b"\x03" * 64, 31: bytes(48)}
    doc = parse_document_unverified(build_document(pcrs=pcrs))
    assert dict(doc.pcrs) == pcrs and not doc.debug


# --- chain and root -------------------------------------------------------------------------------------------


def test_a_throwaway_root_is_not_the_aws_root() -> None:
    exc = fail(UntrustedRoot, lambda: verify_document(build_document(), anchors=hardware_anchors(), now=TEST_NOW))
    assert (exc.check, exc.index) == ("nitro.root", 0)
    assert exc.expected == [AWS_NITRO_ROOT_G1_SHA256.hex()]


def test_a_root_that_copies_the_aws_name_is_not_the_aws_root() -> None:
    pki = make_pki(root_name=AWS_ROOT_NAME, key_set=1)
    assert pki.root.subject.rfc4514_string() == AWS_ROOT_NAME
    exc = fail(UntrustedRoot, lambda: verify_document(build_document(pki), anchors=hardware_anchors(), now=TEST_NOW))
    assert exc.check == "nitro.root"


def test_no_nitro_root_among_the_anchors() -> None:
    anchors = TrustAnchors(roots=tuple(r for r in hardware_anchors().roots if r.platform != "nitro"))
    exc = fail(UntrustedRoot, lambda: verify_vector(BLINDAI, anchors=anchors))
    assert (exc.check, exc.expected) == ("nitro.root", [])


def test_cabundle_must_start_with_the_pinned_root(test_anchors: TrustAnchors) -> None:
    pki = default_pki()
    intermediates = pki.cabundle[1:]
    # without the root the path leaf -> intermediates -> pinned root would verify; AWS's order is still required
    for cabundle in (intermediates, [*intermediates, pki.cabundle[0]], [der(pki.leaf), *intermediates]):
        exc = fail(
            UntrustedRoot,
            lambda c=cabundle: verify_document(build_document(cabundle=c), anchors=test_anchors, now=TEST_NOW),
        )
        assert (exc.check, exc.index) == ("nitro.root", 0)


def test_intermediates_in_the_wrong_order(test_anchors: TrustAnchors) -> None:
    root, first, second = default_pki().cabundle
    exc = fail(
        ChainError,
        lambda: verify_document(build_document(cabundle=[root, second, first]), anchors=test_anchors, now=TEST_NOW),
    )
    assert exc.check == "chain.issuer_name"


def test_a_missing_intermediate(test_anchors: TrustAnchors) -> None:
    root, first, _ = default_pki().cabundle
    exc = fail(
        ChainError, lambda: verify_document(build_document(cabundle=[root, first]), anchors=test_anchors, now=TEST_NOW)
    )
    assert (exc.check, exc.index) == ("chain.issuer_name", 0)


def test_an_intermediate_from_another_pki(monkeypatch: pytest.MonkeyPatch) -> None:
    pki, other = default_pki(), make_pki(key_set=2)
    anchors = pinned_test_anchors(pki, monkeypatch)
    # same names, other keys: the link signature fails
    cabundle = [pki.cabundle[0], pki.cabundle[1], der(other.intermediates[1])]
    exc = fail(
        SignatureInvalid, lambda: verify_document(build_document(pki, cabundle=cabundle), anchors=anchors, now=TEST_NOW)
    )
    assert (exc.check, exc.index) == ("chain.signature", 0)


@pytest.mark.parametrize(
    ("lifetime", "index"),
    [
        ({"leaf_lifetime": (timedelta(hours=4), -timedelta(hours=1))}, 0),
        ({"leaf_lifetime": (-timedelta(minutes=1), timedelta(hours=3))}, 0),
        ({"intermediate_lifetime": (timedelta(days=10), -timedelta(seconds=1))}, 1),
    ],
    ids=["leaf-expired", "leaf-not-yet-valid", "intermediates-expired"],
)
def test_validity_at_now(monkeypatch: pytest.MonkeyPatch, lifetime: dict[str, object], index: int) -> None:
    pki = make_pki(**lifetime)  # type: ignore[arg-type]
    anchors = pinned_test_anchors(pki, monkeypatch)
    exc = fail(CertificateExpired, lambda: verify_document(build_document(pki), anchors=anchors, now=TEST_NOW))
    assert (exc.check, exc.index) == ("chain.validity", index)


def test_leaf_must_hold_a_p384_key(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(leaf_public_key=ec.generate_private_key(ec.SECP256R1()).public_key())
    anchors = pinned_test_anchors(pki, monkeypatch)
    exc = fail(ChainError, lambda: verify_document(build_document(pki), anchors=anchors, now=TEST_NOW))
    assert (exc.check, exc.got) == ("nitro.leaf.key", "secp256r1")


def test_leaf_must_not_be_a_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(leaf_ca=True)
    anchors = pinned_test_anchors(pki, monkeypatch)
    exc = fail(ChainError, lambda: verify_document(build_document(pki), anchors=anchors, now=TEST_NOW))
    assert exc.check == "nitro.leaf.ca"


def test_leaf_must_be_allowed_to_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(leaf_key_usage=leaf_usage(digital_signature=False))
    anchors = pinned_test_anchors(pki, monkeypatch)
    exc = fail(ChainError, lambda: verify_document(build_document(pki), anchors=anchors, now=TEST_NOW))
    assert (exc.check, exc.got) == ("nitro.leaf.key_usage", False)


def test_leaf_without_key_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(leaf_has_key_usage=False)
    assert not any(isinstance(e.value, x509.KeyUsage) for e in pki.leaf.extensions)
    anchors = pinned_test_anchors(pki, monkeypatch)
    exc = fail(ChainError, lambda: verify_document(build_document(pki), anchors=anchors, now=TEST_NOW))
    assert (exc.check, exc.got) == ("nitro.leaf.key_usage", None)


def test_a_document_signed_by_another_key(test_anchors: TrustAnchors) -> None:
    pki = default_pki()
    payload = cbor2.dumps(payload_fields(pki))
    forged = cose_sign1(payload, key=ec.generate_private_key(ec.SECP384R1()))
    exc = fail(SignatureInvalid, lambda: verify_document(forged, anchors=test_anchors, now=TEST_NOW))
    assert exc.check == "nitro.signature"
    for signature in (bytes(96), b"\xff" * 96):
        exc = fail(
            SignatureInvalid,
            lambda s=signature: verify_document(
                cose_sign1(payload, key=None, signature=s), anchors=test_anchors, now=TEST_NOW
            ),
        )
        assert exc.check == "nitro.signature"


def test_signature_over_another_protected_header_does_not_transfer(test_anchors: TrustAnchors) -> None:
    # signed with a non-minimal protected encoding, then presented with the minimal one: the bytes differ
    pki = default_pki()
    payload = cbor2.dumps(payload_fields(pki))
    other_protected = b"\xb8\x01\x01\x38\x22"  # {1: -35} with a two-byte map head
    signature = es384(pki.leaf_key, sig_structure(other_protected, payload))
    document = cose_sign1(payload, key=None, signature=signature)
    exc = fail(SignatureInvalid, lambda: verify_document(document, anchors=test_anchors, now=TEST_NOW))
    assert exc.check == "nitro.signature"
    # and presented with the non-minimal header it was signed over, it is refused before the signature is read
    exc = fail(
        MalformedEvidence,
        lambda: verify_document(
            cose_sign1(payload, key=None, protected=other_protected, signature=signature),
            anchors=test_anchors,
            now=TEST_NOW,
        ),
    )
    assert exc.check == "nitro.cbor" and "protected header is not valid CBOR" in exc.message


def test_naive_now_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_document(BLINDAI.document(), anchors=hardware_anchors(), now=BLINDAI.verify_at.replace(tzinfo=None))
    with pytest.raises(TypeError):
        parse_document_unverified("84")  # type: ignore[arg-type]
    assert parse_document_unverified(bytearray(BLINDAI.document())).module_id == BLINDAI.module_id


# --- debug and the policy layer on documents we sign ----------------------------------------------------------


def test_debug_means_pcr0_pcr1_pcr2_all_zero(test_anchors: TrustAnchors) -> None:
    zeros = {**TEST_PCRS, 0: bytes(48), 1: bytes(48), 2: bytes(48)}
    assert verify_document(build_document(pcrs=zeros), anchors=test_anchors, now=TEST_NOW).debug
    for index in (0, 1, 2):
        partly = {**zeros, index: b"\x01" * 48}
        assert not verify_document(build_document(pcrs=partly), anchors=test_anchors, now=TEST_NOW).debug


def test_policy_pinning_pcr0_accepts_the_right_enclave_only(test_anchors: TrustAnchors) -> None:
    ev = verify_document(build_document(), anchors=test_anchors, now=TEST_NOW)
    result = appraise(bound(ev), pcr_policy({0: TEST_PCRS[0]}), now=TEST_NOW)
    assert (result.status, result.platform, result.measurement) == ("affirming", "nitro", TEST_PCRS[0])
    assert result.measurements["pcr8"] == TEST_PCRS[8]
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), pcr_policy({0: b"\x99" * 48}), now=TEST_NOW)
    assert checks(info.value) == ["policy.pcr.0"]
    assert info.value.failures[0].got == TEST_PCRS[0].hex()
    # pins on other registers are read from the same measurements
    result = appraise(bound(ev), pcr_policy({0: TEST_PCRS[0], 3: TEST_PCRS[3], 8: TEST_PCRS[8]}), now=TEST_NOW)
    assert result.status == "affirming"
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), pcr_policy({0: TEST_PCRS[0], 20: bytes(48)}), now=TEST_NOW)
    assert checks(info.value) == ["policy.pcr.20"]  # a PCR the document does not report fails closed


def test_a_debug_document_we_sign_is_refused_by_the_pcr0_policy(test_anchors: TrustAnchors) -> None:
    zeros = {**TEST_PCRS, 0: bytes(48), 1: bytes(48), 2: bytes(48)}
    ev = verify_document(build_document(pcrs=zeros), anchors=test_anchors, now=TEST_NOW)
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), pcr_policy({0: TEST_PCRS[0]}), now=TEST_NOW)
    assert checks(info.value) == ["policy.debug", "policy.pcr.0"]


def test_our_binding_in_user_data_and_the_nonce_claim(test_anchors: TrustAnchors) -> None:
    tls_key, _ = self_signed_tls_certificate()
    tls_spki, audit_pub, nonce, session_id = spki(tls_key), b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 16
    report_data = expected_report_data(tls_spki=tls_spki, audit_pub=audit_pub, nonce=nonce, session_id=session_id)
    document = build_document(user_data=report_data, nonce=nonce, public_key=tls_spki)
    ev = verify_document(document, anchors=test_anchors, now=TEST_NOW)
    assert ev.report_data == report_data and document_nonce(ev) == nonce
    assert ev.claims["public_key"] == tls_spki.hex()
    bound_ev = check_binding(
        ev, tls_spki=tls_spki, audit_pub=audit_pub, nonce=nonce, session_id=session_id, claimed_nonce=document_nonce(ev)
    )
    assert appraise(bound_ev, pcr_policy({0: TEST_PCRS[0]}), now=TEST_NOW).status == "affirming"
    # a replayed document answers another nonce
    with pytest.raises(StaleEvidence):
        check_binding(
            ev,
            tls_spki=tls_spki,
            audit_pub=audit_pub,
            nonce=b"\xdd" * 32,
            session_id=session_id,
            claimed_nonce=document_nonce(ev),
        )
    # another TLS key
    other_key, _ = self_signed_tls_certificate()
    with pytest.raises(BindingMismatch):
        check_binding(ev, tls_spki=spki(other_key), audit_pub=audit_pub, nonce=nonce, session_id=session_id)


def test_document_nonce_rejects_other_platforms() -> None:
    ev = seal_verified(
        platform="sev-snp",
        product="Milan",
        measurement=bytes(48),
        report_data=bytes(64),
        debug=False,
        signer="vcek",
        anchor_sha256=bytes(32),
        evidence_sha256=bytes(32),
        verified_at=TEST_NOW,
    )
    with pytest.raises(ValueError, match="not Nitro"):
        document_nonce(ev)
    with pytest.raises(ValueError, match="not Nitro"):
        check_user_data_is_certificate_spki(ev, certificate=read_vector(BOUND.tls_cert or ""))


# --- the Evervault SAN format -----------------------------------------------------------------------------------


def test_san_extraction_roundtrip() -> None:
    document = build_document()
    _, cert = self_signed_tls_certificate(dns_names=("short.test", f"{document.hex()}.app.cages.test"))
    assert document_from_certificate_san(cert) == document


@pytest.mark.parametrize(
    ("dns_names", "san"),
    [
        ((), True),  # a SAN without dNSName
        (("x",), False),  # no SAN at all
        (("not-hex.app.test",), True),
        (("abc.app.test",), True),  # odd number of hex digits
        (("ab cd.app.test",), True),  # bytes.fromhex would skip the space
        (("aaaa.app.test", "bbbb.app.test"), True),  # two longest names: ambiguous
    ],
    ids=["no-dnsname", "no-san", "not-hex", "odd", "space", "ambiguous"],
)
def test_san_extraction_errors(dns_names: tuple[str, ...], san: bool) -> None:
    _, cert = self_signed_tls_certificate(dns_names=dns_names, san=san)
    assert fail(MalformedEvidence, lambda: document_from_certificate_san(cert)).check == "nitro.san"


def test_san_extraction_of_a_non_certificate() -> None:
    assert fail(MalformedEvidence, lambda: document_from_certificate_san(b"\x30\x00")).check == "x509.parse"
    assert (
        fail(
            MalformedEvidence, lambda: check_user_data_is_certificate_spki(verify_vector(BOUND), certificate=b"junk")
        ).check
        == "x509.parse"
    )


def test_real_documents_have_an_empty_unprotected_header() -> None:
    for case in VECTORS:
        assert split_cose(case.document())[1] == {}
