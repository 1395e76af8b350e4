"""crypto.x509load (AMD certificate loading, AMD extensions, the tiny DER reader) and crypto.x509chain (the one
chain walker), on the real AMD certificates and on small hand-built chains for the rules AMD never breaks."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from conftest import SNP_VERIFY_AT
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.platforms.simulation import SimulationAuthority, create_authority
from cc_kernel.crypto import x509load
from cc_kernel.crypto.x509chain import MAX_CHAIN_LENGTH, walk_chain
from cc_kernel.crypto.x509load import (
    amd_vek_extensions,
    certificate_serial,
    certificate_sha256,
    load_amd_certificate,
    load_certificate,
    load_certificate_bundle,
)
from cc_kernel.errors import CertificateExpired, ChainError, MalformedEvidence, SignatureInvalid, UntrustedRoot

Vector = Callable[[str], bytes]

VEKS = [
    "sev-snp/gosev-milan-v2-debug.vcek.der",
    "sev-snp/virtee-milan-v2.vcek.der",
    "sev-snp/trustee-milan-v2-idblock.vcek.der",
    "sev-snp/trustee-milan-v3-vlek.vlek.der",
    "sev-snp/ccf-milan-v3.vcek.pem",
    "sev-snp/virtee-turin.vcek.der",
]


def chain_file(vector: Vector, name: str) -> tuple[x509.Certificate, x509.Certificate]:
    ask, ark = load_certificate_bundle(vector(f"roots/{name}"))
    return ask, ark


def pin(*certs: x509.Certificate) -> dict[bytes, x509.Certificate]:
    return {certificate_sha256(c): c for c in certs}


# --- loading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VEKS)
def test_amd_certificates_load_without_any_warning(vector: Vector, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stricter than pytest's config, which ignores the serial-0 warning
        cert = load_amd_certificate(vector(name))
        assert certificate_serial(cert) == 0


def test_plain_loading_of_a_vcek_does_warn(vector: Vector) -> None:
    """Why load_amd_certificate exists: cryptography warns about AMD's serial number 0."""
    with pytest.warns(CryptographyDeprecationWarning, match="serial number which wasn't positive"):
        load_certificate(vector("sev-snp/virtee-milan-v2.vcek.der"))


def test_only_the_serial_warning_is_suppressed(vector: Vector, monkeypatch: pytest.MonkeyPatch) -> None:
    real = x509.load_der_x509_certificate

    def noisy(data: bytes) -> x509.Certificate:
        warnings.warn("some other deprecation", CryptographyDeprecationWarning, stacklevel=2)
        return real(data)

    monkeypatch.setattr(x509load.x509, "load_der_x509_certificate", noisy)
    with pytest.warns(CryptographyDeprecationWarning, match="some other deprecation"):
        load_amd_certificate(vector("sev-snp/virtee-milan-v2.vcek.der"))


def test_pem_and_der_give_the_same_certificate(vector: Vector) -> None:
    pem = vector("sev-snp/ccf-milan-v3.vcek.pem")
    cert = load_amd_certificate(pem)
    assert load_amd_certificate(x509load.certificate_der(cert)) == cert


def test_truncated_vcek_at_every_offset_is_malformed(vector: Vector) -> None:
    der = vector("sev-snp/virtee-milan-v2.vcek.der")
    for cut in range(len(der)):
        with pytest.raises(MalformedEvidence) as info:
            load_amd_certificate(der[:cut])
        assert info.value.check == "x509.parse", cut


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedEvidence) as info:
        load_certificate(data)
    assert info.value.check == "x509.parse"


def test_load_certificate_wants_exactly_one(vector: Vector) -> None:
    with pytest.raises(MalformedEvidence, match="exactly one") as info:
        load_certificate(vector("roots/amd-milan-vcek-ask-ark.pem"))
    assert info.value.check == "x509.parse"
    with pytest.raises(MalformedEvidence) as info:
        load_certificate(b"\x00" * (x509load.MAX_CERTIFICATE_SIZE + 1))
    assert info.value.got == x509load.MAX_CERTIFICATE_SIZE + 1
    with pytest.raises(MalformedEvidence):
        load_certificate_bundle(vector("sev-snp/virtee-milan-v2.vcek.der"))
    with pytest.raises(TypeError):
        load_certificate("text")  # type: ignore[arg-type]


