"""Pure attestation layer (CCC "Interoperable RA-TLS"): verify RA-TLS certificates made by Gramine, the Intel
SGX SDK (2.22+) and rats-tls, whose evidence is an Intel DCAP quote bound to the certificate's key.

Format (CCC-Attestation/interoperable-ra-tls ``docs/``): a certificate extension with OID
``2.23.133.5.4.9`` (TCG DICE tagged evidence) whose value is the CBOR encoding of
``60000([bstr quote, bstr claims])``. ``claims`` is a CBOR map of text names to byte strings; ``"pubkey-hash"``
(required) holds the CBOR ``hash-entry`` ``[hash-alg-id, hash]`` over the certificate's DER
SubjectPublicKeyInfo, with ``hash-alg-id`` from the IANA Named Information registry (1 sha-256, 7 sha-384,
8 sha-512); ``"nonce"`` is optional (pre-session freshness); other claims are kept and reported. The quote's
REPORT_DATA is ``SHA-256(claims bytes) || 32 zero bytes``.

Invariants:

* ``parse_interop_certificate`` trusts nothing it returns; every failure on untrusted bytes (PEM, DER, the
  extension, the CBOR inside it) is ``MalformedEvidence`` naming the ``check``, for every truncation, never a
  bare ``ValueError``/``IndexError``/``CBORDecodeError``;
* CBOR is decoded by the strict decoder of ``crypto.cbor``: definite lengths only, no duplicate map keys,
  nothing after the item, preferred (shortest) serialisation, integers, strings, arrays, maps and ``null``
  only, and a tag on the outermost item alone — so a tag, a non-minimal length or an indefinite string cannot
  hide behind an equivalent value;
* ``verify_interop_certificate`` returns a sealed ``VerifiedEvidence`` only after, in this order: (a) the
  certificate's self-signature over its exact signed bytes and its validity at ``now``; (b) the
  ``pubkey-hash`` claim equals the hash of the certificate's DER SubjectPublicKeyInfo (constant time); (c)
  the quote verifies with ``intel_dcap.verify_quote`` against the pinned Intel root; (d) the quote's
  REPORT_DATA equals ``SHA-256(claims) || 0^32`` (constant time); (e) optionally, the claimed nonce;
* the platform label, measurement, debug flag and TCB of the result are the DCAP verifier's, copied field by
  field; this module only adds a ``"ratls"`` claim (and sets ``evidence_sha256`` to the SHA-256 of the
  certificate DER, the bytes it verified). It cannot create a ``VerifiedEvidence`` from anything but one that
  ``verify_quote`` returned;
* legacy extensions (Gramine's pre-1.8 quote extension, which ``cryptography`` reads as
  ``0.6.9.42.840.113741.1337.6`` because Gramine's OID bytes include the TLV header, and the Intel SGX SDK's
  copy of the quote under ``1.2.840.113741.1.13.1``) are reported, never trusted instead of the CCC
  extension: a certificate without the CCC extension is rejected even if it has a legacy one. With
  ``verify_legacy=True`` a Gramine legacy quote must also verify, bind SHA-256(SPKI) in its REPORT_DATA and
  describe the same enclave.

Gramine's certificates (mbedTLS) give the ECDSA signature AlgorithmIdentifier an explicit NULL parameter, which
RFC 5758 forbids and recent ``cryptography`` releases refuse: the certificate is split with the strict DER reader
(``crypto.der``), its signature verified over the *original* TBSCertificate bytes, and ``cryptography`` reads a
copy with only those two NULLs removed (docs/architecture.md, "Platforms").

Check names (tests assert them): ``ratls.certificate`` (PEM/DER structure), ``ratls.signature_algorithm``,
``ratls.critical_extension``, ``ratls.extension`` (no CCC evidence extension), ``ratls.extension.size``,
``ratls.cbor``, ``ratls.tag``, ``ratls.evidence`` (not an array of exactly two byte strings),
``ratls.claims``, ``ratls.pubkey_hash``, ``ratls.pubkey_hash.algorithm``, ``ratls.pubkey_hash.length``,
``ratls.certificate.signature``, ``ratls.certificate.validity``, ``binding.pubkey_hash``,
``binding.claims_hash``, ``freshness.nonce``, ``ratls.legacy.*``; plus whatever ``verify_quote`` raises.

Whether our own enclave certificates should carry a CCC extension too: docs/architecture.md, "Platforms".
"""

from __future__ import annotations

import base64
import binascii
import hmac
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.binding import require_bound
from cc_kernel.attestation.evidence import VerifiedEvidence, seal_verified
from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral
from cc_kernel.attestation.platforms.intel_dcap import verify_quote
from cc_kernel.crypto import cbor, der
from cc_kernel.crypto.x509load import CRYPTOGRAPHY_ERRORS
from cc_kernel.errors import BindingMismatch, CertificateExpired, MalformedEvidence, SignatureInvalid, StaleEvidence

