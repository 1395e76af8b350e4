"""Pure crypto layer: load X.509 certificates (DER or PEM) and read AMD's VCEK/VLEK extensions.

Invariants:

* every parse failure of untrusted certificate bytes raises ``MalformedEvidence`` (check ``x509.parse`` or
  ``x509.amd_extension``), never a bare ``ValueError``/``IndexError``;
* ``cryptography`` parses some fields lazily (extensions, names, validity times, the public key) and raises
  exceptions that are not ``ValueError``s (``InvalidVersion``, ``DuplicateExtension``,
  ``UnsupportedGeneralNameType``, ``UnsupportedAlgorithm``). A certificate returned by these loaders has had all
  of those fields read once, and every such failure became ``MalformedEvidence`` (``x509.parse``), so a
  verifier reading ``.extensions``, ``.subject``, ``.issuer``, ``.not_valid_before_utc``/``_after_utc`` or
  ``.public_key()`` later cannot fail. The signature algorithm is left to the chain walker
  (``chain.signature_algorithm``);
* AMD VCEK/VLEK certificates carry serial number 0, which makes ``cryptography`` emit a
  ``CryptographyDeprecationWarning`` when they are loaded and whenever ``serial_number`` is read. Only
  ``load_amd_certificate`` and ``certificate_serial`` suppress it, and only that one warning (matched by its
  message): every other warning still surfaces. Should a future ``cryptography`` refuse serial 0, the plan is
  to split TBS and signature with a small DER walk and verify with ``public_key().verify``.
* the AMD extension values (INTEGER, IA5String) are decoded by the strict DER reader of ``crypto.der``;
  everything else in the certificate is parsed by ``cryptography``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from cc_kernel.crypto import der
from cc_kernel.errors import MalformedEvidence

__all__ = [
    "AMD_OID_ARC",
    "CRYPTOGRAPHY_ERRORS",
    "MAX_CERTIFICATE_SIZE",
    "AmdVekExtensions",
    "amd_vek_extensions",
    "certificate_der",
    "certificate_serial",
    "certificate_sha256",
    "common_name",
    "load_amd_certificate",
    "load_certificate",
    "load_certificate_bundle",
]

#: Refuse certificate inputs larger than this before parsing (a VCEK is ~1.4 KB, a PEM bundle a few KB).
MAX_CERTIFICATE_SIZE = 64 * 1024

#: The start of the message ``cryptography`` emits for a non-positive serial number (AMD VCEK/VLEK: serial 0).
_SERIAL_WARNING_MESSAGE = r"Parsed a serial number which wasn't positive"

#: AMD's private arc for VCEK/VLEK extensions (AMD #57230; go-sev-guest kds.go).
AMD_OID_ARC = "1.3.6.1.4.1.3704.1"
_OID_STRUCT_VERSION = f"{AMD_OID_ARC}.1"
_OID_PRODUCT_NAME = f"{AMD_OID_ARC}.2"
_OID_HW_ID = f"{AMD_OID_ARC}.4"
_OID_CSP_ID = f"{AMD_OID_ARC}.5"
#: ``1.3.6.1.4.1.3704.1.3.N`` -> SPL name. 4..7 are reserved SPLs (zero in every certificate we have seen).
_SPL_OIDS: Mapping[str, str] = {
    f"{AMD_OID_ARC}.3.1": "bl",
    f"{AMD_OID_ARC}.3.2": "tee",
    f"{AMD_OID_ARC}.3.3": "snp",
    f"{AMD_OID_ARC}.3.4": "spl4",
    f"{AMD_OID_ARC}.3.5": "spl5",
    f"{AMD_OID_ARC}.3.6": "spl6",
    f"{AMD_OID_ARC}.3.7": "spl7",
    f"{AMD_OID_ARC}.3.8": "ucode",
    f"{AMD_OID_ARC}.3.9": "fmc",
}

#: AMD's INTEGER values (struct version, SPLs) fit 64 bits.
_MAX_AMD_INTEGER = 2**64 - 1


#: What ``cryptography`` raises for certificate bytes it cannot represent, at load time or on first access to a
#: lazily parsed field. Only ``ValueError`` is the documented one; the ``x509`` ones are plain ``Exception``s;
#: ``KeyError`` is what ``cryptography`` 44 raises from ``Name.rfc4514_string()`` for an unknown string tag.
CRYPTOGRAPHY_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

#: The lazily parsed fields, read once by the loaders (name in messages, reader).
_LAZY_FIELDS: tuple[tuple[str, Callable[[x509.Certificate], object]], ...] = (
    ("extensions", lambda cert: cert.extensions),
    ("subject name", lambda cert: cert.subject.rfc4514_string()),
    ("issuer name", lambda cert: cert.issuer.rfc4514_string()),
    ("validity", lambda cert: (cert.not_valid_before_utc, cert.not_valid_after_utc)),
    ("public key", lambda cert: cert.public_key()),
)


def _malformed(
    message: str, *, got: object = None, expected: object = None, index: int | None = None
) -> MalformedEvidence:
    return MalformedEvidence(message, check="x509.parse", got=got, expected=expected, index=index)


def _describe(exc: Exception) -> str:
    # cryptography 44 raises ValueError where later releases raise UnsupportedAlgorithm: one message for both
    return str(exc) if isinstance(exc, ValueError | UnsupportedAlgorithm) else f"{type(exc).__name__}: {exc}"


def _read_lazy_fields(cert: x509.Certificate, what: str, *, index: int | None = None) -> None:
    """Read every lazily parsed field once (``cryptography`` caches the extensions), so later reads cannot fail.

    Raises:
        MalformedEvidence: ``check="x509.parse"``: a field does not parse; the message names the field.
    """
    for name, read in _LAZY_FIELDS:
        try:
            read(cert)
        except CRYPTOGRAPHY_ERRORS as exc:
            raise _malformed(f"{what}: its {name} cannot be parsed: {_describe(exc)}", index=index) from exc


@contextmanager
def _serial_zero_tolerated() -> Iterator[None]:
    """Suppress exactly the non-positive-serial deprecation warning inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SERIAL_WARNING_MESSAGE, category=CryptographyDeprecationWarning)
        yield


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def _parse_one(data: bytes) -> x509.Certificate:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"certificate must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_CERTIFICATE_SIZE:
        raise _malformed("certificate input is too large", got=len(data), expected=MAX_CERTIFICATE_SIZE)
    try:
        if _is_pem(data):
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise _malformed("expected exactly one PEM certificate", got=len(certs), expected=1)
            cert = certs[0]
        else:
            cert = x509.load_der_x509_certificate(data)
    except CRYPTOGRAPHY_ERRORS as exc:  # e.g. InvalidVersion (version 3) is raised at load time
        raise _malformed(f"not a valid X.509 certificate: {_describe(exc)}") from exc
    _read_lazy_fields(cert, "not a valid X.509 certificate")
    return cert


