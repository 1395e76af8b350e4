"""Pure attestation layer (Intel DCAP collateral): load and verify tcbInfo, QE identity and CRLs; TCB status.

Collateral is what Intel's PCS (or a PCCS cache) serves for a platform: the TCB Info JSON for its FMSPC, the
QE identity JSON, the PCK CRL of the PCK's CA (Platform or Processor CA), the Intel SGX Root CA CRL, and the
"Intel SGX TCB Signing" certificate chain (``TCB-Info-Issuer-Chain`` header) that signs both JSON documents.
All of it is signed, so it may travel over an untrusted channel (the evidence envelope, a cache directory).

Invariants:

* loading (``load_collateral``, ``load_tcb_info``, ``load_qe_identity``, ``load_crl``) is strict and pure:
  every malformed input raises ``MalformedEvidence`` (``collateral.<item>.*``), never a bare ``ValueError``
  or ``KeyError``; duplicate JSON keys, NaN/Infinity and wrong hex lengths are malformed. The signed bytes of
  a JSON document are **the exact text of its ``"tcbInfo"`` / ``"enclaveIdentity"`` value as served** (cut
  out of the input, never re-serialised); the signature is hex r || s, ECDSA P-256 / SHA-256;
* ``evaluate_collateral`` trusts nothing it has not verified, in this order: (C1) the TCB Signing chain, walked
  by the shared walker to the SAME pinned root that verified the quote's PCK chain, valid at ``now``;
  (C2) the root CA CRL (issued and signed by that root, current at ``now``): neither the PCK CA nor the TCB
  Signing certificate is revoked; (C3) the PCK CRL (issued and signed by the quote's PCK CA, current): the PCK
  is not revoked; (C4) the tcbInfo (signature, ``issueDate <= now <= nextUpdate``, id ``TDX``/``SGX`` for the
  quote's kind, FMSPC and PCE-ID of the PCK) and the TCB level matching; (C5) the QE identity (signature,
  dates, id ``TD_QE``/``QE``, MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under their masks) and the QE's
  level; (C6) the converged TCB status, as Intel's quote verification library does.

TCB level matching (Intel's quote verification library, QVL; docs/evidence.md §4): the levels are walked in the
order served (newest first);
the platform's SGX level is the first whose 16 SGX component SVNs and PCESVN are all <= the PCK's; for TDX
the level is the first that also has every TEE_TCB_SVN byte >= its ``tdxtcbcomponents`` (from byte 2 when
TEE_TCB_SVN[1] > 0, a TDX 1.5+ module, whose identity ``TDX_<TEE_TCB_SVN[1]>`` in ``tdxModuleIdentities``
then gives the module's status by ISVSVN = TEE_TCB_SVN[0] and the expected MRSIGNERSEAM / SEAM_ATTRIBUTES;
TDX 1.0 modules use ``tdxModule``). A TD report 1.5 adds Intel's "TD relaunch advised" check on
TEE_TCB_SVN2. The module status and then the QE status are converged into the platform status
(``OutOfDate`` wins over ``UpToDate``/``SWHardeningNeeded``, ``Revoked`` over everything). When no level
matches, the status is ``NoMatchingTcbLevel`` (Intel's "TCB not supported"), which no policy can accept.

Decisions:

* **Out-of-date collateral is an error**, not a warning: a tcbInfo, QE identity or CRL used outside its
  ``issueDate``/``thisUpdate`` .. ``nextUpdate`` window raises ``StaleEvidence`` (``collateral.<item>.window``)
  naming the window. A stale tcbInfo may hide a TCB recovery, a stale CRL a revocation; reporting them as
  ``UpToDate`` plus a warning would be a weakening the policy cannot name. An auditor re-verifies at the
  recorded verification time, where the same collateral is current again.
* **Partial collateral is allowed but yields no TCB status.** Intel's TCB status needs all four documents
  (the QE identity converges into it, the CRLs decide revocation). Items that are present are fully checked
  (a revoked PCK or a bad signature fails verification); the evaluation is reported in the claims
  (``tcb.status``, ``tcb.platform_status``, ``tcb.tdx_module``, ``tcb.missing``), but ``tcb_status`` stays
  None and the warning ``tcb-collateral-incomplete`` is added, so only a policy with
  ``unsafe_skip_tcb_collateral = true`` accepts it. Exception: a final negative outcome
  (``NoMatchingTcbLevel``, ``Revoked``) is reported as ``tcb_status`` even then, because the missing items
  could only lower a status (Intel's convergence never raises one), so the policy rejects it by name.
* **The TCB Signing certificate must be valid at ``now``.** Intel re-issues that certificate for the same key
  (the copy in our vectors expired 2025-05-21, yet Intel's 2026 tcbInfo is signed by its key). The honest fix
  is to supply the current certificate (PCS serves it with every tcbInfo). For offline checks with an old
  copy, ``DcapCollateral.unsafe_accept_expired_tcb_signing_cert`` walks the chain at the certificate's own
  ``notAfter`` instead (everything else still checked, the root CRL still consulted) and adds the warning
  ``tcb-signing-cert-expired`` to the result, so the weakening is visible on the badge and in the log.

Check names: ``collateral.<item>.size``, ``.utf8``, ``.json``, ``.field`` (``<item>`` = ``tcb_info``,
``qe_identity``, ``pck_crl``, ``root_crl``), ``collateral.tcb_signing_chain.pem``, ``collateral.crl.parse``,
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

import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import certificate_sha256, load_certificate_bundle
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    SignatureInvalid,
    StaleEvidence,
    VerificationError,
)

__all__ = [
    "COLLATERAL_ITEMS",
    "MAX_COLLATERAL_SIZE",
    "NO_MATCHING_TCB_LEVEL",
    "TCB_STATUSES",
    "CollateralOutcome",
    "DcapCollateral",
    "IsvTcbLevel",
    "QeIdentity",
    "SignedJson",
    "TcbInfo",
    "TcbInputs",
    "TcbLevel",
    "TdxModuleIdentity",
    "evaluate_collateral",
    "load_collateral",
    "load_crl",
    "load_qe_identity",
    "load_tcb_info",
    "verify_document_signature",
]

#: The keys ``load_collateral`` understands (file contents as served by Intel PCS / a PCCS).
COLLATERAL_ITEMS: Final = ("tcb_info", "qe_identity", "pck_crl", "root_crl", "tcb_signing_chain")
#: Refuse a collateral item larger than this before parsing (a tcbInfo is a few KB, a PCK CRL tens of KB).
MAX_COLLATERAL_SIZE: Final = 1024 * 1024

#: Statuses a tcbInfo / QE identity / TDX module level may carry (Intel PCS API v4).
TCB_STATUSES: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
)
#: The outcome when the collateral knows no level for this platform / module / QE (Intel: TCB not supported).
NO_MATCHING_TCB_LEVEL: Final = "NoMatchingTcbLevel"

_UP_TO_DATE = "UpToDate"
_SW_HARDENING = "SWHardeningNeeded"
_CONFIG = "ConfigurationNeeded"
_CONFIG_SW = "ConfigurationAndSWHardeningNeeded"
_OUT_OF_DATE = "OutOfDate"
_OUT_OF_DATE_CONFIG = "OutOfDateConfigurationNeeded"
_REVOKED = "Revoked"
_RELAUNCH = "TDRelaunchAdvised"
_RELAUNCH_CONFIG = "TDRelaunchAdvisedConfigurationNeeded"
_CONFIGURATION_STATUSES = frozenset({_CONFIG, _OUT_OF_DATE_CONFIG, _CONFIG_SW, _RELAUNCH_CONFIG})

_TCB_SIGNING_CN = "Intel SGX TCB Signing"
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
class TcbInfo:
    """A parsed (not yet verified) TCB Info document."""

    signed: SignedJson
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity:
    """A parsed (not yet verified) QE identity (enclave identity) document."""

    signed: SignedJson
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
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
        signed=signed,
        id=tcb_id,
        version=version,
        issue_date=_time(body, "issueDate", item, where),
        next_update=_time(body, "nextUpdate", item, where),
        fmspc=_hex(body, "fmspc", 6, item, where),
        pce_id=_hex(body, "pceId", 2, item, where),
        tcb_type=_int(body, "tcbType", item, where),
        tcb_evaluation_data_number=_int(body, "tcbEvaluationDataNumber", item, where),
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
        signed=signed,
        id=_str(body, "id", item, where),
        version=_int(body, "version", item, where),
        issue_date=_time(body, "issueDate", item, where),
        next_update=_time(body, "nextUpdate", item, where),
        tcb_evaluation_data_number=_int(body, "tcbEvaluationDataNumber", item, where),
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


# --- evaluation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbInputs:
    """What the collateral is checked against: values from the VERIFIED quote and PCK chain."""

    is_tdx: bool
    pck: x509.Certificate
    pck_ca: x509.Certificate
    fmspc: bytes
    pce_id: bytes
    sgx_components: tuple[int, ...]
    pcesvn: int
    qe_mrsigner: bytes
    qe_isv_prod_id: int
    qe_isv_svn: int
    qe_misc_select: int
    qe_attributes: bytes
    tee_tcb_svn: bytes | None = None
    tee_tcb_svn2: bytes | None = None
    mr_signer_seam: bytes | None = None
    seam_attributes: bytes | None = None


@dataclass(frozen=True)
class CollateralOutcome:
    """``tcb_status`` is set only for complete collateral; ``claims`` holds the whole evaluation."""

    tcb_status: str | None
    warnings: tuple[str, ...]
    claims: Mapping[str, object]


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    return value if isinstance(value, str) else None


def _check_window(item: str, not_before: datetime, not_after: datetime, now: datetime) -> None:
    if not not_before <= now <= not_after:
        state = "not yet valid" if now < not_before else "out of date"
        raise StaleEvidence(
            f"the {item.replace('_', ' ')} is {state} at {now.isoformat()}: fetch current collateral "
            "(or re-verify at a time inside its window)",
            check=f"collateral.{item}.window",
            got=now.isoformat(),
            expected=[not_before.isoformat(), not_after.isoformat()],
        )


def verify_document_signature(signed: SignedJson, key: ec.EllipticCurvePublicKey, item: str = "tcb_info") -> None:
    """Check a tcbInfo / QE identity signature (ECDSA P-256 / SHA-256, r || s) over its exact signed text.

    Raises:
        SignatureInvalid: ``collateral.<item>.signature``.
    """
    r, s = int.from_bytes(signed.signature[:32], "big"), int.from_bytes(signed.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), signed.body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureInvalid(
            f"the {item.replace('_', ' ')} is not signed by the Intel SGX TCB Signing key (altered or forged)",
            check=f"collateral.{item}.signature",
        ) from exc


def _verify_tcb_signing(
    collateral: DcapCollateral, root: x509.Certificate, root_sha256: bytes, now: datetime, warnings: list[str]
) -> ec.EllipticCurvePublicKey:
    """C1: the TCB Signing chain ends at the root that verified the PCK chain and is valid at ``now``."""
    leaf, *rest = collateral.tcb_signing_chain
    if _common_name(leaf) != _TCB_SIGNING_CN:
        raise ChainError(
            "the first certificate of the TCB signing chain is not the Intel SGX TCB Signing certificate",
            check="collateral.tcb_signing.role",
            got=_common_name(leaf),
            expected=_TCB_SIGNING_CN,
        )
    anchors = {root_sha256: root}
    try:
        try:
            walk_chain(leaf, rest, anchors=anchors, now=now)
        except CertificateExpired as exc:
            expired_at = leaf.not_valid_after_utc
            if not (collateral.unsafe_accept_expired_tcb_signing_cert and exc.index == 0 and now > expired_at):
                raise
            # the named weakening: the chain as it was on the certificate's last valid day
            walk_chain(leaf, rest, anchors=anchors, now=expired_at)
            warnings.append("tcb-signing-cert-expired")
    except VerificationError as exc:
        raise type(exc)(
            f"TCB signing chain: {exc.message}",
            check=f"collateral.tcb_signing.{exc.check}",
            got=exc.got,
            expected=exc.expected,
            index=exc.index,
        ) from exc
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ChainError("the TCB Signing key is not ECDSA P-256", check="collateral.tcb_signing.role")
    return key


def _check_crl(
    crl: x509.CertificateRevocationList,
    item: str,
    issuer: x509.Certificate,
    now: datetime,
    revocable: Sequence[tuple[str, x509.Certificate]],
) -> dict[str, object]:
    """C2/C3: a CRL issued and signed by ``issuer``, current at ``now``, revoking none of ``revocable``."""
    if crl.issuer != issuer.subject:
        raise ChainError(
            f"the {item.replace('_', ' ')} was issued by {crl.issuer.rfc4514_string()!r}, not by the "
            f"certificate it must cover ({issuer.subject.rfc4514_string()!r})",
            check=f"collateral.{item}.issuer",
            got=crl.issuer.rfc4514_string(),
            expected=issuer.subject.rfc4514_string(),
        )
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise SignatureInvalid(
            f"the {item.replace('_', ' ')} is not signed by {issuer.subject.rfc4514_string()!r}",
            check=f"collateral.{item}.signature",
        )
    next_update = crl.next_update_utc
    if next_update is None:  # load_crl refuses these; a hand-built DcapCollateral might not
        raise MalformedEvidence(f"{item}: the CRL has no nextUpdate", check="collateral.crl.parse")
    _check_window(item, crl.last_update_utc, next_update, now)
    for role, cert in revocable:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise ChainError(
                f"the {role.replace('_', ' ')} certificate {cert.subject.rfc4514_string()!r} is revoked "
                f"(since {entry.revocation_date_utc.isoformat()})",
                check=f"collateral.{role}.revoked",
                got=format(cert.serial_number, "x"),
                expected="not in the CRL",
            )
    return {
        "issuer": crl.issuer.rfc4514_string(),
        "this_update": crl.last_update_utc.isoformat(),
        "next_update": next_update.isoformat(),
        "revoked_count": len(list(crl)),
    }


def _ge(have: Sequence[int], need: Sequence[int], start: int = 0) -> bool:
    return all(h >= n for h, n in zip(have[start:], need[start:], strict=True))


def _converge_module(level_status: str, module_status: str) -> str:
    if module_status == _OUT_OF_DATE:
        if level_status in (_UP_TO_DATE, _SW_HARDENING):
            return _OUT_OF_DATE
        if level_status in (_CONFIG, _CONFIG_SW):
            return _OUT_OF_DATE_CONFIG
    if module_status == _REVOKED:
        return _REVOKED
    return level_status


def _converge_qe(platform_status: str, qe_status: str | None) -> str:
    if qe_status == _OUT_OF_DATE:
        if platform_status in (_UP_TO_DATE, _SW_HARDENING):
            return _OUT_OF_DATE
        if platform_status in (_CONFIG, _CONFIG_SW):
            return _OUT_OF_DATE_CONFIG
    if qe_status == _REVOKED:
        return _REVOKED
    if qe_status == NO_MATCHING_TCB_LEVEL:
        return NO_MATCHING_TCB_LEVEL
    return platform_status


def _find_module(info: TcbInfo, version: int) -> TdxModuleIdentity | None:
    wanted = f"TDX_{version:02X}"
    for identity in info.tdx_module_identities:
        if identity.id.upper() == wanted:
            return identity
    return None


def _first_isv_level(levels: Sequence[IsvTcbLevel], isvsvn: int) -> IsvTcbLevel | None:
    return next((level for level in levels if isvsvn >= level.isvsvn), None)


class _NoMatch(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _tdx_module(info: TcbInfo, inputs: TcbInputs, claims: dict[str, object]) -> str:
    """The TDX module's status, after checking MRSIGNERSEAM / SEAM_ATTRIBUTES against the collateral."""
    assert inputs.tee_tcb_svn is not None and inputs.mr_signer_seam is not None
    assert inputs.seam_attributes is not None
    isvsvn, version = inputs.tee_tcb_svn[0], inputs.tee_tcb_svn[1]
    if version == 0:
        expected = info.tdx_module
        status = _UP_TO_DATE
        claims["tdx_module"] = {"id": None, "version": 0, "isvsvn": isvsvn, "status": status}
    else:
        expected = _find_module(info, version)
        if expected is None:
            raise _NoMatch(f"the tcbInfo has no TDX module identity TDX_{version:02X} (TEE_TCB_SVN[1] = {version})")
        level = _first_isv_level(expected.tcb_levels, isvsvn)
        if level is None:
            raise _NoMatch(f"no TCB level of {expected.id} matches the TDX module ISVSVN {isvsvn}")
        status = level.status
        claims["tdx_module"] = {
            "id": expected.id,
            "version": version,
            "isvsvn": isvsvn,
            "level_isvsvn": level.isvsvn,
            "status": status,
            "tcb_date": level.tcb_date,
            "advisory_ids": list(level.advisory_ids),
        }
    assert expected is not None  # load_tcb_info requires tdxModule for TDX
    if not hmac.compare_digest(inputs.mr_signer_seam, expected.mrsigner):
        raise ChainError(
            "MRSIGNERSEAM is not the TDX module signer the tcbInfo names",
            check="collateral.tdx_module.mrsigner",
            got=inputs.mr_signer_seam.hex(),
            expected=expected.mrsigner.hex(),
        )
    mask = expected.attributes_mask
    got = bytes(a & m for a, m in zip(inputs.seam_attributes, mask, strict=True))
    want = bytes(a & m for a, m in zip(expected.attributes, mask, strict=True))
    if not hmac.compare_digest(got, want):
        raise ChainError(
            "SEAM_ATTRIBUTES (under the tcbInfo's mask) are not the TDX module attributes the tcbInfo names",
            check="collateral.tdx_module.attributes",
            got=got.hex(),
            expected=want.hex(),
        )
    return status


