"""Test helpers for the AWS Nitro verifier: the real vectors with their documented values, and a throwaway
P-384 PKI (root -> intermediates -> leaf, shaped like AWS's: leaf without AKI, CA basicConstraints critical)
that signs documents correctly, so each negative test breaks exactly the one rule it is about.

The throwaway root is NOT the AWS root. ``pinned_test_anchors`` pins it under the ``nitro`` label for a test,
by extending (with a monkeypatch) the table of roots allowed to carry hardware labels: it stands in for the AWS
root exactly as the pinned one would, and only inside the test that asks for it.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import cbor2
import pytest
from conftest import read_vector
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.attestation import anchors as anchors_module
from cc_kernel.attestation.anchors import NITRO_PRODUCT as NITRO_ROOT_PRODUCT
from cc_kernel.attestation.anchors import PinnedRoot, TrustAnchors
from cc_kernel.attestation.platforms.nitro import document_from_certificate_san, sig_structure

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ES384_PROTECTED = bytes.fromhex("a1013822")  # {1: -35}
EMPTY_MAP = b"\xa0"
DROP = object()  # field override: leave the field out of the payload


def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


# --- the real vectors (values from ../shared/testvectors/manifest.json) --------------------------------------

ZERO48 = "00" * 48


@dataclass(frozen=True)
class NitroVector:
    name: str
    timestamp_ms: int
    module_id: str
    debug: bool
    pcrs: Mapping[int, str]
    user_data: bytes
    public_key: bytes | None
    nonce: bytes | None
    leaf_valid: tuple[str, str]
    tls_cert: str | None = None  # vector file of the certificate whose SPKI user_data binds
    cabundle_len: int = 4

    @property
    def verify_at(self) -> datetime:
        return at_ms(self.timestamp_ms)

    def document(self) -> bytes:
        if self.name == "evervault-2023-09-18-debug-bound":
            return base64.b64decode(read_vector(f"nitro/{self.name}.cose.b64"))
        if self.name == "evervault-2023-01-18-nondebug-in-tls-cert":
            return document_from_certificate_san(read_vector(f"nitro/{self.name}.der"))
        return read_vector(f"nitro/{self.name}.cose")


VECTORS: tuple[NitroVector, ...] = (
    NitroVector(
        name="evervault-2022-10-12-debug",
        timestamp_ms=1665582606081,
        module_id="i-03ad7cdb817437eeb-enc0183cc7569b3f6e1",
        debug=True,
        pcrs={
            0: ZERO48,
            1: ZERO48,
            2: ZERO48,
            3: "4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa",
            4: "615fa5b1a8838d392d8e54aacc3d9ac0db87d63cb826516c4cc94307c986fe465b29f3f54a55a2f121265528ae0aa6a7",
            8: ZERO48,
        },
        user_data=b"hello, world!",
        public_key=b"my super secret key",
        nonce=None,
        leaf_valid=("2022-10-12T13:49:51+00:00", "2022-10-12T16:49:54+00:00"),
    ),
    NitroVector(
        name="blindai-2023-03-22-debug",
        timestamp_ms=1679495307405,
        module_id="i-0592d6788f2a6df5f-enc018709b898cd0326",
        debug=True,
        pcrs={
            0: ZERO48,
            1: ZERO48,
            2: ZERO48,
            4: "77bbaf8092c4ff65c8fa065ffa6024ffc9dd5d8e97cc2db6f28a568f9427e3ff1a3fd305931f689663412615fc15a759",
            8: ZERO48,
        },
        user_data=b"hello, world!",
        public_key=b"my super secret key",
        nonce=None,
        leaf_valid=("2023-03-22T14:28:24+00:00", "2023-03-22T17:28:27+00:00"),
    ),
    NitroVector(
        name="evervault-2023-09-18-debug-bound",
        timestamp_ms=1695049410860,
        module_id="i-0918f6c55e3b61d89-enc018aa8b8e2285d13",
        debug=True,
        pcrs={
            0: ZERO48,
            1: ZERO48,
            2: ZERO48,
            3: "4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa",
            4: "d0531b1400dd43288c82c226c16bf647c637dd5e4d9b4f7a8aaadc6d6760b854a06c7008cca0d15ca80094dd33a65065",
            8: ZERO48,
        },
        user_data=bytes.fromhex(
            "3059301306072a8648ce3d020106082a8648ce3d030107034200042afc52fe36bd5f190b5c90a7ef3349716dcbc4aa003dde"
            "71114b11d2faa6648e0713c527439746a8d23dab9e1b999e847762ef385bb5cf27295323b9908b2acb"
        ),
        public_key=None,
        nonce=bytes.fromhex(
            "bba6bfd51866d2e4e095ba3277f208a4692e62f76b98595bf13204bc5f36be7a13120a5de19a3b5fcebcca0722983901db66d3"
            "5c419c2e70ea8c7aa48a56df715ae4a39ad5fe0e4d056b2d8b2eb756b69fd231f86e8e39a1607ea5d9ab8d078c5d27147fdc2b"
            "0b5404c281f79a45381ed6533c048f38e3765b5e9776d36c7452b9d6cdae09ecfdd088c74b680dcf3bb520d0ff926074e7b6fc"
            "2c0b6a5d0b07adeba14295b01bdf7a155d0ad08f40d958ee6a837a5655a7fff35a16f7fb7e40aadaf39399f08987941950c508"
            "47e0232cd4a1d3161071f54fdad3e1f5706f4140b28859c169c0fc2526993e9d94d4657644100cd32efd6e6671ab4ae4119c1f21"
        ),
        leaf_valid=("2023-09-18T14:37:09+00:00", "2023-09-18T17:37:12+00:00"),
        tls_cert="nitro/evervault-2023-09-18-debug-bound.tls-cert.der",
    ),
    NitroVector(
        name="evervault-2023-01-18-nondebug-in-tls-cert",
        timestamp_ms=1674047239280,
        module_id="i-0ec0e572c8263d8ff-enc0185c4fd382eeb25",
        debug=False,
        pcrs={
            0: "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af",
            1: "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
            2: "e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a858e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24",
            3: "ae9d5fad927d895b8d926d676617262fce1bf8bc659770179121ad62ad35046f2631701be548c57426521f2fbe63fcb0",
            4: "bb22382784496191b9dbc35f22cffc9337e9da036d29561069e04f14a2e445c1bb6c74375d7f920bd1767f0ca7e57b93",
            8: "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb90107c439bc4a1443ca",
        },
        user_data=bytes.fromhex(
            "3076301006072a8648ce3d020106052b8104002203620004fbd5c51639fe0dd594fdc2fbf5429d94d2be1ff8830b1f3772e0"
            "72362e652ef1c083634ec30a3f55d11f145ecbee25bae9a2c01be6c0bc3472275fcb2cd001e58dbea42b81f53ae370526e66"
            "74037eed23a3108c7b836e652d7b14c350d628b5"
        ),
        public_key=None,
        nonce=bytes.fromhex(
            "20c7790006cf23c55e652556b7771140b95b5f59a64122af7e44c4ca9a5b89a62d9feb32c89596fb196a44fe33c417e5bd2a80"
            "fb6b21345d402eddc038ea6d16f395b3ac926cdc6894252b4e364053a70d8e084f1bebe60adec7456b20609448c7b35b045e63"
            "7fe02159ae13fe9341cabb950deb9e0c984b3bdfdbe07610d33a6372918a24386df5da66fc7c76a020ce3b2106ab69b985fff3"
            "95eeb8c9d470e67c6ad8bb5997a27efd820bb161985993b96f2f9bdea36258ab4deaf0af3c8c146cbaee0d45625c817c91c078"
            "56f660a274b0025a0f2782cfc1c0e6015a32c3ceb06a593addb52363036d6cf26b2bda183550920e0b6edef89754a93da40dc613"
        ),
        leaf_valid=("2023-01-18T13:07:13+00:00", "2023-01-18T16:07:16+00:00"),
        tls_cert="nitro/evervault-2023-01-18-nondebug-in-tls-cert.der",
    ),
)
VECTORS_BY_NAME = {v.name: v for v in VECTORS}


# --- a throwaway PKI shaped like AWS's -----------------------------------------------------------------------

#: The time the throwaway PKI and its documents are built around.
TEST_NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
TEST_ROOT_NAME = "CN=cc-kernel throwaway Nitro test root (NOT AWS),O=Confidential Python tests"
#: AWS Nitro Root-G1's exact subject: a copy of the name must buy nothing.
AWS_ROOT_NAME = "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"


def _name(rfc4514: str) -> x509.Name:
    return x509.Name.from_rfc4514_string(rfc4514)


@dataclass(frozen=True)
class ThrowawayPki:
    """root -> intermediates[0] -> ... -> intermediates[-1] -> leaf. ``cabundle`` is in AWS order (root first)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    intermediate_keys: tuple[ec.EllipticCurvePrivateKey, ...]
    intermediates: tuple[x509.Certificate, ...]
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @property
    def cabundle(self) -> list[bytes]:
        return [der(self.root), *(der(c) for c in self.intermediates)]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def leaf_usage(*, digital_signature: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    *,
    subject: str,
    issuer: str,
    public_key: Any,
    signing_key: Any,
    not_before: datetime,
    not_after: datetime,
    ca: bool,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | None = None,
    serial: int = 1,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=ca)
    return builder.sign(signing_key, hashes.SHA384())


