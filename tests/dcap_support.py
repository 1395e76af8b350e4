"""Test helpers for Intel DCAP: a throwaway test PKI (root -> PCK CA -> PCK, root -> TCB Signing), correctly
signed quotes (SGX v3/v4/v5, TD report 1.0 and 1.5) and collateral (tcbInfo, QE identity, CRLs).

Everything here is signed correctly, so a test that changes one input makes exactly one check fail. The test
root is pinned as a ``simulation`` anchor (only Intel's real root may carry the ``intel-dcap`` label), so
verified results are labelled ``simulation``; tests that need the TDX/SGX policy clauses relabel them with
``relabelled`` and say so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.anchors import PinnedRoot, TrustAnchors
from cc_kernel.attestation.evidence import VerifiedEvidence, seal_verified
from cc_kernel.attestation.platforms.intel_dcap import (
    SGX_QE_ISV_PROD_ID,
    SGX_QE_MRSIGNER,
    TD_QE_ISV_PROD_ID,
    TD_QE_MRSIGNER,
)
from cc_kernel.attestation.platforms.intel_pck import SGX_EXTENSION_OID
from cc_kernel.attestation.platforms.intel_quote import INTEL_QE_VENDOR_ID, TEE_TYPE_SGX, TEE_TYPE_TDX

#: Test certificates are valid in this window; tests verify at ``TEST_NOW``.
TEST_NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
TEST_NOT_AFTER = datetime(2034, 1, 1, tzinfo=UTC)
TEST_NOW = datetime(2025, 6, 1, tzinfo=UTC)
TEST_ORG = "Confidential Python TEST - NOT INTEL"
TEST_FMSPC = bytes.fromhex("90c06f000000")
TEST_PCE_ID = bytes(2)
#: QE ATTRIBUTES as Intel's QEs have them: INIT | MODE64BIT | PROVISIONKEY... (flags 0x15), XFRM 0x03.
QE_ATTRIBUTES = bytes.fromhex("15000000000000000300000000000000")

_OID = SGX_EXTENSION_OID


# --- DER (just what the SGX extension needs) ----------------------------------------------------------------


def der_tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return der_tlv(0x06, bytes(out))


def der_int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return der_tlv(0x02, raw)


def der_seq(*items: bytes) -> bytes:
    return der_tlv(0x30, b"".join(items))


def der_pair(oid: str, value: bytes) -> bytes:
    return der_seq(der_oid(oid), value)


@dataclass(frozen=True)
class PckSpec:
    """The SGX extension values of a test PCK certificate."""

    fmspc: bytes = TEST_FMSPC
    pce_id: bytes = TEST_PCE_ID
    components: tuple[int, ...] = (4, 4, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
    pcesvn: int = 13
    sgx_type: int = 1


def sgx_extension(spec: PckSpec, *, drop: str | None = None, extra: bytes = b"") -> bytes:
    """DER of Intel's SGX extension; ``drop`` omits one top-level entry (by OID), ``extra`` appends raw DER."""
    tcb = der_seq(
        *(der_pair(f"{_OID}.2.{i + 1}", der_int(c)) for i, c in enumerate(spec.components)),
        der_pair(f"{_OID}.2.17", der_int(spec.pcesvn)),
        der_pair(f"{_OID}.2.18", der_tlv(0x04, bytes(c & 0xFF for c in spec.components))),
    )
    entries = {
        f"{_OID}.1": der_tlv(0x04, b"\x11" * 16),
        f"{_OID}.2": tcb,
        f"{_OID}.3": der_tlv(0x04, spec.pce_id),
        f"{_OID}.4": der_tlv(0x04, spec.fmspc),
        f"{_OID}.5": der_tlv(0x0A, bytes([spec.sgx_type])),
        f"{_OID}.6": der_tlv(0x04, b"\x22" * 16),
        f"{_OID}.7": der_seq(
            der_pair(f"{_OID}.7.1", der_tlv(0x01, b"\x00")),
            der_pair(f"{_OID}.7.2", der_tlv(0x01, b"\xff")),
            der_pair(f"{_OID}.7.3", der_tlv(0x01, b"\xff")),
        ),
    }
    return der_seq(*(der_pair(oid, value) for oid, value in entries.items() if oid != drop), extra)


# --- the test PKI -------------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORG)]
    )


