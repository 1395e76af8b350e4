"""Intel DCAP collateral: strict loading, signature checks (exact signed text), CRLs and revocation, validity
windows, identity cross-checks, TCB level matching and status convergence, and the statuses through the policy.

Real collateral (tests/vectors/tdx/collateral) where it covers a case; a throwaway test PKI (dcap_support)
for the statuses and failures no real document shows."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import dcap_support as ds
import pytest
from conftest import read_vector
from cryptography.hazmat.primitives.asymmetric import ec
from test_dcap_vectors import COLLATERAL_2023_AT, collateral_2023, quote_of

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.evidence import VerifiedEvidence, seal_bound
from cc_kernel.attestation.platforms.intel_collateral import (
    COLLATERAL_ITEMS,
    DcapCollateral,
    load_collateral,
    load_crl,
    load_qe_identity,
    load_tcb_info,
)
from cc_kernel.attestation.platforms.intel_dcap import verify_quote
from cc_kernel.attestation.platforms.intel_quote import TEE_TYPE_SGX
from cc_kernel.attestation.platforms.intel_tcb import verify_document_signature
from cc_kernel.attestation.policy import load_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    PolicyViolation,
    SignatureInvalid,
    StaleEvidence,
    UntrustedRoot,
)

NOW = ds.TEST_NOW
REAL = "tdx/collateral/"
P = ds.pad16


@pytest.fixture(scope="module")
def pki() -> ds.TestPki:
    return ds.make_pki()


def run(
    pki: ds.TestPki,
    quote: bytes | None = None,
    *,
    unsafe_expired: bool = False,
    drop: tuple[str, ...] = (),
    now: Any = NOW,
    **files: Any,
) -> VerifiedEvidence:
    """Verify ``quote`` (default: a v4 TD quote) with complete test collateral, items replaced by ``files``
    (or built from the ``levels``/``qe_levels``/tcbInfo keywords) and items in ``drop`` left out."""
    collateral_kwargs = {k: files.pop(k) for k in list(files) if k not in COLLATERAL_ITEMS}
    tdx = collateral_kwargs.pop("tdx", True)
    items = {**ds.full_collateral_files(pki, tdx=tdx, **collateral_kwargs), **files}
    for name in drop:
        items.pop(name)
    collateral = load_collateral(items, unsafe_accept_expired_tcb_signing_cert=unsafe_expired)
    return verify_quote(quote or ds.build_quote(pki), anchors=pki.anchors, now=now, collateral=collateral)


def tcb(ev: VerifiedEvidence) -> dict[str, Any]:
    claims = ev.claims["tcb"]
    assert isinstance(claims, dict)
    return claims


# --- complete, current collateral ---------------------------------------------------------------------------


def test_complete_collateral_gives_a_tcb_status(pki: ds.TestPki) -> None:
    ev = run(pki)
    assert ev.tcb_status == "UpToDate" and ev.warnings == ()
    claims = tcb(ev)
    assert claims["complete"] is True and claims["missing"] == []
    assert claims["tdx_module"]["id"] == "TDX_01" and claims["qe_identity"]["status"] == "UpToDate"
    assert claims["pck_crl"]["revoked_count"] == 0 and claims["tcb_info"]["fmspc"] == ds.TEST_FMSPC.hex()


def test_sgx_collateral(pki: ds.TestPki) -> None:
    ev = run(pki, ds.sgx_quote(pki), tdx=False)
    assert ev.tcb_status == "UpToDate" and "tdx_module" not in tcb(ev)
    older = [ds.sgx_level(P(9, 9), 13, "UpToDate"), ds.sgx_level(P(4, 4), 13, "SWHardeningNeeded")]
    assert run(pki, ds.sgx_quote(pki), tdx=False, levels=older).tcb_status == "SWHardeningNeeded"


def test_sgx_tcbinfo_version_2(pki: ds.TestPki) -> None:
    value = {
        "version": 2,
        "issueDate": "2025-05-30T00:00:00Z",
        "nextUpdate": "2025-06-29T00:00:00Z",
        "fmspc": ds.TEST_FMSPC.hex(),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 12,
        "tcbLevels": [
            {
                "tcb": {**{f"sgxtcbcomp{i:02d}svn": c for i, c in enumerate(P(4, 4, 2), 1)}, "pcesvn": 13},
                "tcbDate": "2024-01-01T00:00:00Z",
                "tcbStatus": "ConfigurationNeeded",
            }
        ],
    }
    info = ds.signed_document(pki.signing_key, "tcbInfo", value)
    ev = run(pki, ds.sgx_quote(pki), tdx=False, tcb_info=info)
    assert ev.tcb_status == "ConfigurationNeeded"
    assert tcb(ev)["tcb_info"]["version"] == 2


# --- TCB level matching and convergence ---------------------------------------------------------------------


LEVEL_OK = ds.tdx_level(P(4, 4, 2, 2, 4, 1, 0, 5), 13, P(5, 0, 3), "UpToDate")


@pytest.mark.parametrize(
    ("spec", "tee", "levels", "expected"),
    [
        (ds.PckSpec(), "0b0104", None, "UpToDate"),
        (ds.PckSpec(components=P(2, 2, 2, 2, 3, 1, 0, 5)), "0b0104", None, "OutOfDate"),  # older SGX comps
        (ds.PckSpec(pcesvn=12), "0b0104", None, "NoMatchingTcbLevel"),  # PCESVN below every level
        (ds.PckSpec(), "0b0102", None, "OutOfDate"),  # TDX late microcode below the newest level
        (ds.PckSpec(), "0b0101", None, "NoMatchingTcbLevel"),  # below every TDX level
        (ds.PckSpec(), "0b0002", None, "OutOfDate"),  # TDX 1.0 module: bytes compared from 0, [2] 2 < 3
        (ds.PckSpec(), "050003", None, "UpToDate"),  # TDX 1.0: [5, 0, 3] >= [5, 0, 3], tdxModule applies
        (ds.PckSpec(), "040003", None, "NoMatchingTcbLevel"),  # TDX 1.0: SVN 4 < 5 in every level
        (ds.PckSpec(), "0b0104", [ds.tdx_level(P(4, 4), 13, P(5, 0, 3), "SWHardeningNeeded")], "SWHardeningNeeded"),
        (ds.PckSpec(), "0b0104", [ds.tdx_level(P(4, 4), 13, P(5, 0, 3), "Revoked")], "Revoked"),
    ],
)
def test_tcb_level_matching(pki: ds.TestPki, spec: ds.PckSpec, tee: str, levels: Any, expected: str) -> None:
    tee_svn = bytes.fromhex(tee) + bytes(13)
    ev = run(
        pki.with_pck(spec=spec),
        ds.build_quote(pki.with_pck(spec=spec), body=ds.td_body(tee_tcb_svn=tee_svn)),
        levels=levels,
    )
    assert ev.tcb_status == expected
    if expected == "NoMatchingTcbLevel":
        assert "no" in tcb(ev)["reason"] and "matches" in tcb(ev)["reason"]


def test_a_tdx_10_module_is_checked_against_tdx_module(pki: ds.TestPki) -> None:
    quote = ds.build_quote(pki, body=ds.td_body(tee_tcb_svn=bytes.fromhex("050003") + bytes(13)))
    ev = run(pki, quote)
    assert tcb(ev)["tdx_module"] == {"id": None, "version": 0, "isvsvn": 5, "status": "UpToDate"}
    with pytest.raises(ChainError) as info:
        run(pki, quote, tdx_module_mrsigner=b"\x01" * 48)
    assert info.value.check == "collateral.tdx_module.mrsigner"


@pytest.mark.parametrize(
    ("module_levels", "level_status", "expected"),
    [
        ([(12, "UpToDate"), (6, "OutOfDate")], "UpToDate", "OutOfDate"),
        ([(12, "UpToDate"), (6, "OutOfDate")], "SWHardeningNeeded", "OutOfDate"),
        ([(12, "UpToDate"), (6, "OutOfDate")], "ConfigurationNeeded", "OutOfDateConfigurationNeeded"),
        ([(12, "UpToDate"), (6, "OutOfDate")], "ConfigurationAndSWHardeningNeeded", "OutOfDateConfigurationNeeded"),
        ([(12, "UpToDate"), (6, "Revoked")], "UpToDate", "Revoked"),
        ([(6, "UpToDate")], "ConfigurationNeeded", "ConfigurationNeeded"),
        ([(12, "UpToDate")], "UpToDate", "NoMatchingTcbLevel"),  # module ISVSVN 11 below every level
    ],
)
def test_tdx_module_status_converges(pki: ds.TestPki, module_levels: Any, level_status: str, expected: str) -> None:
    levels = [ds.tdx_level(P(4, 4, 2, 2, 4, 1, 0, 5), 13, P(5, 0, 3), level_status)]
    ev = run(pki, levels=levels, modules=[ds.module_identity(1, module_levels)])
    assert ev.tcb_status == expected


def test_a_module_version_the_tcbinfo_does_not_know(pki: ds.TestPki) -> None:
    ev = run(pki, modules=[ds.module_identity(3, [(3, "UpToDate")])])
    assert ev.tcb_status == "NoMatchingTcbLevel" and "TDX_01" in tcb(ev)["reason"]


def test_the_module_identity_names_the_seam_signer(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, modules=[ds.module_identity(1, [(6, "UpToDate")], mrsigner=b"\x01" * 48)])
    assert info.value.check == "collateral.tdx_module.mrsigner"
    # and the collateral's value replaces the all-zero constant: a module signed by that key is accepted
    quote = ds.build_quote(pki, body=ds.td_body(mr_signer_seam=b"\x01" * 48))
    ev = run(pki, quote, modules=[ds.module_identity(1, [(6, "UpToDate")], mrsigner=b"\x01" * 48)])
    assert ev.tcb_status == "UpToDate"


@pytest.mark.parametrize(
    ("qe_levels", "level_status", "expected"),
    [
        ([(8, "UpToDate"), (4, "OutOfDate")], "UpToDate", "OutOfDate"),
        ([(8, "UpToDate"), (4, "OutOfDate")], "ConfigurationNeeded", "OutOfDateConfigurationNeeded"),
        ([(8, "UpToDate"), (4, "Revoked")], "UpToDate", "Revoked"),
        ([(8, "UpToDate")], "UpToDate", "NoMatchingTcbLevel"),  # QE ISVSVN 7 below every level
        ([(7, "UpToDate")], "SWHardeningNeeded", "SWHardeningNeeded"),
    ],
)
def test_qe_status_converges(pki: ds.TestPki, qe_levels: Any, level_status: str, expected: str) -> None:
    levels = [ds.tdx_level(P(4, 4, 2, 2, 4, 1, 0, 5), 13, P(5, 0, 3), level_status)]
    ev = run(pki, levels=levels, qe_levels=qe_levels)
    assert ev.tcb_status == expected
    if expected == "NoMatchingTcbLevel":
        assert "QE" in tcb(ev)["reason"]


OUTDATED_MODULE = [ds.module_identity(1, [(12, "UpToDate"), (6, "OutOfDate")])]


@pytest.mark.parametrize(
    ("svn2", "qe_levels", "expected", "relaunch"),
    [
        ("0c0104", None, "TDRelaunchAdvised", True),  # the updated module (12) would be up to date
        ("0b0104", None, "OutOfDate", False),  # nothing newer installed
        ("0c0104", [(8, "UpToDate"), (4, "OutOfDate")], "OutOfDate", False),  # the QE is out of date too
        ("070003", None, "TDRelaunchAdvised", True),  # TDX 1.0 svn2: [0] 7 >= 5 and [2] 3 >= 3 of the newest level
        ("070002", None, "OutOfDate", False),  # TDX 1.0 svn2 with an old late microcode
    ],
)
def test_td_relaunch_advised(pki: ds.TestPki, svn2: str, qe_levels: Any, expected: str, relaunch: bool) -> None:
    body = ds.td_body(td15=True, tee_tcb_svn2=bytes.fromhex(svn2) + bytes(13))
    quote = ds.build_quote(pki, version=5, body_type=3, body=body)
    ev = run(pki, quote, modules=OUTDATED_MODULE, qe_levels=qe_levels)
    assert ev.tcb_status == expected and tcb(ev)["relaunch_advised"] is relaunch


def test_td_relaunch_configuration_needed(pki: ds.TestPki) -> None:
    body = ds.td_body(td15=True, tee_tcb_svn2=bytes.fromhex("0c0104") + bytes(13))
    levels = [ds.tdx_level(P(4, 4, 2, 2, 4, 1, 0, 5), 13, P(5, 0, 3), "ConfigurationNeeded")]
    ev = run(pki, ds.build_quote(pki, version=5, body_type=3, body=body), levels=levels, modules=OUTDATED_MODULE)
    assert ev.tcb_status == "TDRelaunchAdvisedConfigurationNeeded"


# --- partial collateral -------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["qe_identity", "pck_crl", "root_crl", "tcb_info"])
def test_partial_collateral_gives_no_tcb_status(pki: ds.TestPki, missing: str) -> None:
    ev = run(pki, drop=(missing,))
    assert ev.tcb_status is None and ev.warnings == ("tcb-collateral-incomplete",)
    assert tcb(ev)["missing"] == [missing]
    assert tcb(ev)["status"] == (None if missing == "tcb_info" else "UpToDate")


def test_a_final_negative_status_stands_with_partial_collateral(pki: ds.TestPki) -> None:
    quote = ds.build_quote(pki.with_pck(spec=ds.PckSpec(pcesvn=1)))
    ev = run(pki, quote, drop=("qe_identity", "pck_crl"))
    assert ev.tcb_status == "NoMatchingTcbLevel" and "tcb-collateral-incomplete" in ev.warnings
    revoked = [ds.tdx_level(P(4, 4), 13, P(5, 0, 3), "Revoked")]
    assert run(pki, levels=revoked, drop=("root_crl",)).tcb_status == "Revoked"


def test_crls_alone_check_revocation(pki: ds.TestPki) -> None:
    ev = run(pki, drop=("tcb_info", "qe_identity", "tcb_signing_chain"))
    assert ev.tcb_status is None and tcb(ev)["pck_crl"]["revoked_count"] == 0
    with pytest.raises(ChainError):
        run(
            pki,
            drop=("tcb_info", "qe_identity", "tcb_signing_chain"),
            pck_crl=ds.crl(pki.ca, pki.ca_key, (pki.pck.serial_number,)),
        )


def test_collateral_constructor_rules() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DcapCollateral()
    with pytest.raises(ValueError, match="tcb_signing_chain"):
        DcapCollateral(tcb_info=load_tcb_info(read_vector(REAL + "tcbinfo-tdx-90c06f000000-2026-02-01.json")))
    with pytest.raises(ValueError, match="unknown collateral"):
        load_collateral({"tcbinfo": b"{}"})


# --- signatures over the exact served text ------------------------------------------------------------------


def _real(name: str) -> bytes:
    return read_vector(REAL + name)


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("tcbinfo-tdx-50806f000000-2023-06-18.json", b'"tcbEvaluationDataNumber":15', b'"tcbEvaluationDataNumber":16'),
        ("tcbinfo-tdx-50806f000000-2023-06-18.json", b'"pcesvn":11', b'"pcesvn":10'),
        ("tcbinfo-tdx-90c06f000000-2026-02-01.json", b'"tcbStatus":"OutOfDate"', b'"tcbStatus":"UpToDate"'),
        ("tcbinfo-tdx-90c06f000000-2026-02-01.json", b'"version":3,', b'"version":3 ,'),  # whitespace counts
        ("qe-identity-td-qe-2023-06-08.json", b'"isvsvn":4', b'"isvsvn":3'),
    ],
)
def test_a_tampered_real_document_fails_its_signature(name: str, old: bytes, new: bytes) -> None:
    raw = _real(name)
    assert raw.count(old) >= 1
    tampered = raw.replace(old, new, 1)
    doc = load_tcb_info(tampered) if name.startswith("tcbinfo") else load_qe_identity(tampered)
    chain = load_collateral(
        {
            "tcb_signing_chain": _real("intel-sgx-tcb-signing-chain.pem"),
            "root_crl": _real("intel-sgx-root-ca-crl-2023-04-03.der"),
        }
    ).tcb_signing_chain
    key = chain[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    original = load_tcb_info(raw) if name.startswith("tcbinfo") else load_qe_identity(raw)
    item = "tcb_info" if name.startswith("tcbinfo") else "qe_identity"
    verify_document_signature(original.signed, key, item)
    with pytest.raises(SignatureInvalid) as info:
        verify_document_signature(doc.signed, key, item)
    assert info.value.check == f"collateral.{item}.signature"


def test_a_tampered_tcbinfo_fails_verification_of_the_spr_quote() -> None:
    good = collateral_2023()
    tampered = load_tcb_info(_real("tcbinfo-tdx-50806f000000-2023-06-18.json").replace(b'"svn":5', b'"svn":2', 2))
    with pytest.raises(SignatureInvalid) as info:
        verify_quote(
            quote_of("gotdx-spr-e4-v4"),
            anchors=hardware_anchors(),
            now=COLLATERAL_2023_AT,
            collateral=dataclasses.replace(good, tcb_info=tampered),
        )
    assert info.value.check == "collateral.tcb_info.signature"


def test_documents_signed_by_another_key(pki: ds.TestPki) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureInvalid) as info:
        run(pki, tcb_info=ds.tcb_info(pki, ds.DEFAULT_TDX_LEVELS, signer=rogue))
    assert info.value.check == "collateral.tcb_info.signature"
    other = ds.make_pki()
    with pytest.raises(SignatureInvalid) as info:
        run(pki, qe_identity=ds.qe_identity(other, [(7, "UpToDate")]))
    assert info.value.check == "collateral.qe_identity.signature"


def test_a_tcb_signing_chain_to_another_root(pki: ds.TestPki) -> None:
    other = ds.make_pki()
    with pytest.raises(UntrustedRoot) as info:
        run(pki, tcb_signing_chain=other.signing_chain_pem())
    assert info.value.check == "collateral.tcb_signing.chain.anchor"


def test_the_real_tcb_signing_chain_cannot_vouch_for_a_test_quote(pki: ds.TestPki) -> None:
    """The collateral must chain to the root that verified the quote, not to any pinned root."""
    with pytest.raises(UntrustedRoot) as info:
        run(pki, tcb_signing_chain=_real("intel-sgx-tcb-signing-chain.pem"))
    assert info.value.check == "collateral.tcb_signing.chain.anchor"


def test_the_tcb_signing_chain_must_start_with_the_tcb_signing_certificate(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, tcb_signing_chain=ds.pem(pki.ca, pki.root))
    assert info.value.check == "collateral.tcb_signing.role"


def test_an_expired_tcb_signing_certificate(pki: ds.TestPki) -> None:
    expired = ds.make_cert(
        "Intel SGX TCB Signing",
        pki.signing_key,
        issuer=pki.root,
        issuer_key=pki.root_key,
        ca=False,
        not_after=NOW - timedelta(days=1),
    )
    with pytest.raises(CertificateExpired) as info:
        run(pki, tcb_signing_chain=ds.pem(expired, pki.root))
    assert info.value.check == "collateral.tcb_signing.chain.validity" and info.value.index == 0
    ev = run(pki, tcb_signing_chain=ds.pem(expired, pki.root), unsafe_expired=True)
    assert ev.tcb_status == "UpToDate" and ev.warnings == ("tcb-signing-cert-expired",)
    assert tcb(ev)["tcb_signing"]["expired_accepted"] is True


def test_the_expired_signing_weakening_covers_nothing_but_expiry(pki: ds.TestPki) -> None:
    not_yet = ds.make_cert(
        "Intel SGX TCB Signing",
        pki.signing_key,
        issuer=pki.root,
        issuer_key=pki.root_key,
        ca=False,
        not_before=NOW + timedelta(days=1),
    )
    with pytest.raises(CertificateExpired):
        run(pki, tcb_signing_chain=ds.pem(not_yet, pki.root), unsafe_expired=True)
    rogue = ds.make_pki()
    expired_rogue = ds.make_cert(
        "Intel SGX TCB Signing",
        rogue.signing_key,
        issuer=rogue.root,
        issuer_key=rogue.root_key,
        ca=False,
        not_after=NOW - timedelta(days=1),
    )
    with pytest.raises(UntrustedRoot):
        run(pki, tcb_signing_chain=ds.pem(expired_rogue, rogue.root), unsafe_expired=True)


# --- CRLs ---------------------------------------------------------------------------------------------------


def test_a_revoked_pck(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, pck_crl=ds.crl(pki.ca, pki.ca_key, (12345, pki.pck.serial_number)))
    assert info.value.check == "collateral.pck.revoked"
    assert info.value.got == format(pki.pck.serial_number, "x")


def test_a_revoked_pck_ca(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, root_crl=ds.crl(pki.root, pki.root_key, (pki.ca.serial_number,)))
    assert info.value.check == "collateral.pck_ca.revoked"


def test_a_revoked_tcb_signing_certificate(pki: ds.TestPki) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, root_crl=ds.crl(pki.root, pki.root_key, (pki.signing.serial_number,)))
    assert info.value.check == "collateral.tcb_signing.revoked"


def test_a_crl_of_another_ca(pki: ds.TestPki) -> None:
    processor = ds.make_cert(
        "Intel SGX PCK Processor CA", pki.ca_key, issuer=pki.root, issuer_key=pki.root_key, ca=True
    )
    with pytest.raises(ChainError) as info:
        run(pki, pck_crl=ds.crl(processor, pki.ca_key))
    assert info.value.check == "collateral.pck_crl.issuer"


def test_a_crl_forged_under_the_right_name(pki: ds.TestPki) -> None:
    with pytest.raises(SignatureInvalid) as info:
        run(pki, pck_crl=ds.crl(pki.ca, ec.generate_private_key(ec.SECP256R1())))
    assert info.value.check == "collateral.pck_crl.signature"
    with pytest.raises(SignatureInvalid) as info:
        run(pki, root_crl=ds.crl(pki.root, pki.ca_key))
    assert info.value.check == "collateral.root_crl.signature"


def test_the_real_crls() -> None:
    pck_crl = load_crl(_real("pck-platform-ca-crl-2023-06-08.der"))
    assert len(list(pck_crl)) == 44
    assert pck_crl.get_revoked_certificate_by_serial_number(0x6FC34E5023E728923435D61AA4B83C618166AD35) is not None
    assert len(list(load_crl(_real("intel-sgx-root-ca-crl-2023-04-03.der")))) == 0


# --- validity windows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "files"),
    [
        ("tcb_info", {"next_update": NOW - timedelta(seconds=1)}),
        ("tcb_info", {"issue": NOW + timedelta(hours=1)}),
    ],
)
def test_out_of_date_tcbinfo(pki: ds.TestPki, item: str, files: dict[str, Any]) -> None:
    with pytest.raises(StaleEvidence) as info:
        run(pki, **files)
    assert info.value.check == f"collateral.{item}.window"


def test_out_of_date_qe_identity_and_crls(pki: ds.TestPki) -> None:
    old = NOW - timedelta(days=40)
    with pytest.raises(StaleEvidence) as info:
        run(pki, qe_identity=ds.qe_identity(pki, [(7, "UpToDate")], issue=old, next_update=old + timedelta(days=30)))
    assert info.value.check == "collateral.qe_identity.window"
    with pytest.raises(StaleEvidence) as info:
        run(pki, pck_crl=ds.crl(pki.ca, pki.ca_key, last_update=old, next_update=old + timedelta(days=30)))
    assert info.value.check == "collateral.pck_crl.window"
    with pytest.raises(StaleEvidence) as info:
        run(pki, root_crl=ds.crl(pki.root, pki.root_key, last_update=NOW + timedelta(days=1)))
    assert info.value.check == "collateral.root_crl.window" and "not yet valid" in info.value.message


# --- identity cross-checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"fmspc": bytes.fromhex("00606a000000")}, "collateral.tcb_info.fmspc"),
        ({"pce_id": b"\x00\x01"}, "collateral.tcb_info.pce_id"),
    ],
)
def test_tcbinfo_for_another_platform(pki: ds.TestPki, kwargs: dict[str, Any], check: str) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, **kwargs)
    assert info.value.check == check


def test_tcbinfo_of_the_wrong_kind(pki: ds.TestPki) -> None:
    sgx_info = ds.tcb_info(pki, [ds.sgx_level(P(4, 4), 13, "UpToDate")], tcb_id="SGX")
    with pytest.raises(ChainError) as info:
        run(pki, tcb_info=sgx_info)
    assert info.value.check == "collateral.tcb_info.id"


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"qe_id": "QE"}, "collateral.qe_identity.id"),
        ({"mrsigner": b"\x01" * 32}, "collateral.qe_identity.mrsigner"),
        ({"isvprodid": 3}, "collateral.qe_identity.isv_prod_id"),
    ],
)
def test_qe_identity_mismatch(pki: ds.TestPki, kwargs: dict[str, Any], check: str) -> None:
    with pytest.raises(ChainError) as info:
        run(pki, qe_identity=ds.qe_identity(pki, [(7, "UpToDate")], **kwargs))
    assert info.value.check == check


def test_qe_attributes_and_miscselect_under_their_masks(pki: ds.TestPki) -> None:
    # KSS (bit 7) is inside the mask FB..: a QE with KSS set is not the identity's QE
    quote = ds.build_quote(pki, qe_attributes=bytes.fromhex("95000000000000000300000000000000"))
    with pytest.raises(ChainError) as info:
        run(pki, quote)
    assert info.value.check == "collateral.qe_identity.attributes"
    # MODE64BIT (bit 2) is masked out (0xFB): a QE without it still matches
    quote = ds.build_quote(pki, qe_attributes=bytes.fromhex("11000000000000000300000000000000"))
    assert run(pki, quote).tcb_status == "UpToDate"
    value = json.loads(ds.qe_identity(pki, [(7, "UpToDate")]))["enclaveIdentity"]
    value["miscselect"] = "00000001"
    with pytest.raises(ChainError) as info:
        run(pki, qe_identity=ds.signed_document(pki.signing_key, "enclaveIdentity", value))
    assert info.value.check == "collateral.qe_identity.misc_select"


# --- strict loading -----------------------------------------------------------------------------------------


GOOD_DOC = '{"tcbInfo":{"a":1},"signature":"' + "ab" * 64 + '"}'


@pytest.mark.parametrize(
    ("data", "check"),
    [
        (b"\xff\xfe", "collateral.tcb_info.utf8"),
        (b"[]", "collateral.tcb_info.json"),
        (b'{"tcbInfo":{"a":1},"signature":"' + b"ab" * 64 + b'"} x', "collateral.tcb_info.json"),
        (b'{"tcbInfo":{"a":1,"a":2},"signature":"' + b"ab" * 64 + b'"}', "collateral.tcb_info.json"),
        (b'{"tcbInfo":{"a":1},"tcbInfo":{"a":1},"signature":"' + b"ab" * 64 + b'"}', "collateral.tcb_info.json"),
        (b'{"tcbInfo":{"a":NaN},"signature":"' + b"ab" * 64 + b'"}', "collateral.tcb_info.json"),
        (b'{"tcbInfo":{"a":1},"signature":"' + b"ab" * 64 + b'",}', "collateral.tcb_info.json"),
        (b'{"tcbInfo":{"a":1},"signature":"abcd"}', "collateral.tcb_info.field"),
        (b'{"tcbInfo":{"a":1},"signature":"' + b"ab" * 64 + b'","extra":1}', "collateral.tcb_info.json"),
        (b'{"tcbInfo":[1],"signature":"' + b"ab" * 64 + b'"}', "collateral.tcb_info.json"),
        (GOOD_DOC.encode(), "collateral.tcb_info.field"),  # well-formed envelope, no "version"
        (b" " * (1024 * 1024 + 1), "collateral.tcb_info.size"),
    ],
)
def test_malformed_tcbinfo_documents(data: bytes, check: str) -> None:
    with pytest.raises(MalformedEvidence) as info:
        load_tcb_info(data)
    assert info.value.check == check


def _mutated_tcbinfo(path: list[Any], value: Any) -> bytes:
    doc = json.loads(_real("tcbinfo-tdx-90c06f000000-2026-02-01.json"))
    target = doc["tcbInfo"]
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["fmspc"], "90c06f"),
        (["fmspc"], "zzc06f000000"),
        (["version"], True),
        (["version"], 4),
        (["id"], "SEV"),
        (["issueDate"], "yesterday"),
        (["issueDate"], "2026-02-01T14:49:26"),  # no time zone
        (["tcbLevels"], []),
        (["tcbLevels", 0, "tcbStatus"], "Fine"),
        (["tcbLevels", 0, "tcb", "sgxtcbcomponents"], [{"svn": 1}]),
        (["tcbLevels", 0, "tcb", "tdxtcbcomponents", 0, "svn"], 256),
        (["tcbLevels", 0, "tcb", "pcesvn"], -1),
        (["tcbLevels", 0, "tcb"], KeyError),
        (["tcbLevels", 0, "advisoryIDs"], [1]),
        (["tdxModule"], KeyError),
        (["tdxModuleIdentities", 0, "tcbLevels", 0, "tcb", "isvsvn"], "6"),
    ],
)
def test_malformed_tcbinfo_fields(path: list[Any], value: Any) -> None:
    with pytest.raises(MalformedEvidence) as info:
        load_tcb_info(_mutated_tcbinfo(path, value))
    assert info.value.check in ("collateral.tcb_info.field", "collateral.tcb_info.json")


@pytest.mark.parametrize("status", ["TDRelaunchAdvised", "TDRelaunchAdvisedConfigurationNeeded", "NoMatchingTcbLevel"])
@pytest.mark.parametrize("level", [["tcbLevels", 0], ["tdxModuleIdentities", 0, "tcbLevels", 0]])
def test_a_level_cannot_claim_a_status_only_the_verifier_derives(level: list[Any], status: str) -> None:
    """Intel's levels carry the seven PCS v4 statuses; "relaunch advised" and "no match" are verdicts."""
    with pytest.raises(MalformedEvidence, match="is not a known TCB status") as info:
        load_tcb_info(_mutated_tcbinfo([*level, "tcbStatus"], status))
    assert (info.value.check, info.value.got) == ("collateral.tcb_info.field", status)