def load_certificate(der_or_pem: bytes) -> x509.Certificate:
    """Load one certificate from DER or PEM bytes (PEM is recognised by its ``-----BEGIN`` line).

    Use ``load_amd_certificate`` for AMD VCEK/VLEK certificates (serial number 0).

    The extensions, names, validity and public key are read here, so later reads of them cannot fail.

    Raises:
        MalformedEvidence: ``check="x509.parse"``: not exactly one well-formed certificate (including a bad
            version, a duplicate extension, an unsupported GeneralName, an unparsable name, validity time or
            public key), or too large.
        TypeError: ``der_or_pem`` is not bytes.
    """
    return _parse_one(der_or_pem)


def load_amd_certificate(der_or_pem: bytes) -> x509.Certificate:
    """Load an AMD certificate (VCEK, VLEK, ASK, ARK) from DER or PEM bytes, tolerating serial number 0.

    Only the "serial number which wasn't positive" ``CryptographyDeprecationWarning`` is suppressed; read the
    serial with ``certificate_serial`` (``Certificate.serial_number`` emits the warning again).

    Raises:
        MalformedEvidence: ``check="x509.parse"``: not exactly one well-formed certificate (as for
            ``load_certificate``), or too large.
    """
    with _serial_zero_tolerated():
        return _parse_one(der_or_pem)


def load_certificate_bundle(pem: bytes, *, amd: bool = False) -> tuple[x509.Certificate, ...]:
    """Load every certificate of a PEM bundle, in file order (e.g. AMD's ``cert_chain``: ASK then ARK).

    Raises:
        MalformedEvidence: ``check="x509.parse"``: no certificate, a malformed one (as for ``load_certificate``;
            ``index`` is its position in the bundle), or too large.
    """
    if len(pem) > MAX_CERTIFICATE_SIZE:
        raise _malformed("certificate bundle is too large", got=len(pem), expected=MAX_CERTIFICATE_SIZE)
    if not _is_pem(pem):
        raise _malformed("certificate bundle is not PEM")
    with _serial_zero_tolerated() if amd else nullcontext():
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except CRYPTOGRAPHY_ERRORS as exc:
            raise _malformed(f"not a valid PEM certificate bundle: {_describe(exc)}") from exc
        for index, cert in enumerate(certs):
            _read_lazy_fields(cert, f"certificate {index} of the bundle is not a valid X.509 certificate", index=index)
    return tuple(certs)


