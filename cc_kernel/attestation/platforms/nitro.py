"""Pure attestation layer (platform AWS Nitro Enclaves): parse an attestation document and verify its authenticity.

Invariants:

* ``parse_document_unverified`` accepts exactly one COSE_Sign1 structure (CBOR tag 18 or untagged) whose
  protected header is ``{1: -35}`` (ES384) and whose payload follows the AWS attestation-document schema
  (docs/evidence.md §4; aws/aws-nitro-enclaves-nsm-api ``docs/attestation_process.md`` §2.2, §3.2.2) and
  reports PCR0-2 (NSM always does; without them no code identity and no debug decision exist); anything else
  raises ``MalformedEvidence`` whose ``check`` names the structure or field — for every truncation and
  every byte string, never ``IndexError``/``ValueError``/a CBOR library error. Nothing it returns is trusted;
* ``verify_document`` returns a sealed ``VerifiedEvidence`` only after ``cabundle[0]`` was found byte-identical
  to a pinned AWS Nitro root, the path ``certificate -> cabundle[N-1] -> ... -> cabundle[1] -> root`` verified
  at ``now`` with the shared walker (``crypto.x509chain``), and the COSE signature verified with the leaf key;
  its ``platform`` is ``nitro`` because a ``nitro``-labelled pinned root verified it;
* authenticity only: debug mode, PCR values, document age, nonce and user_data are appraised later by the
  binding and policy layers, from the fields of the result (``measurement`` = PCR0, ``measurements`` =
  ``{"pcr<i>": value}`` for every PCR in the document, ``report_data`` = ``user_data``, ``debug`` = PCR0, PCR1
  and PCR2 all zero, claim ``timestamp`` = the document's timestamp in ms).

CBOR is decoded by the strict decoder of ``crypto.cbor`` (definite lengths, preferred serialisation, no
duplicate keys, integers, strings, arrays, maps and ``null`` only, bounded nesting, no trailing bytes), with one
tag allowed on the outermost item, which must be 18. Heads longer than necessary are refused like every other
departure from preferred serialisation: AWS's NSM writes shortest heads, and every document we have seen does.

Check names (tests assert them): ``nitro.size``, ``nitro.cbor`` (``index`` = byte offset in the item being
decoded), ``nitro.cose.tag``, ``nitro.cose.structure``, ``nitro.cose.protected``, ``nitro.cose.alg``,
``nitro.cose.unprotected``, ``nitro.cose.payload``, ``nitro.cose.signature``, ``nitro.payload``,
``nitro.unknown_field``, one per field (``nitro.module_id``, ``nitro.digest``, ``nitro.timestamp``,
``nitro.pcrs``, ``nitro.certificate``, ``nitro.cabundle`` with ``index``, ``nitro.public_key``,
``nitro.user_data``, ``nitro.nonce``), ``nitro.root``, the walker's ``chain.*``, ``nitro.leaf.key``,
``nitro.leaf.key_usage``, ``nitro.leaf.ca``, ``nitro.signature``; for the Evervault interoperability helpers
``nitro.san`` and ``nitro.binding.spki``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cc_kernel.attestation.anchors import PinnedRoot, TrustAnchors
from cc_kernel.attestation.binding import require_bound
from cc_kernel.attestation.evidence import VerifiedEvidence, seal_verified
from cc_kernel.crypto import cbor
from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import CRYPTOGRAPHY_ERRORS, certificate_der, load_certificate
from cc_kernel.errors import ChainError, MalformedEvidence, SignatureInvalid, UntrustedRoot

__all__ = [
    "COSE_ALG_ES384",
    "COSE_SIGN1_TAG",
    "DEBUG_PCRS",
    "DOCUMENT_FIELDS",
    "ENVELOPE_FORMAT",
    "MAX_DOCUMENT_SIZE",
    "MAX_PAYLOAD_SIZE",
    "NITRO_PRODUCT",
    "NITRO_SIGNER",
    "NitroDocument",
    "check_user_data_is_certificate_spki",
    "document_from_certificate_san",
    "document_nonce",
    "parse_document_unverified",
    "sig_structure",
    "verify_document",
]

#: The envelope ``format`` that carries a Nitro document (docs/evidence.md §1).
ENVELOPE_FORMAT: Final = "aws-nitro-cose-sign1"
#: ``VerifiedEvidence.product`` and ``.signer`` of every verified Nitro document.
NITRO_PRODUCT: Final = "Nitro"
NITRO_SIGNER: Final = "nitro-leaf"

COSE_SIGN1_TAG: Final = 18
COSE_HEADER_ALG: Final = 1
COSE_ALG_ES384: Final = -35
#: ES384 signature: r || s, 48 bytes each, big-endian (RFC 9053 §2.1).
_SIGNATURE_SIZE: Final = 96
_COORDINATE_SIZE: Final = 48

#: AWS: the payload is a bstr of 1..16384 bytes. The whole COSE_Sign1 adds about a hundred bytes of framing
#: (array head, protected header, signature); 1 KiB of slack still refuses anything absurd before decoding.
MAX_PAYLOAD_SIZE: Final = 16384
MAX_DOCUMENT_SIZE: Final = MAX_PAYLOAD_SIZE + 1024

#: Field limits of the AWS schema (attestation_process.md §3.2.2.2).
_CERT_SIZE: Final = (1, 1024)
_PUBLIC_KEY_SIZE: Final = (1, 1024)
_USER_DATA_SIZE: Final = (0, 512)
_NONCE_SIZE: Final = (0, 512)
_PCR_SIZES: Final = (32, 48, 64)
_PCR_COUNT: Final = (1, 32)
_DIGEST: Final = "SHA384"

#: Every field the payload may carry, required first. Any other key is an error.
DOCUMENT_FIELDS: Final = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_REQUIRED: Final = frozenset(DOCUMENT_FIELDS[:6])

#: Debug-mode enclaves report PCR0, PCR1 and PCR2 as all zeros (AWS "Nitro Enclaves concepts": debug mode).
#: NSM always reports them; a document without them cannot say which code ran, so it is refused.
DEBUG_PCRS: Final = (0, 1, 2)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HEX_LABEL: Final = re.compile(r"(?:[0-9a-fA-F]{2})+")


# --- strict CBOR ---------------------------------------------------------------------------------------------


def _malformed(
    message: str, check: str, *, got: object = None, expected: object = None, index: int | None = None
) -> MalformedEvidence:
    return MalformedEvidence(message, check=check, got=got, expected=expected, index=index)


def _decode_one(data: bytes, where: str, *, tagged: bool = False) -> object:
    return cbor.decode_strict(data, what=where, check="nitro.cbor", max_size=MAX_DOCUMENT_SIZE, tagged=tagged)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes an ES384 COSE_Sign1 signs: ``cbor(["Signature1", protected, h'', payload])`` (RFC 9052 §4.4)."""
    return cbor.encode(["Signature1", protected, b"", payload])