def test_malformed_qe_identity_and_crls() -> None:
    doc = json.loads(_real("qe-identity-td-qe-2023-06-08.json"))
    doc["enclaveIdentity"]["mrsigner"] = "DC9E"
    with pytest.raises(MalformedEvidence) as info:
        load_qe_identity(json.dumps(doc).encode())
    assert info.value.check == "collateral.qe_identity.field"
    with pytest.raises(MalformedEvidence) as info:
        load_qe_identity(_real("tcbinfo-tdx-90c06f000000-2026-02-01.json"))
    assert info.value.check == "collateral.qe_identity.json"
    with pytest.raises(MalformedEvidence) as info:
        load_crl(b"\x30\x03\x02\x01\x01")
    assert info.value.check == "collateral.crl.parse"
    with pytest.raises(MalformedEvidence) as info:
        load_collateral({"tcb_signing_chain": b"not pem"})
    assert info.value.check == "collateral.tcb_signing_chain.pem"


def test_the_signed_text_is_cut_from_the_served_bytes() -> None:
    raw = _real("tcbinfo-tdx-50806f000000-2023-06-18.json")
    info = load_tcb_info(raw)
    start = raw.index(b'{"id"')
    assert info.signed.body == raw[start : raw.rindex(b',"signature"')]
    assert info.signed.signature.hex() == json.loads(raw)["signature"]
    signature = info.signed.signature.hex().encode()
    spaced = b'{ "tcbInfo" :\n' + info.signed.body + b' ,\n "signature" : "' + signature + b'" }'
    assert load_tcb_info(spaced).signed.body == info.signed.body