def make_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ca: bool,
    not_before: datetime = TEST_NOT_BEFORE,
    not_after: datetime = TEST_NOT_AFTER,
    sgx_ext: bytes | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if sgx_ext is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), sgx_ext), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class TestPki:
    """Root -> PCK Platform CA -> PCK; root -> TCB Signing. Keys are P-256 like Intel's."""

    __test__ = False  # not a pytest test class

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey
    signing: x509.Certificate
    spec: PckSpec = field(default_factory=PckSpec)

    @property
    def anchors(self) -> TrustAnchors:
        return TrustAnchors(roots=(PinnedRoot(platform="simulation", product="Test DCAP root", certificate=self.root),))

    def chain_pem(self) -> bytes:
        return pem(self.pck, self.ca, self.root)

    def signing_chain_pem(self) -> bytes:
        return pem(self.signing, self.root)

    def with_pck(
        self,
        *,
        spec: PckSpec | None = None,
        not_before: datetime = TEST_NOT_BEFORE,
        not_after: datetime = TEST_NOT_AFTER,
        sgx_ext: bytes | None = None,
        subject: str = "Intel SGX PCK Certificate",
        serial: int | None = None,
    ) -> TestPki:
        """The same root and CA with a new PCK certificate (same key) carrying other values."""
        spec = spec or self.spec
        pck = make_cert(
            subject,
            self.pck_key,
            issuer=self.ca,
            issuer_key=self.ca_key,
            ca=False,
            not_before=not_before,
            not_after=not_after,
            sgx_ext=sgx_extension(spec) if sgx_ext is None else sgx_ext,
            serial=serial,
        )
        return TestPki(**{**self.__dict__, "pck": pck, "spec": spec})


def make_pki(spec: PckSpec | None = None, *, ca_cn: str = "Intel SGX PCK Platform CA") -> TestPki:
    spec = spec or PckSpec()
    root_key, ca_key, pck_key, signing_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = make_cert("Test SGX Root CA", root_key, ca=True)
    ca = make_cert(ca_cn, ca_key, issuer=root, issuer_key=root_key, ca=True)
    pck = make_cert(
        "Intel SGX PCK Certificate", pck_key, issuer=ca, issuer_key=ca_key, ca=False, sgx_ext=sgx_extension(spec)
    )
    signing = make_cert("Intel SGX TCB Signing", signing_key, issuer=root, issuer_key=root_key, ca=False)
    return TestPki(root_key, root, ca_key, ca, pck_key, pck, signing_key, signing, spec)


# --- quotes -------------------------------------------------------------------------------------------------


def raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def td_body(
    *,
    tee_tcb_svn: bytes = bytes.fromhex("0b010400000000000000000000000000"),
    mr_seam: bytes = b"\x5e" * 48,
    mr_signer_seam: bytes = bytes(48),
    seam_attributes: bytes = bytes(8),
    td_attributes: int = 1 << 28,
    xfam: bytes = bytes.fromhex("e702060000000000"),
    mr_td: bytes = b"\x7d" * 48,
    mr_config_id: bytes = bytes(48),
    rtmrs: tuple[bytes, ...] = (b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, bytes(48)),
    report_data: bytes = b"\xda" * 64,
    td15: bool = False,
    tee_tcb_svn2: bytes = bytes.fromhex("0b010400000000000000000000000000"),
    mr_servicetd: bytes = b"\x5d" * 48,
) -> bytes:
    body = (
        tee_tcb_svn
        + mr_seam
        + mr_signer_seam
        + seam_attributes
        + td_attributes.to_bytes(8, "little")
        + xfam
        + mr_td
        + mr_config_id
        + b"\x0e" * 48  # MROWNER
        + b"\x0c" * 48  # MROWNERCONFIG
        + b"".join(rtmrs)
        + report_data
    )
    if td15:
        body += tee_tcb_svn2 + mr_servicetd
    return body


def sgx_body(
    *,
    cpu_svn: bytes = bytes(16),
    misc_select: int = 0,
    flags: int = 0x05,
    xfrm: int = 0x03,
    mr_enclave: bytes = b"\xe1" * 32,
    mr_signer: bytes = b"\x51" * 32,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    report_data: bytes = b"\xda" * 64,
) -> bytes:
    body = bytearray(384)
    body[0:16] = cpu_svn
    body[16:20] = misc_select.to_bytes(4, "little")
    body[48:56] = flags.to_bytes(8, "little")
    body[56:64] = xfrm.to_bytes(8, "little")
    body[64:96] = mr_enclave
    body[128:160] = mr_signer
    body[256:258] = isv_prod_id.to_bytes(2, "little")
    body[258:260] = isv_svn.to_bytes(2, "little")
    body[320:384] = report_data
    return bytes(body)


