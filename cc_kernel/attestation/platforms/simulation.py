"""Pure attestation layer (platform simulation): the simulated TEE authority (docs/evidence.md §3).

Same bytes, different anchors: ``sign_report`` emits byte-exact 1184-byte SEV-SNP v5 reports signed by a
simulated ARK -> ASK -> VCEK chain that imitates AMD's (RSA-4096 RSASSA-PSS SHA-384 salt 48 CAs, a P-384 VCEK
with AMD's extensions), so the real SNP parser, chain walker and signature code verify them. Nothing here
decides trust: a simulated report verifies only against ``simulation_anchors`` (a separate ``TrustAnchors``),
and the result is then labelled ``simulation`` because of WHICH anchor verified it.

Invariants:

* every subject says ``O=Confidential Python SIMULATION - NOT HARDWARE``; CHIP_ID (= the VCEK hwID) starts
  with ASCII ``CC-SIMULATION``; v3+ reports carry CPUID family ``0xCC`` (no AMD part has it), which the
  SNP parser resolves to the product ``Simulated`` (Milan TCB layout);
* serial numbers are positive (we do not copy AMD's serial-0 quirk); ARK/ASK are valid 25 years and the VCEK
  7 years from the ``now`` given at creation;
* no I/O: keys and certificates move in and out as PEM bytes (``authority_to_pem``/``authority_from_pem``);
  the I/O layer stores the private keys with mode 0600. Randomness comes only from key generation, and tests
  pass pre-generated keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.anchors import SIMULATION_PRODUCT, TrustAnchors, simulation_anchors
from cc_kernel.attestation.envelope import Endorsement, EvidenceEnvelope
from cc_kernel.attestation.platforms.sev_snp import (
    LAYOUT,
    REPORT_SIZE,
    SIGNED_SIZE,
    SIMULATED_CPUID_FAMILY,
    encode_tcb,
)
from cc_kernel.crypto.x509load import (
    AMD_OID_ARC,
    amd_vek_extensions,
    certificate_der,
    load_amd_certificate,
)
from cc_kernel.errors import ConfigError, MalformedEvidence

__all__ = [
    "DEFAULT_FIRMWARE",
    "DEFAULT_TCB",
    "ENVELOPE_FORMAT",
    "OLD_TCB",
    "PEM_FILES",
    "PRIVATE_KEY_FILES",
    "SIMULATED_CPUID",
    "SIM_CHIP_ID_PREFIX",
    "SIM_ORGANIZATION",
    "SimulationAuthority",
    "authority_from_pem",
    "authority_to_pem",
    "create_authority",
    "describes_simulation",
    "issue_vcek",
    "sign_report",
    "simulated_envelope",
]

SIM_ORGANIZATION = "Confidential Python SIMULATION - NOT HARDWARE"
SIM_CHIP_ID_PREFIX = b"CC-SIMULATION"
ENVELOPE_FORMAT = "cc-sim-snp-report"
#: CPUID_FAM_ID / MOD_ID / STEP written into v3+ simulated reports: family 0xCC => product "Simulated".
SIMULATED_CPUID = (SIMULATED_CPUID_FAMILY, 0x00, 0x00)
#: Default reported/current/committed/launch TCB (Milan layout), chosen to meet the example policy's minimum.
DEFAULT_TCB: Mapping[str, int] = MappingProxyType({"bl": 4, "tee": 0, "snp": 24, "ucode": 219})
#: Firmware version (major, minor, build) written as CURRENT and COMMITTED.
DEFAULT_FIRMWARE = (1, 55, 0)
#: An older TCB (every component a real Milan once had), below ``DEFAULT_TCB`` in bl, snp and ucode: the
#: "old TCB" teaching fault re-issues the VCEK for it (``issue_vcek``) so ``min_tcb`` policies reject it.
OLD_TCB: Mapping[str, int] = MappingProxyType({"bl": 3, "tee": 0, "snp": 8, "ucode": 115})
DEFAULT_POLICY = 0x30000  # bit 17 (reserved, must be 1) + SMT allowed; DEBUG off

ARK_YEARS = 25
ASK_YEARS = 25
VCEK_YEARS = 7

#: Names of the PEM blobs ``authority_to_pem`` returns (the I/O layer uses them as file names).
PRIVATE_KEY_FILES = ("ark-key.pem", "ask-key.pem", "vcek-key.pem")
CERTIFICATE_FILES = ("ark-cert.pem", "ask-cert.pem", "vcek-cert.pem")
PEM_FILES = PRIVATE_KEY_FILES + CERTIFICATE_FILES

_SPL_ARCS = {"bl": 1, "tee": 2, "snp": 3, "spl4": 4, "spl5": 5, "spl6": 6, "spl7": 7, "ucode": 8}
_RESERVED_SPLS = ("spl4", "spl5", "spl6", "spl7")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_TAG_REPORT_ID = b"cc-kernel/simulation/report-id/v1"
_TAG_CHIP_ID = b"cc-kernel/simulation/chip-id/v1"


@dataclass(frozen=True)
class SimulationAuthority:
    """The simulated AMD key hierarchy: ARK (RSA-4096) -> ASK (RSA-4096) -> VCEK (P-384).

    ``tcb`` is the TCB the VCEK was "derived" for (its SPL extensions); ``chip_id`` its hwID.
    """

    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey
    ark_cert: x509.Certificate
    ask_cert: x509.Certificate
    vcek_cert: x509.Certificate
    chip_id: bytes
    tcb: Mapping[str, int] = field(default_factory=dict)

    @property
    def ark_der(self) -> bytes:
        return certificate_der(self.ark_cert)

    @property
    def ask_der(self) -> bytes:
        return certificate_der(self.ask_cert)

    @property
    def vcek_der(self) -> bytes:
        return certificate_der(self.vcek_cert)

    def anchors(self) -> TrustAnchors:
        """The simulation ``TrustAnchors`` for this authority (ARK pinned, ASK as pinned intermediate)."""
        return simulation_anchors(self.ark_der, self.ask_der)


# --- certificates -------------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIM_ORGANIZATION),
        ]
    )


def _add_years(when: datetime, years: int) -> datetime:
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February
        return when.replace(year=when.year + years, day=28)


def _der_small_uint(value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"SPL {value} does not fit one byte")
    return b"\x02\x02\x00" + bytes([value]) if value & 0x80 else b"\x02\x01" + bytes([value])


def _der_ia5(text: str) -> bytes:
    data = text.encode("ascii")
    if len(data) > 0x7F:
        raise ValueError("IA5String too long for this encoder")
    return b"\x16" + bytes([len(data)]) + data


def _amd_extension(arc: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID_ARC}.{arc}"), value)


def _check_tcb(tcb: Mapping[str, int]) -> dict[str, int]:
    unknown = set(tcb) - {"bl", "tee", "snp", "ucode"}
    if unknown:
        raise ValueError(f"unknown TCB components for the simulated (Milan-layout) product: {sorted(unknown)}")
    parts = {name: int(tcb.get(name, 0)) for name in ("bl", "tee", "snp", "ucode")}
    for name, value in parts.items():
        if not 0 <= value <= 0xFF:
            raise ValueError(f"TCB component {name}={value} does not fit one byte")
    return parts


def _chip_id_for(ark_key: rsa.RSAPrivateKey) -> bytes:
    """64 bytes: ``CC-SIMULATION`` then a digest of the ARK public key (one stable id per authority)."""
    spki = ark_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tail = hashlib.sha512(_TAG_CHIP_ID + spki).digest()
    return (SIM_CHIP_ID_PREFIX + b"\x00" + tail)[:64]


def create_authority(
    *,
    now: datetime,
    tcb: Mapping[str, int] = DEFAULT_TCB,
    ark_key: rsa.RSAPrivateKey | None = None,
    ask_key: rsa.RSAPrivateKey | None = None,
    vcek_key: ec.EllipticCurvePrivateKey | None = None,
) -> SimulationAuthority:
    """Create a simulated authority whose certificates start at ``now``.

    Keys not given are generated (RSA-4096 costs ~0.3 s each; tests pass session-scoped keys).

    Raises:
        ValueError: ``now`` is naive, a TCB component does not fit a byte, or a key has the wrong type.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    start = now.replace(microsecond=0)
    parts = _check_tcb(tcb)
    ark_key = ark_key if ark_key is not None else rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ask_key = ask_key if ask_key is not None else rsa.generate_private_key(public_exponent=65537, key_size=4096)
    vcek_key = vcek_key if vcek_key is not None else ec.generate_private_key(ec.SECP384R1())
    if not isinstance(ark_key, rsa.RSAPrivateKey) or not isinstance(ask_key, rsa.RSAPrivateKey):
        raise ValueError("the simulated ARK and ASK keys must be RSA keys")
    if not isinstance(vcek_key, ec.EllipticCurvePrivateKey) or vcek_key.curve.name != "secp384r1":
        raise ValueError("the simulated VCEK key must be ECDSA P-384")
    chip_id = _chip_id_for(ark_key)

    ark_name, ask_name = _name(f"ARK-{SIMULATION_PRODUCT}"), _name(f"SEV-{SIMULATION_PRODUCT}")
    ark_cert = _build_ca(
        subject=ark_name, key=ark_key, issuer=ark_name, issuer_key=ark_key, serial=1, path_length=None,
        not_before=start, not_after=_add_years(start, ARK_YEARS),
    )
    ask_cert = _build_ca(
        subject=ask_name, key=ask_key, issuer=ark_name, issuer_key=ark_key, serial=2, path_length=0,
        not_before=start, not_after=_add_years(start, ASK_YEARS),
    )
    vcek_cert = _build_vcek(
        ask_key=ask_key,
        ask_name=ask_name,
        vcek_key=vcek_key,
        chip_id=chip_id,
        tcb=parts,
        not_before=start,
        not_after=_add_years(start, VCEK_YEARS),
    )
    return SimulationAuthority(
        ark_key=ark_key,
        ask_key=ask_key,
        vcek_key=vcek_key,
        ark_cert=ark_cert,
        ask_cert=ask_cert,
        vcek_cert=vcek_cert,
        chip_id=chip_id,
        tcb=MappingProxyType(parts),
    )