# --- statuses through the policy layer ----------------------------------------------------------------------


def appraise_tdx(ev: VerifiedEvidence, extra: str = "") -> AttestationResult:
    # relabelled only to drive the TDX policy clauses (a test root labels results "simulation")
    hardware = ds.relabelled(ev, "tdx")
    bound = seal_bound(
        evidence=hardware,
        tls_spki_sha256=b"\x55" * 32,
        audit_pub=b"\x44" * 32,
        nonce=b"\x33" * 32,
        session_id=b"\x22" * 16,
    )
    policy = load_policy(
        f'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["{"7d" * 48}"]\n'
        f'rtmr = {{ 1 = "{hardware.measurements["rtmr1"].hex()}", 2 = "{hardware.measurements["rtmr2"].hex()}" }}\n'
        f"{extra}"
    )
    return appraise(bound, policy, now=NOW)


def test_up_to_date_with_complete_collateral_is_affirming(pki: ds.TestPki) -> None:
    result = appraise_tdx(run(pki))
    assert result.status == "affirming" and result.tcb_status == "UpToDate" and result.unsafe_flags_used == ()


@pytest.mark.parametrize("status", ["OutOfDate", "SWHardeningNeeded", "ConfigurationNeeded"])
def test_weaker_statuses_need_unsafe_accept_tcb_status(pki: ds.TestPki, status: str) -> None:
    ev = run(pki, levels=[ds.tdx_level(P(4, 4), 13, P(5, 0, 3), status)])
    with pytest.raises(PolicyViolation) as info:
        appraise_tdx(ev)
    assert [(f.check, f.got) for f in info.value.failures] == [("policy.tcb_status", status)]
    result = appraise_tdx(ev, f'unsafe_accept_tcb_status = ["{status}"]\n')
    assert result.status == "warning" and result.unsafe_flags_used == ("unsafe_accept_tcb_status",)


@pytest.mark.parametrize("status", ["Revoked", "NoMatchingTcbLevel", "TDRelaunchAdvised"])
def test_statuses_no_policy_accepts(pki: ds.TestPki, status: str) -> None:
    if status == "NoMatchingTcbLevel":
        ev = run(pki, levels=[ds.tdx_level(P(9, 9), 13, P(5, 0, 3), "UpToDate")])
    elif status == "TDRelaunchAdvised":
        body = ds.td_body(td15=True, tee_tcb_svn2=bytes.fromhex("0c0104") + bytes(13))
        ev = run(pki, ds.build_quote(pki, version=5, body_type=3, body=body), modules=OUTDATED_MODULE)
    else:
        ev = run(pki, levels=[ds.tdx_level(P(4, 4), 13, P(5, 0, 3), status)])
    assert ev.tcb_status == status
    with pytest.raises(PolicyViolation) as info:
        appraise_tdx(ev, 'unsafe_accept_tcb_status = ["OutOfDate", "SWHardeningNeeded"]\n')
    assert [f.check for f in info.value.failures] == ["policy.tcb_status"]


def test_sgx_quote_with_tdx_collateral_is_refused(pki: ds.TestPki) -> None:
    quote = ds.build_quote(pki, version=3, tee_type=TEE_TYPE_SGX, body=ds.sgx_body())
    with pytest.raises(ChainError) as info:
        run(pki, quote)
    assert info.value.check == "collateral.qe_identity.id"  # the QE identity (TD_QE) is checked first
    with pytest.raises(ChainError) as info:
        run(pki, quote, drop=("qe_identity",))
    assert info.value.check == "collateral.tcb_info.id"
