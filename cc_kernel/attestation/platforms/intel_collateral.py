"""Pure attestation layer (Intel DCAP collateral): load tcbInfo, QE identity, CRLs and the TCB Signing chain.

Collateral is what Intel's PCS (or a PCCS cache) serves for a platform: the TCB Info JSON for its FMSPC, the
QE identity JSON, the PCK CRL of the PCK's CA (Platform or Processor CA), the Intel SGX Root CA CRL, and the
"Intel SGX TCB Signing" certificate chain (``TCB-Info-Issuer-Chain`` header) that signs both JSON documents.
All of it is signed, so it may travel over an untrusted channel (the evidence envelope, a cache directory).
Nothing here is verified: ``intel_tcb.evaluate_collateral`` verifies the collateral and computes the TCB status.

Invariants:

* loading (``load_collateral``, ``load_tcb_info``, ``load_qe_identity``, ``load_crl``) is strict and pure:
  every malformed input raises ``MalformedEvidence`` (``collateral.<item>.*``), never a bare ``ValueError``
  or ``KeyError``; duplicate JSON keys, NaN/Infinity and wrong hex lengths are malformed. The signed bytes of
  a JSON document are **the exact text of its ``"tcbInfo"`` / ``"enclaveIdentity"`` value as served** (cut
  out of the input, never re-serialised); the signature is hex r || s, ECDSA P-256 / SHA-256;
* a status in a tcbInfo or QE identity level must be one of ``TCB_STATUSES``.

Check names (loading here, verification in ``intel_tcb``): ``collateral.<item>.size``, ``.utf8``, ``.json``,
``.field`` (``<item>`` = ``tcb_info``, ``qe_identity``, ``pck_crl``, ``root_crl``),
``collateral.tcb_signing_chain.pem``, ``collateral.crl.parse``,
``collateral.tcb_signing.chain.*`` (the walker's checks), ``collateral.tcb_signing.role``,
``collateral.tcb_signing.revoked``, ``collateral.pck_ca.revoked``, ``collateral.pck.revoked``,
``collateral.<crl>.issuer``, ``collateral.<crl>.signature``, ``collateral.<item>.window``,
``collateral.tcb_info.signature``, ``collateral.tcb_info.id``, ``collateral.tcb_info.fmspc``,
``collateral.tcb_info.pce_id``, ``collateral.tdx_module.mrsigner``, ``collateral.tdx_module.attributes``,
``collateral.qe_identity.signature``, ``collateral.qe_identity.id``, ``collateral.qe_identity.mrsigner``,
``collateral.qe_identity.isv_prod_id``, ``collateral.qe_identity.misc_select``,
``collateral.qe_identity.attributes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from cc_kernel.attestation.platforms.intel_status import TCB_STATUSES
from cc_kernel.crypto.x509load import load_certificate_bundle
from cc_kernel.errors import (
    MalformedEvidence,
)

__all__ = [
    "COLLATERAL_ITEMS",
    "MAX_COLLATERAL_SIZE",
    "NO_MATCHING_TCB_LEVEL",
    "TCB_STATUSES",
    "DcapCollateral",
    "IsvTcbLevel",
    "QeIdentity",
    "SignedDocument",
    "SignedJson",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "load_collateral",
    "load_crl",
    "load_qe_identity",
    "load_tcb_info",
    ]

#: The keys ``load_collateral`` understands (file contents as served by Intel PCS / a PCCS).
COLLATERAL_ITEMS: Final = ("tcb_info", "qe_identity", "pck_crl", "root_crl", "tcb_signing_chain")
#: Refuse a collateral item larger than this before parsing (a tcbInfo is a few KB, a PCK CRL tens of KB).
MAX_COLLATERAL_SIZE: Final = 1024 * 1024

#: The outcome when the collateral knows no level for this platform / module / QE (Intel: TCB not supported).
NO_MATCHING_TCB_LEVEL: Final = "NoMatchingTcbLevel"

_SGX_COMPONENTS = 16
_TDX_COMPONENTS = 16


def _malformed(item: str, message: str, *, check: str = "json", got: object = None) -> MalformedEvidence:
    return MalformedEvidence(f"{item}: {message}", check=f"collateral.{item}.{check}", got=got)


# --- the loaded collateral ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedJson:
    """A signed Intel JSON document: ``body`` is the exact signed text, ``signature`` the 64-byte r || s."""

    body: bytes
    signature: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class TcbLevel:
    """One ``tcbLevels`` entry of a tcbInfo (``tdx_components`` only for ``id`` TDX)."""

    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: str | None
    status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class IsvTcbLevel:
    """One ``tcbLevels`` entry of a QE identity or a TDX module identity: status by ISVSVN."""

    isvsvn: int
    tcb_date: str | None
    status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TdxModuleIdentity:
    """``tdxModule`` (id empty, no levels) or one ``tdxModuleIdentities`` entry (e.g. ``TDX_01``)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[IsvTcbLevel, ...] = ()


