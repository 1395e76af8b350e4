"""Pure attestation layer (platforms Intel TDX and SGX): parse an Intel DCAP ECDSA quote. Nothing is verified.

Quote versions 3 (SGX), 4 (TDX 1.0/1.5 TD report, or SGX) and 5 (typed body: SGX report, TD report 1.0 or TD
report 1.5), attestation key type 2 (ECDSA P-256), layouts as in Intel's DCAP quote library API (docs/evidence.md §4).

Invariants:

* ``parse_quote_unverified`` reads the quote with a bounds-checked cursor: every field and every nested
  length (signature data, certification data type 6 wrapping type 5, QE auth data) must fit exactly, and any
  failure — truncation at any offset included — raises ``MalformedEvidence`` naming the failed ``check``,
  never ``IndexError``/``struct.error``/``ValueError``. Nothing it returns is trusted;
* bytes after the end of the signature data are **never** part of any check: they are returned as
  ``Quote.trailing`` (``intel_dcap`` reports them as a warning);
* reserved fields of the header and of the SGX/TD report bodies are kept, not required to be zero.

Check names (listed with the verifier's in ``intel_dcap``): ``dcap.size``, ``dcap.truncated`` (``index`` =
offset of the missing field), ``dcap.version``, ``dcap.att_key_type``, ``dcap.tee_type``, ``dcap.qe_vendor_id``,
``dcap.body_type``, ``dcap.body_size``, ``dcap.signature_data.size``, ``dcap.certification_data.type``,
``dcap.certification_data.size``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from cc_kernel.errors import MalformedEvidence

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
    "SGX_REPORT_SIZE",
    "TD10_REPORT_SIZE",
    "TD15_REPORT_SIZE",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "Quote",
    "QuoteHeader",
    "SgxReportBody",
    "TdReportBody",
    "parse_quote_unverified",
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

_SGX_DEBUG_BIT = 1
_TD_DEBUG_BIT = 0
_TD_SEPT_VE_DISABLE_BIT = 28


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


def _qe_report_and_chain(cur: _Cursor, where: str, label: str) -> tuple[bytes, bytes, bytes, bytes]:
    """The QE report, its signature, the QE auth data and certification data type 5 (the PCK chain), read in
    this order in every quote version: at the top of a v3 quote's signature data, inside type 6 from v4 on."""
    qe_report_raw = cur.take(SGX_REPORT_SIZE, "the QE report")
    qe_report_signature = cur.take(_SIG_SIZE, "the QE report signature")
    auth_size = cur.u16("the QE auth data size")
    qe_auth_data = cur.take(auth_size, "the QE auth data")
    cert_offset = cur.pos
    cert_type = cur.u16(f"{label} type")
    _expect_cert_type(cert_type, CERT_DATA_PCK_CHAIN, where, cert_offset)
    cert_size = cur.u32(f"{label} size")
    pck_chain = cur.take(cert_size, "the PCK certificate chain")
    return qe_report_raw, qe_report_signature, qe_auth_data, pck_chain


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
        qe_report_raw, qe_report_signature, qe_auth_data, pck_chain = _qe_report_and_chain(
            sig, "a version 3 quote's certification data", "the certification data"
        )
        outer_type = CERT_DATA_PCK_CHAIN
    else:
        # v4/v5: certification data type 6 = QE report certification data, wrapping the same fields
        cert_offset = sig.pos
        outer_type = sig.u16("the certification data type")
        _expect_cert_type(outer_type, CERT_DATA_QE_REPORT, "the outer certification data", cert_offset)
        outer_size = sig.u32("the certification data size")
        inner = _Cursor(raw, sig.pos, sig.pos + len(sig.take(outer_size, "the QE report certification data")))
        qe_report_raw, qe_report_signature, qe_auth_data, pck_chain = _qe_report_and_chain(
            inner, "the nested certification data", "the nested certification data"
        )
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