def _relaunch(
    info: TcbInfo, svn2: bytes, sgx_status: str, tdx_status: str, module_status: str, qe_status: str | None
) -> str:
    """Intel's "TD relaunch advised" check for TD report 1.5: the platform was updated (TD-preserving) and a
    relaunched TD would be up to date."""
    if qe_status in (_OUT_OF_DATE, _REVOKED, NO_MATCHING_TCB_LEVEL):
        return tdx_status
    if sgx_status not in (_UP_TO_DATE, _SW_HARDENING, _CONFIG, _CONFIG_SW):
        return tdx_status
    if tdx_status not in (_OUT_OF_DATE, _OUT_OF_DATE_CONFIG) or module_status != _OUT_OF_DATE:
        return tdx_status
    latest = info.tcb_levels[0]
    assert latest.tdx_components is not None
    if svn2[1] == 0:
        fixed = svn2[0] >= latest.tdx_components[0] and svn2[2] >= latest.tdx_components[2]
    else:
        identity = _find_module(info, svn2[1])
        if identity is None or not identity.tcb_levels:
            raise _NoMatch(f"the tcbInfo has no TDX module identity TDX_{svn2[1]:02X} (TEE_TCB_SVN2[1])")
        fixed = svn2[0] >= identity.tcb_levels[0].isvsvn and svn2[2] >= latest.tdx_components[2]
    if not fixed:
        return tdx_status
    configuration = sgx_status in _CONFIGURATION_STATUSES or tdx_status in _CONFIGURATION_STATUSES
    return _RELAUNCH_CONFIG if configuration else _RELAUNCH


