"""Pure crypto layer (sealed datasets): the chunk AEAD, the data-key wrapping (HPKE) and the broker's keys.

Invariants: the only ciphers are ``cryptography``'s AES-256-GCM and RFC 9180 HPKE in base mode with the suite
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM (``cryptography.hazmat.primitives.hpke``); nothing here
composes primitives into a cipher of its own. Failures to authenticate are ``InvalidCiphertext`` (a plain
``ValueError`` subclass the dataset layer turns into a finding with the chunk index). No I/O.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

#: Size of a data key (AES-256) and of an AES-GCM tag / nonce.
DATA_KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
#: Size of a raw X25519 public key (the release key) and of HPKE's encapsulated key for that KEM.
RELEASE_PUB_SIZE = 32
#: The HPKE suite that wraps data keys (RFC 9180: KEM 0x0020, KDF 0x0001, AEAD 0x0002), base mode.
HPKE_SUITE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


class InvalidCiphertext(ValueError):  # noqa: N818 - names the finding
    """A ciphertext did not authenticate under this key, nonce and associated data."""


class ChunkCipher:
    """AES-256-GCM under one data key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def encrypt(self, nonce: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """``ciphertext ‖ tag`` (len(plaintext) + 16 bytes)."""
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes | memoryview, aad: bytes) -> bytes:
        """The plaintext. Raises InvalidCiphertext when the tag does not verify."""
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise InvalidCiphertext("the ciphertext does not authenticate") from None


class ReleaseKey:
    """An ephemeral X25519 key pair: the data key is wrapped to its public half, bound into the evidence."""

    def __init__(self, key: x25519.X25519PrivateKey | None = None) -> None:
        self._key = key if key is not None else x25519.X25519PrivateKey.generate()
        self.public_bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def unwrap(self, wrapped: bytes, *, info: bytes) -> bytes:
        """Open an HPKE base-mode ciphertext (``enc ‖ ct``) made by ``wrap_key`` for this key and ``info``.

        Raises:
            InvalidCiphertext: it was wrapped to another key or another ``info``, or changed.
        """
        try:
            return _SUITE.decrypt(wrapped, self._key, info=info)
        except (InvalidTag, ValueError) as exc:
            raise InvalidCiphertext(f"the wrapped key does not open: {type(exc).__name__}") from None


def wrap_key(data_key: bytes, release_pub: bytes, *, info: bytes) -> bytes:
    """HPKE base-mode SealBase(pkR=release_pub, info, aad="", pt=data_key): ``enc (32) ‖ ct (48)``.

    Raises:
        ValueError: ``release_pub`` is not a 32-byte X25519 public key.
    """
    if len(release_pub) != RELEASE_PUB_SIZE:
        raise ValueError(f"a release key is {RELEASE_PUB_SIZE} bytes, not {len(release_pub)}")
    return _SUITE.encrypt(data_key, x25519.X25519PublicKey.from_public_bytes(release_pub), info=info)


class SigningKey:
    """An Ed25519 key persisted as its 32 raw private bytes (the broker's log key)."""

    def __init__(self, raw: bytes | None = None) -> None:
        self._key = (
            ed25519.Ed25519PrivateKey.from_private_bytes(raw) if raw is not None
            else ed25519.Ed25519PrivateKey.generate()
        )
        self.public_bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes (for a 0600 file)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature."""
        return self._key.sign(message)


def load_tls_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 TLS key from unencrypted PKCS#8 PEM (the broker's persisted key).

    Raises:
        ValueError: not such a key.
    """
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the TLS key is not an elliptic-curve key")
    return key


def tls_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