# --- AMD extensions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "product_name", "spls", "hw_id_prefix", "csp_id"),
    [
        (
            "sev-snp/gosev-milan-v2-debug.vcek.der",
            "Milan-B0",
            {"bl": 2, "tee": 0, "snp": 5, "ucode": 68},
            "3ac3fe21",
            None,
        ),
        ("sev-snp/virtee-milan-v2.vcek.der", "Milan-B0", {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}, "d49554ec", None),
        ("sev-snp/ccf-milan-v3.vcek.pem", "Milan-B0", {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}, "4ffb5cb4", None),
        (
            "sev-snp/trustee-milan-v3-vlek.vlek.der",
            "Milan",
            {"bl": 4, "tee": 0, "snp": 24, "ucode": 217},  # ucodeSPL is 02 02 00 d9: a leading zero byte
            None,
            "CN=cc-us-east-2.amazonaws.com",
        ),
    ],
)
def test_milan_vek_extensions(
    vector: Vector,
    name: str,
    product_name: str,
    spls: dict[str, int],
    hw_id_prefix: str | None,
    csp_id: str | None,
) -> None:
    ext = amd_vek_extensions(load_amd_certificate(vector(name)))
    assert ext.struct_version == 0
    assert ext.product_name == product_name
    assert ext.product == "Milan"
    assert {k: ext.spls[k] for k in spls} == spls
    assert {ext.spls[f"spl{i}"] for i in (4, 5, 6, 7)} == {0}
    assert "fmc" not in ext.spls
    if hw_id_prefix is None:
        assert ext.hw_id is None
    else:
        assert ext.hw_id is not None
        assert len(ext.hw_id) == 64
        assert ext.hw_id.hex().startswith(hw_id_prefix)
    assert ext.csp_id == csp_id


def test_turin_vcek_extensions(vector: Vector) -> None:
    ext = amd_vek_extensions(load_amd_certificate(vector("sev-snp/virtee-turin.vcek.der")))
    assert ext.struct_version == 1
    assert ext.product == "Turin"
    assert ext.hw_id == bytes.fromhex("1e550a8ee5cf9f4d")
    assert {k: ext.spls[k] for k in ("fmc", "bl", "tee", "snp", "ucode")} == {
        "fmc": 0,
        "bl": 0,
        "tee": 0,
        "snp": 0,
        "ucode": 9,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x02\x01\x05", 5),
        (b"\x02\x01\x00", 0),
        (b"\x02\x01\x7f", 127),
        (b"\x02\x02\x00\xd9", 217),
        (b"\x02\x02\x00\xdb", 219),
        (b"\x02\x02\x01\x00", 256),
    ],
)
def test_der_integer_reader_accepts(value: bytes, expected: int) -> None:
    assert x509load._der_unsigned_integer(value, "t") == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"", "truncated"),
        (b"\x02", "truncated"),
        (b"\x02\x01", "length"),
        (b"\x02\x01\x05\x00", "trailing"),
        (b"\x02\x00", "empty"),
        (b"\x02\x01\xd9", "negative"),
        (b"\x02\x02\x00\x05", "non-minimal INTEGER"),
        (b"\x04\x01\x05", "expected DER tag"),
        (b"\x02\x81\x01\x05", "non-minimal DER length"),
        (b"\x02\x80", "unsupported"),
        (b"\x02\x0a" + b"\x01" * 10, "too large"),
    ],
)
def test_der_integer_reader_rejects(value: bytes, why: str) -> None:
    with pytest.raises(MalformedEvidence, match=why) as info:
        x509load._der_unsigned_integer(value, "1.3.6.1.4.1.3704.1.3.8")
    assert info.value.check == "x509.amd_extension"


def test_der_ia5string_reader() -> None:
    assert x509load._der_ia5string(b"\x16\x05Milan", "t") == "Milan"
    long_text = b"x" * 200
    assert x509load._der_ia5string(b"\x16\x81\xc8" + long_text, "t") == long_text.decode()
    with pytest.raises(MalformedEvidence, match="non-ASCII"):
        x509load._der_ia5string(b"\x16\x01\xff", "t")
    with pytest.raises(MalformedEvidence, match="expected DER tag"):
        x509load._der_ia5string(b"\x0c\x05Milan", "t")


