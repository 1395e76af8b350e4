"""Pure attestation layer (platform AMD SEV-SNP): parse an ATTESTATION_REPORT and verify its authenticity.

Invariants:

* ``parse_report_unverified`` accepts exactly 1184 bytes whose every structural rule holds (docs/evidence.md §3
  step 1) and raises ``MalformedEvidence`` naming the failed ``check`` otherwise — for every truncation,
  never ``IndexError``; nothing it returns is trusted;
* ``verify_report`` returns a sealed ``VerifiedEvidence`` only after steps 2-5 of docs/evidence.md §3 passed:
  the product's pinned ARK, the ARK -> ASK/ASVK -> VCEK/VLEK chain (the shared walker in ``crypto.x509chain``),
  the VEK's meaning (role, chip, TCB) and the report signature; its ``platform`` is the label of the pinned root that
  verified it (``sev-snp`` or ``simulation``), never a claim from the evidence or its envelope;
* authenticity only: DEBUG, VMPL, TCB minimums, measurements and REPORT_DATA are appraised by the policy.

Check names (tests assert them): ``snp.length``, ``snp.version``, ``snp.signature_algo``,
``snp.policy.bit17``, ``snp.policy.reserved``, ``snp.signer_info.reserved``, ``snp.signing_key``,
``snp.reserved`` (``index`` = the offset of the first non-zero byte), ``snp.product``, ``snp.anchor``,
``snp.presented_ark``, ``snp.intermediate``, the walker's ``chain.*``, ``snp.vek.role``, ``snp.vek.product``,
``snp.vek.key``, ``snp.vek.hwid``, ``snp.vek.spl``, ``snp.signature``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cc_kernel.attestation.anchors import SIMULATION_PRODUCT, PinnedRoot, TrustAnchors
from cc_kernel.attestation.evidence import Platform, VerifiedEvidence, seal_verified
from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import (
    AmdVekExtensions,
    amd_vek_extensions,
    certificate_der,
    certificate_serial,
    common_name,
    load_amd_certificate,
)
from cc_kernel.errors import ChainError, MalformedEvidence, SignatureInvalid, UntrustedRoot

__all__ = [
    "LAYOUT",
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "SIMULATED_CPUID_FAMILY",
    "SUPPORTED_VERSIONS",
    "Field",
    "SnpReport",
    "decode_tcb",
    "encode_tcb",
    "mbz_ranges",
    "parse_report_unverified",
    "product_from_cpuid",
    "verify_report",
]

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0  # the signature covers report[0:0x2A0]
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
#: R and S are 72-byte little-endian fields; a P-384 value needs only the low 48 bytes.
_SIG_FIELD = 72
_SIG_VALUE = 48

#: CPUID family byte our simulated TEE writes into v3+ reports. No AMD processor has family 0xCC (SEV-SNP
#: parts are 19h and 1Ah), so a report carrying it can only come from the simulator; it resolves to the
#: ``Simulated`` product, whose only possible root is a simulation anchor.
SIMULATED_CPUID_FAMILY = 0xCC

#: Products whose TCB_VERSION uses the Turin layout (FMC, BL, TEE, SNP, 3 reserved, UCODE).
_TURIN_LAYOUT = frozenset({"Turin"})
#: Roots that may verify SNP reports, and the label each gives the result.
_SNP_ROOT_PLATFORMS = ("sev-snp", "simulation")

#: Guest POLICY bits by name (AMD SEV-SNP ABI, ATTESTATION_REPORT.POLICY; docs/policy.md §4.2): the names a
#: policy's ``forbid_policy_bits`` / ``require_policy_bits`` use and the report's ``policy_flags`` claim lists.
POLICY_BITS: Mapping[str, int] = MappingProxyType(
    {
        "smt": 16,
        "migrate_ma": 18,
        "debug": 19,
        "single_socket": 20,
        "cxl_allow": 21,
        "mem_aes_256_xts": 22,
        "rapl_dis": 23,
        "ciphertext_hiding": 24,
        "page_swap_disable": 25,
    }
)
#: The POLICY mask of the DEBUG bit: the hypervisor may read and write guest memory through the debug API.
DEBUG_POLICY_BIT = 1 << POLICY_BITS["debug"]
_POLICY_BIT_SMT = POLICY_BITS["smt"]
_POLICY_BIT_RESERVED_ONE = 17  # must be 1
_POLICY_BIT_MIGRATE_MA = POLICY_BITS["migrate_ma"]
_POLICY_BIT_DEBUG = POLICY_BITS["debug"]
_POLICY_RESERVED_MASK = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF
_PLATFORM_INFO_FLAGS: Mapping[str, int] = MappingProxyType(
    {
        "smt_en": 0,
        "tsme_en": 1,
        "ecc_en": 2,
        "rapl_dis": 3,
        "ciphertext_hiding_dram_en": 4,
        "alias_check_complete": 5,
        "tio_en": 7,
    }
)


@dataclass(frozen=True)
class Field:
    """One field of the report: byte offset, size, and whether it is read as a little-endian integer."""

    offset: int
    size: int
    kind: Literal["int", "bytes"]

    @property
    def end(self) -> int:
        return self.offset + self.size


#: The ATTESTATION_REPORT layout (AMD SEV-SNP ABI #56860; docs/evidence.md §3). Shared by parser and simulator.
LAYOUT: Mapping[str, Field] = MappingProxyType(
    {
        "version": Field(0x000, 4, "int"),
        "guest_svn": Field(0x004, 4, "int"),
        "policy": Field(0x008, 8, "int"),
        "family_id": Field(0x010, 16, "bytes"),
        "image_id": Field(0x020, 16, "bytes"),
        "vmpl": Field(0x030, 4, "int"),
        "signature_algo": Field(0x034, 4, "int"),
        "current_tcb": Field(0x038, 8, "bytes"),
        "platform_info": Field(0x040, 8, "int"),
        "signer_info": Field(0x048, 4, "int"),
        "report_data": Field(0x050, 64, "bytes"),
        "measurement": Field(0x090, 48, "bytes"),
        "host_data": Field(0x0C0, 32, "bytes"),
        "id_key_digest": Field(0x0E0, 48, "bytes"),
        "author_key_digest": Field(0x110, 48, "bytes"),
        "report_id": Field(0x140, 32, "bytes"),
        "report_id_ma": Field(0x160, 32, "bytes"),
        "reported_tcb": Field(0x180, 8, "bytes"),
        "cpuid_fam_id": Field(0x188, 1, "int"),
        "cpuid_mod_id": Field(0x189, 1, "int"),
        "cpuid_step": Field(0x18A, 1, "int"),
        "chip_id": Field(0x1A0, 64, "bytes"),
        "committed_tcb": Field(0x1E0, 8, "bytes"),
        "current_build": Field(0x1E8, 1, "int"),
        "current_minor": Field(0x1E9, 1, "int"),
        "current_major": Field(0x1EA, 1, "int"),
        "committed_build": Field(0x1EC, 1, "int"),
        "committed_minor": Field(0x1ED, 1, "int"),
        "committed_major": Field(0x1EE, 1, "int"),
        "launch_tcb": Field(0x1F0, 8, "bytes"),
        "launch_mit_vector": Field(0x1F8, 8, "int"),
        "current_mit_vector": Field(0x200, 8, "int"),
        "signature_r": Field(0x2A0, _SIG_FIELD, "bytes"),
        "signature_s": Field(0x2E8, _SIG_FIELD, "bytes"),
    }
)


def mbz_ranges(version: int) -> tuple[tuple[int, int], ...]:
    """The [start, end) byte ranges that must be zero in a report of this version (docs/evidence.md §3)."""
    cpuid_reserved = (0x188, 0x1A0) if version < 3 else (0x18B, 0x1A0)
    tail_reserved = (0x1F8, 0x2A0) if version < 5 else (0x208, 0x2A0)
    return (
        (0x04C, 0x050),
        cpuid_reserved,
        (0x1EB, 0x1EC),
        (0x1EF, 0x1F0),
        tail_reserved,
        (0x2A0 + _SIG_VALUE, 0x2A0 + _SIG_FIELD),  # R is 48 bytes zero-extended to 72
        (0x2E8 + _SIG_VALUE, 0x2E8 + _SIG_FIELD),  # S likewise
        (0x330, REPORT_SIZE),
    )


@dataclass(frozen=True)
class SnpReport:
    """Every field of an SEV-SNP ATTESTATION_REPORT, UNVERIFIED. TCB fields are the raw 8 bytes (their
    layout depends on the product: ``decode_tcb``). CPUID fields are ``None`` before v3, mitigation vectors
    before v5.
    """

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def author_key_en(self) -> bool:
        return bool(self.signer_info & 0x1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.signer_info & 0x2)

    @property
    def signing_key(self) -> int:
        """SIGNER_INFO bits 4:2: 0 = VCEK, 1 = VLEK, 7 = none."""
        return (self.signer_info >> 2) & 0x7

    @property
    def debug(self) -> bool:
        return bool(self.policy >> _POLICY_BIT_DEBUG & 1)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.policy >> _POLICY_BIT_MIGRATE_MA & 1)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy >> _POLICY_BIT_SMT & 1)

    @property
    def chip_id_masked(self) -> bool:
        return not any(self.chip_id)

    @property
    def current_fw(self) -> str:
        return f"{self.current_major}.{self.current_minor}.{self.current_build}"

    @property
    def committed_fw(self) -> str:
        return f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"

    def product_from_cpuid(self) -> str | None:
        """The product named by the CPUID fields (v3+), or None (v2, all-zero or unknown CPUID)."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)