# --- the document --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NitroDocument:
    """Every field of a Nitro attestation document and its COSE_Sign1 envelope, UNVERIFIED.

    ``protected``/``payload`` are the exact bytes that were signed; ``pcrs`` maps index -> value and always
    holds PCR0-2; absent or ``null`` optional fields are ``None``. ``leaf`` and ``cabundle_certificates`` are
    the parsed ``certificate`` and ``cabundle`` (``cabundle[0]`` is the root the document names, AWS order).
    """

    raw: bytes
    tagged: bool
    protected: bytes
    payload: bytes
    signature: bytes
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    leaf: x509.Certificate
    cabundle_certificates: tuple[x509.Certificate, ...]

    @property
    def signed_bytes(self) -> bytes:
        """The Sig_structure the signature covers."""
        return sig_structure(self.protected, self.payload)

    @property
    def timestamp(self) -> datetime:
        """The document's creation time (set by the Nitro hypervisor), UTC."""
        return _EPOCH + timedelta(milliseconds=self.timestamp_ms)

    @property
    def pcr0(self) -> bytes:
        return self.pcrs[0]

    @property
    def debug(self) -> bool:
        """True iff PCR0, PCR1 and PCR2 are all zero: the enclave runs in debug mode."""
        return all(not any(self.pcrs[i]) for i in DEBUG_PCRS)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _bstr(value: object, name: str, size: tuple[int, int], *, index: int | None = None) -> bytes:
    where = name if index is None else f"{name}[{index}]"
    if not isinstance(value, bytes):
        raise _malformed(
            f"field {where} must be a byte string, got {_type_name(value)}",
            f"nitro.{name}",
            got=_type_name(value),
            expected="bstr",
            index=index,
        )
    lo, hi = size
    if not lo <= len(value) <= hi:
        raise _malformed(
            f"field {where} must be {lo}..{hi} bytes, got {len(value)}",
            f"nitro.{name}",
            got=len(value),
            expected=[lo, hi],
            index=index,
        )
    return value


