"""verify_quote on quotes built with a throwaway test PKI: every authenticity check fails on exactly the input
it guards (everything else correctly signed), and the result's labels and fields are what the policy reads."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import dcap_support as ds
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.evidence import VerifiedEvidence, seal_bound
from cc_kernel.attestation.platforms.intel_dcap import SGX_QE_MRSIGNER, TD_QE_ISV_PROD_ID, TD_QE_MRSIGNER, verify_quote
from cc_kernel.attestation.platforms.intel_quote import TEE_TYPE_SGX
from cc_kernel.attestation.policy import load_policy
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    PolicyViolation,
    SignatureInvalid,
)


@pytest.fixture(scope="module")
def pki() -> ds.TestPki:
    return ds.make_pki()


def verify(pki: ds.TestPki, raw: bytes, **kwargs: object) -> VerifiedEvidence:
    return verify_quote(raw, anchors=pki.anchors, now=ds.TEST_NOW, **kwargs)  # type: ignore[arg-type]


def as_hardware(ev: VerifiedEvidence, platform: str) -> VerifiedEvidence:
    """A test-root result relabelled as hardware, ONLY to drive the TDX/SGX policy clauses: the verifier labels
    anything verified by a non-Intel root ``simulation`` (asserted in test_test_root_results_are_simulation)."""
    return ds.relabelled(ev, platform)


def appraise_as(ev: VerifiedEvidence, platform: str, policy_text: str) -> object:
    bound = seal_bound(
        evidence=as_hardware(ev, platform),
        tls_spki_sha256=b"\x55" * 32,
        audit_pub=b"\x44" * 32,
        nonce=b"\x33" * 32,
        session_id=b"\x22" * 16,
    )
    return appraise(bound, load_policy(policy_text), now=ds.TEST_NOW)


@pytest.mark.parametrize(
    ("kwargs", "platform_kind", "signed_end"),
    [
        ({"version": 4}, "td10", 632),
        ({"version": 5, "body_type": 2}, "td10", 638),
        ({"version": 5, "body_type": 3}, "td15", 702),
        ({"version": 3, "tee_type": TEE_TYPE_SGX}, "sgx", 432),
        ({"version": 4, "tee_type": TEE_TYPE_SGX}, "sgx", 432),
        ({"version": 5, "tee_type": TEE_TYPE_SGX}, "sgx", 438),
    ],
)
def test_test_root_results_are_simulation(
    pki: ds.TestPki, kwargs: dict[str, Any], platform_kind: str, signed_end: int
) -> None:
    ev = verify(pki, ds.build_quote(pki, **kwargs))
    assert ev.platform == "simulation"  # never "tdx"/"sgx-dcap": only Intel's pinned root gives those
    assert ev.anchor_sha256 == pki.anchors.roots[0].sha256
    assert ev.claims["body_kind"] == platform_kind and ev.claims["signed_length"] == signed_end
    assert ev.product == ("Intel SGX" if platform_kind == "sgx" else "Intel TDX")
    assert ev.report_data == b"\xda" * 64 and ev.debug is False
    assert ev.warnings == ("tcb-collateral-missing",)


def test_merging_test_and_hardware_anchors_still_labels_by_the_verifying_root(pki: ds.TestPki) -> None:
    merged = hardware_anchors().merged(pki.anchors)
    ev = verify_quote(ds.build_quote(pki), anchors=merged, now=ds.TEST_NOW)
    assert ev.platform == "simulation"


def test_evidence_hash_and_claims(pki: ds.TestPki) -> None:
    raw = ds.build_quote(pki, version=5, body_type=3, trailing=b"xyz")
    ev = verify(pki, raw)
    assert ev.evidence_sha256 == hashlib.sha256(raw).digest()
    assert ev.claims["trailing_bytes"] == 3 and "trailing-bytes" in ev.warnings
    assert ev.measurements["mr_servicetd"] == b"\x5d" * 48
    assert ev.claims["sept_ve_disable"] is True and ev.claims["td_attributes"] == 1 << 28
    assert ev.tcb == {"pcesvn": 13, "qe_isvsvn": 7, "tdx_module_svn": 11, "tdx_module_version": 1, "tdx_late_ucode": 4}


def test_a_debug_td_is_authentic_and_rejected_by_policy(pki: ds.TestPki) -> None:
    ev = verify(pki, ds.build_quote(pki, body=ds.td_body(td_attributes=1 | 1 << 28)))
    assert ev.debug is True and ev.claims["td_attributes_flags"]["debug"] is True  # type: ignore[index]
    policy = (
        f'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["{"7d" * 48}"]\nunsafe_skip_tcb_collateral = true\n'
        f'rtmr = {{ 1 = "{"02" * 48}", 2 = "{"03" * 48}" }}\n'
    )
    with pytest.raises(PolicyViolation) as info:
        appraise_as(ev, "tdx", policy)
    assert [f.check for f in info.value.failures] == ["policy.debug"]
    ok = verify(pki, ds.build_quote(pki))
    result = appraise_as(ok, "tdx", policy)
    assert result.status == "warning"  # type: ignore[attr-defined]


def test_a_debug_sgx_enclave(pki: ds.TestPki) -> None:
    ev = verify(pki, ds.sgx_quote(pki, body=ds.sgx_body(flags=0x07)))
    assert ev.debug is True and ev.platform == "simulation"


def test_rtmr_and_mrconfigid_pins_reach_the_policy(pki: ds.TestPki) -> None:
    ev = verify(pki, ds.build_quote(pki))
    base = f'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["{"7d" * 48}"]\nunsafe_skip_tcb_collateral = true\n'
    appraise_as(ev, "tdx", base + f'rtmr = {{ 1 = "{"02" * 48}", 2 = "{"03" * 48}" }}\nmr_config_id = "{"00" * 48}"\n')
    with pytest.raises(PolicyViolation) as info:
        appraise_as(ev, "tdx", base + f'rtmr = {{ 1 = "{"02" * 48}", 2 = "{"02" * 48}" }}\n')
    assert [f.check for f in info.value.failures] == ["policy.rtmr.2"]


def test_sgx_policy_clauses_read_the_sgx_claims(pki: ds.TestPki) -> None:
    ev = verify(pki, ds.sgx_quote(pki, body=ds.sgx_body(isv_prod_id=3, isv_svn=2)))
    policy = (
        f'version = 1\n[[accept]]\nplatform = "sgx-dcap"\nmrenclave = ["{"e1" * 32}"]\nmrsigner = ["{"51" * 32}"]\n'
        "isv_prod_id = 3\nmin_isv_svn = {svn}\nunsafe_skip_tcb_collateral = true\n"
    )
    assert appraise_as(ev, "sgx-dcap", policy.format(svn=2)).status == "warning"  # type: ignore[attr-defined]
    with pytest.raises(PolicyViolation) as info:
        appraise_as(ev, "sgx-dcap", policy.format(svn=3))
    assert [f.check for f in info.value.failures] == ["policy.min_isv_svn"]


def test_qe_report_data_that_does_not_bind_the_attestation_key(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(pki, qe_report_data=b"\x01" * 64))
    assert info.value.check == "dcap.qe_report.report_data"
    # the second half must be zero
    att = ec.generate_private_key(ec.SECP256R1())
    auth = bytes(range(32))
    half = hashlib.sha256(ds.raw_pub(att) + auth).digest() + b"\x00" * 31 + b"\x01"
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(pki, att_key=att, auth_data=auth, qe_report_data=half))
    assert info.value.check == "dcap.qe_report.report_data"


def test_qe_report_signed_by_another_key(pki: ds.TestPki) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify(pki, ds.build_quote(pki, qe_signing_key=ec.generate_private_key(ec.SECP256R1())))
    assert info.value.check == "dcap.qe_report.signature"


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"qe_mr_signer": b"\x01" * 32}, "dcap.qe_identity.mrsigner"),
        ({"qe_mr_signer": SGX_QE_MRSIGNER}, "dcap.qe_identity.mrsigner"),  # the SGX QE cannot sign a TD quote
        ({"qe_isv_prod_id": 1}, "dcap.qe_identity.isv_prod_id"),
        ({"qe_attributes": bytes.fromhex("17000000000000000300000000000000")}, "dcap.qe_report.debug"),
    ],
)
def test_the_qe_must_be_intels(pki: ds.TestPki, kwargs: dict[str, object], check: str) -> None:
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(pki, **kwargs))  # type: ignore[arg-type]
    assert info.value.check == check


def test_an_sgx_quote_needs_the_sgx_qe(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        verify(pki, ds.sgx_quote(pki, qe_mr_signer=TD_QE_MRSIGNER, qe_isv_prod_id=TD_QE_ISV_PROD_ID))
    assert info.value.check == "dcap.qe_identity.mrsigner"


def test_attestation_key_not_on_the_curve(pki: ds.TestPki) -> None:
    with pytest.raises(MalformedEvidence) as info:
        verify(pki, ds.build_quote(pki, att_pub=b"\x01" * 64))
    assert info.value.check == "dcap.attestation_key"


def test_quote_signed_by_another_attestation_key(pki: ds.TestPki) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    raw = ds.build_quote(pki, att_key=ec.generate_private_key(ec.SECP256R1()), att_pub=ds.raw_pub(other))
    with pytest.raises(SignatureInvalid) as info:
        verify(pki, raw)
    assert info.value.check == "dcap.signature"


@pytest.mark.parametrize(
    ("body", "check"),
    [
        (ds.td_body(mr_signer_seam=b"\x01" * 48), "dcap.td.mr_signer_seam"),
        (ds.td_body(seam_attributes=b"\x00" * 7 + b"\x80"), "dcap.td.seam_attributes"),
    ],
)
def test_the_tdx_module_must_be_intels(pki: ds.TestPki, body: bytes, check: str) -> None:
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(pki, body=body))
    assert info.value.check == check


def test_the_leaf_must_be_a_pck_certificate(pki: ds.TestPki) -> None:
    other = pki.with_pck(subject="Intel SGX TCB Signing")
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(other))
    assert info.value.check == "dcap.pck.role"


def test_the_pck_must_be_issued_by_a_pck_ca() -> None:
    odd = ds.make_pki(ca_cn="Some Other CA")
    with pytest.raises(ChainError) as info:
        verify(odd, ds.build_quote(odd))
    assert info.value.check == "dcap.pck.role"
    processor = ds.make_pki(ca_cn="Intel SGX PCK Processor CA")
    assert verify(processor, ds.build_quote(processor)).claims["pck"]["ca"] == "Intel SGX PCK Processor CA"  # type: ignore[index]


def test_a_pck_without_the_sgx_extension(pki: ds.TestPki) -> None:
    bare = ds.make_cert("Intel SGX PCK Certificate", pki.pck_key, issuer=pki.ca, issuer_key=pki.ca_key, ca=False)
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(pki, chain_pem=ds.pem(bare, pki.ca, pki.root)))
    assert info.value.check == "dcap.pck.extension"


def test_a_pck_with_a_p384_key(pki: ds.TestPki) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pck = ds.make_cert(
        "Intel SGX PCK Certificate",
        key,
        issuer=pki.ca,
        issuer_key=pki.ca_key,
        ca=False,
        sgx_ext=ds.sgx_extension(pki.spec),
    )
    with pytest.raises(ChainError) as info:
        verify(pki, ds.build_quote(pki, chain_pem=ds.pem(pck, pki.ca, pki.root)))
    assert info.value.check == "dcap.pck.key"


def test_an_expired_test_pck(pki: ds.TestPki) -> None:
    expired = pki.with_pck(not_after=ds.TEST_NOW - timedelta(seconds=1))
    with pytest.raises(CertificateExpired) as info:
        verify(pki, ds.build_quote(expired))
    assert info.value.check == "chain.validity" and info.value.index == 0


def test_a_pck_issued_by_another_ca_with_the_same_name(pki: ds.TestPki) -> None:
    rogue = ds.make_pki()  # same names, other keys
    with pytest.raises(SignatureInvalid) as info:
        verify(pki, ds.build_quote(pki, chain_pem=ds.pem(rogue.pck, pki.ca, pki.root)))
    assert info.value.check == "chain.signature" and info.value.index == 0