def product_from_cpuid(family: int, model: int) -> str | None:
    """Map the report's CPUID family/model bytes to a product line (None if unknown)."""
    if family == 0x19 and 0x00 <= model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"
    if family == 0x1A and 0x00 <= model <= 0x11:
        return "Turin"
    if family == SIMULATED_CPUID_FAMILY:
        return SIMULATION_PRODUCT
    return None


def decode_tcb(raw: bytes, product: str) -> dict[str, int]:
    """Decode an 8-byte TCB_VERSION. Milan/Genoa (and Simulated): bl=0, tee=1, snp=6, ucode=7.
    Turin: fmc=0, bl=1, tee=2, snp=3, ucode=7."""
    if len(raw) != 8:
        raise ValueError("TCB_VERSION is 8 bytes")
    if product in _TURIN_LAYOUT:
        return {"fmc": raw[0], "bl": raw[1], "tee": raw[2], "snp": raw[3], "ucode": raw[7]}
    return {"bl": raw[0], "tee": raw[1], "snp": raw[6], "ucode": raw[7]}


def encode_tcb(parts: Mapping[str, int], product: str) -> bytes:
    """Inverse of ``decode_tcb`` (reserved bytes zero). Missing components are 0."""
    out = bytearray(8)
    positions = (
        {"fmc": 0, "bl": 1, "tee": 2, "snp": 3, "ucode": 7}
        if product in _TURIN_LAYOUT
        else {"bl": 0, "tee": 1, "snp": 6, "ucode": 7}
    )
    for name, value in parts.items():
        if name not in positions:
            raise ValueError(f"TCB component {name!r} does not exist for {product}")
        if not 0 <= value <= 0xFF:
            raise ValueError(f"TCB component {name}={value} does not fit one byte")
        out[positions[name]] = value
    return bytes(out)


