"""Appraisal of bound evidence against a policy -> AttestationResult or PolicyViolation (§3.5, §3.6).

Evidence objects are built with ``seal_verified``/``seal_bound`` directly: these tests are about the policy
clauses, not about authenticity (the platform verifiers' tests cover that).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.evidence import BoundEvidence, VerifiedEvidence, seal_bound, seal_verified
from cc_kernel.attestation.platforms.sev_snp import POLICY_BITS
from cc_kernel.attestation.policy import Policy, default_hardware_policy, load_policy, render_policy
from cc_kernel.attestation.result import REPIN_HINT, AttestationResult
from cc_kernel.errors import PolicyViolation, VerificationError

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
GOOD = bytes(range(48))
OTHER = bytes(range(1, 49))
SIM = b"\x5a" * 48
HOST_DATA = b"\x11" * 32
SESSION = b"\x22" * 16
NONCE = b"\x33" * 32
AUDIT_PUB = b"\x44" * 32
SPKI_SHA = b"\x55" * 32
TCB = {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}
TCB_RAW = "04000000000018db"


def snp_claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "version": 5,
        "guest_svn": 3,
        "policy": 0x30000,
        "vmpl": 0,
        # the SEV-SNP verifier's shape: raw hex plus decoded components
        "current_tcb": {"raw": TCB_RAW, **TCB},
        "committed_tcb": {"raw": TCB_RAW, **TCB},
        "launch_tcb": {"raw": TCB_RAW, **TCB},
        "report_data": "00" * 64,
    }
    claims.update(overrides)
    return claims


def evidence(platform: str = "sev-snp", **overrides: Any) -> VerifiedEvidence:
    fields: dict[str, Any] = {
        "platform": platform,
        "product": "Milan",
        "measurement": GOOD,
        "report_data": bytes(64),
        "debug": False,
        "signer": "vcek",
        "anchor_sha256": b"\xa0" * 32,
        "evidence_sha256": b"\xe0" * 32,
        "verified_at": NOW,
        "measurements": {"measurement": GOOD, "host_data": HOST_DATA},
        "tcb": dict(TCB),
        "tcb_status": None,
        "claims": snp_claims(),
        "warnings": (),
    }
    if platform == "simulation":
        fields.update(product="Simulated", measurement=SIM, signer="sim-vcek")
    fields.update(overrides)
    return seal_verified(**fields)


def bound(ev: VerifiedEvidence) -> BoundEvidence:
    return seal_bound(
        evidence=ev, tls_spki_sha256=SPKI_SHA, audit_pub=AUDIT_PUB, nonce=NONCE, session_id=SESSION
    )


def snp_policy(body: str = "", *, top: str = "", pins: bytes = GOOD) -> Policy:
    return load_policy(
        f'version = 1\n{top}\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{pins.hex()}"]\n{body}\n',
        source="test.toml",
    )


def violation(ev: VerifiedEvidence, policy: Policy, now: datetime = NOW) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), policy, now=now)
    return info.value


def checks(exc: PolicyViolation) -> list[str]:
    return [f.check for f in exc.failures]


def only(exc: PolicyViolation, check: str) -> VerificationError:
    (failure,) = [f for f in exc.failures if f.check == check]
    return failure


# --- affirming ----------------------------------------------------------------------------------------------


def test_matching_evidence_is_affirming() -> None:
    policy = snp_policy('products = ["Milan"]\nmin_tcb = { bl = 4, tee = 0, snp = 24, ucode = 219 }')
    result = appraise(bound(evidence()), policy, now=NOW)
    assert result.status == "affirming"
    assert result.hardware_protected
    assert set(result.trust_vector.values()) == {"affirming"}
    assert result.unsafe_flags_used == ()
    assert result.warnings == ()
    assert result.matched_entry == 1
    assert result.platform == "sev-snp"
    assert result.product == "Milan"
    assert result.measurement == GOOD
    assert not result.debug
    assert dict(result.tcb) == TCB
    assert result.policy_sha256 == policy.sha256
    assert result.policy_source == "test.toml"
    assert result.anchor_sha256 == b"\xa0" * 32
    assert result.evidence_sha256 == b"\xe0" * 32
    assert result.verified_at == NOW
    assert result.appraised_at == NOW
    assert result.session_id == SESSION
    assert result.claims["vmpl"] == 0


def test_result_is_frozen() -> None:
    result = appraise(bound(evidence()), snp_policy(), now=NOW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = "warning"  # type: ignore[misc]


def test_any_of_several_pinned_measurements() -> None:
    policy = load_policy(
        f'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{OTHER.hex()}", "{GOOD.hex()}"]\n'
    )
    assert appraise(bound(evidence()), policy, now=NOW).status == "affirming"


def test_an_entry_without_weakenings_is_preferred() -> None:
    text = (
        'version = 1\n[[accept]]\nplatform = "sev-snp"\nunsafe_any_measurement = true\n'
        f'[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{GOOD.hex()}"]\n'
    )
    result = appraise(bound(evidence()), load_policy(text), now=NOW)
    assert (result.status, result.matched_entry) == ("affirming", 2)
    assert result.policy_unsafe_flags == ("unsafe_any_measurement",)


# --- measurement --------------------------------------------------------------------------------------------


def test_wrong_measurement_lists_got_expected_and_the_fix() -> None:
    exc = violation(evidence(measurement=OTHER), snp_policy())
    assert checks(exc) == ["policy.measurement"]
    assert exc.check == "policy.measurement"
    failure = exc.failures[0]
    assert failure.got == OTHER.hex()
    assert failure.expected == [GOOD.hex()]
    assert failure.index == 1
    assert "[[accept]] #1" in failure.message
    text = str(exc)
    assert "cc-kernel policy init --simulation --output FILE --force" in text
    assert REPIN_HINT in text
    assert "test.toml" in text


def test_any_measurement_is_a_warning() -> None:
    result = appraise(bound(evidence(measurement=OTHER)), default_hardware_policy(), now=NOW)
    assert result.status == "warning"
    assert result.unsafe_flags_used == ("unsafe_any_measurement",)
    assert result.trust_vector["executables"] == "warning"
    assert result.trust_vector["hardware"] == "affirming"
    assert "any-measurement" in result.warnings


def test_default_hardware_policy_still_rejects_debug_and_simulation() -> None:
    policy = default_hardware_policy()
    assert checks(violation(evidence(debug=True), policy)) == ["policy.debug"]
    assert "policy.platform" in checks(violation(evidence("simulation"), policy))


# --- debug --------------------------------------------------------------------------------------------------


def test_debug_is_rejected_by_default() -> None:
    exc = violation(evidence(debug=True, claims=snp_claims(policy=0xB0000)), snp_policy())
    assert checks(exc) == ["policy.debug"]
    assert exc.failures[0].got is True
    assert exc.failures[0].expected is False
    assert "unsafe_allow_debug" in str(exc)


def test_debug_bit_in_the_guest_policy_counts_even_if_the_flag_says_otherwise() -> None:
    exc = violation(evidence(debug=False, claims=snp_claims(policy=0xB0000)), snp_policy())
    assert checks(exc) == ["policy.debug"]


@pytest.mark.parametrize("where", ["top", "entry"])
def test_debug_allowed_by_unsafe_flag_is_a_warning(where: str) -> None:
    flag = "unsafe_allow_debug = true"
    policy = snp_policy(flag) if where == "entry" else snp_policy(top=flag)
    result = appraise(bound(evidence(debug=True, claims=snp_claims(policy=0xB0000))), policy, now=NOW)
    assert result.status == "warning"
    assert result.debug
    assert result.unsafe_flags_used == ("unsafe_allow_debug",)
    assert result.trust_vector["runtime-opaque"] == "contraindicated"
    assert result.trust_vector["configuration"] == "warning"
    assert "debug-enabled" in result.warnings
    assert result.to_json_dict()["dbgstat"] == 0


def test_unused_unsafe_flag_does_not_downgrade() -> None:
    result = appraise(bound(evidence()), snp_policy(top="unsafe_allow_debug = true"), now=NOW)
    assert result.status == "affirming"
    assert result.unsafe_flags_used == ()
    assert result.policy_unsafe_flags == ("unsafe_allow_debug",)


# --- simulation ---------------------------------------------------------------------------------------------


def test_simulation_under_a_hardware_policy_is_a_platform_violation() -> None:
    exc = violation(evidence("simulation"), snp_policy())
    assert exc.check == "policy.platform"
    assert checks(exc) == ["policy.platform", "policy.simulation"]
    platform = exc.failures[0]
    assert platform.got == "simulation"
    assert platform.expected == ["sev-snp"]
    message = str(exc)
    assert "SIMULATED TEE" in message
    assert "simulation kernelspec" in message
    assert "unsafe_allow_simulation = true" in message


def sim_policy(extra: str = "") -> Policy:
    return load_policy(
        render_policy("sev-snp", [GOOD], allow_simulation=True, simulation_measurements=[SIM]) + extra
    )


def test_simulation_allowed_is_status_simulation() -> None:
    result = appraise(bound(evidence("simulation")), sim_policy(), now=NOW)
    assert result.status == "simulation"
    assert not result.hardware_protected
    assert result.platform == "simulation"
    assert result.matched_entry == 2
    assert result.unsafe_flags_used == ("unsafe_allow_simulation",)
    assert result.trust_vector["hardware"] == "none"
    assert result.trust_vector["runtime-opaque"] == "none"
    assert "affirming" not in result.trust_vector.values()
    assert "simulation" in result.warnings
    assert result.summary_lines()[0].startswith("Attestation: SIMULATION - not hardware-protected")


def test_simulation_with_debug_allowed_is_still_simulation() -> None:
    policy = sim_policy("unsafe_allow_debug = true\n")  # appended to the last entry: the simulation one
    result = appraise(bound(evidence("simulation", debug=True)), policy, now=NOW)
    assert result.status == "simulation"
    assert result.unsafe_flags_used == ("unsafe_allow_simulation", "unsafe_allow_debug")


def test_simulation_policy_still_checks_the_simulated_measurement() -> None:
    exc = violation(evidence("simulation", measurement=GOOD), sim_policy())
    assert checks(exc) == ["policy.measurement"]
    assert exc.failures[0].index == 2


def test_hardware_evidence_under_a_simulation_policy_is_affirming() -> None:
    result = appraise(bound(evidence()), sim_policy(), now=NOW)
    assert result.status == "affirming"
    assert result.policy_unsafe_flags == ("unsafe_allow_simulation",)


def test_simulation_flag_is_rechecked_at_appraisal() -> None:
    # A Policy built by hand (not via load_policy) with a simulation entry but without the flag
    policy = dataclasses.replace(sim_policy(), unsafe_allow_simulation=False)
    exc = violation(evidence("simulation"), policy)
    assert checks(exc) == ["policy.simulation"]


def test_hardware_only_simulation_entry_cannot_match_real_platform_label() -> None:
    # a simulation-only policy does not accept sev-snp evidence: entries match the anchor's platform exactly
    policy = load_policy(render_policy("simulation", [GOOD]))
    exc = violation(evidence(), policy)
    assert checks(exc) == ["policy.platform"]


# --- SEV-SNP clauses ----------------------------------------------------------------------------------------


def test_min_tcb_is_component_wise() -> None:
    # Milan layout: bl=byte0 ... snp=byte6, ucode=byte7. As a little-endian 64-bit number the evidence
    # (ucode 0xff) is far larger than the minimum, yet snp is lower: it must fail on snp alone.
    tcb = {"bl": 9, "tee": 9, "snp": 1, "ucode": 0xFF}
    policy = snp_policy("min_tcb = { bl = 3, tee = 0, snp = 2, ucode = 200 }")
    exc = violation(evidence(tcb=tcb), policy)
    assert checks(exc) == ["policy.min_tcb.snp"]
    failure = exc.failures[0]
    assert (failure.got, failure.expected) == (1, 2)
    # equal is enough
    equal = {"bl": 3, "tee": 0, "snp": 2, "ucode": 200}
    assert appraise(bound(evidence(tcb=equal)), policy, now=NOW).status == "affirming"


def test_every_low_tcb_component_is_reported() -> None:
    policy = snp_policy("min_tcb = { bl = 5, tee = 1, snp = 25, ucode = 220 }")
    assert checks(violation(evidence(), policy)) == [
        "policy.min_tcb.bl",
        "policy.min_tcb.tee",
        "policy.min_tcb.snp",
        "policy.min_tcb.ucode",
    ]


def test_missing_tcb_component_fails_closed_and_by_product_minimum() -> None:
    policy = snp_policy("min_tcb = { snp = 1 }\nmin_tcb_by_product = { Turin = { fmc = 2, snp = 1 } }")
    assert appraise(bound(evidence()), policy, now=NOW).status == "affirming"  # Milan: min_tcb
    turin = {"fmc": 1, "bl": 1, "tee": 1, "snp": 5, "ucode": 1}
    exc = violation(evidence(product="Turin", tcb=turin), policy)
    assert checks(exc) == ["policy.min_tcb.fmc"]
    no_fmc = snp_policy("min_tcb = { fmc = 1 }")
    failure = only(violation(evidence(), no_fmc), "policy.min_tcb.fmc")
    assert 'no "fmc" TCB component' in failure.message


def test_vmpl() -> None:
    exc = violation(evidence(claims=snp_claims(vmpl=1)), snp_policy())
    assert checks(exc) == ["policy.vmpl"]
    assert (exc.failures[0].got, exc.failures[0].expected) == (1, 0)
    assert (
        appraise(bound(evidence(claims=snp_claims(vmpl=1))), snp_policy("vmpl = 1"), now=NOW).matched_entry
        == 1
    )


def test_missing_claims_fail_closed_with_clear_messages() -> None:
    bare = {"version": 5}
    exc = violation(evidence(claims=bare), snp_policy("min_guest_svn = 1"))
    assert checks(exc) == [
        "policy.vmpl",
        "policy.migrate_ma",
        "policy.provisional_firmware",
        "policy.min_guest_svn",
    ]
    text = str(exc)
    assert 'no "vmpl" claim' in text
    assert 'no guest "policy" claim' in text
    assert '"current_tcb" and "committed_tcb"' in text


def test_guest_policy_bits() -> None:
    migrate = 0x30000 | 1 << 18
    assert checks(violation(evidence(claims=snp_claims(policy=migrate)), snp_policy())) == [
        "policy.migrate_ma"
    ]
    smt = 0x30000 | 1 << 16
    policy = snp_policy('forbid_policy_bits = ["smt"]\nrequire_policy_bits = ["single_socket"]')
    exc = violation(evidence(claims=snp_claims(policy=smt)), policy)
    assert checks(exc) == ["policy.policy_bits.smt", "policy.policy_bits.single_socket"]
    good = 0x20000 | 1 << 20  # bit 17 (reserved, must be 1) and SINGLE_SOCKET; SMT (bit 16) clear
    assert appraise(bound(evidence(claims=snp_claims(policy=good))), policy, now=NOW).status == "affirming"


@pytest.mark.parametrize("name", sorted(set(POLICY_BITS) - {"debug", "migrate_ma"}))
def test_every_bit_the_report_parser_names_is_the_bit_the_policy_forbids(name: str) -> None:
    """The policy names guest POLICY bits with the report parser's table (one owner: sev_snp.POLICY_BITS)."""
    policy = snp_policy(f'forbid_policy_bits = ["{name}"]')
    claims = snp_claims(policy=0x20000 | 1 << POLICY_BITS[name])
    assert checks(violation(evidence(claims=claims), policy)) == [f"policy.policy_bits.{name}"]