__all__ = [
    "CCC_ENDORSEMENTS_OID",
    "CCC_EVIDENCE_OID",
    "GRAMINE_LEGACY_OIDS",
    "HASH_ALGORITHMS",
    "INTEL_SGX_SDK_QUOTE_OID",
    "MAX_EXTENSION_SIZE",
    "TAG_INTEL_TEE_QUOTE",
    "InteropEvidence",
    "LegacyExtension",
    "build_interop_extension",
    "encode_interop_claims",
    "interop_report_data",
    "interop_report_data_from_bytes",
    "parse_interop_certificate",
    "parse_interop_extension",
    "pubkey_hash_value",
    "verify_interop_certificate",
]

#: TCG DICE ``tcg-dice-conceptual-message-wrapper`` / "tagged evidence": the CCC evidence extension.
CCC_EVIDENCE_OID: Final = x509.ObjectIdentifier("2.23.133.5.4.9")
#: TCG DICE ``tcg-dice-endorsement-manifest``: optional CCC endorsements (Intel collateral), reported only.
CCC_ENDORSEMENTS_OID: Final = x509.ObjectIdentifier("2.23.133.5.4.2")
#: Gramine's legacy quote extension: as ``cryptography`` parses Gramine's bytes, and as intended.
GRAMINE_LEGACY_OIDS: Final = ("0.6.9.42.840.113741.1337.6", "1.2.840.113741.1337.6")
GRAMINE_LEGACY_INTENDED_OID: Final = "1.2.840.113741.1337.6"
#: The Intel SGX SDK's copy of the quote (the same OID arc Intel uses for the PCK certificate's SGX extension).
INTEL_SGX_SDK_QUOTE_OID: Final = "1.2.840.113741.1.13.1"

#: IANA CBOR tags of the CCC SGX/TDX evidence formats.
TAG_INTEL_TEE_QUOTE: Final = 60000
_UNSUPPORTED_TAGS: Final[Mapping[int, str]] = MappingProxyType(
    {
        60001: "an Intel TEE report (TDX report / SGX report type 2), which is only verifiable on the same "
        "platform",
        60002: "a legacy SGX EREPORT, which is only verifiable on the same platform",
    }
)

#: The CCC extension carries a quote (~5 KB with its PCK chain) and a small claims map.
MAX_EXTENSION_SIZE: Final = 64 * 1024
_MAX_CERTIFICATE_SIZE: Final = 128 * 1024

#: IANA "Named Information Hash Algorithm Registry" ids the CCC documents require (1, 7, 8).
HASH_ALGORITHMS: Final[Mapping[int, str]] = MappingProxyType({1: "sha-256", 7: "sha-384", 8: "sha-512"})
_HASHES: Final[Mapping[int, hashes.HashAlgorithm]] = MappingProxyType(
    {1: hashes.SHA256(), 7: hashes.SHA384(), 8: hashes.SHA512()}
)
#: Registered ids we refuse, named in the error (truncated hashes weaken the binding; SHA-3 is not required).
_REFUSED_HASH_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        2: "sha-256-128 (truncated)",
        3: "sha-256-120 (truncated)",
        4: "sha-256-96 (truncated)",
        5: "sha-256-64 (truncated)",
        6: "sha-256-32 (truncated)",
        9: "sha3-224",
        10: "sha3-256",
        11: "sha3-384",
        12: "sha3-512",
    }
)

CLAIM_PUBKEY_HASH: Final = "pubkey-hash"
CLAIM_NONCE: Final = "nonce"

#: ECDSA signature algorithm OIDs (DER TLV) -> hash name; Gramine writes them with an explicit NULL parameter.
_ECDSA_OID_TLVS: Final[Mapping[bytes, str]] = MappingProxyType(
    {
        bytes.fromhex("06082a8648ce3d040302"): "sha256",
        bytes.fromhex("06082a8648ce3d040303"): "sha384",
        bytes.fromhex("06082a8648ce3d040304"): "sha512",
    }
)
_DER_NULL: Final = b"\x05\x00"

_DER_VERSION = 0xA0  # [0] EXPLICIT Version


# --- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegacyExtension:
    """A pre-CCC RA-TLS extension found next to the CCC one. Reported, never trusted on its own.

    ``kind`` is ``"gramine-legacy-quote"`` or ``"intel-sgx-sdk-quote"``; ``oid`` is as parsed (Gramine's reads
    ``0.6.9.42.840.113741.1337.6``), ``intended_oid`` what its producer meant.
    """

    kind: str
    oid: str
    intended_oid: str
    value: bytes = field(repr=False)
    identical_to_evidence: bool

    def claim(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "oid": self.oid,
            "intended_oid": self.intended_oid,
            "size": len(self.value),
            "sha256": _digest(hashes.SHA256(), self.value),
            "identical_to_evidence_quote": self.identical_to_evidence,
        }


