"""verify_snp_report: the SNP verifier shared by the channel and offline verification, and the way it names
simulated evidence whose root is not trusted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import SIM_CREATED_AT
from cryptography.hazmat.primitives.serialization import Encoding

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report
from cc_kernel.attestation.verify import verify_snp_report
from cc_kernel.errors import UntrustedRoot

NOW = SIM_CREATED_AT + timedelta(days=1)
HINT = "a hint for simulated evidence"


def _chain(authority: SimulationAuthority) -> dict[str, bytes]:
    return {
        "vek_der": authority.vcek_cert.public_bytes(Encoding.DER),
        "ask_der": authority.ask_cert.public_bytes(Encoding.DER),
        "ark_der": authority.ark_cert.public_bytes(Encoding.DER),
    }


def _report(authority: SimulationAuthority) -> bytes:
    return sign_report(authority, report_data=bytes(range(64)), measurement=bytes(48))


def test_simulated_evidence_under_hardware_anchors_is_named(sim_authority: SimulationAuthority) -> None:
    with pytest.raises(UntrustedRoot) as info:
        verify_snp_report(
            _report(sim_authority), **_chain(sim_authority), anchors=hardware_anchors(), now=NOW, simulation_hint=HINT
        )
    assert info.value.message.startswith(f"{HINT}: ")
    assert isinstance(info.value.__cause__, UntrustedRoot)
    assert info.value.check == info.value.__cause__.check


def test_without_a_hint_the_untrusted_root_is_raised_as_it_is(sim_authority: SimulationAuthority) -> None:
    with pytest.raises(UntrustedRoot) as info:
        verify_snp_report(
            _report(sim_authority), **_chain(sim_authority), anchors=hardware_anchors(), now=NOW, simulation_hint=None
        )
    assert HINT not in info.value.message


def test_simulated_evidence_verifies_under_the_simulation_anchors(sim_authority: SimulationAuthority) -> None:
    report = _report(sim_authority)
    evidence = verify_snp_report(
        report, **_chain(sim_authority), anchors=sim_authority.anchors(), now=NOW, simulation_hint=HINT
    )
    assert evidence.report_data == bytes(range(64))
