"""Steps 2-5 of the SEV-SNP verifier (``verify_report``) on the real vectors, with their negative twins, and on
simulated reports for the checks no real vector exercises (each signed so that only the intended check fails).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from conftest import SNP_VERIFY_AT

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.attestation.platforms.sev_snp import verify_report
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    SignatureInvalid,
    UntrustedRoot,
    VerificationError,
)

Vector = Callable[[str], bytes]


@dataclass(frozen=True)
class SnpCase:
    """One real vector and the values testvectors/README.md says to assert."""

    name: str
    report: str
    vek: str
    chain: str
    version: int
    policy: int
    vmpl: int
    debug: bool
    signer: str
    measurement: str
    report_data: str
    tcb: dict[str, int]
    chip_id: str
    fw: str
    warnings: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)


CASES = [
    SnpCase(
        name="gosev-milan-v2-debug",
        report="sev-snp/gosev-milan-v2-debug.report.bin",
        vek="sev-snp/gosev-milan-v2-debug.vcek.der",
        chain="roots/amd-milan-vcek-ask-ark.pem",
        version=2,
        policy=0xB0000,
        vmpl=0,
        debug=True,
        signer="vcek",
        measurement="b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
        report_data="0102030405" + "00" * 59,
        tcb={"bl": 2, "tee": 0, "snp": 5, "ucode": 68},
        chip_id="3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
        fw="1.49.3",
    ),
    SnpCase(
        name="virtee-milan-v2",
        report="sev-snp/virtee-milan-v2.report.hex",
        vek="sev-snp/virtee-milan-v2.vcek.der",
        chain="roots/amd-milan-vcek-ask-ark.pem",
        version=2,
        policy=0x30000,
        vmpl=0,
        debug=False,
        signer="vcek",
        measurement="7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        report_data="d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd",
        tcb={"bl": 3, "tee": 0, "snp": 8, "ucode": 115},
        chip_id="d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6",
        fw="1.52.4",
    ),
    SnpCase(
        name="trustee-milan-v2-idblock",
        report="sev-snp/trustee-milan-v2-idblock.report.bin",
        vek="sev-snp/trustee-milan-v2-idblock.vcek.der",
        chain="roots/amd-milan-vcek-ask-ark.pem",
        version=2,
        policy=0x3001F,
        vmpl=0,
        debug=False,
        signer="vcek",
        measurement="a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
        report_data="ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2" + "00" * 32,
        tcb={"bl": 3, "tee": 0, "snp": 8, "ucode": 115},
        chip_id="c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e",
        fw="1.52.4",
        warnings=("provisional-firmware",),
        extra={
            "guest_svn": 4,
            "family_id": "01" + "00" * 15,
            "image_id": "02" + "00" * 15,
            "id_key_digest": (
                "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3"
            ),
        },
    ),
    SnpCase(
        name="trustee-milan-v3-vlek",
        report="sev-snp/trustee-milan-v3-vlek.report.bin",
        vek="sev-snp/trustee-milan-v3-vlek.vlek.der",
        chain="roots/amd-milan-vlek-asvk-ark.pem",
        version=3,
        policy=0x30000,
        vmpl=1,
        debug=False,
        signer="vlek",
        measurement="8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
        report_data="819770b7e6ea6df8dd8fd4dd146b073c0bf4f3ce5b0977ecac486e3a05ed1bd54e2a7ac1f5d1ca02e7d7d5ef9f73b8574fd9359e3a480d741a4478e8a7bc27ca",
        tcb={"bl": 4, "tee": 0, "snp": 24, "ucode": 217},
        chip_id="00" * 64,
        fw="1.55.29",
        warnings=("chip-id-masked", "provisional-firmware"),
        extra={"platform_info": 0x27, "cpuid": {"family": 0x19, "model": 0x01, "stepping": 0x01}},
    ),
    SnpCase(
        name="ccf-milan-v3",
        report="sev-snp/ccf-milan-v3.report.bin",
        vek="sev-snp/ccf-milan-v3.vcek.pem",
        chain="roots/amd-milan-vcek-ask-ark.pem",
        version=3,
        policy=0x3001F,
        vmpl=0,
        debug=False,
        signer="vcek",
        measurement="5feee30d6d7e1a29f403d70a4198237ddfb13051a2d6976439487c609388ed7f98189887920ab2fa0096903a0c23fca1",
        report_data="00" * 64,
        tcb={"bl": 4, "tee": 0, "snp": 24, "ucode": 219},
        chip_id="4ffb5cb4fd594f3fee6528fc3fb10370bb38abe89dcd5ba2cf0ab6a11df2ca282add516bef45a890a8c9f9732bdca68f9f3f16c42e846030a800295dbeb19ba5",
        fw="1.55.29",
        extra={"host_data": "4f4448c67f3c8dfc8de8a5e37125d807dadcc41f06cf23f615dbd52eec777d10"},
    ),
]
BY_NAME = {c.name: c for c in CASES}
GENOA_CHAIN = "roots/amd-genoa-vcek-ask-ark.pem"


def verify_case(vector: Vector, case: SnpCase, anchors: TrustAnchors, **kw: object) -> VerifiedEvidence:
    args: dict[str, object] = {"vek_der": vector(case.vek), "anchors": anchors, "now": SNP_VERIFY_AT}
    args.update(kw)
    return verify_report(vector(case.report), **args)  # type: ignore[arg-type]


def presented_chain(vector: Vector, chain: str) -> tuple[bytes, bytes]:
    """(intermediate PEM, ARK PEM) from a ``roots/`` chain file."""
    pem = vector(chain)
    end = b"-----END CERTIFICATE-----\n"
    first, second = pem.split(end)[:2]
    return first + end, second + end


def fail(exc_type: type[VerificationError], call: Callable[[], object]) -> VerificationError:
    with pytest.raises(exc_type) as info:
        call()
    return info.value


# --- authentic -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_real_report_is_authentic(vector: Vector, hw_anchors: TrustAnchors, case: SnpCase) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may leak (pytest's config ignores the serial-0 one)
        ve = verify_case(vector, case, hw_anchors)
    assert (ve.platform, ve.product, ve.signer) == ("sev-snp", "Milan", case.signer)
    assert ve.measurement.hex() == case.measurement
    assert ve.report_data.hex() == case.report_data
    assert ve.debug is case.debug
    assert dict(ve.tcb) == case.tcb
    assert ve.anchor_sha256.hex().startswith("69d063b4")  # ARK-Milan
    assert ve.evidence_sha256 == hashlib.sha256(vector(case.report)).digest()
    assert ve.verified_at == SNP_VERIFY_AT
    assert ve.warnings == case.warnings
    assert ve.tcb_status is None
    claims = ve.claims
    assert claims["version"] == case.version
    assert claims["policy"] == case.policy
    assert claims["vmpl"] == case.vmpl
    assert claims["chip_id"] == case.chip_id
    assert claims["current_fw"] == claims["committed_fw"] == case.fw
    assert claims["measurement"] == case.measurement
    assert claims["reported_tcb"] == {"raw": claims["reported_tcb"]["raw"], **case.tcb}  # type: ignore[index]
    assert claims["signing_key"] == case.signer
    for key, value in case.extra.items():
        assert claims[key] == value, key
    assert ve.measurements["measurement"] == ve.measurement
    assert set(ve.measurements) == {
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "family_id",
        "image_id",
    }


def test_claims_are_json_friendly(vector: Vector, hw_anchors: TrustAnchors) -> None:
    import json

    ve = verify_case(vector, BY_NAME["trustee-milan-v3-vlek"], hw_anchors)
    text = json.dumps(dict(ve.claims), sort_keys=True)
    assert "cc-us-east-2.amazonaws.com" in text
    assert ve.claims["vek"]["serial"] == 0  # type: ignore[index]
    assert ve.claims["policy_flags"]["debug"] is False  # type: ignore[index]
    assert ve.claims["platform_info_flags"]["alias_check_complete"] is True  # type: ignore[index]


def test_presented_chain_is_accepted(vector: Vector, hw_anchors: TrustAnchors) -> None:
    for case in CASES:
        ask, ark = presented_chain(vector, case.chain)
        ve = verify_case(vector, case, hw_anchors, ask_der=ask, ark_der=ark)
        assert ve.platform == "sev-snp"


def test_the_vlek_report_needs_now_inside_the_vlek_window(vector: Vector, hw_anchors: TrustAnchors) -> None:
    case = BY_NAME["trustee-milan-v3-vlek"]
    error = fail(
        CertificateExpired, lambda: verify_case(vector, case, hw_anchors, now=datetime(2026, 1, 1, tzinfo=UTC))
    )
    assert (error.check, error.index) == ("chain.validity", 0)


# --- negative twins of the real vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_flipped_measurement_bit_breaks_the_signature(
    vector: Vector, hw_anchors: TrustAnchors, case: SnpCase
) -> None:
    report = bytearray(vector(case.report))
    report[0x090] ^= 0x01
    error = fail(
        SignatureInvalid,
        lambda: verify_report(bytes(report), vek_der=vector(case.vek), anchors=hw_anchors, now=SNP_VERIFY_AT),
    )
    assert error.check == "snp.signature"


def test_milan_vcek_under_the_genoa_ask(vector: Vector, hw_anchors: TrustAnchors) -> None:
    genoa_ask, _ = presented_chain(vector, GENOA_CHAIN)
    error = fail(ChainError, lambda: verify_case(vector, BY_NAME["virtee-milan-v2"], hw_anchors, ask_der=genoa_ask))
    assert (error.check, error.index) == ("chain.issuer_name", 0)


def test_a_presented_ark_that_is_not_the_pinned_one(vector: Vector, hw_anchors: TrustAnchors) -> None:
    _, genoa_ark = presented_chain(vector, GENOA_CHAIN)
    error = fail(UntrustedRoot, lambda: verify_case(vector, BY_NAME["ccf-milan-v3"], hw_anchors, ark_der=genoa_ark))
    assert error.check == "snp.presented_ark"


def test_wrong_root_no_pinned_ark_for_the_product(vector: Vector, hw_anchors: TrustAnchors) -> None:
    without_milan = TrustAnchors(roots=tuple(r for r in hw_anchors.roots if r.product != "Milan"))
    for case in CASES:  # v2: product from the VEK's productName; v3: from CPUID
        error = fail(UntrustedRoot, lambda case=case: verify_case(vector, case, without_milan))  # type: ignore[misc]
        assert (error.check, error.got) == ("snp.anchor", "Milan")
    only_intel = TrustAnchors(roots=tuple(r for r in hw_anchors.roots if r.platform == "intel-dcap"))
    assert fail(UntrustedRoot, lambda: verify_case(vector, CASES[0], only_intel)).check == "snp.anchor"


def test_a_report_with_another_chips_vcek(vector: Vector, hw_anchors: TrustAnchors) -> None:
    error = fail(
        ChainError,
        lambda: verify_report(
            vector(BY_NAME["gosev-milan-v2-debug"].report),
            vek_der=vector(BY_NAME["virtee-milan-v2"].vek),
            anchors=hw_anchors,
            now=SNP_VERIFY_AT,
        ),
    )
    assert error.check == "snp.vek.hwid"


def test_vlek_report_with_a_vcek(vector: Vector, hw_anchors: TrustAnchors) -> None:
    case = BY_NAME["trustee-milan-v3-vlek"]
    vcek = vector(BY_NAME["ccf-milan-v3"].vek)
    # the pinned ASVK is used for a VLEK report: a VCEK (issued by SEV-Milan) does not chain to it
    error = fail(ChainError, lambda: verify_case(vector, case, hw_anchors, vek_der=vcek))
    assert (error.check, error.index) == ("chain.issuer_name", 0)
    # presenting the ASK to make the chain work still fails on the VEK role
    ask, _ = presented_chain(vector, BY_NAME["ccf-milan-v3"].chain)
    error = fail(ChainError, lambda: verify_case(vector, case, hw_anchors, vek_der=vcek, ask_der=ask))
    assert (error.check, error.got) == ("snp.vek.role", ["SEV-VCEK", "SEV-Milan"])


def test_vcek_report_with_the_vlek(vector: Vector, hw_anchors: TrustAnchors) -> None:
    case = BY_NAME["ccf-milan-v3"]
    vlek = vector(BY_NAME["trustee-milan-v3-vlek"].vek)
    asvk, _ = presented_chain(vector, BY_NAME["trustee-milan-v3-vlek"].chain)
    error = fail(ChainError, lambda: verify_case(vector, case, hw_anchors, vek_der=vlek, ask_der=asvk))
    assert error.check == "snp.vek.role"


def test_garbage_certificates_and_reports(vector: Vector, hw_anchors: TrustAnchors) -> None:
    case = BY_NAME["ccf-milan-v3"]
    vek = vector(case.vek)
    assert fail(MalformedEvidence, lambda: verify_case(vector, case, hw_anchors, vek_der=vek[:-300])).check == (
        "x509.parse"
    )
    assert fail(MalformedEvidence, lambda: verify_case(vector, case, hw_anchors, ask_der=b"junk")).check == (
        "x509.parse"
    )
    for cut in (0, 1, 0x2A0, 1183):
        error = fail(
            MalformedEvidence,
            lambda cut=cut: verify_report(  # type: ignore[misc]
                vector(case.report)[:cut], vek_der=vek, anchors=hw_anchors, now=SNP_VERIFY_AT
            ),
        )
        assert error.check == "snp.length"


# --- checks no real vector exercises: the simulated signer, with simulation anchors --------------------------

MEASUREMENT = hashlib.sha384(b"enclave").digest()
REPORT_DATA = hashlib.sha512(b"binding").digest()


def sim_verify(authority: SimulationAuthority, report: bytes, **kw: object) -> VerifiedEvidence:
    args: dict[str, object] = {
        "vek_der": authority.vcek_der,
        "ask_der": authority.ask_der,
        "anchors": authority.anchors(),
        "now": SNP_VERIFY_AT,
    }
    args.update(kw)
    return verify_report(report, **args)  # type: ignore[arg-type]


def sim_report(authority: SimulationAuthority, **knobs: object) -> bytes:
    return sign_report(authority, report_data=REPORT_DATA, measurement=MEASUREMENT, **knobs)  # type: ignore[arg-type]


def test_simulated_report_verifies_with_simulation_anchors(sim_authority: SimulationAuthority) -> None:
    ve = sim_verify(sim_authority, sim_report(sim_authority))
    assert (ve.platform, ve.product, ve.signer, ve.debug) == ("simulation", "Simulated", "sim-vcek", False)
    assert (ve.measurement, ve.report_data) == (MEASUREMENT, REPORT_DATA)
    assert dict(ve.tcb) == {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}
    assert ve.claims["product_source"] == "cpuid"
    assert ve.warnings == ()
    # the pinned ASK is used when none is presented
    assert sim_verify(sim_authority, sim_report(sim_authority), ask_der=None).platform == "simulation"


def test_vcek_spl_differs_from_reported_tcb(sim_authority: SimulationAuthority) -> None:
    lower = {"bl": 4, "tee": 0, "snp": 23, "ucode": 219}
    error = fail(ChainError, lambda: sim_verify(sim_authority, sim_report(sim_authority, reported_tcb=lower)))
    assert error.check == "snp.vek.spl"
    assert error.expected == lower
    assert error.got == {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}


def test_hwid_differs_from_chip_id(sim_authority: SimulationAuthority) -> None:
    other_chip = b"CC-SIMULATION" + b"\x01" * 51
    error = fail(
        ChainError, lambda: sim_verify(sim_authority, sim_report(sim_authority, overrides={"chip_id": other_chip}))
    )
    assert (error.check, error.got, error.expected) == ("snp.vek.hwid", sim_authority.chip_id, other_chip)


def test_masked_chip_id_is_a_warning(sim_authority: SimulationAuthority) -> None:
    ve = sim_verify(sim_authority, sim_report(sim_authority, overrides={"chip_id": bytes(64)}))
    assert ve.warnings == ("chip-id-masked",)
    assert ve.claims["chip_id_masked"] is True


def test_provisional_firmware_is_a_warning(sim_authority: SimulationAuthority) -> None:
    newer = {"bl": 4, "tee": 0, "snp": 24, "ucode": 220}
    ve = sim_verify(sim_authority, sim_report(sim_authority, overrides={"current_tcb": newer}))
    assert ve.warnings == ("provisional-firmware",)
    assert ve.claims["current_tcb"]["ucode"] == 220  # type: ignore[index]
    assert dict(ve.tcb) == dict(sim_authority.tcb)  # REPORTED_TCB is what counts


def test_signing_key_7_is_rejected_before_anything_else(sim_authority: SimulationAuthority) -> None:
    error = fail(MalformedEvidence, lambda: sim_verify(sim_authority, sim_report(sim_authority, signing_key=7)))
    assert (error.check, error.got) == ("snp.signing_key", 7)


@pytest.mark.parametrize("offset", [0x04C, 0x18B, 0x1EB, 0x1EF, 0x208, 0x29F, 0x2D0, 0x330, 0x49F])
def test_reserved_bytes_set_fail_structure_only(sim_authority: SimulationAuthority, offset: int) -> None:
    error = fail(
        MalformedEvidence, lambda: sim_verify(sim_authority, sim_report(sim_authority, raw_patch={offset: b"\x01"}))
    )
    assert (error.check, error.index) == ("snp.reserved", offset)


def test_mask_chip_key_means_unsigned(sim_authority: SimulationAuthority) -> None:
    report = sim_report(sim_authority, overrides={"signer_info": 0b010})
    error = fail(SignatureInvalid, lambda: sim_verify(sim_authority, report))
    assert (error.check, error.got) == ("snp.signature", "masked")


def test_vlek_signing_key_without_an_asvk(sim_authority: SimulationAuthority) -> None:
    report = sim_report(sim_authority, signing_key=1)
    error = fail(ChainError, lambda: sim_verify(sim_authority, report, ask_der=None))
    assert (error.check, error.expected) == ("snp.intermediate", "asvk")
    error = fail(ChainError, lambda: sim_verify(sim_authority, report))  # the ASK presented
    assert error.check == "snp.vek.role"


def test_tampering_after_signing(sim_authority: SimulationAuthority) -> None:
    report = bytearray(sim_report(sim_authority))
    report[0x050] ^= 0x80  # REPORT_DATA
    assert fail(SignatureInvalid, lambda: sim_verify(sim_authority, bytes(report))).check == "snp.signature"
    report = bytearray(sim_report(sim_authority))
    report[0x2A0] ^= 0x01  # R
    assert fail(SignatureInvalid, lambda: sim_verify(sim_authority, bytes(report))).check == "snp.signature"


def test_knobs_verify_as_authentic(sim_authority: SimulationAuthority) -> None:
    """Teaching knobs change claims, not authenticity: policy decides about debug, VMPL, ..."""
    ve = sim_verify(sim_authority, sim_report(sim_authority, policy=0xB0000, vmpl=2, version=3))
    assert ve.debug
    assert (ve.claims["vmpl"], ve.claims["version"], ve.claims["policy_flags"]["debug"]) == (2, 3, True)  # type: ignore[index]
    v2 = sim_verify(sim_authority, sim_report(sim_authority, version=2))
    assert (v2.product, v2.claims["product_source"], v2.claims["cpuid"]) == ("Simulated", "vek-product-name", None)


def test_a_simulated_report_cannot_claim_a_hardware_product(
    sim_authority: SimulationAuthority, hw_anchors: TrustAnchors
) -> None:
    """With Milan's CPUID the pinned ARK-Milan is chosen, and the simulated chain does not lead there."""
    milan = {"cpuid_fam_id": 0x19, "cpuid_mod_id": 0x01, "cpuid_step": 0x01}
    report = sim_report(sim_authority, version=3, overrides=milan)
    anchors = hw_anchors.merged(sim_authority.anchors())
    error = fail(ChainError, lambda: sim_verify(sim_authority, report, anchors=anchors))
    assert (error.check, error.index) == ("chain.issuer_name", 1)
    error = fail(ChainError, lambda: sim_verify(sim_authority, report, anchors=anchors, ask_der=None))
    assert (error.check, error.index) == ("chain.issuer_name", 0)  # the pinned Milan ASK did not issue it
