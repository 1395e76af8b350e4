"""Pure attestation layer: appraise authentic evidence against a policy -> ``AttestationResult`` (EAR/AR4SI).

Invariants: ``appraise`` only ever returns a result for evidence that some ``[[accept]]`` entry of its own
platform accepts, otherwise it raises ``PolicyViolation`` listing *every* failed clause of every candidate
entry (each labelled with the entry number in ``index`` and in its message); simulated evidence yields status
``"simulation"`` and never ``"affirming"``/``"warning"``; ``"affirming"`` means no unsafe flag was needed and
the verifier reported no warning. Only sealed evidence is appraised (a copy of a sealed value is refused). No
I/O, no clock: ``now`` is a parameter.

Check names of the policy-wide clauses and of every entry (each platform's entry type lists its own): ``policy.empty``,
``policy.platform``, ``policy.simulation``, ``policy.freshness``, ``policy.debug``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from cc_kernel.attestation.appraisal.entry import AcceptEntry, Outcome
from cc_kernel.attestation.appraisal.registry import ENTRY_TYPES
from cc_kernel.attestation.evidence import BoundEvidence, VerifiedEvidence, require_sealed
from cc_kernel.attestation.result import REPIN_HINT, AttestationResult, Status, Tier, aware_utc
from cc_kernel.errors import PolicyViolation, VerificationError

if TYPE_CHECKING:  # policy.py reads the entry types this package defines: it is imported here for types only
    from cc_kernel.attestation.policy import Policy

_TCB_FLAGS: Final = frozenset(
    {"unsafe_accept_tcb_status", "unsafe_skip_tcb_collateral", "unsafe_permit_provisional_firmware"}
)
_MEASUREMENT_CHECKS: Final = frozenset({"policy.measurement", "policy.mrsigner", "policy.mr_config_id"})


def appraise(bound: BoundEvidence, policy: Policy, *, now: datetime) -> AttestationResult:
    """Appraise authentic, bound evidence against ``policy`` at time ``now`` (timezone-aware).

    Every ``[[accept]]`` entry for the evidence's platform is tried (any-of); an entry that matches without
    weakenings is preferred over one that needs ``unsafe_*`` flags, then the lowest-numbered one wins.

    Raises:
        PolicyViolation: no entry accepts the evidence; ``failures`` lists every failed clause (policy-wide
            clauses first, then each candidate entry's, with ``index`` = entry number).
        ValueError: ``now`` is naive.
        TypeError: ``bound`` or its evidence was not sealed by its producer (e.g. a copy of a sealed one).
    """
    return _appraise(bound.evidence, policy, now=now, bound=bound)


def appraise_offline(evidence: VerifiedEvidence, policy: Policy, *, now: datetime) -> AttestationResult:
    """Appraise authentic evidence that belongs to no connection (``cc-kernel evidence verify``).

    The same clauses as ``appraise``; the result's session id, TLS key digest, audit key and nonce are empty
    because nothing was bound: such a result says what the evidence claims, never that a channel is safe.

    Raises:
        PolicyViolation, ValueError, TypeError: as ``appraise``.
    """
    return _appraise(evidence, policy, now=now, bound=None)


def _appraise(
    ev: VerifiedEvidence, policy: Policy, *, now: datetime, bound: BoundEvidence | None
) -> AttestationResult:
    """Appraise ``ev`` (bound to a channel when ``bound`` is given) against ``policy`` at time ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    require_sealed(ev, VerifiedEvidence)
    if bound is not None:
        require_sealed(bound, BoundEvidence)
    global_failures: list[VerificationError] = []

    # 1. a policy without entries accepts nothing (load_policy already refuses it; fail closed anyway)
    if not policy.accept:
        global_failures.append(
            VerificationError(
                "the policy has no [[accept]] entries: it accepts nothing", check="policy.empty"
            )
        )
    # 2. platform: only entries for the platform whose anchor verified the evidence are candidates
    candidates = [entry for entry in policy.accept if entry.platform == ev.platform]
    if policy.accept and not candidates:
        if ev.platform == "simulation":
            message = (
                "the evidence comes from the SIMULATED TEE (no hardware protection), but the policy only "
                f"accepts {_platform_list(policy)}; use the simulation kernelspec, or a policy that sets "
                'unsafe_allow_simulation = true and has an [[accept]] entry with platform = "simulation"'
            )
        else:
            message = (
                f'the evidence comes from platform "{ev.platform}", but the policy only accepts '
                f"{_platform_list(policy)}; add an [[accept]] entry for it (`cc-kernel policy init`)"
            )
        global_failures.append(
            VerificationError(
                message, check="policy.platform", got=ev.platform, expected=list(policy.platforms)
            )
        )
    # 3. simulation needs the top-level weakening, whatever the entries say
    if ev.platform == "simulation" and not policy.unsafe_allow_simulation:
        global_failures.append(
            VerificationError(
                "simulated evidence is only accepted by a policy with unsafe_allow_simulation = true",
                check="policy.simulation",
                got=False,
                expected=True,
            )
        )
    # 4. freshness of the verification (and of the attester's own clock where the platform has one)
    global_failures.extend(_freshness(ev, policy.require_fresh_within_s, now))

    # 5. every candidate entry, every clause (each entry type appraises itself)
    outcomes = [entry.evaluate(ev) for entry in candidates]
    matches = [o for o in outcomes if not o.failures]
    if global_failures or not matches:
        failures = global_failures + [f for o in outcomes for f in o.failures]
        raise PolicyViolation(_violation_message(ev, policy, outcomes, failures), failures=failures)
    best = min(matches, key=lambda o: (bool(o.used), o.entry.number))

    # 6. the verdict
    simulation = ev.platform == "simulation"
    used = list(best.used)
    if simulation:
        used.insert(0, "unsafe_allow_simulation")
    warnings = tuple(dict.fromkeys([*ev.warnings, *best.notes, *(["simulation"] if simulation else [])]))
    status: Status = "simulation" if simulation else ("warning" if used or ev.warnings else "affirming")
    return AttestationResult(
        status=status,
        trust_vector=MappingProxyType(_trust_vector(ev, best, simulation)),
        platform=ev.platform,
        product=ev.product,
        measurement=bytes(ev.measurement),
        measurements=MappingProxyType({k: bytes(v) for k, v in ev.measurements.items()}),
        debug=_is_debug(ev),
        tcb=MappingProxyType(dict(ev.tcb)),
        tcb_status=ev.tcb_status,
        signer=ev.signer,
        warnings=warnings,
        unsafe_flags_used=tuple(dict.fromkeys(used)),
        policy_unsafe_flags=policy.unsafe_flags,
        policy_sha256=policy.sha256,
        policy_source=policy.source,
        anchor_sha256=ev.anchor_sha256,
        evidence_sha256=ev.evidence_sha256,
        verified_at=aware_utc(ev.verified_at),
        appraised_at=now,
        matched_entry=best.entry.number,
        session_id=bound.session_id if bound is not None else b"",
        tls_spki_sha256=bound.tls_spki_sha256 if bound is not None else b"",
        audit_pub=bound.audit_pub if bound is not None else b"",
        nonce=bound.nonce if bound is not None else b"",
        claims=MappingProxyType(dict(ev.claims)),
    )


def _violation_message(
    ev: VerifiedEvidence, policy: Policy, outcomes: Sequence[Outcome], failures: Sequence[VerificationError]
) -> str:
    measurement = ev.measurement.hex()
    text = (
        f"policy {policy.source} does not accept this attestation (platform {ev.platform}, product "
        f"{ev.product}, measurement {measurement[:16]}...); the evidence is authentic, but "
    )
    if outcomes:
        text += f"{len(outcomes)} [[accept]] entr{'y' if len(outcomes) == 1 else 'ies'} for it failed:"
    else:
        text += "no [[accept]] entry applies:"
    if any(
        f.check in _MEASUREMENT_CHECKS or f.check.startswith(("policy.pcr.", "policy.rtmr."))
        for f in failures
    ):
        text += f"\n{REPIN_HINT}"
    return text


def _platform_list(policy: Policy) -> str:
    return ", ".join(f'"{p}"' for p in policy.platforms)


def _freshness(ev: VerifiedEvidence, window: int, now: datetime) -> list[VerificationError]:
    out: list[VerificationError] = []
    age = (now - aware_utc(ev.verified_at)).total_seconds()
    if abs(age) > window:
        out.append(
            VerificationError(
                f"the evidence was verified {age:.0f} s before this appraisal; the policy allows {window} s",
                check="policy.freshness",
                got=round(age),
                expected=window,
            )
        )
    out.extend(_entry_type(ev).attester_freshness(ev, window, now))
    return out


def _entry_type(ev: VerifiedEvidence) -> type[AcceptEntry]:
    return ENTRY_TYPES.get(ev.platform, AcceptEntry)


def _is_debug(ev: VerifiedEvidence) -> bool:
    return _entry_type(ev).is_debug(ev)


def _trust_vector(ev: VerifiedEvidence, best: Outcome, simulation: bool) -> dict[str, Tier]:
    """AR4SI tiers. Simulation makes no hardware claim; the rest is derived from what was weakened."""
    used = set(best.used)
    debug = _is_debug(ev)
    tcb_weak = bool(used & _TCB_FLAGS) or bool(
        {"tcb-collateral-missing", "provisional-firmware"} & set(ev.warnings)
    )
    other_warnings = set(ev.warnings) - {"tcb-collateral-missing", "provisional-firmware", "chip-id-masked"}
    hardware: Tier = "none" if simulation else ("warning" if tcb_weak or other_warnings else "affirming")
    identity: Tier = "warning" if simulation or "chip-id-masked" in ev.warnings else "affirming"
    configuration: Tier = "warning" if simulation or debug else "affirming"
    executables: Tier = "warning" if simulation or "unsafe_any_measurement" in used else "affirming"
    runtime: Tier = "none" if simulation else ("contraindicated" if debug else "affirming")
    return {
        "hardware": hardware,
        "instance-identity": identity,
        "configuration": configuration,
        "executables": executables,
        "runtime-opaque": runtime,
    }