@dataclass(frozen=True)
class InteropEvidence:
    """A parsed (UNVERIFIED) interoperable RA-TLS certificate. Nothing here is trusted yet.

    ``certificate_der`` is the certificate as given (DER); ``spki_der`` its SubjectPublicKeyInfo, byte for
    byte; ``claims_bytes`` the exact claims buffer the quote's REPORT_DATA must hash; ``claims`` every claim
    (name -> byte string); ``pubkey_hash_alg_id``/``pubkey_hash_alg``/``pubkey_hash`` the decoded
    ``pubkey-hash``; ``nonce`` the optional ``nonce`` claim; ``endorsements`` the raw CCC endorsements
    extension if present (not interpreted); ``legacy`` the legacy extensions; ``signature_params_null`` is
    True for Gramine's explicit-NULL ECDSA AlgorithmIdentifier.
    """

    certificate_der: bytes = field(repr=False)
    spki_der: bytes = field(repr=False)
    not_valid_before: datetime
    not_valid_after: datetime
    tag: int
    quote: bytes = field(repr=False)
    claims_bytes: bytes = field(repr=False)
    claims: Mapping[str, bytes]
    pubkey_hash_alg_id: int
    pubkey_hash_alg: str
    pubkey_hash: bytes
    nonce: bytes | None
    endorsements: bytes | None = field(repr=False)
    legacy: tuple[LegacyExtension, ...]
    signature_params_null: bool
    evidence_critical: bool
    _tbs: bytes = field(repr=False, compare=False)
    _signature: bytes = field(repr=False, compare=False)
    _certificate: x509.Certificate = field(repr=False, compare=False)

    @property
    def expected_report_data(self) -> bytes:
        """The REPORT_DATA the quote must carry: SHA-256(claims bytes) followed by 32 zero bytes."""
        return interop_report_data_from_bytes(self.claims_bytes)


# --- errors -------------------------------------------------------------------------------------------------


def _malformed(check: str, message: str, *, got: object = None, expected: object = None) -> MalformedEvidence:
    return MalformedEvidence(message, check=check, got=got, expected=expected)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


# --- certificate: PEM, strict DER split, explicit-NULL normalisation -----------------------------------------


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def _pem_to_der(data: bytes) -> bytes:
    text = data.strip()
    if text.count(b"-----BEGIN") != 1 or not text.startswith(_PEM_BEGIN) or not text.endswith(_PEM_END):
        raise _malformed(
            "ratls.certificate",
            "expected exactly one PEM CERTIFICATE block",
            got=text.count(b"-----BEGIN"),
            expected=1,
        )
    body = b"".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("ratls.certificate", f"the PEM body is not valid base64: {exc}") from exc
    if not raw:
        raise _malformed("ratls.certificate", "the PEM block is empty")
    return raw


_CERT_DER = der.DerReader("ratls.certificate", "the certificate")


def _without_null_params(algid: bytes) -> bytes:
    """Gramine's ``SEQUENCE { ecdsa-with-SHAxxx, NULL }`` -> ``SEQUENCE { ecdsa-with-SHAxxx }``; others as is."""
    element = _CERT_DER.tlv(algid)
    content = algid[element.content : element.end]
    for oid_tlv in _ECDSA_OID_TLVS:
        if content == oid_tlv + _DER_NULL:
            return bytes([der.SEQUENCE]) + der.encode_length(len(oid_tlv)) + oid_tlv
    return algid


@dataclass(frozen=True)
class _SplitCertificate:
    tbs: bytes
    signature: bytes
    spki: bytes
    parse_der: bytes  # the DER handed to cryptography (explicit NULLs removed, everything else verbatim)
    signature_params_null: bool


