"""Pure attestation layer (platforms Intel TDX and SGX): parse an Intel DCAP ECDSA quote and verify it.

Quote versions 3 (SGX), 4 (TDX 1.0/1.5 TD report, or SGX) and 5 (typed body: SGX report, TD report 1.0 or TD
report 1.5), attestation key type 2 (ECDSA P-256), layouts as in Intel's DCAP quote library API (docs/evidence.md §4).

Invariants:

* ``parse_quote_unverified`` reads the quote with a bounds-checked cursor: every field and every nested
  length (signature data, certification data type 6 wrapping type 5, QE auth data) must fit exactly, and any
  failure — truncation at any offset included — raises ``MalformedEvidence`` naming the failed ``check``,
  never ``IndexError``/``struct.error``/``ValueError``. Nothing it returns is trusted;
* bytes after the end of the signature data are **never** part of any check: they are returned as
  ``Quote.trailing``, and ``verify_quote`` reports them as the warning ``trailing-bytes`` with the count in
  the claim ``trailing_bytes`` (see "Decisions");
* ``verify_quote`` returns a sealed ``VerifiedEvidence`` only after, in this order: (1) structure, (2) the PCK
  chain from the quote walked to a PINNED root by the shared walker (the root presented in the quote must be
  byte-identical to the pinned one), (3) the PCK certificate's role and SGX extension (FMSPC, PCE-ID, TCB
  components, PCESVN), (4) the QE report signature by the PCK key, (5) QE REPORT_DATA == SHA-256(attestation
  key || QE auth data) || 32 zero bytes (constant-time), (6) the QE's identity (Intel's QE MRSIGNER and
  ISVPRODID, not a debug enclave), (7) the quote signature by the attestation key over header || body,
  (8) for TD quotes MRSIGNERSEAM == 0 and SEAM_ATTRIBUTES == 0 (Intel's TDX module; with a tcbInfo the
  collateral's values are checked instead), (9) collateral, when given (``intel_collateral``);
* the result's ``platform`` is decided by the pinned root that verified the PCK chain: the Intel SGX Root CA
  (``intel-dcap``) gives ``tdx`` (TEE type 0x81) or ``sgx-dcap`` (TEE type 0); a ``simulation`` root (tests,
  demos) gives ``simulation``. Never by a label in the evidence or its envelope;
* authenticity only: DEBUG, measurements, REPORT_DATA and TCB status are appraised by the policy.

Check names (tests assert them): ``dcap.size``, ``dcap.truncated`` (``index`` = offset of the missing field),
``dcap.version``, ``dcap.att_key_type``, ``dcap.tee_type``, ``dcap.qe_vendor_id``, ``dcap.body_type``,
``dcap.body_size``, ``dcap.signature_data.size``, ``dcap.certification_data.type``,
``dcap.certification_data.size``, ``dcap.pck_chain.pem``, ``dcap.pck_chain.length``, the walker's
``chain.*``, ``dcap.pck.role``, ``dcap.pck.key``, ``dcap.pck.extension``, ``dcap.qe_report.signature``,
``dcap.qe_report.report_data``, ``dcap.qe_report.debug``, ``dcap.qe_identity.mrsigner``,
``dcap.qe_identity.isv_prod_id``, ``dcap.attestation_key``, ``dcap.signature``, ``dcap.td.mr_signer_seam``,
``dcap.td.seam_attributes``, and the ``collateral.*`` checks of ``intel_collateral``.

Decisions:

* **Trailing bytes** are reported, not rejected, here: they are outside the signed structure and nothing
  reads them, so they cannot change what is verified; the verifier's job is to say precisely what is
  authentic. Intel's verification guidance nevertheless lists "no unexplained trailing bytes" as a *must* for a
  credible verifier, and our own enclaves never produce them, so the policy layer should reject a quote
  carrying the ``trailing-bytes`` warning unless the policy explicitly weakens that (today the appraisal
  only downgrades such a result to ``warning``).
* **Reserved fields** of the header and of the SGX/TD report bodies are not required to be zero: they are
  covered by the signature, and Intel has turned reserved space into new fields before (CONFIGID, KSS).
* **QE identity constants** (MRSIGNER, ISVPRODID 1 for the SGX QE and 2 for the TD QE, DEBUG clear) are
  checked with or without collateral; a QE identity document can only narrow them further.
* **The PCK chain** must be exactly leaf, PCK CA, root in the quote's PEM (optionally NUL-terminated, as
  some QEs write it); the presented root is compared byte for byte with the pinned one by the walker.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.anchors import PinnedRoot, TrustAnchors
from cc_kernel.attestation.evidence import Platform, VerifiedEvidence, seal_verified
from cc_kernel.attestation.platforms.intel_collateral import (
    DcapCollateral,
    TcbInputs,
    evaluate_collateral,
)
from cc_kernel.crypto import der
from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import certificate_sha256, load_certificate
from cc_kernel.errors import ChainError, MalformedEvidence, SignatureInvalid, UntrustedRoot

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "BODY_TYPE_SGX",
    "BODY_TYPE_TD10",
    "BODY_TYPE_TD15",
    "CERT_DATA_PCK_CHAIN",
    "CERT_DATA_QE_REPORT",
    "HEADER_SIZE",
    "INTEL_QE_VENDOR_ID",
    "MAX_QUOTE_SIZE",
    "QUOTE_VERSIONS",
    "SGX_EXTENSION_OID",
    "SGX_QE_ISV_PROD_ID",
    "SGX_QE_MRSIGNER",
    "SGX_REPORT_SIZE",
    "TD10_REPORT_SIZE",
    "TD15_REPORT_SIZE",
    "TD_QE_ISV_PROD_ID",
    "TD_QE_MRSIGNER",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "DcapCollateral",
    "PckExtensions",
    "Quote",
    "QuoteHeader",
    "SgxReportBody",
    "TdReportBody",
    "parse_quote_unverified",
    "pck_extensions",
    "verify_quote",
]

HEADER_SIZE = 48
QUOTE_VERSIONS = (3, 4, 5)
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648
BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
_BODY_SIZES: Mapping[int, int] = MappingProxyType(
    {BODY_TYPE_SGX: SGX_REPORT_SIZE, BODY_TYPE_TD10: TD10_REPORT_SIZE, BODY_TYPE_TD15: TD15_REPORT_SIZE}
)
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
#: Refuse larger inputs before parsing (real quotes are ~5 KB; the evidence envelope is capped at 64 KiB).
MAX_QUOTE_SIZE = 64 * 1024
_SIG_SIZE = 64
_KEY_SIZE = 64

#: The Quoting Enclaves Intel signs (Intel DCAP; seen in every vector).
TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
TD_QE_ISV_PROD_ID = 2
SGX_QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
SGX_QE_ISV_PROD_ID = 1

#: Intel's SGX extension in PCK certificates, and its sub-arcs.
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_OID_PPID = f"{SGX_EXTENSION_OID}.1"
_OID_TCB = f"{SGX_EXTENSION_OID}.2"
_OID_PCESVN = f"{_OID_TCB}.17"
_OID_CPUSVN = f"{_OID_TCB}.18"
_OID_PCEID = f"{SGX_EXTENSION_OID}.3"
_OID_FMSPC = f"{SGX_EXTENSION_OID}.4"
_OID_SGX_TYPE = f"{SGX_EXTENSION_OID}.5"
_OID_PLATFORM_INSTANCE_ID = f"{SGX_EXTENSION_OID}.6"
_OID_CONFIGURATION = f"{SGX_EXTENSION_OID}.7"
_CONFIGURATION_NAMES: Mapping[str, str] = MappingProxyType(
    {
        f"{_OID_CONFIGURATION}.1": "dynamic_platform",
        f"{_OID_CONFIGURATION}.2": "cached_keys",
        f"{_OID_CONFIGURATION}.3": "smt_enabled",
    }
)

_PCK_LEAF_CN = "Intel SGX PCK Certificate"
_PCK_CA_CNS = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
#: Roots that may verify DCAP quotes, and so the labels a result can get.
_DCAP_ROOT_PLATFORMS = ("intel-dcap", "simulation")

#: SGX ATTRIBUTES.FLAGS bits and TD_ATTRIBUTES bits reported as named flags in the claims.
_SGX_FLAGS: Mapping[str, int] = MappingProxyType(
    {"init": 0, "debug": 1, "mode64bit": 2, "provisionkey": 4, "einittokenkey": 5, "cet": 6, "kss": 7, "aexnotify": 10}
)
_TD_FLAGS: Mapping[str, int] = MappingProxyType(
    {"debug": 0, "sept_ve_disable": 28, "migratable": 29, "pks": 30, "kl": 31, "perfmon": 63}
)
_SGX_DEBUG_BIT = 1
_TD_DEBUG_BIT = 0
_TD_SEPT_VE_DISABLE_BIT = 28


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----")


def _malformed(
    message: str, check: str, *, got: object = None, expected: object = None, index: int | None = None
) -> MalformedEvidence:
    return MalformedEvidence(message, check=check, got=got, expected=expected, index=index)


# --- the parsed structures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header. ``reserved`` is bytes 8..11 (QE_SVN and PCE_SVN in version 3)."""

    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes

    @property
    def qe_svn(self) -> int | None:
        """QE_SVN (version 3 only)."""
        return int.from_bytes(self.reserved[0:2], "little") if self.version == 3 else None

    @property
    def pce_svn(self) -> int | None:
        """PCE_SVN (version 3 only)."""
        return int.from_bytes(self.reserved[2:4], "little") if self.version == 3 else None