def test_provisional_firmware() -> None:
    newer = {"raw": "04000000000018ff", **TCB, "ucode": 0xFF}
    ev = evidence(claims=snp_claims(current_tcb=newer), warnings=("provisional-firmware",))
    exc = violation(ev, snp_policy())
    assert checks(exc) == ["policy.provisional_firmware"]
    assert "unsafe_permit_provisional_firmware" in str(exc)
    assert exc.failures[0].got == newer
    assert exc.failures[0].expected == {"raw": TCB_RAW, **TCB}
    result = appraise(bound(ev), snp_policy("unsafe_permit_provisional_firmware = true"), now=NOW)
    assert result.status == "warning"
    assert result.unsafe_flags_used == ("unsafe_permit_provisional_firmware",)
    assert result.trust_vector["hardware"] == "warning"
    # even without the verifier's warning, differing claims are detected (ints and hex strings too)
    assert checks(violation(evidence(claims=snp_claims(current_tcb=newer)), snp_policy())) == [
        "policy.provisional_firmware"
    ]
    plain = snp_claims(current_tcb="0x10", committed_tcb=16)
    assert appraise(bound(evidence(claims=plain)), snp_policy(), now=NOW).status == "affirming"


def test_signer_product_svn_version_and_host_data() -> None:
    policy = snp_policy(
        f'products = ["Genoa"]\nmin_guest_svn = 4\nmin_report_version = 6\nhost_data = "{"ff" * 32}"'
    )
    exc = violation(evidence(signer="vlek"), policy)
    assert checks(exc) == [
        "policy.signer",
        "policy.product",
        "policy.min_guest_svn",
        "policy.min_report_version",
        "policy.host_data",
    ]
    assert only(exc, "policy.signer").expected == ["vcek"]
    assert only(exc, "policy.host_data").got == HOST_DATA.hex()
    ok = snp_policy(
        f'products = ["Milan"]\nsigners = ["vlek"]\nmin_guest_svn = 3\nmin_report_version = 5\n'
        f'host_data = "{HOST_DATA.hex()}"'
    )
    assert appraise(bound(evidence(signer="vlek", product="Milan-B0")), ok, now=NOW).status == "affirming"