def _split_certificate(cert: bytes) -> _SplitCertificate:
    outer = _CERT_DER.tlv(cert)
    if outer.tag != der.SEQUENCE or outer.end != len(cert):
        raise _malformed("ratls.certificate", "not a single DER Certificate SEQUENCE (or trailing bytes)")
    parts = _CERT_DER.elements(cert, outer.content, outer.end)
    if [p.tag for p in parts] != [der.SEQUENCE, der.SEQUENCE, der.BIT_STRING]:
        raise _malformed(
            "ratls.certificate",
            "a Certificate is SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }",
            got=[hex(p.tag) for p in parts],
        )
    tbs_el, alg_el, sig_el = parts
    tbs = cert[tbs_el.start : tbs_el.end]
    outer_alg = cert[alg_el.start : alg_el.end]
    if sig_el.end == sig_el.content or cert[sig_el.content] != 0:
        raise _malformed("ratls.certificate", "the signature BIT STRING must have zero unused bits")
    signature = cert[sig_el.content + 1 : sig_el.end]

    fields_ = _CERT_DER.elements(cert, tbs_el.content, tbs_el.end)
    first = 1 if fields_ and fields_[0].tag == _DER_VERSION else 0
    if len(fields_) < first + 6:
        raise _malformed("ratls.certificate", "TBSCertificate has too few fields", got=len(fields_))
    tags = [f.tag for f in fields_[first : first + 6]]
    if tags != [der.INTEGER] + [der.SEQUENCE] * 5:
        raise _malformed(
            "ratls.certificate",
            "TBSCertificate must start serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo",
            got=[hex(t) for t in tags],
        )
    inner_alg_el = fields_[first + 1]
    inner_alg = cert[inner_alg_el.start : inner_alg_el.end]
    if not hmac.compare_digest(inner_alg, outer_alg):
        raise _malformed(
            "ratls.signature_algorithm",
            "the TBSCertificate signature algorithm differs from the Certificate's (RFC 5280 §4.1.1.2)",
            got=inner_alg.hex(),
            expected=outer_alg.hex(),
        )
    spki_el = fields_[first + 5]
    spki = cert[spki_el.start : spki_el.end]

    normal_alg = _without_null_params(outer_alg)
    if normal_alg == outer_alg:
        return _SplitCertificate(tbs=tbs, signature=signature, spki=spki, parse_der=cert, signature_params_null=False)
    tbs_content = cert[tbs_el.content : inner_alg_el.start] + normal_alg + cert[inner_alg_el.end : tbs_el.end]
    new_tbs = bytes([der.SEQUENCE]) + der.encode_length(len(tbs_content)) + tbs_content
    cert_content = new_tbs + normal_alg + cert[sig_el.start : sig_el.end]
    parse_der = bytes([der.SEQUENCE]) + der.encode_length(len(cert_content)) + cert_content
    return _SplitCertificate(tbs=tbs, signature=signature, spki=spki, parse_der=parse_der, signature_params_null=True)