@functools.lru_cache(maxsize=4)
def _key_set(number: int) -> tuple[ec.EllipticCurvePrivateKey, ...]:
    """Eight P-384 keys, generated once per set number (root, up to six intermediates, leaf)."""
    return tuple(ec.generate_private_key(ec.SECP384R1()) for _ in range(8))


def make_pki(
    *,
    now: datetime = TEST_NOW,
    root_name: str = TEST_ROOT_NAME,
    intermediates: int = 2,
    leaf_public_key: Any = None,
    leaf_ca: bool = False,
    leaf_key_usage: x509.KeyUsage | None = None,
    leaf_has_key_usage: bool = True,
    leaf_lifetime: tuple[timedelta, timedelta] = (timedelta(hours=1), timedelta(hours=2)),
    intermediate_lifetime: tuple[timedelta, timedelta] = (timedelta(days=1), timedelta(days=10)),
    key_set: int = 0,
) -> ThrowawayPki:
    """A root, ``intermediates`` CAs and a leaf valid around ``now`` (the leaf ~3 hours, like AWS's).

    Keys are generated once per ``key_set`` and reused; ``leaf_public_key`` replaces the leaf's key in its
    certificate (the leaf then cannot sign for it: use it only for tests about the certificate itself).
    """
    keys = _key_set(key_set)
    root_key, *ca_keys = keys[: 1 + intermediates]
    leaf_key = keys[7]
    root = _issue(
        subject=root_name,
        issuer=root_name,
        public_key=root_key.public_key(),
        signing_key=root_key,
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2050, 1, 1, tzinfo=UTC),
        ca=True,
        key_usage=_ca_usage(),
    )
    issuer_name, issuer_key = root_name, root_key
    certs: list[x509.Certificate] = []
    for depth, key in enumerate(ca_keys):
        name = f"CN=test-intermediate-{depth}.nitro-enclaves,O=Confidential Python tests"
        certs.append(
            _issue(
                subject=name,
                issuer=issuer_name,
                public_key=key.public_key(),
                signing_key=issuer_key,
                not_before=now - intermediate_lifetime[0],
                not_after=now + intermediate_lifetime[1],
                ca=True,
                path_length=intermediates - depth - 1,  # CAs allowed below it, as AWS sets them
                key_usage=_ca_usage(),
                serial=10 + depth,
            )
        )
        issuer_name, issuer_key = name, key
    leaf = _issue(
        subject="CN=i-0123456789abcdef0-enc0123456789abcdef.test.aws,O=Confidential Python tests",
        issuer=issuer_name,
        public_key=leaf_public_key if leaf_public_key is not None else leaf_key.public_key(),
        signing_key=issuer_key,
        not_before=now - leaf_lifetime[0],
        not_after=now + leaf_lifetime[1],
        ca=leaf_ca,
        key_usage=None if not leaf_has_key_usage else leaf_key_usage or leaf_usage(),
        serial=99,
    )
    return ThrowawayPki(
        root_key=root_key,
        root=root,
        intermediate_keys=tuple(ca_keys),
        intermediates=tuple(certs),
        leaf_key=leaf_key,
        leaf=leaf,
    )