@dataclass(frozen=True)
class SgxReportBody:
    """A 384-byte SGX REPORT body (an enclave's quote body, and every QE report)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def flags(self) -> int:
        """ATTRIBUTES.FLAGS (the first 8 bytes, little-endian)."""
        return int.from_bytes(self.attributes[0:8], "little")

    @property
    def xfrm(self) -> int:
        """ATTRIBUTES.XFRM (the last 8 bytes, little-endian)."""
        return int.from_bytes(self.attributes[8:16], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags >> _SGX_DEBUG_BIT & 1)


@dataclass(frozen=True)
class TdReportBody:
    """A TD quote body: TD report 1.0 (584 bytes) or, with ``tee_tcb_svn2``/``mr_servicetd``, 1.5 (648)."""

    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def td_attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_value >> _TD_DEBUG_BIT & 1)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_value >> _TD_SEPT_VE_DISABLE_BIT & 1)


@dataclass(frozen=True)
class Quote:
    """A structurally valid DCAP quote. Nothing in it is verified; ``trailing`` is never signed.

    ``body_kind`` is ``sgx``, ``td10`` or ``td15``; ``body_type`` is the version-5 body type field (None before
    version 5). ``signed_end`` is the length of the signed region (header and body); ``end`` the length of
    the whole quote structure (``raw[end:] == trailing``).
    """

    raw: bytes
    header: QuoteHeader
    body_type: int | None
    body_kind: Literal["sgx", "td10", "td15"]
    body: SgxReportBody | TdReportBody
    signed_end: int
    signature: bytes
    attestation_key: bytes
    certification_data_type: int
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    end: int
    trailing: bytes = field(repr=False)

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def is_tdx(self) -> bool:
        return self.header.tee_type == TEE_TYPE_TDX

    @property
    def signed_bytes(self) -> bytes:
        """Header || (v5: body type || body size ||) body: what the attestation key signed."""
        return self.raw[: self.signed_end]

    @property
    def debug(self) -> bool:
        return self.body.debug

    @property
    def report_data(self) -> bytes:
        return self.body.report_data


# --- parsing ------------------------------------------------------------------------------------------------


class _Cursor:
    """Bounds-checked reads: a read past ``limit`` is ``MalformedEvidence(dcap.truncated)``, never an error
    from slicing or ``struct``."""

    def __init__(self, data: bytes, pos: int = 0, limit: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.limit = len(data) if limit is None else limit

    def take(self, size: int, what: str) -> bytes:
        left = self.limit - self.pos
        if size > left:
            raise _malformed(
                f"the quote ends inside {what}: {size} bytes needed at offset {self.pos}, {max(left, 0)} left",
                "dcap.truncated",
                got=max(left, 0),
                expected=size,
                index=self.pos,
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


def _parse_sgx_body(raw: bytes) -> SgxReportBody:
    def u16(offset: int) -> int:
        return int.from_bytes(raw[offset : offset + 2], "little")

    return SgxReportBody(
        raw=raw,
        cpu_svn=raw[0:16],
        misc_select=int.from_bytes(raw[16:20], "little"),
        isv_ext_prod_id=raw[32:48],
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        config_id=raw[192:256],
        isv_prod_id=u16(256),
        isv_svn=u16(258),
        config_svn=u16(260),
        isv_family_id=raw[304:320],
        report_data=raw[320:384],
    )


def _parse_td_body(raw: bytes) -> TdReportBody:
    v15 = len(raw) == TD15_REPORT_SIZE
    return TdReportBody(
        raw=raw,
        tee_tcb_svn=raw[0:16],
        mr_seam=raw[16:64],
        mr_signer_seam=raw[64:112],
        seam_attributes=raw[112:120],
        td_attributes=raw[120:128],
        xfam=raw[128:136],
        mr_td=raw[136:184],
        mr_config_id=raw[184:232],
        mr_owner=raw[232:280],
        mr_owner_config=raw[280:328],
        rtmrs=(raw[328:376], raw[376:424], raw[424:472], raw[472:520]),
        report_data=raw[520:584],
        tee_tcb_svn2=raw[584:600] if v15 else None,
        mr_servicetd=raw[600:648] if v15 else None,
    )


def _parse_header(cur: _Cursor) -> QuoteHeader:
    # 1a. version, attestation key type, TEE type, QE vendor
    version = cur.u16("the header version")
    if version not in QUOTE_VERSIONS:
        raise _malformed("unsupported quote version", "dcap.version", got=version, expected=QUOTE_VERSIONS)
    att_key_type = cur.u16("the header attestation key type")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise _malformed(
            "unsupported attestation key type (only 2 = ECDSA-256 with P-256 is defined)",
            "dcap.att_key_type",
            got=att_key_type,
            expected=ATT_KEY_TYPE_ECDSA_P256,
        )
    tee_type = cur.u32("the header TEE type")
    allowed = (TEE_TYPE_SGX,) if version == 3 else (TEE_TYPE_SGX, TEE_TYPE_TDX)
    if tee_type not in allowed:
        raise _malformed(
            f"unsupported TEE type 0x{tee_type:x} for a version {version} quote",
            "dcap.tee_type",
            got=hex(tee_type),
            expected=[hex(t) for t in allowed],
        )
    reserved = cur.take(4, "the header reserved bytes")
    qe_vendor_id = cur.take(16, "the header QE vendor id")
    if not hmac.compare_digest(qe_vendor_id, INTEL_QE_VENDOR_ID):
        raise _malformed(
            "the quote was not produced by Intel's Quoting Enclave (QE vendor id)",
            "dcap.qe_vendor_id",
            got=qe_vendor_id.hex(),
            expected=INTEL_QE_VENDOR_ID.hex(),
        )
    user_data = cur.take(20, "the header user data")
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        reserved=reserved,
        qe_vendor_id=qe_vendor_id,
        user_data=user_data,
    )


def _parse_body(cur: _Cursor, header: QuoteHeader) -> tuple[int | None, Literal["sgx", "td10", "td15"], bytes]:
    # 1b. the body: its kind follows from version and TEE type (v5: from the typed body header)
    tdx = header.tee_type == TEE_TYPE_TDX
    if header.version < 5:
        size = TD10_REPORT_SIZE if tdx else SGX_REPORT_SIZE
        return None, ("td10" if tdx else "sgx"), cur.take(size, "the report body")
    body_type = cur.u16("the body type")
    wanted = (BODY_TYPE_TD10, BODY_TYPE_TD15) if tdx else (BODY_TYPE_SGX,)
    if body_type not in wanted:
        raise _malformed(
            f"body type {body_type} does not fit TEE type 0x{header.tee_type:x}",
            "dcap.body_type",
            got=body_type,
            expected=wanted,
        )
    body_size = cur.u32("the body size")
    if body_size != _BODY_SIZES[body_type]:
        raise _malformed(
            f"a type {body_type} body is {_BODY_SIZES[body_type]} bytes",
            "dcap.body_size",
            got=body_size,
            expected=_BODY_SIZES[body_type],
        )
    kind: Literal["sgx", "td10", "td15"] = (
        "sgx" if body_type == BODY_TYPE_SGX else ("td10" if body_type == BODY_TYPE_TD10 else "td15")
    )
    return body_type, kind, cur.take(body_size, "the report body")


def _expect_cert_type(got: int, want: int, where: str, offset: int) -> None:
    if got != want:
        names = {5: "PCK certificate chain", 6: "QE report certification data"}
        raise _malformed(
            f"{where} must be certification data type {want} ({names[want]}), got type {got}",
            "dcap.certification_data.type",
            got=got,
            expected=want,
            index=offset,
        )


def _expect_exact_end(cur: _Cursor, what: str) -> None:
    if cur.pos != cur.limit:
        raise _malformed(
            f"{what} leaves {cur.limit - cur.pos} unexplained bytes inside its declared size",
            "dcap.certification_data.size",
            got=cur.limit - cur.pos,
            expected=0,
            index=cur.pos,
        )


def parse_quote_unverified(quote: bytes) -> Quote:
    """Parse and structurally check a DCAP quote (v3, v4, v5). Nothing in the result is verified.

    Bytes after the signature data are kept in ``Quote.trailing`` (never signed, never used by any check).

    Raises:
        MalformedEvidence: the quote breaks a structural rule (see the module docstring for ``check`` names).
        TypeError: ``quote`` is not bytes-like.
    """
    if not isinstance(quote, bytes | bytearray | memoryview):
        raise TypeError(f"quote must be bytes, not {type(quote).__name__}")
    raw = bytes(quote)
    if len(raw) > MAX_QUOTE_SIZE:
        raise _malformed("the quote is too large", "dcap.size", got=len(raw), expected=MAX_QUOTE_SIZE)
    cur = _Cursor(raw)
    # 1a. header
    header = _parse_header(cur)
    # 1b. body
    body_type, kind, body_raw = _parse_body(cur, header)
    body: SgxReportBody | TdReportBody = _parse_sgx_body(body_raw) if kind == "sgx" else _parse_td_body(body_raw)
    signed_end = cur.pos
    # 1c. signature data: declared length, then signature, attestation key and certification data
    sig_len = cur.u32("the signature data length")
    sig_start = cur.pos
    if sig_len > len(raw) - sig_start:
        raise _malformed(
            f"the signature data length ({sig_len}) runs past the end of the quote ({len(raw) - sig_start} left)",
            "dcap.signature_data.size",
            got=sig_len,
            expected=f"<= {len(raw) - sig_start}",
            index=sig_start - 4,
        )
    sig = _Cursor(raw, sig_start, sig_start + sig_len)
    signature = sig.take(_SIG_SIZE, "the quote signature")
    attestation_key = sig.take(_KEY_SIZE, "the attestation key")
    if header.version == 3:
        # v3: QE report, its signature, QE auth data, then certification data type 5
        qe_report_raw = sig.take(SGX_REPORT_SIZE, "the QE report")
        qe_report_signature = sig.take(_SIG_SIZE, "the QE report signature")
        auth_size = sig.u16("the QE auth data size")
        qe_auth_data = sig.take(auth_size, "the QE auth data")
        cert_offset = sig.pos
        cert_type = sig.u16("the certification data type")
        _expect_cert_type(cert_type, CERT_DATA_PCK_CHAIN, "a version 3 quote's certification data", cert_offset)
        cert_size = sig.u32("the certification data size")
        pck_chain = sig.take(cert_size, "the PCK certificate chain")
        outer_type = cert_type
    else:
        # v4/v5: certification data type 6 = QE report certification data, wrapping type 5
        cert_offset = sig.pos
        outer_type = sig.u16("the certification data type")
        _expect_cert_type(outer_type, CERT_DATA_QE_REPORT, "the outer certification data", cert_offset)
        outer_size = sig.u32("the certification data size")
        inner = _Cursor(raw, sig.pos, sig.pos + len(sig.take(outer_size, "the QE report certification data")))
        qe_report_raw = inner.take(SGX_REPORT_SIZE, "the QE report")
        qe_report_signature = inner.take(_SIG_SIZE, "the QE report signature")
        auth_size = inner.u16("the QE auth data size")
        qe_auth_data = inner.take(auth_size, "the QE auth data")
        cert_offset = inner.pos
        cert_type = inner.u16("the nested certification data type")
        _expect_cert_type(cert_type, CERT_DATA_PCK_CHAIN, "the nested certification data", cert_offset)
        cert_size = inner.u32("the nested certification data size")
        pck_chain = inner.take(cert_size, "the PCK certificate chain")
        _expect_exact_end(inner, "the QE report certification data (type 6)")
    _expect_exact_end(sig, "the signature data")
    end = sig.limit
    return Quote(
        raw=raw,
        header=header,
        body_type=body_type,
        body_kind=kind,
        body=body,
        signed_end=signed_end,
        signature=signature,
        attestation_key=attestation_key,
        certification_data_type=outer_type,
        qe_report=_parse_sgx_body(qe_report_raw),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain,
        end=end,
        trailing=raw[end:],
    )


def _split_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The PEM certificates of certification data type 5, in order; only whitespace may surround them (and
    NUL terminators at the very end)."""
    text = pem.rstrip(b"\x00")
    blocks = list(_PEM_BLOCK.finditer(text))
    cursor = 0
    for block in [*blocks, None]:
        gap = text[cursor : block.start() if block is not None else len(text)]
        if gap.strip():
            raise _malformed(
                "the PCK certificate chain holds something other than PEM certificates",
                "dcap.pck_chain.pem",
                got=gap[:64],
                expected="PEM CERTIFICATE blocks",
            )
        if block is not None:
            cursor = block.end()
    if len(blocks) != 3:
        raise _malformed(
            "the PCK certificate chain must be the PCK certificate, its CA and the root, in that order",
            "dcap.pck_chain.length",
            got=len(blocks),
            expected=3,
        )
    certs: list[x509.Certificate] = []
    for index, block in enumerate(blocks):
        try:
            cert = load_certificate(block.group(0))
            _parse_lazy_fields(cert)
        except MalformedEvidence as exc:
            raise _malformed(
                f"PCK chain certificate {index} does not parse: {exc.message}", "dcap.pck_chain.pem", index=index
            ) from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise _malformed(
                f"PCK chain certificate {index} does not parse: {exc}", "dcap.pck_chain.pem", index=index
            ) from exc
        certs.append(cert)
    return tuple(certs)