def _malformed(
    message: str, check: str, *, got: object = None, expected: object = None, index: int | None = None
) -> MalformedEvidence:
    return MalformedEvidence(message, check=check, got=got, expected=expected, index=index)


def _int(report: bytes, name: str) -> int:
    f = LAYOUT[name]
    return int.from_bytes(report[f.offset : f.end], "little")


def _bytes(report: bytes, name: str) -> bytes:
    f = LAYOUT[name]
    return report[f.offset : f.end]


def parse_report_unverified(report: bytes) -> SnpReport:
    """Parse and structurally check an ATTESTATION_REPORT (docs/evidence.md §3 step 1). Nothing is verified.

    Raises:
        MalformedEvidence: the report breaks a structural rule; ``check`` names it (see the module docstring).
        TypeError: ``report`` is not bytes-like.
    """
    if not isinstance(report, bytes | bytearray | memoryview):
        raise TypeError(f"report must be bytes, not {type(report).__name__}")
    report = bytes(report)
    # 1a. exact length (also what makes every later slice in-bounds: truncation can never raise IndexError)
    if len(report) != REPORT_SIZE:
        raise _malformed("an SEV-SNP report is exactly 1184 bytes", "snp.length", got=len(report), expected=REPORT_SIZE)
    # 1b. a version whose layout we know
    version = _int(report, "version")
    if version not in SUPPORTED_VERSIONS:
        raise _malformed("unsupported report version", "snp.version", got=version, expected=SUPPORTED_VERSIONS)
    # 1c. ECDSA P-384 with SHA-384
    algo = _int(report, "signature_algo")
    if algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise _malformed(
            "unsupported signature algorithm",
            "snp.signature_algo",
            got=algo,
            expected=SIGNATURE_ALGO_ECDSA_P384_SHA384,
        )
    # 1d. POLICY: bit 17 is reserved-must-be-one, bits 63:26 are reserved-must-be-zero
    policy = _int(report, "policy")
    if not policy >> _POLICY_BIT_RESERVED_ONE & 1:
        raise _malformed("POLICY bit 17 must be 1", "snp.policy.bit17", got=hex(policy), expected="bit 17 set")
    if policy & _POLICY_RESERVED_MASK:
        raise _malformed(
            "POLICY bits 63:26 are reserved and must be 0",
            "snp.policy.reserved",
            got=hex(policy & _POLICY_RESERVED_MASK),
            expected="0x0",
        )
    # 1e. SIGNER_INFO: bits 31:5 MBZ; SIGNING_KEY must name a key (0 VCEK, 1 VLEK; 7 = unsigned)
    signer_info = _int(report, "signer_info")
    if signer_info >> 5:
        raise _malformed(
            "SIGNER_INFO bits 31:5 are reserved and must be 0",
            "snp.signer_info.reserved",
            got=hex(signer_info),
            expected="bits 31:5 zero",
        )
    signing_key = (signer_info >> 2) & 0x7
    if signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise _malformed(
            "SIGNING_KEY must be 0 (VCEK) or 1 (VLEK); 7 means the report is unsigned",
            "snp.signing_key",
            got=signing_key,
            expected=[SIGNING_KEY_VCEK, SIGNING_KEY_VLEK],
        )
    # 1f. every reserved range of this version is zero
    for start, end in mbz_ranges(version):
        chunk = report[start:end]
        if any(chunk):
            first = start + next(i for i, b in enumerate(chunk) if b)
            raise _malformed(
                f"reserved bytes 0x{start:03x}..0x{end - 1:03x} must be zero (first non-zero at 0x{first:03x})",
                "snp.reserved",
                got=chunk,
                expected="all zero",
                index=first,
            )
    v3 = version >= 3
    v5 = version >= 5
    return SnpReport(
        raw=report,
        version=version,
        guest_svn=_int(report, "guest_svn"),
        policy=policy,
        family_id=_bytes(report, "family_id"),
        image_id=_bytes(report, "image_id"),
        vmpl=_int(report, "vmpl"),
        signature_algo=algo,
        current_tcb=_bytes(report, "current_tcb"),
        platform_info=_int(report, "platform_info"),
        signer_info=signer_info,
        report_data=_bytes(report, "report_data"),
        measurement=_bytes(report, "measurement"),
        host_data=_bytes(report, "host_data"),
        id_key_digest=_bytes(report, "id_key_digest"),
        author_key_digest=_bytes(report, "author_key_digest"),
        report_id=_bytes(report, "report_id"),
        report_id_ma=_bytes(report, "report_id_ma"),
        reported_tcb=_bytes(report, "reported_tcb"),
        cpuid_fam_id=_int(report, "cpuid_fam_id") if v3 else None,
        cpuid_mod_id=_int(report, "cpuid_mod_id") if v3 else None,
        cpuid_step=_int(report, "cpuid_step") if v3 else None,
        chip_id=_bytes(report, "chip_id"),
        committed_tcb=_bytes(report, "committed_tcb"),
        current_build=_int(report, "current_build"),
        current_minor=_int(report, "current_minor"),
        current_major=_int(report, "current_major"),
        committed_build=_int(report, "committed_build"),
        committed_minor=_int(report, "committed_minor"),
        committed_major=_int(report, "committed_major"),
        launch_tcb=_bytes(report, "launch_tcb"),
        launch_mit_vector=_int(report, "launch_mit_vector") if v5 else None,
        current_mit_vector=_int(report, "current_mit_vector") if v5 else None,
        signature_r=int.from_bytes(_bytes(report, "signature_r"), "little"),
        signature_s=int.from_bytes(_bytes(report, "signature_s"), "little"),
    )


