"""Pure: the enclave's keys — the RA-TLS identity (key + self-signed certificate) and the audit signing key.

Invariants: private keys are generated in the calling process (inside the TEE for the enclave) and only ever
serialised to memory; certificates are self-signed and carry at most one evidence extension under our OID.

Check name: ``peer.certificate`` (``peer_certificate_info``: a peer certificate or evidence extension
that does not parse).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from cc_kernel.errors import MalformedEvidence

#: Our RA-TLS evidence extension: an OID in the UUID arc (ITU-T X.667), so no registry is needed.
#: The value is an encoded EvidenceEnvelope produced at enclave start-up (nonce and session id all zero).
EVIDENCE_OID = x509.ObjectIdentifier("2.25.264655191769731204894807770853604534838")
#: Validity of the enclave certificate; the enclave makes a new one at every start.
CERT_LIFETIME = _dt.timedelta(days=2)


@dataclass(frozen=True)
class TlsIdentity:
    """A TLS key pair and its self-signed certificate, in memory."""

    key_pem: bytes = b""
    cert_der: bytes = b""
    spki_der: bytes = b""

    @property
    def cert_pem(self) -> bytes:
        cert = x509.load_der_x509_certificate(self.cert_der)
        return cert.public_bytes(serialization.Encoding.PEM)


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for the enclave's TLS identity."""
    return ec.generate_private_key(ec.SECP256R1())


def spki_der_of_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """DER SubjectPublicKeyInfo of a private key's public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_tls_identity(
    key: ec.EllipticCurvePrivateKey, *, now: _dt.datetime, evidence_extension: bytes | None = None
) -> TlsIdentity:
    """Self-sign a certificate for ``key`` valid from ``now`` (minus a minute of skew) for CERT_LIFETIME."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "cc-kernel enclave"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Confidential Python"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=1))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if evidence_extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(EVIDENCE_OID, evidence_extension), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return TlsIdentity(
        key_pem=key_pem,
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        spki_der=spki_der_of_key(key),
    )


def peer_certificate_info(cert_der: bytes) -> tuple[bytes, bytes | None]:
    """Return (SPKI DER, evidence extension value or None) of a peer certificate.

    Raises:
        MalformedEvidence: the certificate does not parse.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except ValueError as exc:
        raise MalformedEvidence(f"peer certificate does not parse: {exc}", check="peer.certificate") from exc
    try:
        ext = cert.extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        return spki, None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise MalformedEvidence("evidence extension has an unexpected type", check="peer.certificate")
    return spki, value.value


def spki_sha256(spki_der: bytes) -> bytes:
    """SHA-256 of a DER SubjectPublicKeyInfo (the short fingerprint shown to users)."""
    return hashlib.sha256(spki_der).digest()


class AuditKey:
    """An Ed25519 signing key generated in the enclave; its public half is bound into the evidence."""

    def __init__(self, key: ed25519.Ed25519PrivateKey | None = None) -> None:
        self._key = key if key is not None else ed25519.Ed25519PrivateKey.generate()
        self.public_bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message``."""
        return self._key.sign(message)


def verify_ed25519(public: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public`` (32 raw bytes)."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