def _build_ca(
    *,
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    serial: int,
    path_length: int | None,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """An ARK (self-signed: ``issuer_key is key``, may sign CRLs) or ASK (signed by the ARK, path length 0, with
    the ARK's key identifier) like AMD's: CA basicConstraints, RSASSA-PSS SHA-384 signature."""
    self_signed = issuer_key is key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=True, crl_sign=self_signed), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not self_signed:
        issuer_ski = x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key())
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_PSS)


def _vcek_serial(tcb: Mapping[str, int]) -> int:
    """Positive and unique per (issuer, TCB): 1 + the TCB_VERSION as a big-endian integer."""
    return 1 + int.from_bytes(encode_tcb(tcb, SIMULATION_PRODUCT), "big")


def _build_vcek(
    *,
    ask_key: rsa.RSAPrivateKey,
    ask_name: x509.Name,
    vcek_key: ec.EllipticCurvePrivateKey,
    chip_id: bytes,
    tcb: Mapping[str, int],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A VCEK like AMD's: CN=SEV-VCEK, no basicConstraints, AMD extensions (structVersion 0, productName,
    SPLs 1..8 with the reserved ones zero, hwID = CHIP_ID), RSASSA-PSS SHA-384 signature by the ASK."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("SEV-VCEK"))
        .issuer_name(ask_name)
        .public_key(vcek_key.public_key())
        .serial_number(_vcek_serial(tcb))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_amd_extension("1", _der_small_uint(0)), critical=False)  # structVersion
        .add_extension(_amd_extension("2", _der_ia5(SIMULATION_PRODUCT)), critical=False)  # productName
    )
    spls = {**tcb, **dict.fromkeys(_RESERVED_SPLS, 0)}
    for name, arc in _SPL_ARCS.items():
        builder = builder.add_extension(_amd_extension(f"3.{arc}", _der_small_uint(spls[name])), critical=False)
    builder = builder.add_extension(_amd_extension("4", chip_id), critical=False)  # hwID
    return builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)