def _parse_lazy_fields(cert: x509.Certificate) -> None:
    """``cryptography`` decodes names, validity, key and algorithms on first access: do it now, so a corrupt
    field is ``MalformedEvidence`` here rather than a ``ValueError`` from inside the chain walker."""
    _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
    _ = (cert.signature_algorithm_oid, cert.signature_hash_algorithm, cert.public_key())


# --- the PCK certificate's SGX extension (read with the strict DER reader of crypto.der) ---------------------


@dataclass(frozen=True)
class PckExtensions:
    """Intel's SGX extension (``1.2.840.113741.1.13.1``) of a PCK certificate."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    configuration: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))


_PCK_DER = der.DerReader("dcap.pck.extension", "PCK SGX extension")


def _der_expect(item: tuple[int, bytes], tag: int, what: str) -> bytes:
    if item[0] != tag:
        raise _PCK_DER.fail(f"{what} has DER tag 0x{item[0]:02x}, expected 0x{tag:02x}")
    return item[1]


def _der_octets(item: tuple[int, bytes], size: int, what: str) -> bytes:
    value = _der_expect(item, der.OCTET_STRING, what)
    if len(value) != size:
        raise _PCK_DER.fail(f"{what} must be {size} bytes, got {len(value)}", value.hex())
    return value


def _der_pairs(content: bytes, what: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE { OID, value } as OID -> value; duplicate OIDs are malformed."""
    pairs: dict[str, tuple[int, bytes]] = {}
    for item in _PCK_DER.items(content):
        inner = _PCK_DER.items(_der_expect(item, der.SEQUENCE, f"an entry of {what}"))
        if len(inner) != 2:
            raise _PCK_DER.fail(f"an entry of {what} must be (OID, value), has {len(inner)} parts")
        oid = _PCK_DER.object_identifier(_der_expect(inner[0], der.OBJECT_IDENTIFIER, f"an entry name of {what}"))
        if oid in pairs:
            raise _PCK_DER.fail(f"{oid} appears twice in {what}", oid)
        pairs[oid] = inner[1]
    return pairs