def _optional_bstr(fields: Mapping[str, object], name: str, size: tuple[int, int]) -> bytes | None:
    # AWS says no field may be null, but real documents encode absent optional fields as null: treat it as absent
    value = fields.get(name)
    return None if value is None else _bstr(value, name, size)


def _load_untrusted_certificate(data: bytes, check: str, where: str, *, index: int | None = None) -> x509.Certificate:
    """Load a certificate from untrusted bytes; every failure is ``MalformedEvidence(check=check)``.

    ``cryptography`` reports some encoding faults only as warnings (e.g. a country name of the wrong length, a
    zero serial number); for evidence they are faults like any other, so a warning while parsing rejects the
    certificate. The lazily parsed names and validity are read here, so the verifier cannot fail on them later.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cert = load_certificate(data)
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
    except MalformedEvidence as exc:
        raise _malformed(f"{where}: {exc.message}", check, index=index) from exc
    except CRYPTOGRAPHY_ERRORS as exc:
        raise _malformed(f"{where} is not a usable X.509 certificate: {exc}", check, index=index) from exc
    if caught:
        raise _malformed(
            f"{where} is not a well-formed X.509 certificate: {caught[0].message}",
            check,
            got=[str(w.message) for w in caught],
            expected="no encoding faults",
            index=index,
        )
    return cert


def _certificate(der: bytes, name: str, *, index: int | None = None) -> x509.Certificate:
    where = f"field {name}" if index is None else f"field {name}[{index}]"
    if not der.startswith(b"\x30"):  # a DER SEQUENCE; load_certificate would also accept PEM text
        raise _malformed(f"{where} is not a DER certificate", f"nitro.{name}", got=der[:4], expected="DER", index=index)
    return _load_untrusted_certificate(der, f"nitro.{name}", where, index=index)


def _parse_cose(document: bytes) -> tuple[bool, bytes, bytes, bytes]:
    """Steps 1a-1f: COSE_Sign1 -> (tagged, protected, payload, signature)."""
    # 1a. size
    if not 0 < len(document) <= MAX_DOCUMENT_SIZE:
        raise _malformed(
            f"the document must be 1..{MAX_DOCUMENT_SIZE} bytes",
            "nitro.size",
            got=len(document),
            expected=[1, MAX_DOCUMENT_SIZE],
        )
    # 1b. exactly one strict CBOR item, optionally under tag 18, and nothing after it
    outer = _decode_one(document, "COSE_Sign1", tagged=True)
    tagged = isinstance(outer, cbor.CborTag)
    if isinstance(outer, cbor.CborTag):
        if outer.tag != COSE_SIGN1_TAG:
            raise _malformed(
                f"CBOR tag {outer.tag} is not COSE_Sign1", "nitro.cose.tag", got=outer.tag, expected=COSE_SIGN1_TAG
            )
        outer = outer.value
    # 1c. [protected: bstr, unprotected: map, payload: bstr, signature: bstr]
    if not isinstance(outer, list) or len(outer) != 4:
        got = f"array of {len(outer)}" if isinstance(outer, list) else _type_name(outer)
        raise _malformed(
            "COSE_Sign1 must be an array of 4 items", "nitro.cose.structure", got=got, expected="array of 4"
        )
    protected, unprotected, payload, signature = outer
    # 1d. protected header: exactly {1: -35}
    if not isinstance(protected, bytes):
        raise _malformed(
            "the protected header must be a byte string",
            "nitro.cose.protected",
            got=_type_name(protected),
            expected="bstr",
        )
    header = _decode_one(protected, "protected header") if protected else {}  # h'' means an empty map
    if not isinstance(header, dict) or COSE_HEADER_ALG not in header:
        raise _malformed(
            "the protected header must be a map holding alg (label 1)",
            "nitro.cose.protected",
            got=header if isinstance(header, dict) else _type_name(header),
            expected={COSE_HEADER_ALG: COSE_ALG_ES384},
        )
    if header[COSE_HEADER_ALG] != COSE_ALG_ES384:
        raise _malformed(
            "the signature algorithm must be ES384 (ECDSA P-384 with SHA-384)",
            "nitro.cose.alg",
            got=header[COSE_HEADER_ALG],
            expected=COSE_ALG_ES384,
        )
    if len(header) != 1:
        raise _malformed(
            "the protected header may hold only alg",
            "nitro.cose.protected",
            got=sorted(map(str, header)),
            expected=[str(COSE_HEADER_ALG)],
        )
    # 1e. unprotected header: an empty map (AWS sends {}; nothing unauthenticated may steer verification)
    if not isinstance(unprotected, dict) or unprotected:
        raise _malformed(
            "the unprotected header must be an empty map",
            "nitro.cose.unprotected",
            got=sorted(map(str, unprotected)) if isinstance(unprotected, dict) else _type_name(unprotected),
            expected={},
        )
    # 1f. payload and signature
    if not isinstance(payload, bytes) or not 1 <= len(payload) <= MAX_PAYLOAD_SIZE:
        raise _malformed(
            f"the payload must be a byte string of 1..{MAX_PAYLOAD_SIZE} bytes",
            "nitro.cose.payload",
            got=len(payload) if isinstance(payload, bytes) else _type_name(payload),
            expected=[1, MAX_PAYLOAD_SIZE],
        )
    if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_SIZE:
        raise _malformed(
            f"the ES384 signature must be a {_SIGNATURE_SIZE}-byte string (r || s)",
            "nitro.cose.signature",
            got=len(signature) if isinstance(signature, bytes) else _type_name(signature),
            expected=_SIGNATURE_SIZE,
        )
    return tagged, protected, payload, signature


def parse_document_unverified(document: bytes) -> NitroDocument:
    """Parse a Nitro attestation document (COSE_Sign1, tagged or not) and check its schema. Nothing is verified.

    Raises:
        MalformedEvidence: the bytes break a rule of the COSE envelope or of the AWS schema; ``check`` names the
            structure or the field (see the module docstring).
        TypeError: ``document`` is not bytes-like.
    """
    if not isinstance(document, bytes | bytearray | memoryview):
        raise TypeError(f"document must be bytes, not {type(document).__name__}")
    document = bytes(document)
    # 1. the COSE_Sign1 envelope
    tagged, protected, payload, signature = _parse_cose(document)

    # 2. the payload: a map of known text keys
    fields = _decode_one(payload, "payload")
    if not isinstance(fields, dict):
        raise _malformed("the payload must be a CBOR map", "nitro.payload", got=_type_name(fields), expected="map")
    unknown = [key for key in fields if key not in DOCUMENT_FIELDS]
    if unknown:
        raise _malformed(
            f"unknown field {unknown[0]!r} in the attestation document",
            "nitro.unknown_field",
            got=[str(k) for k in unknown],
            expected=list(DOCUMENT_FIELDS),
        )
    checked: dict[str, object] = {str(key): value for key, value in fields.items()}
    for name in DOCUMENT_FIELDS:
        if name in _REQUIRED and name not in checked:
            raise _malformed(f"missing required field {name}", f"nitro.{name}", expected="present")

    # 2a. module_id: non-empty text
    module_id = checked["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise _malformed(
            "field module_id must be non-empty text",
            "nitro.module_id",
            got=module_id if isinstance(module_id, str) else _type_name(module_id),
            expected="non-empty text",
        )
    # 2b. digest: "SHA384"
    digest = checked["digest"]
    if digest != _DIGEST:
        raise _malformed(
            f'field digest must be "{_DIGEST}"',
            "nitro.digest",
            got=digest if isinstance(digest, str) else _type_name(digest),
            expected=_DIGEST,
        )
    # 2c. timestamp: uint > 0 (ms since the epoch) that a datetime can hold
    timestamp = checked["timestamp"]
    if not isinstance(timestamp, int) or timestamp <= 0:
        raise _malformed(
            "field timestamp must be a positive integer (ms since 1970)",
            "nitro.timestamp",
            got=timestamp if isinstance(timestamp, int) else _type_name(timestamp),
            expected="uint > 0",
        )
    try:
        _EPOCH + timedelta(milliseconds=timestamp)
    except OverflowError as exc:
        raise _malformed(
            "field timestamp is beyond year 9999", "nitro.timestamp", got=timestamp, expected="a real time"
        ) from exc
    # 2d. pcrs: 1..32 entries, index 0..31 -> 32/48/64 bytes; PCR0-2 present
    pcrs_raw = checked["pcrs"]
    if not isinstance(pcrs_raw, dict):
        raise _malformed(
            "field pcrs must be a map", "nitro.pcrs", got=_type_name(pcrs_raw), expected="map index -> bstr"
        )
    if not _PCR_COUNT[0] <= len(pcrs_raw) <= _PCR_COUNT[1]:
        raise _malformed(
            "field pcrs must hold 1..32 entries", "nitro.pcrs", got=len(pcrs_raw), expected=list(_PCR_COUNT)
        )
    pcrs: dict[int, bytes] = {}
    for index, value in pcrs_raw.items():
        if not isinstance(index, int) or not 0 <= index < 32:
            raise _malformed(f"field pcrs has an invalid index {index!r}", "nitro.pcrs", got=index, expected="0..31")
        if not isinstance(value, bytes) or len(value) not in _PCR_SIZES:
            raise _malformed(
                f"field pcrs: PCR{index} must be a byte string of 32, 48 or 64 bytes",
                "nitro.pcrs",
                got=len(value) if isinstance(value, bytes) else _type_name(value),
                expected=list(_PCR_SIZES),
                index=index,
            )
        pcrs[index] = value
    missing = [i for i in DEBUG_PCRS if i not in pcrs]
    if missing:
        raise _malformed(
            f"field pcrs lacks PCR{missing[0]}: PCR0-2 identify the enclave image, kernel and application",
            "nitro.pcrs",
            got=sorted(pcrs),
            expected=list(DEBUG_PCRS),
        )
    # 2e. certificate and cabundle: DER certificates of 1..1024 bytes, at least one in the bundle
    certificate = _bstr(checked["certificate"], "certificate", _CERT_SIZE)
    cabundle_raw = checked["cabundle"]
    if not isinstance(cabundle_raw, list) or not cabundle_raw:
        raise _malformed(
            "field cabundle must be a non-empty array of certificates",
            "nitro.cabundle",
            got=len(cabundle_raw) if isinstance(cabundle_raw, list) else _type_name(cabundle_raw),
            expected="array of >= 1",
        )
    cabundle = tuple(_bstr(value, "cabundle", _CERT_SIZE, index=i) for i, value in enumerate(cabundle_raw))
    # 2f. optional fields (null = absent)
    public_key = _optional_bstr(checked, "public_key", _PUBLIC_KEY_SIZE)
    user_data = _optional_bstr(checked, "user_data", _USER_DATA_SIZE)
    nonce = _optional_bstr(checked, "nonce", _NONCE_SIZE)
    # 2g. the certificates parse (their meaning is checked by verify_document)
    leaf = _certificate(certificate, "certificate")
    bundle = tuple(_certificate(der, "cabundle", index=i) for i, der in enumerate(cabundle))

    return NitroDocument(
        raw=document,
        tagged=tagged,
        protected=protected,
        payload=payload,
        signature=signature,
        module_id=module_id,
        digest=digest,
        timestamp_ms=timestamp,
        pcrs=MappingProxyType(dict(sorted(pcrs.items()))),
        certificate=certificate,
        cabundle=cabundle,
        public_key=public_key,
        user_data=user_data,
        nonce=nonce,
        leaf=leaf,
        cabundle_certificates=bundle,
    )


# --- verification ---------------------------------------------------------------------------------------------


def _pinned_root(doc: NitroDocument, anchors: TrustAnchors) -> PinnedRoot:
    """Step 3: ``cabundle[0]`` is a pinned ``nitro`` root, found by SHA-256 and compared byte for byte."""
    presented = doc.cabundle[0]
    sha = hashlib.sha256(presented).digest()
    nitro_roots = [root for root in anchors.roots if root.platform == "nitro"]
    for root in nitro_roots:
        if hmac.compare_digest(root.sha256, sha) and hmac.compare_digest(certificate_der(root.certificate), presented):
            return root
    raise UntrustedRoot(
        f"cabundle[0] ({doc.cabundle_certificates[0].subject.rfc4514_string()!r}) is not a pinned AWS Nitro root",
        check="nitro.root",
        got=sha.hex(),
        expected=[root.sha256.hex() for root in nitro_roots],
        index=0,
    )


def _check_leaf(leaf: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """Step 5: the signing certificate is an end entity with a P-384 key allowed to sign."""
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ChainError(f"the signing certificate's key cannot be read: {exc}", check="nitro.leaf.key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        got = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise ChainError(
            "the signing certificate's key is not ECDSA P-384", check="nitro.leaf.key", got=got, expected="secp384r1"
        )
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise ChainError("the signing certificate is a CA certificate", check="nitro.leaf.ca", got=True, expected=False)
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is None or not ku.digital_signature:
        raise ChainError(
            "the signing certificate's keyUsage does not allow digitalSignature",
            check="nitro.leaf.key_usage",
            got=None if ku is None else False,
            expected=True,
        )
    return key


def _claims(doc: NitroDocument, root: PinnedRoot) -> dict[str, object]:
    def cert_info(cert: x509.Certificate, der: bytes) -> dict[str, object]:
        return {
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": hashlib.sha256(der).hexdigest(),
        }

    return {
        "format": ENVELOPE_FORMAT,
        "cose_tagged": doc.tagged,
        "module_id": doc.module_id,
        "digest": doc.digest,
        "timestamp": doc.timestamp_ms,  # ms since 1970, read by the policy's freshness clause
        "timestamp_utc": doc.timestamp.isoformat(),
        "pcrs": {index: value.hex() for index, value in doc.pcrs.items()},
        "debug_pcrs_zero": doc.debug,
        "user_data": None if doc.user_data is None else doc.user_data.hex(),
        "public_key": None if doc.public_key is None else doc.public_key.hex(),
        "nonce": None if doc.nonce is None else doc.nonce.hex(),
        "certificate": cert_info(doc.leaf, doc.certificate),
        "cabundle": [cert_info(cert, der) for cert, der in zip(doc.cabundle_certificates, doc.cabundle, strict=True)],
        "anchor": {"platform": root.platform, "product": root.product, "sha256": root.sha256.hex()},
    }


def verify_document(document: bytes, *, anchors: TrustAnchors, now: datetime) -> VerifiedEvidence:
    """Verify a Nitro attestation document's authenticity at ``now`` and return it sealed.

    Steps: (1-2) ``parse_document_unverified``; (3) ``cabundle[0]`` byte-identical to a pinned ``nitro`` root of
    ``anchors``; (4) the path ``certificate -> cabundle[N-1] -> ... -> cabundle[1] -> pinned root`` with the
    shared walker (names, CA/keyCertSign, path lengths, signatures, validity at ``now``); (5) the leaf is an
    end entity with a P-384 key and keyUsage digitalSignature; (6) the ES384 COSE signature over
    ``sig_structure(protected, payload)`` with the leaf key.

    The result: ``measurement`` = PCR0, ``measurements`` = ``{"pcr<i>": value}`` for every PCR, ``report_data``
    = ``user_data`` (``b""`` when absent, so a binding check fails closed), ``debug`` = PCR0-2 all zero, claim
    ``timestamp`` (ms) for the policy's freshness window, ``nonce``/``public_key``/``user_data`` as hex claims.

    Raises:
        MalformedEvidence: the document does not parse (see ``parse_document_unverified``).
        UntrustedRoot: ``nitro.root``: ``cabundle[0]`` is not a pinned AWS Nitro root.
        ChainError / SignatureInvalid / CertificateExpired: ``chain.*`` from the walker, or ``nitro.leaf.*``.
        SignatureInvalid: ``nitro.signature``: the COSE signature does not verify with the leaf key.
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    # 1-2. envelope and schema
    doc = parse_document_unverified(document)
    # 3. the bundle's root is the pinned AWS root (never trusted by name; the pinned copy is what we chain to)
    root = _pinned_root(doc, anchors)
    # 4. certificate -> cabundle reversed -> pinned root, all valid at `now`
    intermediates = tuple(reversed(doc.cabundle_certificates[1:]))
    walk_chain(doc.leaf, [*intermediates, root.certificate], anchors={root.sha256: root.certificate}, now=now)
    # 5. the leaf may sign documents
    key = _check_leaf(doc.leaf)
    # 6. the COSE signature: r || s big-endian -> DER, ECDSA P-384 / SHA-384 over the Sig_structure
    r = int.from_bytes(doc.signature[:_COORDINATE_SIZE], "big")
    s = int.from_bytes(doc.signature[_COORDINATE_SIZE:], "big")
    try:
        key.verify(encode_dss_signature(r, s), doc.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise SignatureInvalid(
            "the COSE signature does not verify with the signing certificate's key", check="nitro.signature"
        ) from exc

    # 7. sealed result; platform "nitro" because a nitro-labelled pinned root verified it
    return seal_verified(
        platform="nitro",
        product=NITRO_PRODUCT,
        measurement=doc.pcr0,
        report_data=doc.user_data if doc.user_data is not None else b"",
        debug=doc.debug,
        signer=NITRO_SIGNER,
        anchor_sha256=root.sha256,
        evidence_sha256=hashlib.sha256(doc.raw).digest(),
        verified_at=now,
        measurements=MappingProxyType({f"pcr{index}": value for index, value in doc.pcrs.items()}),
        tcb=MappingProxyType({}),
        claims=MappingProxyType(_claims(doc, root)),
        warnings=(),
    )


def document_nonce(evidence: VerifiedEvidence) -> bytes | None:
    """The ``nonce`` field of a verified Nitro document (``None`` if it had none): the nonce the enclave says it
    answered, to pass as ``check_binding(..., claimed_nonce=...)``.

    Raises:
        ValueError: ``evidence`` is not Nitro evidence.
    """
    if evidence.platform != "nitro":
        raise ValueError(f"not Nitro evidence (platform {evidence.platform!r})")
    value = evidence.claims.get("nonce")
    return bytes.fromhex(value) if isinstance(value, str) else None


# --- interoperability: Evervault's certificate-embedded documents ---------------------------------------------
#
# Evervault (evervault/attestation-doc-validation) binds a Nitro document to a TLS key in its own way: the
# document's user_data is the DER SubjectPublicKeyInfo of the TLS certificate, and the certificate may carry the
# whole document hex-encoded as the first label of its longest SAN dNSName
# (``<hex(COSE_Sign1)>.<name>.cages.evervault.com``). These helpers read that third-party format; our own
# enclaves bind with the 64-byte report_data digest of docs/evidence.md §2 instead.


def document_from_certificate_san(certificate: bytes) -> bytes:
    """Evervault format: the Nitro document hex-encoded as the first label of the certificate's longest SAN
    dNSName. Returns the document bytes (unverified: pass them to ``verify_document``).

    Raises:
        MalformedEvidence: ``x509.parse`` if the certificate does not parse; ``nitro.san`` if it has no dNSName,
            two longest dNSNames that differ, or a first label that is not an even-length hex string of at most
            ``MAX_DOCUMENT_SIZE`` bytes.
    """
    cert = _load_untrusted_certificate(certificate, "x509.parse", "the TLS certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise _malformed("the certificate has no subjectAltName", "nitro.san", expected="a dNSName") from exc
    names = san.get_values_for_type(x509.DNSName)
    if not names:
        raise _malformed("the certificate's subjectAltName has no dNSName", "nitro.san", expected="a dNSName")
    longest = max(len(name) for name in names)
    candidates = sorted({name for name in names if len(name) == longest})
    if len(candidates) != 1:
        raise _malformed(
            "two different dNSNames are the longest: the embedded document is ambiguous",
            "nitro.san",
            got=[name[:32] for name in candidates],
        )
    label = candidates[0].split(".", 1)[0]
    if len(label) > 2 * MAX_DOCUMENT_SIZE or not _HEX_LABEL.fullmatch(label):
        raise _malformed(
            "the longest dNSName's first label is not a hex-encoded document",
            "nitro.san",
            got=label[:32],
            expected=f"even-length hex, at most {2 * MAX_DOCUMENT_SIZE} digits",
        )
    return bytes.fromhex(label)


def check_user_data_is_certificate_spki(evidence: VerifiedEvidence, *, certificate: bytes) -> bytes:
    """Evervault format: ``user_data`` must equal the DER SubjectPublicKeyInfo of ``certificate`` (DER or PEM).
    Compared in constant time. Returns that SPKI.

    Raises:
        BindingMismatch: ``nitro.binding.spki``: user_data is absent or binds another key.
        MalformedEvidence: ``x509.parse``: the certificate does not parse or its key cannot be read.
        ValueError: ``evidence`` is not Nitro evidence.
    """
    if evidence.platform != "nitro":
        raise ValueError(f"not Nitro evidence (platform {evidence.platform!r})")
    cert = _load_untrusted_certificate(certificate, "x509.parse", "the TLS certificate")
    try:
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _malformed(f"the certificate's public key cannot be read: {exc}", "x509.parse") from exc
    require_bound(
        evidence.report_data,
        spki,
        check="nitro.binding.spki",
        message="the document's user_data is not this certificate's public key (SubjectPublicKeyInfo)",
    )
    return spki