def issue_vcek(
    authority: SimulationAuthority, *, tcb: Mapping[str, int], now: datetime | None = None
) -> SimulationAuthority:
    """The same authority with a VCEK re-issued for another TCB (teaching knob "old TCB": the enclave's reports
    then carry that TCB, which a policy's ``min_tcb`` rejects). ARK, ASK, chip id and VCEK key are kept.

    The new VCEK is valid ``VCEK_YEARS`` from ``now`` if given, else over the current VCEK's validity window
    (the core never reads the clock).

    Raises:
        ValueError: a TCB component does not fit a byte, or ``now`` is naive.
    """
    parts = _check_tcb(tcb)
    if now is None:
        not_before = authority.vcek_cert.not_valid_before_utc
        not_after = authority.vcek_cert.not_valid_after_utc
    else:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        not_before = now.replace(microsecond=0)
        not_after = _add_years(not_before, VCEK_YEARS)
    vcek_cert = _build_vcek(
        ask_key=authority.ask_key,
        ask_name=authority.ask_cert.subject,
        vcek_key=authority.vcek_key,
        chip_id=authority.chip_id,
        tcb=parts,
        not_before=not_before,
        not_after=not_after,
    )
    return replace(authority, vcek_cert=vcek_cert, tcb=MappingProxyType(parts))