def _required(pairs: Mapping[str, tuple[int, bytes]], oid: str, what: str) -> tuple[int, bytes]:
    item = pairs.get(oid)
    if item is None:
        raise _PCK_DER.fail(f"{what} ({oid}) is missing")
    return item


def pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Decode Intel's SGX extension of a PCK certificate (unknown entries are ignored).

    Raises:
        ChainError: ``dcap.pck.extension``: the certificate has no SGX extension (it is not a PCK).
        MalformedEvidence: ``dcap.pck.extension``: the extension is not the DER Intel defines.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound as exc:
        raise ChainError(
            "the PCK certificate has no SGX extension (1.2.840.113741.1.13.1)",
            check="dcap.pck.extension",
            expected=SGX_EXTENSION_OID,
        ) from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - cryptography does not know it
        raise _PCK_DER.fail("unexpected decoded extension type")
    raw = value.value
    content = _PCK_DER.single(raw, der.SEQUENCE)
    top = _der_pairs(content, "the SGX extension")
    tcb = _der_pairs(_der_expect(_required(top, _OID_TCB, "TCB"), der.SEQUENCE, "TCB"), "the TCB entry")
    components = tuple(
        _PCK_DER.unsigned(
            _der_expect(_required(tcb, f"{_OID_TCB}.{i}", f"TCB component {i}"), der.INTEGER, f"TCB component {i}"),
            f"TCB component {i}",
            0xFF,
        )
        for i in range(1, 17)
    )
    pcesvn_item = _der_expect(_required(tcb, _OID_PCESVN, "PCESVN"), der.INTEGER, "PCESVN")
    pcesvn = _PCK_DER.unsigned(pcesvn_item, "PCESVN", 0xFFFF)
    cpusvn = _der_octets(_required(tcb, _OID_CPUSVN, "CPUSVN"), 16, "CPUSVN")
    sgx_type_item = _required(top, _OID_SGX_TYPE, "SGX type")
    if sgx_type_item[0] not in (der.ENUMERATED, der.INTEGER):
        raise _PCK_DER.fail("SGX type must be an ENUMERATED", hex(sgx_type_item[0]))
    instance = top.get(_OID_PLATFORM_INSTANCE_ID)
    configuration: dict[str, bool] = {}
    config_item = top.get(_OID_CONFIGURATION)
    if config_item is not None:
        for oid, item in _der_pairs(_der_expect(config_item, der.SEQUENCE, "configuration"), "configuration").items():
            flag = _der_expect(item, der.BOOLEAN, f"configuration {oid}")
            if flag not in (b"\x00", b"\xff"):
                raise _PCK_DER.fail(f"configuration {oid} is not a DER BOOLEAN", flag.hex())
            configuration[_CONFIGURATION_NAMES.get(oid, oid)] = flag == b"\xff"
    return PckExtensions(
        ppid=_der_octets(_required(top, _OID_PPID, "PPID"), 16, "PPID"),
        tcb_components=components,
        pcesvn=pcesvn,
        cpusvn=cpusvn,
        pce_id=_der_octets(_required(top, _OID_PCEID, "PCE-ID"), 2, "PCE-ID"),
        fmspc=_der_octets(_required(top, _OID_FMSPC, "FMSPC"), 6, "FMSPC"),
        sgx_type=_PCK_DER.unsigned(sgx_type_item[1], "SGX type", 0xFF),
        platform_instance_id=None if instance is None else _der_octets(instance, 16, "platform instance id"),
        configuration=MappingProxyType(configuration),
    )