def test_multiple_failures_are_reported_together() -> None:
    ev = evidence(measurement=OTHER, debug=True, tcb={**TCB, "snp": 1}, claims=snp_claims(vmpl=2))
    exc = violation(ev, snp_policy("min_tcb = { snp = 24 }"))
    assert checks(exc) == ["policy.debug", "policy.measurement", "policy.vmpl", "policy.min_tcb.snp"]
    assert all(f.index == 1 for f in exc.failures)
    lines = str(exc).splitlines()
    assert sum(line.startswith("  - [policy.") for line in lines) == 4


def test_each_candidate_entry_reports_its_failures() -> None:
    text = (
        f'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{OTHER.hex()}"]\n'
        f'[[accept]]\nplatform = "nitro"\npcr = {{ 0 = "{GOOD.hex()}" }}\n'
        f'[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{GOOD.hex()}"]\nvmpl = 1\n'
    )
    exc = violation(evidence(), load_policy(text))
    assert [(f.check, f.index) for f in exc.failures] == [("policy.measurement", 1), ("policy.vmpl", 3)]
    assert "2 [[accept]] entries for it failed" in exc.message


def test_freshness() -> None:
    policy = snp_policy(top="require_fresh_within_s = 60")
    assert appraise(bound(evidence()), policy, now=NOW + timedelta(seconds=60)).status == "affirming"
    exc = violation(evidence(), policy, now=NOW + timedelta(seconds=61))
    assert checks(exc) == ["policy.freshness"]
    assert (exc.failures[0].got, exc.failures[0].expected) == (61, 60)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        appraise(bound(evidence()), snp_policy(), now=NOW.replace(tzinfo=None))