def _load(cert_der: bytes) -> x509.Certificate:
    """Parse with ``cryptography``; what it only deprecates (e.g. a non-positive serial) is refused here, so the
    outcome does not depend on the ``cryptography`` release or on the warning filters in force."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(cert_der)
            _ = cert.extensions  # parse (and cache) now: later access must not fail
            _ = cert.serial_number
    except CRYPTOGRAPHY_ERRORS as exc:
        raise _malformed("ratls.certificate", f"not a valid X.509 certificate: {exc}") from exc
    deprecated = [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]
    for other in caught:
        if other not in deprecated:
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if deprecated:
        raise _malformed(
            "ratls.certificate",
            f"the certificate violates RFC 5280 in a way cryptography is phasing out: {deprecated[0].message}",
        )
    return cert


# --- strict CBOR --------------------------------------------------------------------------------------------


def _pair(value: object, check: str, message: str) -> tuple[object, object]:
    """The two entries of a decoded CBOR array of exactly two."""
    if not isinstance(value, list) or len(value) != 2:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise _malformed(check, message, got=got, expected=2)
    return value[0], value[1]


def _cbor_strict(data: bytes, what: str, *, tagged: bool = False) -> object:
    return cbor.decode_strict(data, what=what, check="ratls.cbor", max_size=MAX_EXTENSION_SIZE, tagged=tagged)


def parse_interop_extension(value: bytes) -> tuple[int, bytes, bytes, Mapping[str, bytes], int, bytes]:
    """Decode the CCC evidence extension value: ``(tag, quote, claims bytes, claims, hash alg id, hash)``.

    Raises:
        MalformedEvidence: ``ratls.extension.size``, ``ratls.cbor``, ``ratls.tag``, ``ratls.evidence``,
            ``ratls.claims``, ``ratls.pubkey_hash``, ``ratls.pubkey_hash.algorithm``,
            ``ratls.pubkey_hash.length``.
    """
    if len(value) > MAX_EXTENSION_SIZE:
        raise _malformed(
            "ratls.extension.size", "the evidence extension is too large", got=len(value), expected=MAX_EXTENSION_SIZE
        )
    item = _cbor_strict(value, "the evidence extension", tagged=True)
    if not isinstance(item, cbor.CborTag):
        raise _malformed(
            "ratls.tag",
            f"the evidence is not a tagged CBOR item (got a {type(item).__name__})",
            got=type(item).__name__,
            expected=TAG_INTEL_TEE_QUOTE,
        )
    if item.tag != TAG_INTEL_TEE_QUOTE:
        what = _UNSUPPORTED_TAGS.get(item.tag, "an evidence format this verifier does not know")
        raise _malformed(
            "ratls.tag",
            f"CBOR tag {item.tag} ({what}) is not supported; only {TAG_INTEL_TEE_QUOTE} (Intel TEE quote) is",
            got=item.tag,
            expected=TAG_INTEL_TEE_QUOTE,
        )
    quote, claims_bytes = _pair(
        item.value, "ratls.evidence", "tag 60000 must wrap an array of exactly two byte strings [quote, claims]"
    )
    if not isinstance(quote, bytes) or not isinstance(claims_bytes, bytes):
        raise _malformed(
            "ratls.evidence",
            "both entries of the evidence array must be byte strings",
            got=[type(quote).__name__, type(claims_bytes).__name__],
            expected=["bytes", "bytes"],
        )
    if not quote:
        raise _malformed("ratls.evidence", "the quote is empty", got=0)
    claims = _decode_claims(claims_bytes)
    alg_id, digest = _decode_pubkey_hash(claims[CLAIM_PUBKEY_HASH])
    return item.tag, quote, claims_bytes, claims, alg_id, digest


def _decode_claims(claims_bytes: bytes) -> Mapping[str, bytes]:
    raw = _cbor_strict(claims_bytes, "the claims buffer")
    if not isinstance(raw, dict):
        raise _malformed("ratls.claims", "the claims buffer must be a CBOR map", got=type(raw).__name__)
    claims: dict[str, bytes] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, bytes):
            raise _malformed(
                "ratls.claims",
                "every claim must map a text name to a byte string",
                got=[type(name).__name__, type(value).__name__],
                expected=["str", "bytes"],
            )
        claims[name] = value
    if CLAIM_PUBKEY_HASH not in claims:
        raise _malformed(
            "ratls.claims",
            'the required "pubkey-hash" claim is missing',
            got=sorted(claims),
            expected=CLAIM_PUBKEY_HASH,
        )
    return MappingProxyType(claims)


def _decode_pubkey_hash(value: bytes) -> tuple[int, bytes]:
    entry = _cbor_strict(value, 'the "pubkey-hash" claim')
    alg_id, digest = _pair(entry, "ratls.pubkey_hash", '"pubkey-hash" must be the CBOR array [hash-alg-id, hash-value]')
    if isinstance(alg_id, bool) or not isinstance(alg_id, int) or not isinstance(digest, bytes):
        raise _malformed(
            "ratls.pubkey_hash",
            '"pubkey-hash" must hold an integer algorithm id and a byte string',
            got=[type(alg_id).__name__, type(digest).__name__],
            expected=["int", "bytes"],
        )
    if alg_id not in _HASHES:
        known = _REFUSED_HASH_NAMES.get(alg_id)
        name = f"{known}, id {alg_id}" if known else f"unknown id {alg_id}"
        raise _malformed(
            "ratls.pubkey_hash.algorithm",
            f'"pubkey-hash" uses hash algorithm {name}; supported: '
            + ", ".join(f"{n} ({i})" for i, n in HASH_ALGORITHMS.items()),
            got=alg_id,
            expected=sorted(HASH_ALGORITHMS),
        )
    size = _HASHES[alg_id].digest_size
    if len(digest) != size:
        raise _malformed(
            "ratls.pubkey_hash.length",
            f'"pubkey-hash" {HASH_ALGORITHMS[alg_id]} value has the wrong length',
            got=len(digest),
            expected=size,
        )
    return alg_id, digest


# --- parse --------------------------------------------------------------------------------------------------


def parse_interop_certificate(cert: bytes) -> InteropEvidence:
    """Parse an interoperable RA-TLS certificate (PEM or DER) and its CCC evidence extension. UNVERIFIED.

    Raises:
        MalformedEvidence: ``ratls.certificate`` (not one well-formed certificate), ``ratls.signature_algorithm``,
            ``ratls.critical_extension`` (a critical extension we do not understand), ``ratls.extension`` (no
            CCC evidence extension — a legacy extension alone is not accepted), or any check of
            ``parse_interop_extension``.
        TypeError: ``cert`` is not bytes.
    """
    if not isinstance(cert, bytes | bytearray | memoryview):
        raise TypeError(f"certificate must be bytes, not {type(cert).__name__}")
    data = bytes(cert)
    if len(data) > _MAX_CERTIFICATE_SIZE:
        raise _malformed(
            "ratls.certificate", "certificate input is too large", got=len(data), expected=_MAX_CERTIFICATE_SIZE
        )
    cert_der = _pem_to_der(data) if data.lstrip().startswith(b"-----BEGIN") else data
    split = _split_certificate(cert_der)
    parsed = _load(split.parse_der)

    evidence_ext: x509.Extension[x509.ExtensionType] | None = None
    endorsements: bytes | None = None
    legacy_raw: list[tuple[str, str, str, bytes]] = []
    for ext in parsed.extensions:
        oid = ext.oid.dotted_string
        value = ext.value
        if oid == CCC_EVIDENCE_OID.dotted_string:
            evidence_ext = ext
            continue
        if not isinstance(value, x509.UnrecognizedExtension):
            continue
        if oid == CCC_ENDORSEMENTS_OID.dotted_string:
            endorsements = bytes(value.value)
        elif oid in GRAMINE_LEGACY_OIDS:
            legacy_raw.append(("gramine-legacy-quote", oid, GRAMINE_LEGACY_INTENDED_OID, bytes(value.value)))
        elif oid == INTEL_SGX_SDK_QUOTE_OID:
            legacy_raw.append(("intel-sgx-sdk-quote", oid, INTEL_SGX_SDK_QUOTE_OID, bytes(value.value)))
        elif ext.critical:
            raise _malformed(
                "ratls.critical_extension",
                f"the certificate has a critical extension {oid} this verifier does not understand",
                got=oid,
            )
    if evidence_ext is None:
        hint = " (it has only a legacy RA-TLS extension, which is not accepted on its own)" if legacy_raw else ""
        raise _malformed(
            "ratls.extension",
            f"the certificate has no CCC evidence extension {CCC_EVIDENCE_OID.dotted_string}{hint}",
            expected=CCC_EVIDENCE_OID.dotted_string,
        )
    if not isinstance(evidence_ext.value, x509.UnrecognizedExtension):  # pragma: no cover - cryptography knows none
        raise _malformed("ratls.extension", "the evidence extension has an unexpected type")
    tag, quote, claims_bytes, claims, alg_id, digest = parse_interop_extension(bytes(evidence_ext.value.value))
    legacy = tuple(
        LegacyExtension(
            kind=kind,
            oid=oid,
            intended_oid=intended,
            value=raw,
            identical_to_evidence=hmac.compare_digest(raw, quote),
        )
        for kind, oid, intended, raw in legacy_raw
    )
    return InteropEvidence(
        certificate_der=cert_der,
        spki_der=split.spki,
        not_valid_before=parsed.not_valid_before_utc,
        not_valid_after=parsed.not_valid_after_utc,
        tag=tag,
        quote=quote,
        claims_bytes=claims_bytes,
        claims=claims,
        pubkey_hash_alg_id=alg_id,
        pubkey_hash_alg=HASH_ALGORITHMS[alg_id],
        pubkey_hash=digest,
        nonce=claims.get(CLAIM_NONCE),
        endorsements=endorsements,
        legacy=legacy,
        signature_params_null=split.signature_params_null,
        evidence_critical=evidence_ext.critical,
        _tbs=split.tbs,
        _signature=split.signature,
        _certificate=parsed,
    )


# --- verify -------------------------------------------------------------------------------------------------


def _check_self_signature(ev: InteropEvidence) -> None:
    """The certificate's key signed its exact TBSCertificate bytes (as received, explicit NULLs included)."""
    cert = ev._certificate
    try:
        key = cert.public_key()
        params = cert.signature_algorithm_parameters
        hash_alg = cert.signature_hash_algorithm
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise SignatureInvalid(
            f"the certificate's key or signature algorithm is not supported: {exc}",
            check="ratls.certificate.signature",
            got=cert.signature_algorithm_oid.dotted_string,
        ) from exc
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(ev._signature, ev._tbs, params)
        elif (
            isinstance(key, rsa.RSAPublicKey)
            and isinstance(params, padding.PKCS1v15 | padding.PSS)
            and hash_alg is not None
        ):
            key.verify(ev._signature, ev._tbs, params, hash_alg)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and params is None:
            key.verify(ev._signature, ev._tbs)
        else:
            raise SignatureInvalid(
                f"the certificate's {type(key).__name__} cannot have made a "
                f"{cert.signature_algorithm_oid.dotted_string} signature",
                check="ratls.certificate.signature",
                got=cert.signature_algorithm_oid.dotted_string,
            )
    except InvalidSignature as exc:
        raise SignatureInvalid(
            "the certificate is not self-signed by its own key (signature does not verify)",
            check="ratls.certificate.signature",
        ) from exc
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise SignatureInvalid(
            f"the certificate signature cannot be checked: {exc}", check="ratls.certificate.signature"
        ) from exc