# --- verification -------------------------------------------------------------------------------------------


def _resolve_product(report: SnpReport, vek_ext: AmdVekExtensions) -> tuple[str, str]:
    """Step 2: the product, from CPUID (v3+) or else from the (not yet verified) VEK productName."""
    if (
        report.cpuid_fam_id is not None
        and report.cpuid_mod_id is not None
        and (report.cpuid_fam_id or report.cpuid_mod_id or report.cpuid_step)
    ):
        product = report.product_from_cpuid()
        if product is None:
            raise UntrustedRoot(
                f"unknown SEV-SNP product: CPUID family 0x{report.cpuid_fam_id:02x} model "
                f"0x{report.cpuid_mod_id:02x}; no pinned ARK can verify it",
                check="snp.product",
                got=f"{report.cpuid_fam_id:02x}{report.cpuid_mod_id:02x}{report.cpuid_step or 0:02x}",
                expected=["Milan", "Genoa", "Turin"],
            )
        return product, "cpuid"
    if vek_ext.product is None:
        raise _malformed(
            "cannot tell the product: the report has no CPUID (v2) and the VEK has no productName",
            "snp.product",
        )
    return vek_ext.product, "vek-product-name"


def _tcb_claim(raw: bytes, product: str) -> dict[str, object]:
    return {"raw": raw.hex(), **decode_tcb(raw, product)}