def test_empty_policy_fails_closed_at_appraisal_too() -> None:
    policy = dataclasses.replace(snp_policy(), accept=())
    exc = violation(evidence(), policy)
    assert checks(exc) == ["policy.empty"]


def test_evidence_warnings_make_a_warning() -> None:
    result = appraise(bound(evidence(warnings=("chip-id-masked",))), snp_policy(), now=NOW)
    assert result.status == "warning"
    assert result.warnings == ("chip-id-masked",)
    assert result.unsafe_flags_used == ()
    assert result.trust_vector["instance-identity"] == "warning"
    assert result.trust_vector["hardware"] == "affirming"


# --- TDX, SGX, Nitro ----------------------------------------------------------------------------------------

RTMR1 = b"\x01" * 48
RTMR2 = b"\x02" * 48
TDX_POLICY = f"""
version = 1
[[accept]]
platform = "tdx"
mr_td = ["{GOOD.hex()}"]
rtmr = {{ 1 = "{RTMR1.hex()}", 2 = "{RTMR2.hex()}" }}
mr_config_id = "{"00" * 48}"
require_sept_ve_disable = true
"""


def tdx_evidence(**overrides: Any) -> VerifiedEvidence:
    fields: dict[str, Any] = {
        "product": "SPR",
        "signer": "pck",
        "measurements": {"mr_td": GOOD, "rtmr1": RTMR1, "rtmr2": RTMR2, "mr_config_id": bytes(48)},
        "tcb": {},
        "tcb_status": "UpToDate",
        "claims": {"td_attributes": 1 << 28},
    }
    fields.update(overrides)
    return evidence("tdx", **fields)