def test_spl_out_of_byte_range_is_malformed(sim_authority: SimulationAuthority) -> None:
    builder = _builder(sim_authority.vcek_cert.subject, sim_authority.ask_cert.subject, sim_authority.vcek_key)
    bad = builder.add_extension(
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8"), b"\x02\x02\x01\x00"),
        critical=False,
    ).sign(sim_authority.vcek_key, hashes.SHA384())
    with pytest.raises(MalformedEvidence, match="does not fit") as info:
        amd_vek_extensions(bad)
    assert info.value.check == "x509.amd_extension"


# --- the chain walker on AMD chains --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vek", "chain"),
    [
        ("sev-snp/virtee-milan-v2.vcek.der", "amd-milan-vcek-ask-ark.pem"),
        ("sev-snp/ccf-milan-v3.vcek.pem", "amd-milan-vcek-ask-ark.pem"),
        ("sev-snp/trustee-milan-v3-vlek.vlek.der", "amd-milan-vlek-asvk-ark.pem"),
        ("sev-snp/virtee-turin.vcek.der", "amd-turin-vcek-ask-ark.pem"),
    ],
)
def test_amd_chains_verify(vector: Vector, vek: str, chain: str) -> None:
    leaf = load_amd_certificate(vector(vek))
    ask, ark = chain_file(vector, chain)
    verified = walk_chain(leaf, [ask, ark], anchors=pin(ark), now=SNP_VERIFY_AT)
    assert verified.path == (leaf, ask, ark)
    assert verified.anchor_sha256 == certificate_sha256(ark)
    assert verified.leaf is leaf
    assert verified.anchor is ark
    assert verified.verified_at == SNP_VERIFY_AT


def test_turin_vcek_chains_to_ark_turin(vector: Vector) -> None:
    leaf = load_amd_certificate(vector("sev-snp/virtee-turin.vcek.der"))
    ask, ark = chain_file(vector, "amd-turin-vcek-ask-ark.pem")
    verified = walk_chain(leaf, [ask, ark], anchors=pin(ark), now=SNP_VERIFY_AT)
    assert verified.anchor_sha256.hex() == "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"
    assert leaf.not_valid_before_utc == datetime(2024, 11, 6, 21, 14, tzinfo=UTC)


def test_milan_vcek_under_the_genoa_ask_is_a_chain_error(vector: Vector) -> None:
    leaf = load_amd_certificate(vector("sev-snp/virtee-milan-v2.vcek.der"))
    genoa_ask, genoa_ark = chain_file(vector, "amd-genoa-vcek-ask-ark.pem")
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [genoa_ask, genoa_ark], anchors=pin(genoa_ark), now=SNP_VERIFY_AT)
    assert info.value.check == "chain.issuer_name"
    assert info.value.index == 0


def test_milan_ask_under_the_genoa_ark_is_a_chain_error(vector: Vector) -> None:
    leaf = load_amd_certificate(vector("sev-snp/virtee-milan-v2.vcek.der"))
    milan_ask, _ = chain_file(vector, "amd-milan-vcek-ask-ark.pem")
    _, genoa_ark = chain_file(vector, "amd-genoa-vcek-ask-ark.pem")
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [milan_ask, genoa_ark], anchors=pin(genoa_ark), now=SNP_VERIFY_AT)
    assert (info.value.check, info.value.index) == ("chain.issuer_name", 1)


def test_a_chain_that_ends_at_an_unpinned_root_is_untrusted(vector: Vector) -> None:
    leaf = load_amd_certificate(vector("sev-snp/virtee-milan-v2.vcek.der"))
    ask, ark = chain_file(vector, "amd-milan-vcek-ask-ark.pem")
    _, genoa_ark = chain_file(vector, "amd-genoa-vcek-ask-ark.pem")
    for anchors in ({}, pin(genoa_ark), pin(ask)):
        with pytest.raises(UntrustedRoot) as info:
            walk_chain(leaf, [ask, ark], anchors=anchors, now=SNP_VERIFY_AT)
        assert (info.value.check, info.value.index) == ("chain.anchor", 2)
    # a mapping whose key lies about the certificate it holds does not help either
    with pytest.raises(UntrustedRoot):
        walk_chain(leaf, [ask, ark], anchors={certificate_sha256(ark): genoa_ark}, now=SNP_VERIFY_AT)