def build_quote(
    pki: TestPki,
    *,
    version: int = 4,
    tee_type: int = TEE_TYPE_TDX,
    body: bytes | None = None,
    body_type: int | None = None,
    att_key: ec.EllipticCurvePrivateKey | None = None,
    qe_mr_signer: bytes | None = None,
    qe_isv_prod_id: int | None = None,
    qe_isv_svn: int = 7,
    qe_attributes: bytes = QE_ATTRIBUTES,
    qe_report_data: bytes | None = None,
    qe_signing_key: ec.EllipticCurvePrivateKey | None = None,
    auth_data: bytes = bytes(range(32)),
    chain_pem: bytes | None = None,
    trailing: bytes = b"",
    header_reserved: bytes = bytes(4),
    att_pub: bytes | None = None,
) -> bytes:
    """A correctly signed quote; each keyword changes exactly one input (the signatures stay valid)."""
    tdx = tee_type == TEE_TYPE_TDX
    if body is None:
        body = td_body(td15=body_type == 3) if tdx else sgx_body()
    att_key = att_key or ec.generate_private_key(ec.SECP256R1())
    header = (
        version.to_bytes(2, "little")
        + (2).to_bytes(2, "little")
        + tee_type.to_bytes(4, "little")
        + header_reserved
        + INTEL_QE_VENDOR_ID
        + b"\xab" * 16
        + bytes(4)
    )
    if version == 5:
        if body_type is None:
            body_type = {584: 2, 648: 3, 384: 1}[len(body)]
        header += body_type.to_bytes(2, "little") + len(body).to_bytes(4, "little")
    signed = header + body
    att_pub = att_pub if att_pub is not None else raw_pub(att_key)
    default_prod = TD_QE_ISV_PROD_ID if tdx else SGX_QE_ISV_PROD_ID
    qe = bytearray(
        sgx_body(
            mr_enclave=b"\x9e" * 32,
            mr_signer=qe_mr_signer or (TD_QE_MRSIGNER if tdx else SGX_QE_MRSIGNER),
            isv_prod_id=qe_isv_prod_id if qe_isv_prod_id is not None else default_prod,
            isv_svn=qe_isv_svn,
            report_data=qe_report_data or hashlib.sha256(att_pub + auth_data).digest() + bytes(32),
        )
    )
    qe[48:64] = qe_attributes
    qe_report = bytes(qe)
    qe_sig = raw_sig(qe_signing_key or pki.pck_key, qe_report)
    chain = pki.chain_pem() if chain_pem is None else chain_pem
    type5 = (5).to_bytes(2, "little") + len(chain).to_bytes(4, "little") + chain
    qe_part = qe_report + qe_sig + len(auth_data).to_bytes(2, "little") + auth_data
    if version == 3:
        cert_data = qe_part + type5
    else:
        inner = qe_part + type5
        cert_data = (6).to_bytes(2, "little") + len(inner).to_bytes(4, "little") + inner
    sig_data = raw_sig(att_key, signed) + att_pub + cert_data
    return signed + len(sig_data).to_bytes(4, "little") + sig_data + trailing


def sgx_quote(pki: TestPki, **kwargs: Any) -> bytes:
    kwargs.setdefault("version", 3)
    return build_quote(pki, tee_type=TEE_TYPE_SGX, **kwargs)


# --- collateral ---------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_document(key: ec.EllipticCurvePrivateKey, name: str, value: dict[str, Any]) -> bytes:
    """``{"<name>": <value>, "signature": "<hex r||s>"}`` exactly as Intel serves it (compact JSON)."""
    text = json.dumps(value, separators=(",", ":"))
    return f'{{"{name}":{text},"signature":"{raw_sig(key, text.encode()).hex()}"}}'.encode()


def comps(values: list[int] | tuple[int, ...]) -> list[dict[str, int]]:
    return [{"svn": v} for v in values]