def test_tdx_affirming() -> None:
    result = appraise(bound(tdx_evidence()), load_policy(TDX_POLICY), now=NOW)
    assert result.status == "affirming"
    assert result.tcb_status == "UpToDate"
    assert result.platform == "tdx"


def test_tdx_failures() -> None:
    ev = tdx_evidence(
        measurement=OTHER,
        measurements={"rtmr1": bytes(48), "mr_config_id": b"\x01" * 48},
        claims={"td_attributes": "0x0"},
        tcb_status="OutOfDate",
    )
    exc = violation(ev, load_policy(TDX_POLICY))
    assert checks(exc) == [
        "policy.measurement",
        "policy.rtmr.1",
        "policy.rtmr.2",
        "policy.mr_config_id",
        "policy.sept_ve_disable",
        "policy.tcb_status",
    ]
    assert only(exc, "policy.tcb_status").got == "OutOfDate"
    assert REPIN_HINT in str(exc)


def test_tdx_tcb_status_weakenings() -> None:
    out_of_date = tdx_evidence(tcb_status="OutOfDate")
    policy = load_policy(
        TDX_POLICY.replace("version = 1\n", 'version = 1\nunsafe_accept_tcb_status = ["OutOfDate"]\n')
    )
    result = appraise(bound(out_of_date), policy, now=NOW)
    assert (result.status, result.unsafe_flags_used) == ("warning", ("unsafe_accept_tcb_status",))
    assert result.trust_vector["hardware"] == "warning"
    # without collateral the status is unknown
    no_collateral = tdx_evidence(tcb_status=None, warnings=("tcb-collateral-missing",))
    exc = violation(no_collateral, load_policy(TDX_POLICY))
    assert checks(exc) == ["policy.tcb_collateral"]
    assert "unsafe_skip_tcb_collateral" in str(exc)
    skip = load_policy(TDX_POLICY + "unsafe_skip_tcb_collateral = true\n")
    result = appraise(bound(no_collateral), skip, now=NOW)
    assert (result.status, result.unsafe_flags_used) == ("warning", ("unsafe_skip_tcb_collateral",))
    # Revoked is never accepted
    assert checks(violation(tdx_evidence(tcb_status="Revoked"), policy)) == ["policy.tcb_status"]