def test_the_vlek_is_expired_in_2026(vector: Vector) -> None:
    leaf = load_amd_certificate(vector("sev-snp/trustee-milan-v3-vlek.vlek.der"))
    asvk, ark = chain_file(vector, "amd-milan-vlek-asvk-ark.pem")
    with pytest.raises(CertificateExpired) as info:
        walk_chain(leaf, [asvk, ark], anchors=pin(ark), now=datetime(2026, 1, 1, tzinfo=UTC))
    assert (info.value.check, info.value.index) == ("chain.validity", 0)
    assert info.value.expected == ["2024-12-10T22:14:21+00:00", "2025-12-10T22:14:21+00:00"]
    assert "expired" in str(info.value)


def test_not_yet_valid_is_also_a_validity_failure(vector: Vector) -> None:
    leaf = load_amd_certificate(vector("sev-snp/ccf-milan-v3.vcek.pem"))
    ask, ark = chain_file(vector, "amd-milan-vcek-ask-ark.pem")
    with pytest.raises(CertificateExpired, match="not yet valid") as info:
        walk_chain(leaf, [ask, ark], anchors=pin(ark), now=datetime(2024, 1, 1, tzinfo=UTC))
    assert info.value.index == 0
    with pytest.raises(CertificateExpired) as info:
        walk_chain(leaf, [ask, ark], anchors=pin(ark), now=datetime(2050, 1, 1, tzinfo=UTC))
    assert info.value.index == 0  # the leaf is the first certificate found invalid


def test_naive_now_is_a_programming_error(vector: Vector) -> None:
    ask, ark = chain_file(vector, "amd-milan-vcek-ask-ark.pem")
    with pytest.raises(ValueError, match="timezone-aware"):
        walk_chain(ask, [ark], anchors=pin(ark), now=datetime(2025, 6, 1))


def test_same_names_wrong_key_is_a_signature_failure(sim_authority: SimulationAuthority) -> None:
    """Two simulated authorities have identical names: only the signature tells them apart."""
    other = create_authority(
        now=datetime(2025, 6, 1, tzinfo=UTC),
        ark_key=sim_authority.ask_key,  # swapped roles: another ARK and ASK, same subject names
        ask_key=sim_authority.ark_key,
        vcek_key=sim_authority.vcek_key,
    )
    assert other.ask_cert.subject == sim_authority.ask_cert.subject
    with pytest.raises(SignatureInvalid) as info:
        walk_chain(
            sim_authority.vcek_cert,
            [other.ask_cert, other.ark_cert],
            anchors=pin(other.ark_cert),
            now=datetime(2025, 6, 2, tzinfo=UTC),
        )
    assert (info.value.check, info.value.index) == ("chain.signature", 0)


# --- the chain walker on hand-built chains (rules AMD's chains never break) ----------------------------------

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=3650))
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool | None = True,
    path_length: int | None = None,
    key_cert_sign: bool | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    builder = _builder(_name(cn), _name(issuer_cn), key)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if key_cert_sign is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(MAX_CHAIN_LENGTH + 2)]


def test_a_valid_hand_built_chain(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys[0], "root", keys[0], key_cert_sign=True)
    mid = _cert("mid", keys[1], "root", keys[0], path_length=0, key_cert_sign=True)
    leaf = _cert("leaf", keys[2], "mid", keys[1], ca=None)
    assert walk_chain(leaf, [mid, root], anchors=pin(root), now=NOW).path == (leaf, mid, root)
    assert walk_chain(root, [], anchors=pin(root), now=NOW).path == (root,)


def test_an_issuer_without_basic_constraints_is_not_a_ca(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys[0], "root", keys[0])
    mid = _cert("mid", keys[1], "root", keys[0], ca=None)
    leaf = _cert("leaf", keys[2], "mid", keys[1], ca=None)
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [mid, root], anchors=pin(root), now=NOW)
    assert (info.value.check, info.value.index) == ("chain.ca", 1)