@functools.lru_cache(maxsize=1)
def default_pki() -> ThrowawayPki:
    return make_pki()


def pinned_test_anchors(pki: ThrowawayPki, monkeypatch: pytest.MonkeyPatch) -> TrustAnchors:
    """Trust anchors that pin ``pki.root`` under the ``nitro`` label, as ``hardware_anchors()`` pins AWS's."""
    sha = PinnedRoot(platform="simulation", product="nitro-test", certificate=pki.root).sha256
    table = dict(anchors_module._HARDWARE_ROOTS)
    table[("nitro", NITRO_ROOT_PRODUCT)] = sha
    monkeypatch.setattr(anchors_module, "_HARDWARE_ROOTS", MappingProxyType(table))
    return TrustAnchors(roots=(PinnedRoot(platform="nitro", product=NITRO_ROOT_PRODUCT, certificate=pki.root),))


# --- documents ----------------------------------------------------------------------------------------------

#: Non-debug PCR values of the test enclave (PCR0 image, PCR1 kernel, PCR2 application, PCR8 signing cert).
TEST_PCRS: Mapping[int, bytes] = MappingProxyType(
    {i: bytes([0x40 + i]) * 48 if i in (0, 1, 2, 3, 4, 8) else bytes(48) for i in range(16)}
)
TEST_MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"