def _key_usage(*, cert_sign: bool, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- PEM round trip -----------------------------------------------------------------------------------------


def authority_to_pem(authority: SimulationAuthority) -> dict[str, bytes]:
    """PEM blobs by file name (``PEM_FILES``): private keys PKCS#8 unencrypted (store them 0600), certs."""

    def key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    return {
        "ark-key.pem": key_pem(authority.ark_key),
        "ask-key.pem": key_pem(authority.ask_key),
        "vcek-key.pem": key_pem(authority.vcek_key),
        "ark-cert.pem": authority.ark_cert.public_bytes(serialization.Encoding.PEM),
        "ask-cert.pem": authority.ask_cert.public_bytes(serialization.Encoding.PEM),
        "vcek-cert.pem": authority.vcek_cert.public_bytes(serialization.Encoding.PEM),
    }


def _public_der(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def authority_from_pem(blobs: Mapping[str, bytes]) -> SimulationAuthority:
    """Rebuild an authority from ``authority_to_pem`` output, checking that it is consistent.

    Raises:
        ConfigError: a blob is missing or malformed, a key does not match its certificate, the chain does not
            verify, or the certificates are not simulation certificates.
    """
    missing = [name for name in PEM_FILES if name not in blobs]
    if missing:
        raise ConfigError(f"simulation authority is incomplete: missing {missing}")
    # certificates first (cheap), private keys last (loading an RSA-4096 key validates it: ~0.2 s each)
    try:
        ark_cert, ask_cert, vcek_cert = (load_amd_certificate(blobs[name]) for name in CERTIFICATE_FILES)
        vek_ext = amd_vek_extensions(vcek_cert)
    except MalformedEvidence as exc:
        raise ConfigError(f"simulation authority does not parse: {exc}") from exc
    for cert, what in ((ark_cert, "ARK"), (ask_cert, "ASK"), (vcek_cert, "VCEK")):
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if [o.value for o in orgs] != [SIM_ORGANIZATION]:
            raise ConfigError(f"simulation {what} certificate is not marked {SIM_ORGANIZATION!r}")
    try:
        ark_cert.verify_directly_issued_by(ark_cert)
        ask_cert.verify_directly_issued_by(ark_cert)
        vcek_cert.verify_directly_issued_by(ask_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ConfigError(f"simulation certificates do not form a chain: {exc!r}") from exc
    if vek_ext.hw_id is None or not vek_ext.hw_id.startswith(SIM_CHIP_ID_PREFIX):
        raise ConfigError("simulation VCEK has no CC-SIMULATION hwID")
    try:
        tcb = _check_tcb({name: vek_ext.spls.get(name, 0) for name in ("bl", "tee", "snp", "ucode")})
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        # These are our own key files (written 0600 by simstore); the RSA consistency check costs ~0.2 s per
        # RSA-4096 key on every enclave start, and each key is checked against its certificate just below.
        keys = [
            serialization.load_pem_private_key(blobs[name], password=None, unsafe_skip_rsa_key_validation=True)
            for name in PRIVATE_KEY_FILES
        ]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"simulation authority keys do not parse: {exc}") from exc
    ark_key, ask_key, vcek_key = keys
    if not isinstance(ark_key, rsa.RSAPrivateKey) or not isinstance(ask_key, rsa.RSAPrivateKey):
        raise ConfigError("simulation ARK/ASK keys must be RSA")
    if not isinstance(vcek_key, ec.EllipticCurvePrivateKey) or vcek_key.curve.name != "secp384r1":
        raise ConfigError("simulation VCEK key must be ECDSA P-384")
    pairs = ((ark_key, ark_cert, "ARK"), (ask_key, ask_cert, "ASK"), (vcek_key, vcek_cert, "VCEK"))
    for key, cert, what in pairs:
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise ConfigError(f"simulation {what} key does not match its certificate")
    return SimulationAuthority(
        ark_key=ark_key,
        ask_key=ask_key,
        vcek_key=vcek_key,
        ark_cert=ark_cert,
        ask_cert=ask_cert,
        vcek_cert=vcek_cert,
        chip_id=vek_ext.hw_id,
        tcb=MappingProxyType(tcb),
    )


# --- reports ------------------------------------------------------------------------------------------------

OverrideValue = int | bytes | Mapping[str, int]


def _put(buf: bytearray, name: str, value: OverrideValue) -> None:
    if name not in LAYOUT or name in ("signature_r", "signature_s"):
        raise ValueError(f"unknown or non-overridable report field {name!r} (use raw_patch for the signature)")
    f = LAYOUT[name]
    if isinstance(value, Mapping):
        if not name.endswith("_tcb"):
            raise ValueError(f"{name} is not a TCB field")
        data = encode_tcb(value, SIMULATION_PRODUCT)
    elif isinstance(value, bytes | bytearray):
        data = bytes(value)
        if len(data) != f.size:
            raise ValueError(f"{name} is {f.size} bytes, got {len(data)}")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 1 << (8 * f.size):
            raise ValueError(f"{name}={value} does not fit {f.size} bytes")
        data = value.to_bytes(f.size, "little")
    else:
        raise TypeError(f"{name}: unsupported override type {type(value).__name__}")
    buf[f.offset : f.end] = data


def _patch(buf: bytearray, offset: int, data: bytes) -> None:
    if offset < 0 or offset + len(data) > REPORT_SIZE:
        raise ValueError(f"raw patch at 0x{offset:x} (+{len(data)}) falls outside the report")
    buf[offset : offset + len(data)] = data


def sign_report(
    authority: SimulationAuthority,
    *,
    report_data: bytes,
    measurement: bytes,
    policy: int = DEFAULT_POLICY,
    vmpl: int = 0,
    version: int = 5,
    reported_tcb: Mapping[str, int] | None = None,
    signing_key: int = 0,
    overrides: Mapping[str, OverrideValue] | None = None,
    raw_patch: Mapping[int, bytes] | None = None,
) -> bytes:
    """A byte-exact 1184-byte SEV-SNP report signed by the simulated VCEK (R/S little-endian, like AMD).

    Defaults: VERSION 5, SIGNATURE_ALGO 1, POLICY 0x30000, VMPL 0, every TCB = the authority's, CHIP_ID = the
    VCEK hwID, CPUID ``SIMULATED_CPUID`` (v3+), firmware ``DEFAULT_FIRMWARE``, REPORT_ID derived from the
    inputs, REPORT_ID_MA all 0xFF (no migration agent), everything else zero. Teaching / negative-test
    knobs, applied in this order, all BEFORE signing (so the signature stays valid and only the intended
    check fails):

    * ``policy``, ``vmpl``, ``version`` (2..5 choose the layout; other values are written as-is),
      ``reported_tcb`` (REPORTED_TCB only; the VCEK keeps the authority's TCB), ``signing_key`` (SIGNER_INFO
      bits 4:2);
    * ``overrides``: any ``LAYOUT`` field by name -> int (little-endian), bytes (exact size) or, for ``*_tcb``
      fields, a TCB mapping;
    * ``raw_patch``: offset -> bytes. Patches below 0x2A0 are applied before signing; patches at or after
      0x2A0 (signature area, trailing reserved bytes) after signing.

    Raises:
        ValueError / TypeError: a knob does not fit its field.
    """
    if len(report_data) != LAYOUT["report_data"].size:
        raise ValueError("report_data must be 64 bytes")
    if len(measurement) != LAYOUT["measurement"].size:
        raise ValueError("measurement must be 48 bytes")
    tcb_bytes = encode_tcb(authority.tcb, SIMULATION_PRODUCT)
    buf = bytearray(REPORT_SIZE)
    _put(buf, "version", version)
    _put(buf, "guest_svn", 0)
    _put(buf, "policy", policy)
    _put(buf, "vmpl", vmpl)
    _put(buf, "signature_algo", 1)
    _put(buf, "current_tcb", tcb_bytes)
    _put(buf, "platform_info", 0)
    _put(buf, "signer_info", (signing_key & 0x7) << 2)
    _put(buf, "report_data", bytes(report_data))
    _put(buf, "measurement", bytes(measurement))
    _put(
        buf,
        "report_id",
        hashlib.sha256(_TAG_REPORT_ID + authority.chip_id + bytes(measurement) + bytes(report_data)).digest(),
    )
    _put(buf, "report_id_ma", b"\xff" * 32)
    _put(
        buf,
        "reported_tcb",
        tcb_bytes if reported_tcb is None else encode_tcb(reported_tcb, SIMULATION_PRODUCT),
    )
    if version >= 3:
        _put(buf, "cpuid_fam_id", SIMULATED_CPUID[0])
        _put(buf, "cpuid_mod_id", SIMULATED_CPUID[1])
        _put(buf, "cpuid_step", SIMULATED_CPUID[2])
    _put(buf, "chip_id", authority.chip_id)
    _put(buf, "committed_tcb", tcb_bytes)
    major, minor, build = DEFAULT_FIRMWARE
    for prefix in ("current", "committed"):
        _put(buf, f"{prefix}_major", major)
        _put(buf, f"{prefix}_minor", minor)
        _put(buf, f"{prefix}_build", build)
    _put(buf, "launch_tcb", tcb_bytes)
    for name, value in (overrides or {}).items():
        _put(buf, name, value)
    late: list[tuple[int, bytes]] = []
    for offset, data in sorted((raw_patch or {}).items()):
        if offset >= SIGNED_SIZE:
            late.append((offset, bytes(data)))
        else:
            _patch(buf, offset, bytes(data))
    der = authority.vcek_key.sign(bytes(buf[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    buf[LAYOUT["signature_r"].offset : LAYOUT["signature_r"].end] = r.to_bytes(72, "little")
    buf[LAYOUT["signature_s"].offset : LAYOUT["signature_s"].end] = s.to_bytes(72, "little")
    for offset, data in late:
        _patch(buf, offset, data)
    return bytes(buf)


def simulated_envelope(
    authority: SimulationAuthority,
    report: bytes,
    *,
    audit_pub: bytes,
    session_id: bytes,
    nonce: bytes,
    collected_at_ms: int,
) -> EvidenceEnvelope:
    """Wrap a simulated report: platform ``simulation``, format ``cc-sim-snp-report``, the VCEK/ASK/ARK as
    ``x509-der`` endorsements. The platform field is a hint; the verifier labels by anchor."""
    return EvidenceEnvelope(
        platform="simulation",
        format=ENVELOPE_FORMAT,
        evidence=bytes(report),
        audit_pub=audit_pub,
        session_id=session_id,
        nonce=nonce,
        endorsements=(
            Endorsement(kind="x509-der", role="vcek", data=authority.vcek_der),
            Endorsement(kind="x509-der", role="ask", data=authority.ask_der),
            Endorsement(kind="x509-der", role="ark", data=authority.ark_der),
        ),
        collected_at_ms=collected_at_ms,
    )


def describes_simulation(*certificates: bytes | None, report: bytes | None = None) -> bool:
    """For error MESSAGES only, never for a trust decision: do these presented certificates (subject
    ``O=... SIMULATION ...``) or this report (CPUID family 0xCC) look like the simulated TEE's?"""
    for data in certificates:
        if not data:
            continue
        try:
            cert = load_amd_certificate(data)
        except MalformedEvidence:
            continue
        if any(a.value == SIM_ORGANIZATION for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)):
            return True
    fam = LAYOUT["cpuid_fam_id"]
    return report is not None and len(report) == REPORT_SIZE and report[fam.offset] == SIMULATED_CPUID_FAMILY