def _check_validity(ev: InteropEvidence, now: datetime) -> None:
    if not ev.not_valid_before <= now <= ev.not_valid_after:
        raise CertificateExpired(
            f"the RA-TLS certificate is not valid at {now.isoformat()}",
            check="ratls.certificate.validity",
            got=now.isoformat(),
            expected=[ev.not_valid_before.isoformat(), ev.not_valid_after.isoformat()],
        )


def _check_pubkey_hash(ev: InteropEvidence) -> bytes:
    want = _digest(_HASHES[ev.pubkey_hash_alg_id], ev.spki_der)
    require_bound(
        ev.pubkey_hash,
        want,
        check="binding.pubkey_hash",
        message=f'the "pubkey-hash" claim ({ev.pubkey_hash_alg}) is not the hash of this certificate\'s '
        "SubjectPublicKeyInfo: the evidence was made for another key",
    )
    return want


def _check_claims_hash(ev: InteropEvidence, report_data: bytes) -> None:
    want = ev.expected_report_data
    require_bound(
        report_data,
        want,
        check="binding.claims_hash",
        message="the quote's REPORT_DATA is not SHA-256(claims) || 32 zero bytes: the claims were not made by "
        "this enclave",
    )


def _check_legacy(
    ev: InteropEvidence,
    main: VerifiedEvidence,
    *,
    anchors: TrustAnchors,
    now: datetime,
    collateral: DcapCollateral | None,
) -> dict[str, object]:
    """Verify Gramine's legacy quote the same way: authentic, REPORT_DATA = SHA-256(SPKI) || 0^32, same enclave."""
    results: dict[str, object] = {}
    spki_sha256 = _digest(hashes.SHA256(), ev.spki_der)
    for legacy in ev.legacy:
        if legacy.identical_to_evidence or legacy.kind != "gramine-legacy-quote":
            continue
        verified = verify_quote(legacy.value, anchors=anchors, now=now, collateral=collateral)
        require_bound(
            verified.report_data,
            spki_sha256 + bytes(32),
            check="ratls.legacy.binding",
            message="Gramine's legacy quote does not bind this certificate's key "
            "(REPORT_DATA != SHA-256(SPKI) || 0^32)",
        )
        same = (
            verified.platform == main.platform
            and hmac.compare_digest(verified.measurement, main.measurement)
            and verified.debug == main.debug
            and _same_registers(verified, main)
        )
        if not same:
            raise BindingMismatch(
                "Gramine's legacy quote describes another enclave than the CCC evidence",
                check="ratls.legacy.enclave",
                got=verified.measurement,
                expected=main.measurement,
            )
        results[legacy.oid] = {"verified": True, "signer": verified.signer, "tcb_status": verified.tcb_status}
    return results


