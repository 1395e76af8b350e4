"""Pure attestation layer (platforms Intel TDX and SGX): verify an Intel DCAP ECDSA quote.

The quote is parsed by ``intel_quote``, its PCK chain and SGX extension are read by ``intel_pck``. Quote
versions 3 (SGX), 4 (TDX 1.0/1.5 TD report, or SGX) and 5 (typed body: SGX report, TD report 1.0 or TD report
1.5), attestation key type 2 (ECDSA P-256), layouts as in Intel's DCAP quote library API (docs/evidence.md §4).

Invariants:

* ``parse_quote_unverified`` (``intel_quote``) reads the quote with a bounds-checked cursor: every field and
  every nested length (signature data, certification data type 6 wrapping type 5, QE auth data) must fit
  exactly, and any failure — truncation at any offset included — raises ``MalformedEvidence`` naming the failed
  ``check``, never ``IndexError``/``struct.error``/``ValueError``. Nothing it returns is trusted;
* bytes after the end of the signature data are **never** part of any check: they are returned as
  ``Quote.trailing``, and ``verify_quote`` reports them as the warning ``trailing-bytes`` with the count in
  the claim ``trailing_bytes``;
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

Design decisions (trailing bytes, reserved fields, QE identity constants, the PCK chain's shape): docs/architecture.md,
"Platforms".
"""


from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cc_kernel.attestation.anchors import PinnedRoot, TrustAnchors
from cc_kernel.attestation.evidence import Platform, VerifiedEvidence, seal_verified
from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral
from cc_kernel.attestation.platforms.intel_pck import PckExtensions, pck_extensions, split_pck_chain
from cc_kernel.attestation.platforms.intel_quote import Quote, SgxReportBody, TdReportBody, parse_quote_unverified
from cc_kernel.attestation.platforms.intel_tcb import TcbInputs, evaluate_collateral
from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import certificate_sha256, common_name
from cc_kernel.errors import ChainError, MalformedEvidence, SignatureInvalid, UntrustedRoot

__all__ = [
    "SGX_QE_ISV_PROD_ID",
    "SGX_QE_MRSIGNER",
    "TD_QE_ISV_PROD_ID",
    "TD_QE_MRSIGNER",
    "verify_quote",
]

#: The Quoting Enclaves Intel signs (Intel DCAP; seen in every vector).
TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
TD_QE_ISV_PROD_ID = 2
SGX_QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
SGX_QE_ISV_PROD_ID = 1


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

# --- verification -------------------------------------------------------------------------------------------


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
        "ca": common_name(ca),
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
    pck, pck_ca, presented_root = split_pck_chain(parsed.pck_chain_pem)

    # 2. the PCK chain ends at a pinned root (the walker compares the presented root with it byte for byte)
    pinned = anchors.by_sha256(platforms=_DCAP_ROOT_PLATFORMS)
    chain = walk_chain(pck, [pck_ca, presented_root], anchors=pinned, now=now)
    root = anchors.root_for_sha256(chain.anchor_sha256)
    if root is None:  # pragma: no cover - walk_chain only succeeds with one of these anchors
        raise UntrustedRoot("no pinned root verified the PCK chain", check="chain.anchor")

    # 3. the leaf is a PCK certificate issued by a PCK CA, with a P-256 key and Intel's SGX extension
    leaf_cn, ca_cn = common_name(pck), common_name(pck_ca)
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
        raise MalformedEvidence(
            "the attestation key is not a point on P-256",
            check="dcap.attestation_key",
            got=parsed.attestation_key.hex(),
        ) from exc
    if not _verify_p256(att_key, parsed.signature, parsed.signed_bytes):
        raise SignatureInvalid("the quote signature does not verify with the attestation key", check="dcap.signature")

    # 8. TD quotes: Intel's TDX module (constants; a tcbInfo narrows them in step 9)
    body = parsed.body
    if isinstance(body, TdReportBody) and (collateral is None or collateral.tcb_info is None):
        for value, check, message in (
            (body.mr_signer_seam, "dcap.td.mr_signer_seam", "MRSIGNERSEAM is not zero: the TDX module is not Intel's"),
            (
                body.seam_attributes,
                "dcap.td.seam_attributes",
                "SEAM_ATTRIBUTES is not zero: the TDX module runs in an unsupported (e.g. debug) mode",
            ),
        ):
            if any(value):
                raise ChainError(message, check=check, got=value.hex(), expected="00" * len(value))

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