def test_tdx_evidence_under_an_snp_policy() -> None:
    exc = violation(tdx_evidence(), snp_policy())
    assert checks(exc) == ["policy.platform"]
    assert exc.failures[0].got == "tdx"


def test_sgx() -> None:
    signer = b"\x07" * 32
    enclave = b"\x08" * 32
    policy = load_policy(
        f'version = 1\n[[accept]]\nplatform = "sgx-dcap"\nmrenclave = ["{enclave.hex()}"]\n'
        f'mrsigner = ["{signer.hex()}"]\nisv_prod_id = 1\nmin_isv_svn = 2\n'
    )
    sgx: dict[str, Any] = {"product": "SGX", "signer": "pck", "tcb": {}, "tcb_status": "UpToDate"}
    good = evidence(
        "sgx-dcap",
        **sgx,
        measurement=enclave,
        measurements={"mrsigner": signer},
        claims={"isv_prod_id": 1, "isv_svn": 2},
    )
    assert appraise(bound(good), policy, now=NOW).status == "affirming"
    bad = evidence(
        "sgx-dcap", **sgx, measurement=bytes(32), measurements={}, claims={"isv_prod_id": 2, "isv_svn": 1}
    )
    assert checks(violation(bad, policy)) == [
        "policy.measurement",
        "policy.mrsigner",
        "policy.isv_prod_id",
        "policy.min_isv_svn",
    ]


NITRO_PCR = {0: b"\x10" * 48, 1: b"\x11" * 48, 2: b"\x12" * 48}
NITRO_POLICY = (
    'version = 1\n[[accept]]\nplatform = "nitro"\npcr = { '
    + ", ".join(f'{i} = "{v.hex()}"' for i, v in NITRO_PCR.items())
    + " }\n"
)