def test_an_issuer_with_ca_false_is_not_a_ca(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys[0], "root", keys[0])
    mid = _cert("mid", keys[1], "root", keys[0], ca=False)
    leaf = _cert("leaf", keys[2], "mid", keys[1], ca=None)
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [mid, root], anchors=pin(root), now=NOW)
    assert (info.value.check, info.value.got, info.value.index) == ("chain.ca", False, 1)


def test_an_issuer_whose_key_usage_lacks_cert_sign(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys[0], "root", keys[0])
    mid = _cert("mid", keys[1], "root", keys[0], key_cert_sign=False)
    leaf = _cert("leaf", keys[2], "mid", keys[1], ca=None)
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [mid, root], anchors=pin(root), now=NOW)
    assert (info.value.check, info.value.index) == ("chain.key_usage", 1)


def test_path_length_constraint(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys[0], "root", keys[0], path_length=0)
    mid = _cert("mid", keys[1], "root", keys[0])
    leaf = _cert("leaf", keys[2], "mid", keys[1], ca=None)
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [mid, root], anchors=pin(root), now=NOW)
    assert (info.value.check, info.value.index, info.value.got, info.value.expected) == (
        "chain.path_length",
        2,
        1,
        0,
    )
    assert walk_chain(mid, [root], anchors=pin(root), now=NOW).leaf is mid  # mid as a leaf is fine


def test_unknown_critical_extension(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys[0], "root", keys[0])
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = _cert("leaf", keys[2], "root", keys[0], ca=None, extra=[(odd, True)])
    with pytest.raises(ChainError) as info:
        walk_chain(leaf, [root], anchors=pin(root), now=NOW)
    assert (info.value.check, info.value.index) == ("chain.critical_extension", 0)
    tolerated = _cert("leaf", keys[2], "root", keys[0], ca=None, extra=[(odd, False)])
    walk_chain(tolerated, [root], anchors=pin(root), now=NOW)


def test_a_bad_anchor_self_signature(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    forged_root = _cert("root", keys[0], "root", keys[1])  # self-issued but signed by another key
    with pytest.raises(SignatureInvalid) as info:
        walk_chain(forged_root, [], anchors=pin(forged_root), now=NOW)
    assert (info.value.check, info.value.index) == ("chain.signature", 0)


def test_a_bad_self_signature_stays_bad_after_a_good_anchor_of_the_same_name_verified(
    keys: list[ec.EllipticCurvePrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cc_kernel.crypto import x509chain

    checked: list[str] = []
    real = x509chain._check_signature

    def counting(child: x509.Certificate, issuer: x509.Certificate, *, index: int) -> None:
        checked.append(child.subject.rfc4514_string())
        real(child, issuer, index=index)

    monkeypatch.setattr(x509chain, "_check_signature", counting)
    root = _cert("cache-root", keys[0], "cache-root", keys[0])
    walk_chain(root, [], anchors=pin(root), now=NOW)
    walk_chain(root, [], anchors=pin(root), now=NOW)
    assert checked == ["CN=cache-root"]  # the pinned bytes' self-signature is checked once per process
    forged = _cert("cache-root", keys[0], "cache-root", keys[1])  # same name and key, signed by another key
    with pytest.raises(SignatureInvalid) as info:
        walk_chain(forged, [], anchors=pin(forged), now=NOW)
    assert (info.value.check, info.value.index) == ("chain.signature", 0)


def test_overlong_paths_are_refused(keys: list[ec.EllipticCurvePrivateKey]) -> None:
    certs = [_cert("c0", keys[0], "c0", keys[0])]
    for i in range(1, MAX_CHAIN_LENGTH + 1):
        certs.append(_cert(f"c{i}", keys[i], f"c{i - 1}", keys[i - 1]))
    path = list(reversed(certs))
    with pytest.raises(ChainError) as info:
        walk_chain(path[0], path[1:], anchors=pin(certs[0]), now=NOW)
    assert (info.value.check, info.value.got) == ("chain.length", MAX_CHAIN_LENGTH + 1)
    walk_chain(path[1], path[2:], anchors=pin(certs[0]), now=NOW)  # exactly MAX_CHAIN_LENGTH is fine