def certificate_serial(cert: x509.Certificate) -> int:
    """The serial number, read without the serial-0 deprecation warning (AMD VCEK/VLEK have serial 0)."""
    with _serial_zero_tolerated():
        return cert.serial_number


def common_name(cert: x509.Certificate) -> str | None:
    """The subject's one commonName, or None when it has none or several (roles are checked by name)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def certificate_der(cert: x509.Certificate) -> bytes:
    """The certificate's DER encoding (the bytes it was parsed from)."""
    return cert.public_bytes(Encoding.DER)


def certificate_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER certificate: the identity used to pin trust anchors."""
    return hashlib.sha256(certificate_der(cert)).digest()


# --- AMD VCEK / VLEK extensions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AmdVekExtensions:
    """The AMD-specific extensions of a VCEK/VLEK (``1.3.6.1.4.1.3704.1.*``). Absent ones are ``None``.

    ``spls`` maps ``bl``, ``tee``, ``snp``, ``ucode``, ``fmc`` (Turin) and the reserved ``spl4``..``spl7`` to
    their values, for those present. ``hw_id`` is 64 bytes (8 on Turin) on a VCEK and absent on a VLEK, whose
    ``csp_id`` names the cloud provider instead.
    """

    struct_version: int | None
    product_name: str | None
    spls: Mapping[str, int] = field(default_factory=dict)
    hw_id: bytes | None = None
    csp_id: str | None = None

    @property
    def product(self) -> str | None:
        """The product line from ``product_name`` without the stepping: ``Milan-B0`` -> ``Milan``."""
        if self.product_name is None:
            return None
        return self.product_name.split("-", 1)[0]


def _ext_error(oid: str, message: str, value: bytes) -> MalformedEvidence:
    return MalformedEvidence(f"AMD extension {oid}: {message}", check="x509.amd_extension", got=value, expected=None)


def _der(oid: str) -> der.DerReader:
    return der.DerReader("x509.amd_extension", f"AMD extension {oid}")


def _der_unsigned_integer(value: bytes, oid: str) -> int:
    reader = _der(oid)
    return reader.unsigned(reader.single(value, der.INTEGER), "the INTEGER", _MAX_AMD_INTEGER)


def _der_ia5string(value: bytes, oid: str) -> str:
    content = _der(oid).single(value, der.IA5STRING)
    if any(b > 0x7F for b in content):
        raise _ext_error(oid, "IA5String contains a non-ASCII byte", value)
    return content.decode("ascii")


def amd_vek_extensions(cert: x509.Certificate) -> AmdVekExtensions:
    """Decode the AMD extensions of a VCEK/VLEK. Unknown OIDs under AMD's arc are ignored.

    SPL values must be DER INTEGERs in 0..255 (``02 01 05``, or ``02 02 00 d9`` for 217). ``hwID`` is the raw
    extension value (AMD puts the bytes directly in ``extnValue``), 8 or 64 bytes.

    Raises:
        MalformedEvidence: ``check="x509.amd_extension"``: a value is not the DER type AMD defines.
    """
    struct_version: int | None = None
    product_name: str | None = None
    hw_id: bytes | None = None
    csp_id: str | None = None
    spls: dict[str, int] = {}
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if not oid.startswith(AMD_OID_ARC + "."):
            continue
        if not isinstance(ext.value, x509.UnrecognizedExtension):  # pragma: no cover - cryptography knows none
            continue
        raw = ext.value.value
        if oid == _OID_STRUCT_VERSION:
            struct_version = _der_unsigned_integer(raw, oid)
        elif oid == _OID_PRODUCT_NAME:
            product_name = _der_ia5string(raw, oid)
        elif oid == _OID_HW_ID:
            if len(raw) not in (8, 64):
                raise _ext_error(oid, f"hwID must be 8 or 64 bytes, got {len(raw)}", raw)
            hw_id = bytes(raw)
        elif oid == _OID_CSP_ID:
            csp_id = _der_ia5string(raw, oid)
        elif oid in _SPL_OIDS:
            spl = _der_unsigned_integer(raw, oid)
            if spl > 0xFF:
                raise _ext_error(oid, f"SPL {spl} does not fit the one-byte TCB component", raw)
            spls[_SPL_OIDS[oid]] = spl
    return AmdVekExtensions(
        struct_version=struct_version,
        product_name=product_name,
        spls=spls,
        hw_id=hw_id,
        csp_id=csp_id,
    )