# --- verification -------------------------------------------------------------------------------------------


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def _p256_key(cert: x509.Certificate, check: str, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ChainError(f"the {what} key is not ECDSA P-256", check=check, got=type(key).__name__, expected="P-256")
    return key


def _raw_signature(raw: bytes) -> bytes:
    """DER-encode a 64-byte big-endian r || s signature."""
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _verify_p256(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(_raw_signature(signature), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _flags(value: int, table: Mapping[str, int]) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for name, bit in table.items()}


def _sgx_claims(body: SgxReportBody) -> dict[str, object]:
    return {
        "cpu_svn": body.cpu_svn.hex(),
        "misc_select": body.misc_select,
        "isv_ext_prod_id": body.isv_ext_prod_id.hex(),
        "attributes": body.attributes.hex(),
        "attributes_flags": _flags(body.flags, _SGX_FLAGS),
        "xfrm": hex(body.xfrm),
        "mr_enclave": body.mr_enclave.hex(),
        "mr_signer": body.mr_signer.hex(),
        "config_id": body.config_id.hex(),
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "config_svn": body.config_svn,
        "isv_family_id": body.isv_family_id.hex(),
        "report_data": body.report_data.hex(),
    }


def _td_claims(body: TdReportBody) -> dict[str, object]:
    return {
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "tee_tcb_svn2": None if body.tee_tcb_svn2 is None else body.tee_tcb_svn2.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mr_signer_seam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes_value,
        "td_attributes_hex": body.td_attributes.hex(),
        "td_attributes_flags": _flags(body.td_attributes_value, _TD_FLAGS),
        "sept_ve_disable": body.sept_ve_disable,
        "xfam": body.xfam.hex(),
        "mr_td": body.mr_td.hex(),
        "mr_config_id": body.mr_config_id.hex(),
        "mr_owner": body.mr_owner.hex(),
        "mr_owner_config": body.mr_owner_config.hex(),
        **{f"rtmr{i}": rtmr.hex() for i, rtmr in enumerate(body.rtmrs)},
        "mr_servicetd": None if body.mr_servicetd is None else body.mr_servicetd.hex(),
        "report_data": body.report_data.hex(),
    }


def _pck_claims(pck: x509.Certificate, ca: x509.Certificate, ext: PckExtensions) -> dict[str, object]:
    return {
        "subject": pck.subject.rfc4514_string(),
        "issuer": pck.issuer.rfc4514_string(),
        "ca": _common_name(ca),
        "serial": format(pck.serial_number, "x"),
        "not_before": pck.not_valid_before_utc.isoformat(),
        "not_after": pck.not_valid_after_utc.isoformat(),
        "sha256": certificate_sha256(pck).hex(),
        "fmspc": ext.fmspc.hex(),
        "pce_id": ext.pce_id.hex(),
        "pcesvn": ext.pcesvn,
        "cpusvn": ext.cpusvn.hex(),
        "sgx_tcb_components": list(ext.tcb_components),
        "sgx_type": ext.sgx_type,
        "ppid": ext.ppid.hex(),
        "platform_instance_id": None if ext.platform_instance_id is None else ext.platform_instance_id.hex(),
        "configuration": dict(ext.configuration),
    }


def _check_qe(parsed: Quote) -> None:
    """Step 6: the QE is Intel's (MRSIGNER, ISVPRODID for this kind of quote) and not a debug enclave."""
    qe = parsed.qe_report
    want_signer, want_prod = (
        (TD_QE_MRSIGNER, TD_QE_ISV_PROD_ID) if parsed.is_tdx else (SGX_QE_MRSIGNER, SGX_QE_ISV_PROD_ID)
    )
    kind = "TD QE" if parsed.is_tdx else "SGX QE"
    if not hmac.compare_digest(qe.mr_signer, want_signer):
        raise ChainError(
            f"the quoting enclave is not Intel's {kind} (MRSIGNER)",
            check="dcap.qe_identity.mrsigner",
            got=qe.mr_signer.hex(),
            expected=want_signer.hex(),
        )
    if qe.isv_prod_id != want_prod:
        raise ChainError(
            f"the quoting enclave is not Intel's {kind} (ISVPRODID)",
            check="dcap.qe_identity.isv_prod_id",
            got=qe.isv_prod_id,
            expected=want_prod,
        )
    if qe.debug:
        raise ChainError(
            "the quoting enclave runs in DEBUG mode: its attestation key is not protected",
            check="dcap.qe_report.debug",
            got=qe.attributes.hex(),
            expected="ATTRIBUTES.DEBUG clear",
        )


def verify_quote(
    quote: bytes,
    *,
    anchors: TrustAnchors,
    now: datetime,
    collateral: DcapCollateral | None = None,
) -> VerifiedEvidence:
    """Verify a DCAP quote's authenticity (docs/evidence.md §4) at ``now`` and return it sealed.

    ``anchors`` holds the pinned roots; only ``intel-dcap`` roots (labels ``tdx``/``sgx-dcap``) and
    ``simulation`` roots (label ``simulation``) are consulted. ``collateral`` (Intel tcbInfo, QE identity,
    CRLs: see ``intel_collateral``) adds revocation and TCB status; without it the result carries the
    warning ``tcb-collateral-missing`` and ``tcb_status`` None.

    Raises:
        MalformedEvidence: the quote (or its PCK chain / extension) breaks a structural rule.
        UntrustedRoot: ``chain.anchor``: the chain in the quote does not end at a pinned root.
        ChainError / CertificateExpired / SignatureInvalid: the PCK chain fails (``chain.*``), the PCK is not a
            PCK (``dcap.pck.*``), the QE is not Intel's (``dcap.qe_identity.*``), a binding breaks.
        SignatureInvalid: ``dcap.qe_report.signature`` or ``dcap.signature``.
        StaleEvidence / ChainError / SignatureInvalid: ``collateral.*`` (see ``intel_collateral``).
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    # 1. structure
    parsed = parse_quote_unverified(quote)
    pck, pck_ca, presented_root = _split_pck_chain(parsed.pck_chain_pem)

    # 2. the PCK chain ends at a pinned root (the walker compares the presented root with it byte for byte)
    pinned = anchors.by_sha256(platforms=_DCAP_ROOT_PLATFORMS)
    chain = walk_chain(pck, [pck_ca, presented_root], anchors=pinned, now=now)
    root = anchors.root_for_sha256(chain.anchor_sha256)
    if root is None:  # pragma: no cover - walk_chain only succeeds with one of these anchors
        raise UntrustedRoot("no pinned root verified the PCK chain", check="chain.anchor")

    # 3. the leaf is a PCK certificate issued by a PCK CA, with a P-256 key and Intel's SGX extension
    leaf_cn, ca_cn = _common_name(pck), _common_name(pck_ca)
    if leaf_cn != _PCK_LEAF_CN or ca_cn not in _PCK_CA_CNS:
        raise ChainError(
            "the quote's certificate chain is not a PCK certificate issued by an Intel PCK CA",
            check="dcap.pck.role",
            got=[leaf_cn, ca_cn],
            expected=[_PCK_LEAF_CN, list(_PCK_CA_CNS)],
        )
    pck_key = _p256_key(pck, "dcap.pck.key", "PCK certificate")
    ext = pck_extensions(pck)

    # 4. the QE report is signed by the PCK key
    qe = parsed.qe_report
    if not _verify_p256(pck_key, parsed.qe_report_signature, qe.raw):
        raise SignatureInvalid("the QE report is not signed by the PCK key", check="dcap.qe_report.signature")

    # 5. the QE report binds the attestation key: REPORT_DATA == SHA-256(key || auth data) || 32 zero bytes
    want_report_data = hashlib.sha256(parsed.attestation_key + parsed.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(qe.report_data, want_report_data):
        raise ChainError(
            "the QE report does not bind this attestation key and QE auth data",
            check="dcap.qe_report.report_data",
            got=qe.report_data.hex(),
            expected=want_report_data.hex(),
        )

    # 6. the QE is Intel's quoting enclave, not in debug mode
    _check_qe(parsed)

    # 7. the quote signature: ECDSA P-256/SHA-256 by the attestation key over header || body
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + parsed.attestation_key)
    except ValueError as exc:
        raise _malformed(
            "the attestation key is not a point on P-256", "dcap.attestation_key", got=parsed.attestation_key.hex()
        ) from exc
    if not _verify_p256(att_key, parsed.signature, parsed.signed_bytes):
        raise SignatureInvalid("the quote signature does not verify with the attestation key", check="dcap.signature")

    # 8. TD quotes: Intel's TDX module (constants; a tcbInfo narrows them in step 9)
    body = parsed.body
    if isinstance(body, TdReportBody) and (collateral is None or collateral.tcb_info is None):
        if any(body.mr_signer_seam):
            raise ChainError(
                "MRSIGNERSEAM is not zero: the TDX module is not Intel's",
                check="dcap.td.mr_signer_seam",
                got=body.mr_signer_seam.hex(),
                expected="00" * 48,
            )
        if any(body.seam_attributes):
            raise ChainError(
                "SEAM_ATTRIBUTES is not zero: the TDX module runs in an unsupported (e.g. debug) mode",
                check="dcap.td.seam_attributes",
                got=body.seam_attributes.hex(),
                expected="00" * 8,
            )

    # 9. collateral: revocation, TCB status, QE identity
    warnings: list[str] = []
    if collateral is None:
        warnings.append("tcb-collateral-missing")
        tcb_status: str | None = None
        tcb_claims: Mapping[str, object] = {"evaluated": False}
    else:
        outcome = evaluate_collateral(
            collateral,
            _tcb_inputs(parsed, pck, pck_ca, ext),
            root=root.certificate,
            now=now,
        )
        tcb_status = outcome.tcb_status
        tcb_claims = outcome.claims
        warnings.extend(outcome.warnings)
    if parsed.trailing:
        warnings.append("trailing-bytes")

    # 10. sealed result; platform = label of the pinned root that verified the PCK chain
    platform: Platform = "simulation" if root.platform == "simulation" else ("tdx" if parsed.is_tdx else "sgx-dcap")
    return seal_verified(
        platform=platform,
        product="Intel TDX" if parsed.is_tdx else "Intel SGX",
        measurement=body.mr_td if isinstance(body, TdReportBody) else body.mr_enclave,
        report_data=body.report_data,
        debug=body.debug,
        signer="pck",
        anchor_sha256=root.sha256,
        evidence_sha256=hashlib.sha256(parsed.raw).digest(),
        verified_at=now,
        measurements=MappingProxyType(_measurements(body)),
        tcb=MappingProxyType(_tcb(parsed, ext)),
        tcb_status=tcb_status,
        claims=MappingProxyType(_claims(parsed, pck=pck, pck_ca=pck_ca, ext=ext, root=root, tcb_claims=tcb_claims)),
        warnings=tuple(warnings),
    )


def _tcb_inputs(parsed: Quote, pck: x509.Certificate, pck_ca: x509.Certificate, ext: PckExtensions) -> TcbInputs:
    body = parsed.body
    td = body if isinstance(body, TdReportBody) else None
    qe = parsed.qe_report
    return TcbInputs(
        is_tdx=parsed.is_tdx,
        pck=pck,
        pck_ca=pck_ca,
        fmspc=ext.fmspc,
        pce_id=ext.pce_id,
        sgx_components=ext.tcb_components,
        pcesvn=ext.pcesvn,
        qe_mrsigner=qe.mr_signer,
        qe_isv_prod_id=qe.isv_prod_id,
        qe_isv_svn=qe.isv_svn,
        qe_misc_select=qe.misc_select,
        qe_attributes=qe.attributes,
        tee_tcb_svn=None if td is None else td.tee_tcb_svn,
        tee_tcb_svn2=None if td is None else td.tee_tcb_svn2,
        mr_signer_seam=None if td is None else td.mr_signer_seam,
        seam_attributes=None if td is None else td.seam_attributes,
    )


def _measurements(body: SgxReportBody | TdReportBody) -> dict[str, bytes]:
    if isinstance(body, SgxReportBody):
        return {
            "mrenclave": body.mr_enclave,
            "mrsigner": body.mr_signer,
            "config_id": body.config_id,
            "isv_ext_prod_id": body.isv_ext_prod_id,
            "isv_family_id": body.isv_family_id,
        }
    out = {
        "mr_td": body.mr_td,
        "mr_seam": body.mr_seam,
        "mr_signer_seam": body.mr_signer_seam,
        "mr_config_id": body.mr_config_id,
        "mr_owner": body.mr_owner,
        "mr_owner_config": body.mr_owner_config,
        **{f"rtmr{i}": rtmr for i, rtmr in enumerate(body.rtmrs)},
    }
    if body.mr_servicetd is not None:
        out["mr_servicetd"] = body.mr_servicetd
    return out


def _tcb(parsed: Quote, ext: PckExtensions) -> dict[str, int]:
    tcb = {"pcesvn": ext.pcesvn, "qe_isvsvn": parsed.qe_report.isv_svn}
    body = parsed.body
    if isinstance(body, TdReportBody):
        tcb.update(
            tdx_module_svn=body.tee_tcb_svn[0],
            tdx_module_version=body.tee_tcb_svn[1],
            tdx_late_ucode=body.tee_tcb_svn[2],
        )
    return tcb


def _claims(
    parsed: Quote,
    *,
    pck: x509.Certificate,
    pck_ca: x509.Certificate,
    ext: PckExtensions,
    root: PinnedRoot,
    tcb_claims: Mapping[str, object],
) -> dict[str, object]:
    header = parsed.header
    body = parsed.body
    qe = parsed.qe_report
    return {
        "format": "intel-dcap-quote",
        "version": header.version,
        "att_key_type": header.att_key_type,
        "tee_type": header.tee_type,
        "tee_type_hex": hex(header.tee_type),
        "body_type": parsed.body_type,
        "body_kind": parsed.body_kind,
        "header_reserved": header.reserved.hex(),
        "qe_vendor_id": header.qe_vendor_id.hex(),
        "user_data": header.user_data.hex(),
        "signed_length": parsed.signed_end,
        "quote_length": parsed.end,
        "trailing_bytes": len(parsed.trailing),
        **(_td_claims(body) if isinstance(body, TdReportBody) else _sgx_claims(body)),
        "debug": body.debug,
        "attestation_key": parsed.attestation_key.hex(),
        "qe": {
            "mr_enclave": qe.mr_enclave.hex(),
            "mr_signer": qe.mr_signer.hex(),
            "isv_prod_id": qe.isv_prod_id,
            "isv_svn": qe.isv_svn,
            "misc_select": qe.misc_select,
            "attributes": qe.attributes.hex(),
            "cpu_svn": qe.cpu_svn.hex(),
            "auth_data": parsed.qe_auth_data.hex(),
            "header_qe_svn": header.qe_svn,
            "header_pce_svn": header.pce_svn,
        },
        "pck": _pck_claims(pck, pck_ca, ext),
        "tcb": dict(tcb_claims),
        "anchor": {"platform": root.platform, "product": root.product, "sha256": root.sha256.hex()},
    }
