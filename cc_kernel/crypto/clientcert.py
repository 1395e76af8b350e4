"""Pure: client keys for mutual TLS — the user's self-signed client certificate, and reading one back.

Invariants: a client certificate made here is self-signed, not a CA (basicConstraints CA:FALSE, critical),
usable only for TLS client authentication (keyUsage digitalSignature, critical; extendedKeyUsage clientAuth),
so that OpenSSL accepts it when the server loads it as one of its trust anchors and the certificate is also
the client's whole chain. ``client_certificate_info`` refuses certificates that OpenSSL would refuse at the
handshake anyway (not self-signed, no clientAuth) and CA certificates (an anchor that is a CA could vouch for
other keys). Time is a parameter; nothing here reads the clock or files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cc_kernel.crypto.keys import TlsIdentity, spki_der_of_key

#: Validity of a client certificate made by ``make_client_identity``. Like an SSH key it is meant to live
#: until its owner replaces it; the server refuses it at the handshake once it has expired.
CLIENT_CERT_LIFETIME = _dt.timedelta(days=3650)
#: The organisation in every client certificate's subject (the common name is the user's comment).
CLIENT_CERT_ORGANISATION = "Confidential Python client"


@dataclass(frozen=True)
class ClientCertificate:
    """What a parsed client certificate says (``client_certificate_info``)."""

    spki_sha256: bytes  # SHA-256 of its DER SubjectPublicKeyInfo: the key's fingerprint
    common_name: str
    not_before: _dt.datetime
    not_after: _dt.datetime


def new_client_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for a client identity."""
    return ec.generate_private_key(ec.SECP256R1())


def make_client_identity(key: ec.EllipticCurvePrivateKey, *, now: _dt.datetime, name: str) -> TlsIdentity:
    """Self-sign a client certificate for ``key`` (common name ``name``), valid from ``now`` minus a minute of
    skew for CLIENT_CERT_LIFETIME.

    Raises:
        ValueError: ``name`` is empty or longer than 64 characters (the X.509 limit of a common name).
    """
    if not name or len(name) > 64:
        raise ValueError("a client certificate's name must be 1..64 characters")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLIENT_CERT_ORGANISATION),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=1))
        .not_valid_after(now + CLIENT_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TlsIdentity(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        spki_der=spki_der_of_key(key),
    )


def load_client_identity(key_pem: bytes, cert_pem: bytes) -> TlsIdentity:
    """A client identity from its PEM private key and PEM certificate.

    Raises:
        ValueError: either does not parse, the key is not an EC key, or the certificate is not for this key.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the client key is not an elliptic-curve key")
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = spki_der_of_key(key)
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != spki:
        raise ValueError("the client certificate is not for the client key")
    return TlsIdentity(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        spki_der=spki,
    )


def certificate_spki_sha256(cert_der: bytes) -> bytes:
    """SHA-256 of a DER certificate's SubjectPublicKeyInfo (no other check).

    Raises:
        ValueError: the certificate does not parse.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def client_certificate_info(cert_der: bytes) -> ClientCertificate:
    """Parse a client certificate an authorised-clients file lists, and check that it can authenticate a TLS
    client as its own trust anchor.

    Checks: 1. DER X.509 that parses; 2. self-signed (its own key verifies its signature, issuer = subject);
    3. not a CA (basicConstraints CA:TRUE is refused); 4. extendedKeyUsage includes clientAuth, and keyUsage,
    if present, includes digitalSignature. Validity is not judged here (that needs the time: the handshake
    does it).

    Raises:
        ValueError: the first check that fails, in words.
    """
    # 1. parse
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        public = cert.public_key()
        spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except ValueError as exc:
        raise ValueError(f"the certificate does not parse: {exc}") from None
    # 2. self-signed
    if cert.issuer != cert.subject:
        raise ValueError("the certificate is not self-signed (its issuer is not its subject)")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(f"the certificate's self-signature does not verify ({exc or type(exc).__name__})") from None
    # 3. not a CA
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise ValueError("the certificate is a CA certificate (basicConstraints CA:TRUE); a client key is not")
    # 4. usable for TLS client authentication
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no extendedKeyUsage clientAuth") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValueError("the certificate's extendedKeyUsage does not include clientAuth")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise ValueError("the certificate's keyUsage does not include digitalSignature")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return ClientCertificate(
        spki_sha256=hashlib.sha256(spki).digest(),
        common_name=common_name,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )
