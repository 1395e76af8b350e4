"""The refusal hint printed under an attestation failure says what the failure means and what to do about it.

A hint that says "restart the kernel" for a refusal that a restart cannot fix (debug mode, an old TCB, a
swapped key, replayed evidence) would send the user in circles; each kind of refusal gets its own advice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from kernel_env import BADGE_MIME, SIM, JupyterEnv, is_badge, live_kernel

from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.evidence import seal_bound, seal_verified
from cc_kernel.attestation.policy import load_policy, render_policy
from cc_kernel.attestation.result import REPIN_HINT
from cc_kernel.errors import (
    BindingMismatch,
    CertificateExpired,
    ClientNotAuthorized,
    ConfigError,
    EnclaveError,
    PolicyError,
    PolicyViolation,
    ServerBusy,
    SignatureInvalid,
    StaleEvidence,
    UntrustedRoot,
    VerificationError,
)
from cc_kernel.kernel import badge
from cc_kernel.kernel.advice import advice_for, failure_lines


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
    hint = advice_for(exc, "simulation")
    assert must_say in hint
    if isinstance(exc, VerificationError):
        assert "Restart" not in hint  # a restart gets the same refusal again


def test_the_measurement_hint_wins_over_others_in_the_same_refusal() -> None:
    assert "re-pin" in advice_for(violation("policy.vmpl", "policy.measurement"), "simulation")


@pytest.mark.parametrize("exc", [EnclaveError("no TEE"), ConfigError("no TEE")], ids=["enclave", "config"])
def test_no_hardware_points_to_the_simulation_kernel_or_a_remote_enclave(exc: BaseException) -> None:
    hint = advice_for(exc, "hardware")
    assert "SIMULATION" in hint and "CC_KERNEL_ENCLAVE" in hint
    assert advice_for(exc, "simulation").startswith("Restart the kernel")


# --- the re-pin advice appears exactly once in every output that shows a measurement refusal ------------------
#
# The appraisal puts its REPIN_HINT in a PolicyViolation's message and again in each measurement failure; the
# kernel adds its own hint line. Each output below must say "re-pin" once: the failed checks, then the advice.

REPIN = "re-pin"


TCB = {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}


def measurement_violation() -> PolicyViolation:
    """A real refusal from the appraisal: simulated evidence of one enclave under a policy pinning others."""
    now = datetime(2025, 6, 1, tzinfo=UTC)
    evidence = seal_verified(
        platform="simulation", product="Simulated", measurement=b"\x5a" * 48, report_data=bytes(64), debug=False,
        signer="sim-vcek", anchor_sha256=b"\xa0" * 32, evidence_sha256=b"\xe0" * 32, verified_at=now,
        measurements={"measurement": b"\x5a" * 48}, tcb=dict(TCB), tcb_status=None, warnings=(),
        claims={"version": 5, "policy": 0x30000, "vmpl": 0, "current_tcb": {"raw": "04000000000018db", **TCB},
                "committed_tcb": {"raw": "04000000000018db", **TCB}, "launch_tcb": {"raw": "04000000000018db", **TCB}},
    )
    bound = seal_bound(evidence=evidence, tls_spki_sha256=b"\x55" * 32, audit_pub=b"\x44" * 32,
                       nonce=b"\x33" * 32, session_id=b"\x22" * 16)
    policy = load_policy(render_policy("simulation", [b"\x00" * 48, b"\x01" * 48]), source="other.toml")
    with pytest.raises(PolicyViolation) as info:
        appraise(bound, policy, now=now)
    exc = info.value
    assert [f.check for f in exc.failures] == ["policy.measurement"]
    return exc


@pytest.mark.parametrize("mode", ["simulation", "hardware"])
def test_the_badge_of_a_measurement_refusal_says_re_pin_once(mode: str) -> None:
    exc = measurement_violation()
    state = badge.BadgeState(state="refused", session_id="00" * 16, mode=mode, failures=failure_lines(exc),
                             detail=advice_for(exc, mode))
    bundle = badge.render(state)
    assert bundle["text/plain"].count(REPIN) == 1, bundle["text/plain"]
    assert bundle["text/html"].count(REPIN) == 1
    assert REPIN_HINT not in bundle["text/plain"]  # the kernel's own advice, fitted to its mode, is the one shown
    # the failed check is still shown in full, with what was measured and what was pinned
    assert "[policy.measurement]" in bundle["text/plain"] and "5a5a5a5a" in bundle["text/plain"]
    assert "not one of the 2 pinned value(s)" in bundle["text/plain"]


def test_the_re_pin_advice_fits_the_kernel_mode() -> None:
    exc = measurement_violation()
    assert "policy init --simulation" in advice_for(exc, "simulation")
    hardware = advice_for(exc, "hardware")
    assert "policy init --platform P --measurement HEX" in hardware and "--simulation" not in hardware


@pytest.mark.parametrize("check", ["policy.mrsigner", "policy.pcr.0", "policy.rtmr.2", "policy.mr_config_id"])
def test_other_pinned_code_identities_get_the_re_pin_advice(check: str) -> None:
    assert REPIN in advice_for(violation(check), "hardware")


@pytest.mark.slow
def test_a_measurement_refusal_says_re_pin_once_in_the_kernel(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    """The error output (evalue and traceback), the final badge and the banner of a live simulation kernel whose
    policy pins another enclave: each says "re-pin" exactly once."""
    policy = tmp_path / "other-enclave.toml"
    policy.write_text(render_policy("simulation", [b"\x00" * 48]))
    with live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_POLICY=str(policy))) as k:
        cell = k.execute("1 + 1", timeout=60)
        assert cell.status == "error", cell.summary()
        (error,) = [o["content"] for o in cell.without_badge()]
        assert "[policy.measurement]" in cell.traceback_text
        assert cell.traceback_text.count(REPIN) == 1, cell.traceback_text
        # the evalue says what was refused (as str(PolicyViolation) would) and leaves the advice to the traceback
        assert error["evalue"].startswith("no code was sent: policy ")
        assert "\n  - [policy.measurement]" in error["evalue"]
        assert REPIN not in error["evalue"], error["evalue"]
        assert cell.content["evalue"] == error["evalue"]
        final = [msg["content"]["data"] for msg in k.iopub if is_badge(msg)][-1]
        assert final[BADGE_MIME]["state"] == "refused"
        assert final["text/plain"].count(REPIN) == 1, final["text/plain"]
        assert final["text/html"].count(REPIN) == 1
        banner = k.request("kernel_info")["content"]["banner"]
        assert "ATTESTATION REFUSED" in banner and "[policy.measurement]" in banner
        assert banner.count(REPIN) == 1, banner


def test_refused_client_keys_and_busy_servers_get_their_own_hints() -> None:
    """What the notebook shows after the link's EnclaveError (whose cause is the channel's error)."""
    for mode in ("simulation", "hardware"):
        try:
            raise EnclaveError("refused") from ClientNotAuthorized("refused", line="cc-kernel-client AAAA me")
        except EnclaveError as exc:
            assert advice_for(exc, mode).startswith("The enclave server accepts only client keys its owner authorised")
            assert "`cc-kernel client-key`" in advice_for(exc, mode)
        try:
            raise EnclaveError("busy") from ServerBusy("busy", active=1, maximum=1)
        except EnclaveError as exc:
            assert advice_for(exc, mode).startswith("The enclave server already runs as many sessions as it may")