def document_timestamp_ms(now: datetime = TEST_NOW) -> int:
    """A document timestamp 5 s before ``now`` (ms since 1970)."""
    return int((now - EPOCH).total_seconds() * 1000) - 5000


def payload_fields(pki: ThrowawayPki, **overrides: object) -> dict[str, object]:
    """The payload map of a well-formed document signed by ``pki``'s leaf; ``field=DROP`` removes a field."""
    fields: dict[str, object] = {
        "module_id": TEST_MODULE_ID,
        "digest": "SHA384",
        "timestamp": document_timestamp_ms(),
        "pcrs": dict(TEST_PCRS),
        "certificate": der(pki.leaf),
        "cabundle": pki.cabundle,
        "public_key": None,
        "user_data": b"user data of the test enclave",
        "nonce": None,
    }
    for key, value in overrides.items():
        if value is DROP:
            fields.pop(key, None)
        else:
            fields[key] = value
    return fields


def es384(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def cose_sign1(
    payload: bytes,
    *,
    key: ec.EllipticCurvePrivateKey | None,
    protected: bytes = ES384_PROTECTED,
    unprotected: bytes = EMPTY_MAP,
    signature: bytes | None = None,
    tagged: bool = False,
) -> bytes:
    """Encode ``[protected, unprotected, payload, signature]`` (``unprotected`` as raw CBOR), signed by ``key``
    over the real Sig_structure unless ``signature`` is given."""
    if signature is None:
        assert key is not None
        signature = es384(key, sig_structure(protected, payload))
    body = b"\x84" + cbor2.dumps(protected) + unprotected + cbor2.dumps(payload) + cbor2.dumps(signature)
    return (b"\xd2" if tagged else b"") + body


def build_document(pki: ThrowawayPki | None = None, *, tagged: bool = False, **overrides: object) -> bytes:
    """A correctly signed document from ``pki`` (default: the session's throwaway PKI)."""
    pki = pki or default_pki()
    payload = cbor2.dumps(payload_fields(pki, **overrides))
    return cose_sign1(payload, key=pki.leaf_key, tagged=tagged)


def split_cose(document: bytes) -> tuple[bytes, dict[Any, Any], bytes, bytes]:
    """(protected, unprotected, payload, signature) of a document, decoded with cbor2 (test convenience)."""
    value = cbor2.loads(document)
    items: Sequence[Any] = value.value if isinstance(value, cbor2.CBORTag) else value
    return items[0], items[1], items[2], items[3]


def self_signed_tls_certificate(
    *, dns_names: Sequence[str] = ("enclave.test",), curve: ec.EllipticCurve | None = None, san: bool = True
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A throwaway self-signed TLS certificate (DER) and its key."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave.test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(TEST_NOW - timedelta(days=1))
        .not_valid_after(TEST_NOW + timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dns_names] or [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, der(builder.sign(key, hashes.SHA256()))


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
