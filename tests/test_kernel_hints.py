"""The refusal hint printed under an attestation failure says what the failure means and what to do about it.

A hint that says "restart the kernel" for a refusal that a restart cannot fix (debug mode, an old TCB, a
swapped key, replayed evidence) would send the user in circles; each kind of refusal gets its own advice.
"""

from __future__ import annotations

import pytest

from cc_kernel.errors import (
    BindingMismatch,
    CertificateExpired,
    ConfigError,
    EnclaveError,
    PolicyError,
    PolicyViolation,
    SignatureInvalid,
    StaleEvidence,
    UntrustedRoot,
    VerificationError,
)
from cc_kernel.kernel.kernel import _fix_hint


def violation(*checks: str) -> PolicyViolation:
    return PolicyViolation("refused", failures=[VerificationError("no", check=c) for c in checks])


@pytest.mark.parametrize(
    ("exc", "must_say"),
    [
        (violation("policy.measurement"), "re-pin its measurement"),
        (violation("policy.debug"), "DEBUG mode"),
        (violation("policy.min_tcb.bl"), "older than the policy's minimum"),
        (violation("policy.tcb_status"), "collateral"),
        (violation("policy.simulation"), "SIMULATED TEE"),
        (violation("policy.platform"), "[[accept]]"),
        (violation("policy.freshness.age"), "clocks"),
        (violation("policy.vmpl"), "does not meet the pinned policy"),
        (BindingMismatch("x", check="binding.report_data"), "presented its own certificate"),
        (StaleEvidence("x", check="freshness.nonce"), "replayed"),
        (CertificateExpired("x", check="chain.validity"), "clock"),
        (UntrustedRoot("x", check="snp.anchor"), "not a genuine TEE"),
        (SignatureInvalid("x", check="snp.signature"), "tampered with"),
        (PolicyError("bad key"), "Fix the policy file"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_each_refusal_gets_its_own_advice(exc: BaseException, must_say: str) -> None:
    hint = _fix_hint(exc, "simulation")
    assert must_say in hint
    if isinstance(exc, VerificationError):
        assert "Restart" not in hint  # a restart gets the same refusal again


def test_the_measurement_hint_wins_over_others_in_the_same_refusal() -> None:
    assert "re-pin" in _fix_hint(violation("policy.vmpl", "policy.measurement"), "simulation")


@pytest.mark.parametrize("exc", [EnclaveError("no TEE"), ConfigError("no TEE")], ids=["enclave", "config"])
def test_no_hardware_points_to_the_simulation_kernel_or_a_remote_enclave(exc: BaseException) -> None:
    hint = _fix_hint(exc, "hardware")
    assert "SIMULATION" in hint and "CC_KERNEL_ENCLAVE" in hint
    assert _fix_hint(exc, "simulation").startswith("Restart the kernel")