@dataclass(frozen=True)
class SignedDocument:
    """What Intel's signed JSON documents (TCB Info, QE identity) share: the signed text, the id and version,
    the ``issueDate`` .. ``nextUpdate`` window and the TCB evaluation data number."""

    signed: SignedJson
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int


@dataclass(frozen=True)
class TcbInfo(SignedDocument):
    """A parsed (not yet verified) TCB Info document."""

    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity(SignedDocument):
    """A parsed (not yet verified) QE identity (enclave identity) document."""

    misc_select: int
    misc_select_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    tcb_levels: tuple[IsvTcbLevel, ...]


@dataclass(frozen=True)
class DcapCollateral:
    """Intel collateral for one platform, parsed but not verified (``evaluate_collateral`` verifies it).

    Every item is optional, but a tcbInfo or QE identity needs ``tcb_signing_chain`` (TCB Signing certificate
    first, root last). ``unsafe_accept_expired_tcb_signing_cert`` is a named weakening (module docstring).

    Raises:
        ValueError: no item at all, or a JSON document without its signing chain.
    """

    tcb_info: TcbInfo | None = None
    qe_identity: QeIdentity | None = None
    pck_crl: x509.CertificateRevocationList | None = None
    root_crl: x509.CertificateRevocationList | None = None
    tcb_signing_chain: tuple[x509.Certificate, ...] = ()
    unsafe_accept_expired_tcb_signing_cert: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tcb_signing_chain", tuple(self.tcb_signing_chain))
        if self.tcb_info is None and self.qe_identity is None and self.pck_crl is None and self.root_crl is None:
            raise ValueError("DcapCollateral needs at least one of tcb_info, qe_identity, pck_crl, root_crl")
        if (self.tcb_info is not None or self.qe_identity is not None) and len(self.tcb_signing_chain) < 2:
            raise ValueError("a tcbInfo or QE identity needs tcb_signing_chain (TCB Signing certificate, then root)")

    @property
    def missing(self) -> tuple[str, ...]:
        """The collateral items needed for a TCB status that are absent, in ``COLLATERAL_ITEMS`` order."""
        present = {
            "tcb_info": self.tcb_info,
            "qe_identity": self.qe_identity,
            "pck_crl": self.pck_crl,
            "root_crl": self.root_crl,
        }
        return tuple(name for name, value in present.items() if value is None)


