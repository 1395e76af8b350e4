"""Pure attestation layer (Intel DCAP collateral): verify the collateral against a verified quote; TCB status.

The collateral is loaded by ``intel_collateral``; ``intel_dcap.verify_quote`` calls ``evaluate_collateral`` with
the values of the quote and PCK chain it has verified (``TcbInputs``).

Invariants:

* ``evaluate_collateral`` trusts nothing it has not verified, in this order: (C1) the TCB Signing chain, walked
  by the shared walker to the SAME pinned root that verified the quote's PCK chain, valid at ``now``;
  (C2) the root CA CRL (issued and signed by that root, current at ``now``): neither the PCK CA nor the TCB
  Signing certificate is revoked; (C3) the PCK CRL (issued and signed by the quote's PCK CA, current): the PCK
  is not revoked; (C4) the tcbInfo (signature, ``issueDate <= now <= nextUpdate``, id ``TDX``/``SGX`` for the
  quote's kind, FMSPC and PCE-ID of the PCK) and the TCB level matching; (C5) the QE identity (signature,
  dates, id ``TD_QE``/``QE``, MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under their masks) and the QE's
  level; (C6) the converged TCB status, as Intel's quote verification library does.

TCB level matching (as Intel's QVL does) and the decisions on stale, partial and expired collateral:
docs/evidence.md §4.1.

Check names: the ``collateral.*`` checks, listed once in ``intel_collateral``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cc_kernel.attestation.platforms.intel_collateral import (
    NO_MATCHING_TCB_LEVEL,
    DcapCollateral,
    IsvTcbLevel,
    QeIdentity,
    SignedDocument,
    SignedJson,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
)
from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import certificate_sha256, common_name
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    SignatureInvalid,
    StaleEvidence,
    VerificationError,
)

__all__ = ["CollateralOutcome", "TcbInputs", "evaluate_collateral", "verify_document_signature"]

_UP_TO_DATE: Final = "UpToDate"
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


# --- the inputs and the outcome -----------------------------------------------------------------------------


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


def _check_document(doc: SignedDocument, key: ec.EllipticCurvePublicKey, item: str, now: datetime) -> None:
    """A tcbInfo or QE identity is signed by the TCB Signing key and current at ``now``."""
    verify_document_signature(doc.signed, key, item)
    _check_window(item, doc.issue_date, doc.next_update, now)


def _verify_tcb_signing(
    collateral: DcapCollateral, root: x509.Certificate, root_sha256: bytes, now: datetime, warnings: list[str]
) -> ec.EllipticCurvePublicKey:
    """C1: the TCB Signing chain ends at the root that verified the PCK chain and is valid at ``now``."""
    leaf, *rest = collateral.tcb_signing_chain
    if common_name(leaf) != _TCB_SIGNING_CN:
        raise ChainError(
            "the first certificate of the TCB signing chain is not the Intel SGX TCB Signing certificate",
            check="collateral.tcb_signing.role",
            got=common_name(leaf),
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


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(v & m for v, m in zip(value, mask, strict=True))


def _require_same(got: bytes | int | str, expected: bytes | int | str, *, check: str, message: str) -> None:
    """``ChainError(message, check)`` with got/expected (bytes shown as hex) unless they are equal; bytes are
    compared in constant time."""
    if isinstance(got, bytes) and isinstance(expected, bytes):
        if not hmac.compare_digest(got, expected):
            raise ChainError(message, check=check, got=got.hex(), expected=expected.hex())
    elif got != expected:
        raise ChainError(message, check=check, got=got, expected=expected)


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
    _require_same(
        inputs.mr_signer_seam,
        expected.mrsigner,
        check="collateral.tdx_module.mrsigner",
        message="MRSIGNERSEAM is not the TDX module signer the tcbInfo names",
    )
    _require_same(
        _masked(inputs.seam_attributes, expected.attributes_mask),
        _masked(expected.attributes, expected.attributes_mask),
        check="collateral.tdx_module.attributes",
        message="SEAM_ATTRIBUTES (under the tcbInfo's mask) are not the TDX module attributes the tcbInfo names",
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
    _require_same(
        identity.id,
        want_id,
        check="collateral.qe_identity.id",
        message=f"the QE identity document is for {identity.id!r}, this quote needs {want_id!r}",
    )
    _require_same(
        inputs.qe_mrsigner,
        identity.mrsigner,
        check="collateral.qe_identity.mrsigner",
        message="the QE's MRSIGNER differs from the QE identity",
    )
    _require_same(
        inputs.qe_isv_prod_id,
        identity.isv_prod_id,
        check="collateral.qe_identity.isv_prod_id",
        message="the QE's ISVPRODID differs from the QE identity",
    )
    _require_same(
        hex(inputs.qe_misc_select & identity.misc_select_mask),
        hex(identity.misc_select & identity.misc_select_mask),
        check="collateral.qe_identity.misc_select",
        message="the QE's MISCSELECT (under the mask) differs from the QE identity",
    )
    _require_same(
        _masked(inputs.qe_attributes, identity.attributes_mask),
        _masked(identity.attributes, identity.attributes_mask),
        check="collateral.qe_identity.attributes",
        message="the QE's ATTRIBUTES (under the mask) differ from the QE identity",
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
    _require_same(
        info.id,
        want_id,
        check="collateral.tcb_info.id",
        message=f"the tcbInfo is for {info.id}, this is a {want_id} quote",
    )
    _require_same(
        info.fmspc,
        inputs.fmspc,
        check="collateral.tcb_info.fmspc",
        message="the tcbInfo is for another platform (FMSPC differs from the PCK certificate's)",
    )
    _require_same(
        info.pce_id,
        inputs.pce_id,
        check="collateral.tcb_info.pce_id",
        message="the tcbInfo is for another PCE (PCE-ID differs from the PCK certificate's)",
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
        _check_document(identity, signing_key, "qe_identity", now)
        qe_status = _qe_status(identity, inputs, claims)
    # C4. the tcbInfo document and the platform's TCB level
    status: str | None = None
    reason: str | None = None
    if collateral.tcb_info is not None:
        assert signing_key is not None
        info = collateral.tcb_info
        _check_document(info, signing_key, "tcb_info", now)
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