def _platform_status(info: TcbInfo, inputs: TcbInputs, qe_status: str | None, claims: dict[str, object]) -> str:
    """C4: match the TCB level (and the TDX module), converge the module's status. Raises ``_NoMatch``."""
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None
    tee = inputs.tee_tcb_svn
    for level in info.tcb_levels:
        if not (_ge(inputs.sgx_components, level.sgx_components) and inputs.pcesvn >= level.pcesvn):
            continue
        sgx_level = sgx_level or level
        if tee is None:
            break
        assert level.tdx_components is not None
        if _ge(tee, level.tdx_components, 2 if tee[1] > 0 else 0):
            tdx_level = level
            break
    if sgx_level is None:
        raise _NoMatch(
            f"no TCB level matches the PCK's SGX TCB components {list(inputs.sgx_components)} and PCESVN "
            f"{inputs.pcesvn}"
        )
    claims["sgx_level"] = {"status": sgx_level.status, "tcb_date": sgx_level.tcb_date, "pcesvn": sgx_level.pcesvn}
    if tee is None:
        claims["advisory_ids"] = list(sgx_level.advisory_ids)
        claims["tcb_date"] = sgx_level.tcb_date
        return sgx_level.status
    if tdx_level is None:
        raise _NoMatch(f"a TCB level matches the SGX components, but none matches TEE_TCB_SVN {tee.hex()} with them")
    claims["tdx_level"] = {"status": tdx_level.status, "tcb_date": tdx_level.tcb_date}
    claims["advisory_ids"] = list(tdx_level.advisory_ids)
    claims["tcb_date"] = tdx_level.tcb_date
    module_status = _tdx_module(info, inputs, claims)
    tdx_status = _converge_module(tdx_level.status, module_status)
    if tdx_status != _REVOKED and inputs.tee_tcb_svn2 is not None:
        tdx_status = _relaunch(info, inputs.tee_tcb_svn2, sgx_level.status, tdx_status, module_status, qe_status)
        claims["relaunch_advised"] = tdx_status in (_RELAUNCH, _RELAUNCH_CONFIG)
    return tdx_status