# --- loading ------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)
_WHITESPACE = " \t\n\r"


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _signed_json(data: bytes, item: str, key: str) -> tuple[SignedJson, dict[str, Any]]:
    """Split ``{"<key>": {...}, "signature": "<hex>"}`` into the exact signed text and the parsed value."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{item} must be bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > MAX_COLLATERAL_SIZE:
        raise _malformed(item, "too large", check="size", got=len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(item, f"not UTF-8 ({exc.reason} at byte {exc.start})", check="utf8") from exc
    spans: dict[str, tuple[int, int]] = {}
    values: dict[str, Any] = {}
    try:
        pos = _skip_ws(text, 0)
        if not text.startswith("{", pos):
            raise ValueError("the document is not a JSON object")
        pos = _skip_ws(text, pos + 1)
        while not text.startswith("}", pos):
            name, pos = _DECODER.raw_decode(text, pos)
            if not isinstance(name, str):
                raise ValueError("an object key is not a string")
            pos = _skip_ws(text, pos)
            if not text.startswith(":", pos):
                raise ValueError(f"':' expected at {pos}")
            start = _skip_ws(text, pos + 1)
            value, end = _DECODER.raw_decode(text, start)
            if name in spans:
                raise ValueError(f"duplicate key {name!r}")
            spans[name], values[name] = (start, end), value
            pos = _skip_ws(text, end)
            if text.startswith(",", pos):
                pos = _skip_ws(text, pos + 1)
                if text.startswith("}", pos):
                    raise ValueError("trailing comma")
            elif not text.startswith("}", pos):
                raise ValueError(f"',' or '}}' expected at {pos}")
        if _skip_ws(text, pos + 1) != len(text):
            raise ValueError("text after the JSON object")
    except (ValueError, RecursionError) as exc:
        raise _malformed(item, f"not a valid JSON document: {exc}") from exc
    if set(spans) != {key, "signature"}:
        raise _malformed(item, f'the document must have exactly the keys "{key}" and "signature"', got=sorted(spans))
    body = values[key]
    if not isinstance(body, dict):
        raise _malformed(item, f'"{key}" must be a JSON object')
    signature = _hex(values, "signature", 64, item, key)
    start, end = spans[key]
    return SignedJson(body=text[start:end].encode("utf-8"), signature=signature, raw=raw), body


def _field(obj: Mapping[str, Any], name: str, item: str, where: str) -> Any:
    if name not in obj:
        raise _malformed(item, f'"{where}" has no "{name}"', check="field")
    return obj[name]


def _int(obj: Mapping[str, Any], name: str, item: str, where: str, *, maximum: int = 0xFFFF_FFFF) -> int:
    value = _field(obj, name, item, where)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise _malformed(item, f'"{where}.{name}" must be an integer in 0..{maximum}', check="field", got=value)
    return value


def _str(obj: Mapping[str, Any], name: str, item: str, where: str) -> str:
    value = _field(obj, name, item, where)
    if not isinstance(value, str):
        raise _malformed(item, f'"{where}.{name}" must be a string', check="field", got=value)
    return value


def _hex(obj: Mapping[str, Any], name: str, size: int, item: str, where: str) -> bytes:
    value = _str(obj, name, item, where)
    if len(value) != 2 * size or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise _malformed(item, f'"{where}.{name}" must be {size} bytes of hex', check="field", got=value)
    return bytes.fromhex(value)


def _time(obj: Mapping[str, Any], name: str, item: str, where: str) -> datetime:
    value = _str(obj, name, item, where)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _malformed(item, f'"{where}.{name}" is not an ISO 8601 time', check="field", got=value) from exc
    if moment.tzinfo is None:
        raise _malformed(item, f'"{where}.{name}" has no time zone', check="field", got=value)
    return moment


def _list(obj: Mapping[str, Any], name: str, item: str, where: str) -> list[Any]:
    value = _field(obj, name, item, where)
    if not isinstance(value, list):
        raise _malformed(item, f'"{where}.{name}" must be an array', check="field", got=type(value).__name__)
    return value


def _object(value: Any, item: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(item, f'"{where}" must be a JSON object', check="field", got=type(value).__name__)
    return value


def _status(obj: Mapping[str, Any], item: str, where: str) -> str:
    status = _str(obj, "tcbStatus", item, where)
    if status not in TCB_STATUSES:
        raise _malformed(item, f'"{where}.tcbStatus" is not a known TCB status', check="field", got=status)
    return status


def _advisories(obj: Mapping[str, Any], item: str, where: str) -> tuple[str, ...]:
    if "advisoryIDs" not in obj:
        return ()
    ids = _list(obj, "advisoryIDs", item, where)
    if not all(isinstance(a, str) for a in ids):
        raise _malformed(item, f'"{where}.advisoryIDs" must be strings', check="field")
    return tuple(ids)


def _tcb_date(obj: Mapping[str, Any], item: str, where: str) -> str | None:
    return _str(obj, "tcbDate", item, where) if "tcbDate" in obj else None


def _components(level_tcb: Mapping[str, Any], name: str, count: int, item: str, where: str) -> tuple[int, ...]:
    values = _list(level_tcb, name, item, where)
    if len(values) != count:
        raise _malformed(item, f'"{where}.{name}" must have {count} entries', check="field", got=len(values))
    return tuple(
        _int(_object(v, item, f"{where}.{name}[{i}]"), "svn", item, f"{where}.{name}[{i}]", maximum=0xFF)
        for i, v in enumerate(values)
    )


def _isv_levels(obj: Mapping[str, Any], item: str, where: str) -> tuple[IsvTcbLevel, ...]:
    levels: list[IsvTcbLevel] = []
    for i, raw_level in enumerate(_list(obj, "tcbLevels", item, where)):
        here = f"{where}.tcbLevels[{i}]"
        level = _object(raw_level, item, here)
        tcb = _object(_field(level, "tcb", item, here), item, f"{here}.tcb")
        levels.append(
            IsvTcbLevel(
                isvsvn=_int(tcb, "isvsvn", item, f"{here}.tcb", maximum=0xFFFF),
                tcb_date=_tcb_date(level, item, here),
                status=_status(level, item, here),
                advisory_ids=_advisories(level, item, here),
            )
        )
    return tuple(levels)


def _module(obj: Mapping[str, Any], item: str, where: str, *, with_levels: bool) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=_str(obj, "id", item, where) if with_levels else "",
        mrsigner=_hex(obj, "mrsigner", 48, item, where),
        attributes=_hex(obj, "attributes", 8, item, where),
        attributes_mask=_hex(obj, "attributesMask", 8, item, where),
        tcb_levels=_isv_levels(obj, item, where) if with_levels else (),
    )


def _document_header(
    signed: SignedJson, body: Mapping[str, Any], item: str, where: str, *, tcb_id: str, version: int
) -> dict[str, Any]:
    """The ``SignedDocument`` fields of a tcbInfo or QE identity body."""
    return {
        "signed": signed,
        "id": tcb_id,
        "version": version,
        "issue_date": _time(body, "issueDate", item, where),
        "next_update": _time(body, "nextUpdate", item, where),
        "tcb_evaluation_data_number": _int(body, "tcbEvaluationDataNumber", item, where),
    }


def load_tcb_info(data: bytes) -> TcbInfo:
    """Parse a TCB Info document as served (``{"tcbInfo": {...}, "signature": "..."}``); nothing is verified.

    Versions 2 (SGX, ``sgxtcbcompNNsvn`` keys) and 3 (SGX or TDX, component arrays) are understood.

    Raises:
        MalformedEvidence: ``collateral.tcb_info.*``: not the documented shape.
    """
    item = "tcb_info"
    signed, body = _signed_json(data, item, "tcbInfo")
    where = "tcbInfo"
    version = _int(body, "version", item, where)
    tcb_id = _str(body, "id", item, where) if version >= 3 else "SGX"
    if tcb_id not in ("SGX", "TDX") or version not in (2, 3) or (tcb_id == "TDX" and version != 3):
        raise _malformed(item, "unsupported tcbInfo id/version", check="field", got=[tcb_id, version])
    tdx = tcb_id == "TDX"
    levels: list[TcbLevel] = []
    for i, raw_level in enumerate(_list(body, "tcbLevels", item, where)):
        here = f"{where}.tcbLevels[{i}]"
        level = _object(raw_level, item, here)
        tcb = _object(_field(level, "tcb", item, here), item, f"{here}.tcb")
        if version == 2:
            sgx = tuple(
                _int(tcb, f"sgxtcbcomp{n:02d}svn", item, f"{here}.tcb", maximum=0xFF)
                for n in range(1, _SGX_COMPONENTS + 1)
            )
        else:
            sgx = _components(tcb, "sgxtcbcomponents", _SGX_COMPONENTS, item, f"{here}.tcb")
        levels.append(
            TcbLevel(
                sgx_components=sgx,
                pcesvn=_int(tcb, "pcesvn", item, f"{here}.tcb", maximum=0xFFFF),
                tdx_components=_components(tcb, "tdxtcbcomponents", _TDX_COMPONENTS, item, f"{here}.tcb")
                if tdx
                else None,
                tcb_date=_tcb_date(level, item, here),
                status=_status(level, item, here),
                advisory_ids=_advisories(level, item, here),
            )
        )
    if not levels:
        raise _malformed(item, "tcbInfo has no TCB levels", check="field")
    module = None
    identities: tuple[TdxModuleIdentity, ...] = ()
    if tdx:
        module = _module(
            _object(_field(body, "tdxModule", item, where), item, f"{where}.tdxModule"),
            item,
            f"{where}.tdxModule",
            with_levels=False,
        )
        if "tdxModuleIdentities" in body:
            identities = tuple(
                _module(
                    _object(m, item, f"{where}.tdxModuleIdentities[{i}]"),
                    item,
                    f"{where}.tdxModuleIdentities[{i}]",
                    with_levels=True,
                )
                for i, m in enumerate(_list(body, "tdxModuleIdentities", item, where))
            )
    return TcbInfo(
        **_document_header(signed, body, item, where, tcb_id=tcb_id, version=version),
        fmspc=_hex(body, "fmspc", 6, item, where),
        pce_id=_hex(body, "pceId", 2, item, where),
        tcb_type=_int(body, "tcbType", item, where),
        tdx_module=module,
        tdx_module_identities=identities,
        tcb_levels=tuple(levels),
    )


def load_qe_identity(data: bytes) -> QeIdentity:
    """Parse a QE identity document as served (``{"enclaveIdentity": {...}, "signature": "..."}``).

    Raises:
        MalformedEvidence: ``collateral.qe_identity.*``: not the documented shape.
    """
    item = "qe_identity"
    signed, body = _signed_json(data, item, "enclaveIdentity")
    where = "enclaveIdentity"
    levels = _isv_levels(body, item, where)
    if not levels:
        raise _malformed(item, "the QE identity has no TCB levels", check="field")
    return QeIdentity(
        **_document_header(
            signed, body, item, where, tcb_id=_str(body, "id", item, where), version=_int(body, "version", item, where)
        ),
        misc_select=int.from_bytes(_hex(body, "miscselect", 4, item, where), "big"),
        misc_select_mask=int.from_bytes(_hex(body, "miscselectMask", 4, item, where), "big"),
        attributes=_hex(body, "attributes", 16, item, where),
        attributes_mask=_hex(body, "attributesMask", 16, item, where),
        mrsigner=_hex(body, "mrsigner", 32, item, where),
        isv_prod_id=_int(body, "isvprodid", item, where, maximum=0xFFFF),
        tcb_levels=levels,
    )


def load_crl(data: bytes, *, item: str = "crl") -> x509.CertificateRevocationList:
    """Load a CRL from DER or PEM bytes.

    Raises:
        MalformedEvidence: ``collateral.crl.parse``: not one well-formed CRL with a nextUpdate.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{item} must be bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > MAX_COLLATERAL_SIZE:
        raise _malformed(item, "too large", check="size", got=len(raw))
    try:
        pem = raw.lstrip().startswith(b"-----BEGIN")
        crl = x509.load_pem_x509_crl(raw) if pem else x509.load_der_x509_crl(raw)
        # cryptography decodes these on first access: do it now, so later access cannot fail
        _ = (crl.extensions, list(crl), crl.issuer, crl.last_update_utc, crl.next_update_utc)
        _ = (crl.signature_algorithm_oid, crl.signature_hash_algorithm)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedEvidence(f"{item}: not a valid CRL: {exc}", check="collateral.crl.parse") from exc
    if crl.next_update_utc is None:
        raise MalformedEvidence(f"{item}: the CRL has no nextUpdate", check="collateral.crl.parse")
    return crl