def _same_registers(a: VerifiedEvidence, b: VerifiedEvidence) -> bool:
    names = set(a.measurements) | set(b.measurements)
    return all(
        n in a.measurements and n in b.measurements and hmac.compare_digest(a.measurements[n], b.measurements[n])
        for n in names
    )


def _with_claims(
    quote_evidence: VerifiedEvidence, *, claim: Mapping[str, object], evidence_sha256: bytes
) -> VerifiedEvidence:
    """Copy a sealed VerifiedEvidence field by field, adding the ``ratls`` claim (nothing else changes)."""
    if "ratls" in quote_evidence.claims:
        raise ValueError("the quote verifier already set a 'ratls' claim")  # pragma: no cover - defensive
    values = {f.name: getattr(quote_evidence, f.name) for f in fields(quote_evidence)}
    values["claims"] = MappingProxyType({**quote_evidence.claims, "ratls": MappingProxyType(dict(claim))})
    values["evidence_sha256"] = evidence_sha256
    return seal_verified(**values)


def verify_interop_certificate(
    cert: bytes,
    *,
    anchors: TrustAnchors,
    now: datetime,
    collateral: DcapCollateral | None = None,
    expected_nonce: bytes | None = None,
    verify_legacy: bool = False,
) -> VerifiedEvidence:
    """Verify an interoperable RA-TLS certificate (PEM or DER) at ``now`` (timezone-aware).

    Returns the DCAP verifier's ``VerifiedEvidence`` for the quote (platform ``sgx-dcap`` or ``tdx``, decided
    by the pinned Intel root and the quote type), with ``evidence_sha256`` = SHA-256 of the certificate DER
    and a ``"ratls"`` claim describing the certificate, the claims, the binding and any legacy extension.
    ``report_data`` stays the quote's (``SHA-256(claims) || 0^32``): the binding to the certificate key was
    checked here, so do NOT pass this result to ``binding.check_binding`` (that checks our own scheme).

    ``expected_nonce``: when given, the ``nonce`` claim must be present and equal (pre-session freshness).
    ``verify_legacy``: also verify Gramine's legacy quote (a second quote verification).

    Raises:
        MalformedEvidence: from ``parse_interop_certificate``.
        SignatureInvalid: ``ratls.certificate.signature``.
        CertificateExpired: ``ratls.certificate.validity`` (or from the quote's PCK chain).
        BindingMismatch: ``binding.pubkey_hash``, ``binding.claims_hash``, ``ratls.legacy.*``.
        StaleEvidence: ``freshness.nonce``.
        UntrustedRoot, ChainError, SignatureInvalid, MalformedEvidence: from ``intel_dcap.verify_quote``.
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    ev = parse_interop_certificate(cert)
    # (a) the certificate itself: signed by its own key over the bytes we received, valid now
    _check_self_signature(ev)
    _check_validity(ev, now)
    # (b) the claims name this certificate's key
    spki_hash = _check_pubkey_hash(ev)
    # (c) the quote is authentic (pinned Intel root, PCK chain, QE report, quote signature)
    verified = verify_quote(ev.quote, anchors=anchors, now=now, collateral=collateral)
    # (d) the quote's REPORT_DATA commits to exactly these claims
    _check_claims_hash(ev, verified.report_data)
    # (e) optional freshness and legacy checks, then the result with the RA-TLS claims added
    if expected_nonce is not None and (ev.nonce is None or not hmac.compare_digest(ev.nonce, expected_nonce)):
        raise StaleEvidence(
            "the certificate's evidence does not answer our nonce",
            check="freshness.nonce",
            got=ev.nonce,
            expected=expected_nonce,
        )
    legacy_checked = (
        _check_legacy(ev, verified, anchors=anchors, now=now, collateral=collateral) if verify_legacy else {}
    )
    cert_sha256 = _digest(hashes.SHA256(), ev.certificate_der)
    claim: dict[str, object] = {
        "format": "ccc-interoperable-ra-tls",
        "evidence_oid": CCC_EVIDENCE_OID.dotted_string,
        "tag": ev.tag,
        "certificate_sha256": cert_sha256,
        "quote_sha256": _digest(hashes.SHA256(), ev.quote),
        "quote_evidence_sha256": verified.evidence_sha256,
        "claims": MappingProxyType(dict(ev.claims)),
        "claims_sha256": _digest(hashes.SHA256(), ev.claims_bytes),
        "pubkey_hash_alg": ev.pubkey_hash_alg,
        "pubkey_hash": spki_hash,
        "spki_sha256": _digest(hashes.SHA256(), ev.spki_der),
        "nonce": ev.nonce,
        "nonce_checked": expected_nonce is not None,
        "not_valid_before": ev.not_valid_before.isoformat(),
        "not_valid_after": ev.not_valid_after.isoformat(),
        "endorsements_present": ev.endorsements is not None,
        "signature_params_null": ev.signature_params_null,
        "legacy_extensions": tuple(
            MappingProxyType({**leg.claim(), **_legacy_status(leg, legacy_checked)}) for leg in ev.legacy
        ),
    }
    return _with_claims(verified, claim=claim, evidence_sha256=cert_sha256)


def _legacy_status(legacy: LegacyExtension, checked: Mapping[str, object]) -> dict[str, object]:
    if legacy.identical_to_evidence:
        return {"verified": True, "how": "identical to the verified CCC quote"}
    if legacy.oid in checked:
        return {"verified": True, "how": "verified separately, binds SHA-256(SPKI), same enclave"}
    return {"verified": False, "how": "not verified (not trusted, reported only)"}


# --- building (enclave side) --------------------------------------------------------------------------------


def pubkey_hash_value(spki_der: bytes, *, alg_id: int = 1) -> bytes:
    """The ``pubkey-hash`` claim value: CBOR ``[alg_id, hash(spki_der)]`` (1 sha-256, 7 sha-384, 8 sha-512)."""
    if alg_id not in _HASHES:
        raise ValueError(f"hash algorithm id {alg_id} is not one of {sorted(HASH_ALGORITHMS)}")
    return cbor.encode([alg_id, _digest(_HASHES[alg_id], spki_der)])


def encode_interop_claims(claims: Mapping[str, object]) -> bytes:
    """The claims buffer: a definite-length CBOR map of text names to byte strings, in the given order.

    Raises:
        ValueError: a name is not text, a value is not bytes, or ``pubkey-hash`` is missing.
    """
    if CLAIM_PUBKEY_HASH not in claims:
        raise ValueError('the "pubkey-hash" claim is required (see pubkey_hash_value)')
    out: dict[str, bytes] = {}
    for name, value in claims.items():
        if not isinstance(name, str) or not isinstance(value, bytes | bytearray):
            raise ValueError(f"claim {name!r}: names must be text and values byte strings")
        out[name] = bytes(value)
    return cbor.encode(out)


def interop_report_data_from_bytes(claims_bytes: bytes) -> bytes:
    """REPORT_DATA for an encoded claims buffer: SHA-256(claims bytes) || 32 zero bytes."""
    return _digest(hashes.SHA256(), claims_bytes) + bytes(32)


def interop_report_data(claims: Mapping[str, object]) -> bytes:
    """The 64-byte REPORT_DATA the quote must carry for ``claims`` (encoded by ``encode_interop_claims``)."""
    return interop_report_data_from_bytes(encode_interop_claims(claims))


def build_interop_extension(quote: bytes, claims: Mapping[str, object]) -> x509.UnrecognizedExtension:
    """The CCC evidence extension ``2.23.133.5.4.9`` = CBOR ``60000([quote, claims buffer])``.

    The quote must have been generated over ``interop_report_data(claims)`` for the same ``claims`` (same
    names, values and order). Add it NON-critical (``critical=False``): OpenSSL and mbedTLS reject unknown
    critical extensions.

    Raises:
        ValueError: empty quote, malformed claims, or an extension larger than ``MAX_EXTENSION_SIZE``.
    """
    if not isinstance(quote, bytes | bytearray) or not quote:
        raise ValueError("quote must be non-empty bytes")
    claims_bytes = encode_interop_claims(claims)
    try:
        _decode_pubkey_hash(bytes(claims[CLAIM_PUBKEY_HASH]))  # type: ignore[call-overload]  # bytes, checked above
    except MalformedEvidence as exc:
        raise ValueError(f'the "pubkey-hash" claim is not a valid hash entry: {exc}') from exc
    value = cbor.encode(cbor.CborTag(TAG_INTEL_TEE_QUOTE, [bytes(quote), claims_bytes]))
    if len(value) > MAX_EXTENSION_SIZE:
        raise ValueError(f"the extension would be {len(value)} bytes (limit {MAX_EXTENSION_SIZE})")
    return x509.UnrecognizedExtension(CCC_EVIDENCE_OID, value)