def nitro_evidence(**overrides: Any) -> VerifiedEvidence:
    fields: dict[str, Any] = {
        "product": "Nitro",
        "signer": "nitro-leaf",
        "measurement": NITRO_PCR[0],
        "measurements": {f"pcr{i}": v for i, v in NITRO_PCR.items()},
        "tcb": {},
        "claims": {"timestamp": int(NOW.timestamp() * 1000) - 5000, "module_id": "i-0abc-enc0"},
    }
    fields.update(overrides)
    return evidence("nitro", **fields)


def test_nitro() -> None:
    policy = load_policy(NITRO_POLICY)
    assert appraise(bound(nitro_evidence()), policy, now=NOW).status == "affirming"
    bad = nitro_evidence(measurements={"pcr0": NITRO_PCR[0], "pcr1": bytes(48)})
    exc = violation(bad, policy)
    assert checks(exc) == ["policy.pcr.1", "policy.pcr.2"]
    assert only(exc, "policy.pcr.2").got is None
    # debug enclaves have all-zero PCRs and the debug flag
    zeros = {f"pcr{i}": bytes(48) for i in range(3)}
    debug = nitro_evidence(debug=True, measurement=bytes(48), measurements=zeros)
    assert checks(violation(debug, policy))[0] == "policy.debug"


def test_nitro_document_timestamp_freshness() -> None:
    policy = load_policy(NITRO_POLICY)
    old = nitro_evidence(claims={"timestamp": int((NOW - timedelta(hours=1)).timestamp() * 1000)})
    assert checks(violation(old, policy)) == ["policy.freshness"]
    assert checks(violation(nitro_evidence(claims={}), policy)) == ["policy.freshness"]


# --- serialisation ------------------------------------------------------------------------------------------


def test_result_json_dict_is_json_serialisable() -> None:
    claims = snp_claims(blob=b"\x00\xff", nested={"a": (1, 2), 3: {b"x"}}, when=NOW, cpuid={"family": 0x19})
    result = appraise(bound(evidence(claims=claims, warnings=("chip-id-masked",))), snp_policy(), now=NOW)
    data = result.to_json_dict()
    decoded = json.loads(json.dumps(data, sort_keys=True))
    assert decoded["status"] == "warning"
    assert decoded["measurement"] == GOOD.hex()
    assert decoded["measurements"]["host_data"] == HOST_DATA.hex()
    assert decoded["policy_sha256"] == result.policy_sha256.hex()
    assert decoded["verified_at"] == "2025-06-01T12:00:00Z"
    assert decoded["dbgstat"] == 1
    assert decoded["claims"]["blob"] == "00ff"
    assert decoded["claims"]["nested"] == {"a": [1, 2], "3": ["78"]}
    assert decoded["claims"]["when"] == "2025-06-01T12:00:00Z"
    assert decoded["claims"]["current_tcb"]["raw"] == TCB_RAW
    assert decoded["trust_vector"]["instance-identity"] == "warning"
    assert decoded["matched_entry"] == 1
    assert decoded["verifier_version"] == "cc-kernel/appraisal/v1"
    assert decoded["tcb"] == TCB
    assert decoded["session_id"] == SESSION.hex()


def test_summary_lines() -> None:
    result = appraise(bound(evidence()), snp_policy(), now=NOW)
    lines = result.summary_lines()
    assert lines[0] == "Attestation: VERIFIED - genuine sev-snp (Milan) running the pinned enclave"
    assert any(GOOD.hex() in line for line in lines)
    assert any("Unsafe used: none" in line for line in lines)
    assert any("test.toml" in line and "[[accept]] #1" in line for line in lines)
    debug = appraise(
        bound(evidence(debug=True)), snp_policy(top="unsafe_allow_debug = true"), now=NOW
    ).summary_lines()
    assert debug[0].startswith("Attestation: VERIFIED WITH WARNINGS")
    assert any("ENABLED" in line for line in debug)
    assert any("unsafe_allow_debug" in line for line in debug)


def test_result_type_is_exported() -> None:
    assert AttestationResult.__dataclass_params__.frozen  # type: ignore[attr-defined]