def load_collateral(
    files: Mapping[str, bytes], *, unsafe_accept_expired_tcb_signing_cert: bool = False
) -> DcapCollateral:
    """Build a ``DcapCollateral`` from the raw items (pure: the caller reads files or the envelope).

    Keys (all optional, see ``COLLATERAL_ITEMS``): ``tcb_info`` and ``qe_identity`` (JSON as served),
    ``pck_crl`` and ``root_crl`` (DER or PEM), ``tcb_signing_chain`` (PEM, TCB Signing certificate first).

    Raises:
        MalformedEvidence: an item does not parse (``collateral.<item>.*``).
        ValueError: an unknown key, no item at all, or a JSON document without ``tcb_signing_chain``.
    """
    unknown = set(files) - set(COLLATERAL_ITEMS)
    if unknown:
        raise ValueError(f"unknown collateral item(s) {sorted(unknown)}; expected some of {COLLATERAL_ITEMS}")
    chain: tuple[x509.Certificate, ...] = ()
    if "tcb_signing_chain" in files:
        try:
            chain = load_certificate_bundle(files["tcb_signing_chain"])
            for cert in chain:  # decode the lazily parsed fields now (a corrupt name is malformed input)
                _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
                _ = (cert.serial_number, cert.signature_hash_algorithm, cert.public_key())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise MalformedEvidence(
                f"tcb_signing_chain: a certificate does not parse: {exc}", check="collateral.tcb_signing_chain.pem"
            ) from exc
        except MalformedEvidence as exc:
            raise MalformedEvidence(
                f"tcb_signing_chain: {exc.message}", check="collateral.tcb_signing_chain.pem"
            ) from exc
    return DcapCollateral(
        tcb_info=load_tcb_info(files["tcb_info"]) if "tcb_info" in files else None,
        qe_identity=load_qe_identity(files["qe_identity"]) if "qe_identity" in files else None,
        pck_crl=load_crl(files["pck_crl"], item="pck_crl") if "pck_crl" in files else None,
        root_crl=load_crl(files["root_crl"], item="root_crl") if "root_crl" in files else None,
        tcb_signing_chain=chain,
        unsafe_accept_expired_tcb_signing_cert=unsafe_accept_expired_tcb_signing_cert,
    )