def _flags(value: int, table: Mapping[str, int]) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for name, bit in table.items()}


def _claims(
    report: SnpReport,
    *,
    product: str,
    product_source: str,
    vek: x509.Certificate,
    vek_ext: AmdVekExtensions,
    signer: str,
    root: PinnedRoot,
) -> dict[str, object]:
    cpuid = (
        None
        if report.cpuid_fam_id is None
        else {"family": report.cpuid_fam_id, "model": report.cpuid_mod_id, "stepping": report.cpuid_step}
    )
    return {
        "format": "sev-snp-report",
        "version": report.version,
        "product": product,
        "product_source": product_source,
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "policy_hex": hex(report.policy),
        "policy_abi_major": report.policy >> 8 & 0xFF,
        "policy_abi_minor": report.policy & 0xFF,
        "policy_flags": _flags(report.policy, POLICY_BITS),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "current_tcb": _tcb_claim(report.current_tcb, product),
        "platform_info": report.platform_info,
        "platform_info_hex": hex(report.platform_info),
        "platform_info_flags": _flags(report.platform_info, _PLATFORM_INFO_FLAGS),
        "signer_info": report.signer_info,
        "author_key_en": report.author_key_en,
        "mask_chip_key": report.mask_chip_key,
        "signing_key": signer,
        "report_data": report.report_data.hex(),
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "reported_tcb": _tcb_claim(report.reported_tcb, product),
        "cpuid": cpuid,
        "chip_id": report.chip_id.hex(),
        "chip_id_masked": report.chip_id_masked,
        "committed_tcb": _tcb_claim(report.committed_tcb, product),
        "current_fw": report.current_fw,
        "committed_fw": report.committed_fw,
        "launch_tcb": _tcb_claim(report.launch_tcb, product),
        "launch_mit_vector": report.launch_mit_vector,
        "current_mit_vector": report.current_mit_vector,
        "vek": {
            "subject": vek.subject.rfc4514_string(),
            "issuer": vek.issuer.rfc4514_string(),
            "serial": certificate_serial(vek),
            "not_before": vek.not_valid_before_utc.isoformat(),
            "not_after": vek.not_valid_after_utc.isoformat(),
            "sha256": hashlib.sha256(certificate_der(vek)).hexdigest(),
            "struct_version": vek_ext.struct_version,
            "product_name": vek_ext.product_name,
            "spls": dict(vek_ext.spls),
            "hw_id": None if vek_ext.hw_id is None else vek_ext.hw_id.hex(),
            "csp_id": vek_ext.csp_id,
        },
        "anchor": {"platform": root.platform, "product": root.product, "sha256": root.sha256.hex()},
    }