def tdx_level(
    sgx: tuple[int, ...], pcesvn: int, tdx: tuple[int, ...], status: str, *, advisories: tuple[str, ...] = ()
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "tcb": {"sgxtcbcomponents": comps(sgx), "pcesvn": pcesvn, "tdxtcbcomponents": comps(tdx)},
        "tcbDate": "2024-11-13T00:00:00Z",
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def sgx_level(sgx: tuple[int, ...], pcesvn: int, status: str) -> dict[str, Any]:
    return {
        "tcb": {"sgxtcbcomponents": comps(sgx), "pcesvn": pcesvn},
        "tcbDate": "2024-11-13T00:00:00Z",
        "tcbStatus": status,
    }


def pad16(*values: int) -> tuple[int, ...]:
    return tuple(values) + (0,) * (16 - len(values))


def module_identity(version: int, levels: list[tuple[int, str]], *, mrsigner: bytes = bytes(48)) -> dict[str, Any]:
    return {
        "id": f"TDX_{version:02X}",
        "mrsigner": mrsigner.hex().upper(),
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
        "tcbLevels": [
            {"tcb": {"isvsvn": svn}, "tcbDate": "2024-11-13T00:00:00Z", "tcbStatus": status} for svn, status in levels
        ],
    }


def tcb_info(
    pki: TestPki,
    levels: list[dict[str, Any]],
    *,
    tcb_id: str = "TDX",
    fmspc: bytes = TEST_FMSPC,
    pce_id: bytes = TEST_PCE_ID,
    issue: datetime = TEST_NOW - timedelta(days=2),
    next_update: datetime = TEST_NOW + timedelta(days=28),
    modules: list[dict[str, Any]] | None = None,
    tdx_module_mrsigner: bytes = bytes(48),
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    value: dict[str, Any] = {
        "id": tcb_id,
        "version": 3,
        "issueDate": _iso(issue),
        "nextUpdate": _iso(next_update),
        "fmspc": fmspc.hex(),
        "pceId": pce_id.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 18,
    }
    if tcb_id == "TDX":
        value["tdxModule"] = {
            "mrsigner": tdx_module_mrsigner.hex(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        }
        value["tdxModuleIdentities"] = modules if modules is not None else [module_identity(1, [(6, "UpToDate")])]
    value["tcbLevels"] = levels
    return signed_document(signer or pki.signing_key, "tcbInfo", value)


def qe_identity(
    pki: TestPki,
    levels: list[tuple[int, str]],
    *,
    qe_id: str = "TD_QE",
    mrsigner: bytes = TD_QE_MRSIGNER,
    isvprodid: int = TD_QE_ISV_PROD_ID,
    issue: datetime = TEST_NOW - timedelta(days=2),
    next_update: datetime = TEST_NOW + timedelta(days=28),
) -> bytes:
    value = {
        "id": qe_id,
        "version": 2,
        "issueDate": _iso(issue),
        "nextUpdate": _iso(next_update),
        "tcbEvaluationDataNumber": 18,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": mrsigner.hex().upper(),
        "isvprodid": isvprodid,
        "tcbLevels": [
            {"tcb": {"isvsvn": svn}, "tcbDate": "2024-11-13T00:00:00Z", "tcbStatus": status} for svn, status in levels
        ],
    }
    return signed_document(pki.signing_key, "enclaveIdentity", value)


def crl(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    revoked: tuple[int, ...] = (),
    *,
    last_update: datetime = TEST_NOW - timedelta(days=2),
    next_update: datetime = TEST_NOW + timedelta(days=28),
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last_update).build()
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


#: A TDX tcbInfo whose first level the default test PCK and TD body meet (UpToDate), then older levels.
DEFAULT_TDX_LEVELS = [
    tdx_level(pad16(4, 4, 2, 2, 4, 1, 0, 5), 13, pad16(5, 0, 3), "UpToDate"),
    tdx_level(pad16(2, 2, 2, 2, 3, 1, 0, 5), 13, pad16(5, 0, 2), "OutOfDate", advisories=("INTEL-SA-00001",)),
]


def full_collateral_files(
    pki: TestPki,
    *,
    levels: list[dict[str, Any]] | None = None,
    qe_levels: list[tuple[int, str]] | None = None,
    tdx: bool = True,
    **tcb_kwargs: Any,
) -> dict[str, bytes]:
    """Complete, current, correctly signed collateral for quotes built with ``pki``."""
    if tdx:
        info = tcb_info(pki, levels if levels is not None else DEFAULT_TDX_LEVELS, **tcb_kwargs)
        qe = qe_identity(pki, qe_levels or [(7, "UpToDate"), (4, "OutOfDate")])
    else:
        info = tcb_info(
            pki,
            levels if levels is not None else [sgx_level(pad16(4, 4, 2, 2, 4, 1, 0, 5), 13, "UpToDate")],
            tcb_id="SGX",
            **tcb_kwargs,
        )
        qe = qe_identity(
            pki, qe_levels or [(7, "UpToDate")], qe_id="QE", mrsigner=SGX_QE_MRSIGNER, isvprodid=SGX_QE_ISV_PROD_ID
        )
    return {
        "tcb_info": info,
        "qe_identity": qe,
        "pck_crl": crl(pki.ca, pki.ca_key),
        "root_crl": crl(pki.root, pki.root_key),
        "tcb_signing_chain": pki.signing_chain_pem(),
    }


def relabelled(ev: VerifiedEvidence, platform: str) -> VerifiedEvidence:
    """A test-root result sealed again under a hardware ``platform`` label, ONLY to drive the TDX/SGX policy
    clauses (the verifier labels anything a non-Intel root verified ``simulation``; a sealed value cannot be
    changed or copied, so the test seals a new one with the same fields)."""
    values = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}
    return seal_verified(**{**values, "platform": platform})