def _qe_status(identity: QeIdentity, inputs: TcbInputs, claims: dict[str, object]) -> str:
    """C5: the QE matches the identity document; its status by ISVSVN."""
    want_id = "TD_QE" if inputs.is_tdx else "QE"
    if identity.id != want_id:
        raise ChainError(
            f"the QE identity document is for {identity.id!r}, this quote needs {want_id!r}",
            check="collateral.qe_identity.id",
            got=identity.id,
            expected=want_id,
        )
    if not hmac.compare_digest(inputs.qe_mrsigner, identity.mrsigner):
        raise ChainError(
            "the QE's MRSIGNER differs from the QE identity",
            check="collateral.qe_identity.mrsigner",
            got=inputs.qe_mrsigner.hex(),
            expected=identity.mrsigner.hex(),
        )
    if inputs.qe_isv_prod_id != identity.isv_prod_id:
        raise ChainError(
            "the QE's ISVPRODID differs from the QE identity",
            check="collateral.qe_identity.isv_prod_id",
            got=inputs.qe_isv_prod_id,
            expected=identity.isv_prod_id,
        )
    if inputs.qe_misc_select & identity.misc_select_mask != identity.misc_select & identity.misc_select_mask:
        raise ChainError(
            "the QE's MISCSELECT (under the mask) differs from the QE identity",
            check="collateral.qe_identity.misc_select",
            got=hex(inputs.qe_misc_select & identity.misc_select_mask),
            expected=hex(identity.misc_select & identity.misc_select_mask),
        )
    mask = identity.attributes_mask
    got = bytes(a & m for a, m in zip(inputs.qe_attributes, mask, strict=True))
    want = bytes(a & m for a, m in zip(identity.attributes, mask, strict=True))
    if not hmac.compare_digest(got, want):
        raise ChainError(
            "the QE's ATTRIBUTES (under the mask) differ from the QE identity",
            check="collateral.qe_identity.attributes",
            got=got.hex(),
            expected=want.hex(),
        )
    level = _first_isv_level(identity.tcb_levels, inputs.qe_isv_svn)
    status = NO_MATCHING_TCB_LEVEL if level is None else level.status
    claims["qe_identity"] = {
        "id": identity.id,
        "isvsvn": inputs.qe_isv_svn,
        "status": status,
        "level_isvsvn": None if level is None else level.isvsvn,
        "tcb_date": None if level is None else level.tcb_date,
        "advisory_ids": [] if level is None else list(level.advisory_ids),
        "issue_date": identity.issue_date.isoformat(),
        "next_update": identity.next_update.isoformat(),
        "tcb_evaluation_data_number": identity.tcb_evaluation_data_number,
    }
    return status