def verify_report(
    report: bytes,
    *,
    vek_der: bytes,
    anchors: TrustAnchors,
    now: datetime,
    ask_der: bytes | None = None,
    ark_der: bytes | None = None,
) -> VerifiedEvidence:
    """Verify an SEV-SNP report's authenticity (docs/evidence.md §3 steps 1-5) and return it sealed.

    ``vek_der`` is the VCEK or VLEK (DER or PEM) matching the report's SIGNING_KEY. ``ask_der`` is the
    presented ASK/ASVK (optional: the pinned one for the product is used when absent; a presented one must
    chain to the pinned ARK like everything else). ``ark_der``, if presented, must be byte-identical to the
    pinned ARK; the pinned ARK is what the chain ends at in every case. ``anchors`` holds the pinned roots:
    the result's ``platform`` is the label of the one that verified (``sev-snp`` or ``simulation``).

    Raises:
        MalformedEvidence: the report or a certificate does not parse / breaks a structural rule.
        UntrustedRoot: no pinned ARK for the report's product, or a presented ARK that is not the pinned one.
        ChainError / SignatureInvalid / CertificateExpired: the certificate chain fails (``chain.*``), or the
            VEK does not endorse this report (``snp.vek.*``).
        SignatureInvalid: ``snp.signature``: the report is not signed by the VEK.
    """
    # 1. structure
    parsed = parse_report_unverified(report)
    vek = load_amd_certificate(vek_der)
    vek_ext = amd_vek_extensions(vek)
    is_vlek = parsed.signing_key == SIGNING_KEY_VLEK

    # 2. product -> the pinned ARK for that product (the only root this report may chain to)
    product, product_source = _resolve_product(parsed, vek_ext)
    root = anchors.find_product(product, platforms=_SNP_ROOT_PLATFORMS)
    if root is None:
        raise UntrustedRoot(
            f"no pinned ARK for product {product!r} (from {product_source})",
            check="snp.anchor",
            got=product,
            expected=sorted(r.product for r in anchors.roots if r.platform in _SNP_ROOT_PLATFORMS),
        )

    # 3. chain: VEK -> ASK/ASVK -> pinned ARK (the presented ARK is never used, only compared)
    if ark_der is not None:
        presented_ark = load_amd_certificate(ark_der)
        if not hmac.compare_digest(certificate_der(presented_ark), certificate_der(root.certificate)):
            raise UntrustedRoot(
                f"the presented ARK is not the pinned ARK-{product}",
                check="snp.presented_ark",
                got=hashlib.sha256(certificate_der(presented_ark)).hexdigest(),
                expected=root.sha256.hex(),
            )
    role = "asvk" if is_vlek else "ask"
    intermediate = load_amd_certificate(ask_der) if ask_der is not None else root.intermediates.get(role)
    if intermediate is None:
        raise ChainError(
            f"no {role.upper()} presented and none pinned for {product}",
            check="snp.intermediate",
            expected=role,
        )
    walk_chain(vek, [intermediate, root.certificate], anchors={root.sha256: root.certificate}, now=now)

    # 4. VEK semantics: the certificate endorses THIS report
    # 4a. role: SIGNING_KEY 0 => CN=SEV-VCEK under CN=SEV-<product>;
    #           SIGNING_KEY 1 => CN=SEV-VLEK under CN=SEV-VLEK-<product>
    want_leaf = "SEV-VLEK" if is_vlek else "SEV-VCEK"
    want_issuer = f"SEV-VLEK-{product}" if is_vlek else f"SEV-{product}"
    got_leaf, got_issuer = common_name(vek), common_name(intermediate)
    if got_leaf != want_leaf or got_issuer != want_issuer:
        raise ChainError(
            f"SIGNING_KEY={parsed.signing_key} needs a {want_leaf} issued by {want_issuer}",
            check="snp.vek.role",
            got=[got_leaf, got_issuer],
            expected=[want_leaf, want_issuer],
        )
    # 4b. the VEK's own product name agrees with the product we verified against
    if vek_ext.product != product:
        raise ChainError(
            "the VEK's productName does not match the report's product",
            check="snp.vek.product",
            got=vek_ext.product_name,
            expected=product,
        )
    # 4c. an ECDSA P-384 key
    vek_key = vek.public_key()
    if not isinstance(vek_key, ec.EllipticCurvePublicKey) or vek_key.curve.name != "secp384r1":
        raise ChainError("the VEK key is not ECDSA P-384", check="snp.vek.key", got=type(vek_key).__name__)
    # 4d. VCEK: hwID == CHIP_ID (Turin: the first 8 bytes), unless the chip id is masked (warning)
    warnings: list[str] = []
    if parsed.chip_id_masked:
        warnings.append("chip-id-masked")
    elif not is_vlek:
        want_len = 8 if product in _TURIN_LAYOUT else 64
        hw_id = vek_ext.hw_id
        if hw_id is None or len(hw_id) != want_len or not hmac.compare_digest(hw_id, parsed.chip_id[:want_len]):
            raise ChainError(
                "the VCEK was issued for another chip (hwID != CHIP_ID)",
                check="snp.vek.hwid",
                got=hw_id,
                expected=parsed.chip_id[:want_len],
            )
    # 4e. the VEK's SPL extensions == REPORTED_TCB, component by component
    reported = decode_tcb(parsed.reported_tcb, product)
    vek_spls = {name: vek_ext.spls.get(name) for name in reported}
    if vek_spls != reported:
        raise ChainError(
            "the VEK was issued for another TCB (SPL extensions != REPORTED_TCB)",
            check="snp.vek.spl",
            got=vek_spls,
            expected=reported,
        )

    # 5. the report signature: ECDSA P-384/SHA-384 over report[0:0x2A0], R and S little-endian
    if parsed.mask_chip_key:
        raise SignatureInvalid(
            "MASK_CHIP_KEY is set: the firmware did not sign this report", check="snp.signature", got="masked"
        )
    try:
        vek_key.verify(
            encode_dss_signature(parsed.signature_r, parsed.signature_s),
            parsed.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature as exc:
        raise SignatureInvalid("the report signature does not verify with the VEK key", check="snp.signature") from exc

    # 6. sealed result; platform = label of the pinned root that verified it
    if parsed.current_tcb != parsed.committed_tcb:
        warnings.append("provisional-firmware")
    platform: Platform = "simulation" if root.platform == "simulation" else "sev-snp"
    signer = ("sim-" if platform == "simulation" else "") + ("vlek" if is_vlek else "vcek")
    return seal_verified(
        platform=platform,
        product=product,
        measurement=parsed.measurement,
        report_data=parsed.report_data,
        debug=parsed.debug,
        signer=signer,
        anchor_sha256=root.sha256,
        evidence_sha256=hashlib.sha256(parsed.raw).digest(),
        verified_at=now,
        measurements=MappingProxyType(
            {
                "measurement": parsed.measurement,
                "host_data": parsed.host_data,
                "id_key_digest": parsed.id_key_digest,
                "author_key_digest": parsed.author_key_digest,
                "family_id": parsed.family_id,
                "image_id": parsed.image_id,
            }
        ),
        tcb=MappingProxyType(reported),
        claims=MappingProxyType(
            _claims(
                parsed,
                product=product,
                product_source=product_source,
                vek=vek,
                vek_ext=vek_ext,
                signer=signer,
                root=root,
            )
        ),
        warnings=tuple(warnings),
    )