def _check_tcb_info(info: TcbInfo, inputs: TcbInputs) -> None:
    want_id = "TDX" if inputs.is_tdx else "SGX"
    if info.id != want_id:
        raise ChainError(
            f"the tcbInfo is for {info.id}, this is a {want_id} quote",
            check="collateral.tcb_info.id",
            got=info.id,
            expected=want_id,
        )
    if not hmac.compare_digest(info.fmspc, inputs.fmspc):
        raise ChainError(
            "the tcbInfo is for another platform (FMSPC differs from the PCK certificate's)",
            check="collateral.tcb_info.fmspc",
            got=info.fmspc.hex(),
            expected=inputs.fmspc.hex(),
        )
    if not hmac.compare_digest(info.pce_id, inputs.pce_id):
        raise ChainError(
            "the tcbInfo is for another PCE (PCE-ID differs from the PCK certificate's)",
            check="collateral.tcb_info.pce_id",
            got=info.pce_id.hex(),
            expected=inputs.pce_id.hex(),
        )


def _evaluate(step: Callable[[], str]) -> tuple[str, str | None]:
    try:
        return step(), None
    except _NoMatch as exc:
        return NO_MATCHING_TCB_LEVEL, exc.reason


def evaluate_collateral(
    collateral: DcapCollateral, inputs: TcbInputs, *, root: x509.Certificate, now: datetime
) -> CollateralOutcome:
    """Verify ``collateral`` for the quote described by ``inputs`` at ``now`` (steps C1-C6 of the module
    docstring). ``root`` is the pinned root that verified the quote's PCK chain: the collateral must chain to
    the same one.

    Raises:
        ChainError / CertificateExpired / SignatureInvalid / UntrustedRoot: ``collateral.tcb_signing.*`` (the
            chain), ``collateral.*.issuer`` / ``.signature`` / ``.revoked``, ``collateral.tcb_info.*`` /
            ``collateral.qe_identity.*`` / ``collateral.tdx_module.*`` (the documents or their identities).
        StaleEvidence: ``collateral.<item>.window``: an item is used outside its validity window.
    """
    warnings: list[str] = []
    claims: dict[str, object] = {"evaluated": True}
    root_sha256 = certificate_sha256(root)
    # C1. the TCB Signing chain (only needed for the signed JSON documents)
    signing_key: ec.EllipticCurvePublicKey | None = None
    if collateral.tcb_info is not None or collateral.qe_identity is not None:
        signing_key = _verify_tcb_signing(collateral, root, root_sha256, now, warnings)
        signing = collateral.tcb_signing_chain[0]
        claims["tcb_signing"] = {
            "subject": signing.subject.rfc4514_string(),
            "not_after": signing.not_valid_after_utc.isoformat(),
            "expired_accepted": "tcb-signing-cert-expired" in warnings,
        }
    # C2. the root CA CRL: neither the PCK CA nor the TCB Signing certificate is revoked
    if collateral.root_crl is not None:
        revocable = [("pck_ca", inputs.pck_ca)]
        if signing_key is not None:
            revocable.append(("tcb_signing", collateral.tcb_signing_chain[0]))
        claims["root_crl"] = _check_crl(collateral.root_crl, "root_crl", root, now, revocable)
    # C3. the PCK CRL (by the quote's PCK CA): the PCK is not revoked
    if collateral.pck_crl is not None:
        claims["pck_crl"] = _check_crl(collateral.pck_crl, "pck_crl", inputs.pck_ca, now, [("pck", inputs.pck)])
    # C5 (first: the QE status feeds the relaunch check). the QE identity document and the QE's level
    qe_status: str | None = None
    if collateral.qe_identity is not None:
        assert signing_key is not None
        identity = collateral.qe_identity
        verify_document_signature(identity.signed, signing_key, "qe_identity")
        _check_window("qe_identity", identity.issue_date, identity.next_update, now)
        qe_status = _qe_status(identity, inputs, claims)
    # C4. the tcbInfo document and the platform's TCB level
    status: str | None = None
    reason: str | None = None
    if collateral.tcb_info is not None:
        assert signing_key is not None
        info = collateral.tcb_info
        verify_document_signature(info.signed, signing_key, "tcb_info")
        _check_window("tcb_info", info.issue_date, info.next_update, now)
        _check_tcb_info(info, inputs)
        claims["tcb_info"] = {
            "id": info.id,
            "version": info.version,
            "fmspc": info.fmspc.hex(),
            "issue_date": info.issue_date.isoformat(),
            "next_update": info.next_update.isoformat(),
            "tcb_evaluation_data_number": info.tcb_evaluation_data_number,
        }
        platform, reason = _evaluate(lambda: _platform_status(info, inputs, qe_status, claims))
        claims["platform_status"] = platform
        # C6. converge with the QE's status
        status = platform if platform == _REVOKED else _converge_qe(platform, qe_status)
        if status == NO_MATCHING_TCB_LEVEL and reason is None:
            reason = f"no TCB level of the QE identity matches the QE's ISVSVN {inputs.qe_isv_svn}"
    claims["status"] = status
    claims["reason"] = reason
    missing = collateral.missing
    claims["missing"] = list(missing)
    claims["complete"] = not missing
    if missing:
        warnings.append("tcb-collateral-incomplete")
    # a final negative outcome stands whatever is missing (more collateral can only lower a status)
    final = status in (NO_MATCHING_TCB_LEVEL, _REVOKED)
    return CollateralOutcome(
        tcb_status=status if not missing or final else None,
        warnings=tuple(warnings),
        claims=MappingProxyType(claims),
    )
