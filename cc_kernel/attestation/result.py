"""Pure attestation layer: appraise bound evidence against a policy -> ``AttestationResult`` (EAR/AR4SI).

Invariants: ``appraise`` only ever returns a result for evidence that some ``[[accept]]`` entry of its own
platform accepts, otherwise it raises ``PolicyViolation`` listing *every* failed clause of every candidate
entry (each labelled with the entry number in ``index`` and in its message); simulated evidence yields status
``"simulation"`` and never ``"affirming"``/``"warning"``; ``"affirming"`` means no unsafe flag was needed and
the verifier reported no warning. Measurements and other pinned registers are compared in constant time; TCBs
component by component. No I/O, no clock: ``now`` is a parameter. Claims the verifier did not provide make the
clause that needs them fail (fail closed), with a message naming the missing claim.

Check names (``VerificationError.check``): ``policy.empty``, ``policy.platform``, ``policy.simulation``,
``policy.freshness``, ``policy.debug``, ``policy.measurement``, ``policy.signer``, ``policy.product``,
``policy.vmpl``, ``policy.migrate_ma``, ``policy.policy_bits.<name>``, ``policy.min_tcb.<component>``,
``policy.provisional_firmware``, ``policy.min_guest_svn``, ``policy.host_data``,
``policy.min_report_version``, ``policy.rtmr.<i>``, ``policy.mr_config_id``, ``policy.sept_ve_disable``,
``policy.tcb_status``, ``policy.tcb_collateral``, ``policy.mrsigner``, ``policy.isv_prod_id``,
``policy.min_isv_svn``, ``policy.pcr.<i>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, Final, Literal

from cc_kernel.attestation.evidence import BoundEvidence, VerifiedEvidence, require_sealed
from cc_kernel.attestation.platforms.sev_snp import POLICY_BITS as SNP_POLICY_BITS
from cc_kernel.attestation.policy import (
    TCB_COMPONENTS,
    AcceptEntry,
    NitroEntry,
    Policy,
    SgxEntry,
    SnpEntry,
    TdxEntry,
)
from cc_kernel.errors import PolicyViolation, VerificationError

#: Identifies the appraisal rules that produced a result (recorded in the audit log).
APPRAISAL_VERSION: Final = "cc-kernel/appraisal/v1"

Status = Literal["affirming", "warning", "simulation"]
Tier = Literal["none", "affirming", "warning", "contraindicated"]
#: AR4SI trustworthiness claims we report, in display order.
TRUST_CLAIMS: Final = ("hardware", "instance-identity", "configuration", "executables", "runtime-opaque")

REPIN_HINT: Final = (
    "If you changed the enclave on purpose, re-pin its measurement with "
    "`cc-kernel policy init --simulation --output FILE --force` (simulation) or "
    "`cc-kernel policy init --platform P --measurement HEX --output FILE --force` (hardware); "
    "otherwise this is not the enclave code you pinned: "
    "do not send it your data."
)
_TCB_FLAGS: Final = frozenset(
    {"unsafe_accept_tcb_status", "unsafe_skip_tcb_collateral", "unsafe_permit_provisional_firmware"}
)
_TD_ATTRIBUTES_SEPT_VE_DISABLE: Final = 1 << 28


@dataclass(frozen=True)
class AttestationResult:
    """The verdict on authentic, bound evidence under a policy (EAR ``ear.status`` + AR4SI trust vector).

    ``status``: ``affirming`` (matched with no weakening and no verifier warning), ``warning`` (matched only
    thanks to ``unsafe_flags_used`` or despite ``warnings``), ``simulation`` (simulated TEE: no hardware claim
    at all). A contraindicated appraisal is a ``PolicyViolation``, never a result. ``matched_entry`` is the
    1-based number of the ``[[accept]]`` entry that matched. ``verified_at`` is the time authenticity was
    checked (the time an auditor re-verifies at); ``appraised_at`` is the ``now`` given to ``appraise``.
    """

    status: Status
    trust_vector: Mapping[str, Tier]
    platform: str
    product: str
    measurement: bytes
    measurements: Mapping[str, bytes]
    debug: bool
    tcb: Mapping[str, int]
    tcb_status: str | None
    signer: str
    warnings: tuple[str, ...]
    unsafe_flags_used: tuple[str, ...]
    policy_unsafe_flags: tuple[str, ...]
    policy_sha256: bytes
    policy_source: str
    anchor_sha256: bytes
    evidence_sha256: bytes
    verified_at: datetime
    appraised_at: datetime
    matched_entry: int
    session_id: bytes
    tls_spki_sha256: bytes
    audit_pub: bytes
    nonce: bytes
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    verifier_version: str = APPRAISAL_VERSION

    @property
    def hardware_protected(self) -> bool:
        """True unless this is a simulation result (which protects nothing)."""
        return self.status != "simulation"

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: bytes as lowercase hex, times as ISO 8601 UTC, ``dbgstat`` per EAT."""
        return {
            "status": self.status,
            "trust_vector": dict(self.trust_vector),
            "platform": self.platform,
            "product": self.product,
            "measurement": self.measurement.hex(),
            "measurements": {k: v.hex() for k, v in sorted(self.measurements.items())},
            "debug": self.debug,
            "dbgstat": 0 if self.debug else 1,  # RFC 9711: 0 enabled, 1 disabled
            "tcb": {k: int(v) for k, v in self.tcb.items()},
            "tcb_status": self.tcb_status,
            "signer": self.signer,
            "warnings": list(self.warnings),
            "unsafe_flags_used": list(self.unsafe_flags_used),
            "policy_unsafe_flags": list(self.policy_unsafe_flags),
            "policy_sha256": self.policy_sha256.hex(),
            "policy_source": self.policy_source,
            "anchor_sha256": self.anchor_sha256.hex(),
            "evidence_sha256": self.evidence_sha256.hex(),
            "verified_at": iso_utc(self.verified_at),
            "appraised_at": iso_utc(self.appraised_at),
            "matched_entry": self.matched_entry,
            "session_id": self.session_id.hex(),
            "tls_spki_sha256": self.tls_spki_sha256.hex(),
            "audit_pub": self.audit_pub.hex(),
            "nonce": self.nonce.hex(),
            "claims": jsonable(self.claims),
            "verifier_version": self.verifier_version,
        }

    def summary_lines(self) -> list[str]:
        """Short human-readable lines for ``%attestation``, the CLI and the badge tooltip."""
        if self.status == "simulation":
            head = "SIMULATION - not hardware-protected (simulated TEE, accepted by unsafe_allow_simulation)"
        elif self.status == "warning":
            head = (
                f"VERIFIED WITH WARNINGS - genuine {self.platform} ({self.product}), weakened as listed below"
            )
        else:
            head = f"VERIFIED - genuine {self.platform} ({self.product}) running the pinned enclave"
        tcb = " ".join(f"{k}={v}" for k, v in self.tcb.items()) or "n/a"
        lines = [
            f"Attestation: {head}",
            f"Measurement: {self.measurement.hex()}",
            "Debug:       "
            + ("ENABLED (the host can read and write enclave memory)" if self.debug else "disabled"),
            f"TCB:         {tcb}" + (f" (status {self.tcb_status})" if self.tcb_status else ""),
            f"Signer:      {self.signer}; anchor sha256 {self.anchor_sha256.hex()[:16]}...",
            f"Policy:      {self.policy_source} (sha256 {self.policy_sha256.hex()[:16]}..., "
            f"[[accept]] #{self.matched_entry})",
            f"Unsafe used: {', '.join(self.unsafe_flags_used) or 'none'}",
            f"Warnings:    {', '.join(self.warnings) or 'none'}",
            "Trust:       " + ", ".join(f"{k}={v}" for k, v in self.trust_vector.items()),
            f"Session:     {self.session_id.hex()}; verified at {iso_utc(self.verified_at)}",
        ]
        return lines


# --- appraisal ----------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """The clauses one ``[[accept]]`` entry failed, and the weakenings it needed to pass the others."""

    entry: AcceptEntry
    failures: list[VerificationError] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, check: str, message: str, *, got: object = None, expected: object = None) -> None:
        self.failures.append(
            VerificationError(
                f"{self.entry.label}: {message}",
                check=check,
                got=got,
                expected=expected,
                index=self.entry.number,
            )
        )

    def use(self, flag: str, note: str) -> None:
        if flag not in self.used:
            self.used.append(flag)
        if note not in self.notes:
            self.notes.append(note)


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
    global_failures.extend(_freshness(ev, policy, now))

    # 5. every candidate entry, every clause
    outcomes = [_appraise_entry(ev, entry) for entry in candidates]
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
        verified_at=_aware(ev.verified_at),
        appraised_at=now,
        matched_entry=best.entry.number,
        session_id=bound.session_id if bound is not None else b"",
        tls_spki_sha256=bound.tls_spki_sha256 if bound is not None else b"",
        audit_pub=bound.audit_pub if bound is not None else b"",
        nonce=bound.nonce if bound is not None else b"",
        claims=MappingProxyType(dict(ev.claims)),
    )


def _violation_message(
    ev: VerifiedEvidence, policy: Policy, outcomes: Sequence[_Outcome], failures: Sequence[VerificationError]
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


_MEASUREMENT_CHECKS: Final = frozenset({"policy.measurement", "policy.mrsigner", "policy.mr_config_id"})


def _platform_list(policy: Policy) -> str:
    return ", ".join(f'"{p}"' for p in policy.platforms)


def _freshness(ev: VerifiedEvidence, policy: Policy, now: datetime) -> list[VerificationError]:
    window = policy.require_fresh_within_s
    out: list[VerificationError] = []
    age = (now - _aware(ev.verified_at)).total_seconds()
    if abs(age) > window:
        out.append(
            VerificationError(
                f"the evidence was verified {age:.0f} s before this appraisal; the policy allows {window} s",
                check="policy.freshness",
                got=round(age),
                expected=window,
            )
        )
    if ev.platform == "nitro":
        stamp = _claim_int(ev.claims, "timestamp_ms", "timestamp")
        if stamp is None:
            out.append(
                VerificationError(
                    "the Nitro document has no timestamp claim, so its freshness cannot be checked",
                    check="policy.freshness",
                    got=None,
                    expected=f"a timestamp within {window} s",
                )
            )
        else:
            doc_age = now.timestamp() - stamp / 1000
            if abs(doc_age) > window:
                out.append(
                    VerificationError(
                        f"the Nitro document's timestamp is {doc_age:.0f} s from now; "
                        f"the policy allows {window} s",
                        check="policy.freshness",
                        got=round(doc_age),
                        expected=window,
                    )
                )
    return out


def _appraise_entry(ev: VerifiedEvidence, entry: AcceptEntry) -> _Outcome:
    outcome = _Outcome(entry)
    # a. debug: the host can read and write the TEE's memory
    if _is_debug(ev):
        if entry.unsafe_allow_debug:
            outcome.use("unsafe_allow_debug", "debug-enabled")
        else:
            outcome.fail(
                "policy.debug",
                "the TEE runs in DEBUG mode: the host can read and write its memory "
                "(accepting this needs unsafe_allow_debug = true)",
                got=True,
                expected=False,
            )
    # b. platform-specific clauses
    if isinstance(entry, SnpEntry):
        _appraise_snp(ev, entry, outcome)
    elif isinstance(entry, TdxEntry):
        _appraise_tdx(ev, entry, outcome)
    elif isinstance(entry, SgxEntry):
        _appraise_sgx(ev, entry, outcome)
    else:
        _appraise_nitro(ev, entry, outcome)
    return outcome


def _check_any_of(
    outcome: _Outcome, check: str, what: str, got: bytes | None, pinned: Sequence[bytes]
) -> None:
    """Fail ``check`` unless ``got`` equals one of ``pinned`` (constant-time compare of each)."""
    if got is None:
        outcome.fail(check, f"the evidence has no {what} claim", got=None, expected=[p.hex() for p in pinned])
        return
    matched = False
    for value in pinned:
        matched |= hmac.compare_digest(got, value)
    if not matched:
        # the re-pin advice is added once, to the PolicyViolation's message (_violation_message)
        outcome.fail(check, f"the {what} is not one of the {len(pinned)} pinned value(s)", got=got.hex(),
                     expected=[p.hex() for p in pinned])


def _check_measurement(
    ev: VerifiedEvidence, outcome: _Outcome, check: str, what: str, pinned: Sequence[bytes]
) -> None:
    if outcome.entry.unsafe_any_measurement:
        outcome.use("unsafe_any_measurement", "any-measurement")
    else:
        _check_any_of(outcome, check, what, bytes(ev.measurement), pinned)


def _appraise_snp(ev: VerifiedEvidence, entry: SnpEntry, outcome: _Outcome) -> None:
    claims = ev.claims
    # c. launch measurement
    _check_measurement(ev, outcome, "policy.measurement", "launch measurement", entry.measurements)
    # d. signing key kind and product line
    if entry.signers is not None and ev.signer not in entry.signers:
        outcome.fail(
            "policy.signer",
            f'the report was signed by a "{ev.signer}" key',
            got=ev.signer,
            expected=list(entry.signers),
        )
    if entry.products is not None and _product_in(ev.product, entry.products) is None:
        outcome.fail(
            "policy.product",
            "the product line is not accepted",
            got=ev.product,
            expected=list(entry.products),
        )
    # e. VMPL of the requester
    vmpl = _claim_int(claims, "vmpl")
    if vmpl is None:
        outcome.fail("policy.vmpl", 'the evidence has no "vmpl" claim', expected=entry.vmpl)
    elif vmpl != entry.vmpl:
        outcome.fail("policy.vmpl", f"the report was requested at VMPL {vmpl}", got=vmpl, expected=entry.vmpl)
    # f. guest policy bits: migration agent always forbidden, plus the entry's own bits
    guest_policy = _claim_int(claims, "policy")
    bits_checked = ("migrate_ma", *entry.forbid_policy_bits, *entry.require_policy_bits)
    if guest_policy is None:
        outcome.fail(
            "policy.migrate_ma",
            'the evidence has no guest "policy" claim, so its policy bits cannot be checked',
        )
    else:
        for name in dict.fromkeys(bits_checked):
            if name == "debug":
                continue  # clause a
            is_set = bool(guest_policy >> SNP_POLICY_BITS[name] & 1)
            want = name in entry.require_policy_bits
            if is_set != want:
                check = "policy.migrate_ma" if name == "migrate_ma" else f"policy.policy_bits.{name}"
                state = "set" if is_set else "clear"
                outcome.fail(
                    check, f"guest policy bit {name} is {state}", got=int(is_set), expected=int(want)
                )
    # g. minimum TCB, component by component (never as one 64-bit number)
    product = _product_in(ev.product, entry.min_tcb_by_product)
    minimum = entry.min_tcb_by_product[product] if product is not None else entry.min_tcb
    for component in TCB_COMPONENTS:
        if component not in minimum:
            continue
        have = ev.tcb.get(component)
        if have is None:
            outcome.fail(
                f"policy.min_tcb.{component}",
                f'the evidence reports no "{component}" TCB component (product {ev.product})',
                expected=minimum[component],
            )
        elif have < minimum[component]:
            outcome.fail(
                f"policy.min_tcb.{component}",
                f"the reported TCB {component} SVN {have} is below the minimum {minimum[component]}",
                got=have,
                expected=minimum[component],
            )
    # h. provisional firmware: the running firmware must be the committed one
    _check_provisional(ev, entry, outcome)
    # i. the rest of the pinned identity
    if entry.min_guest_svn is not None:
        _check_minimum(
            outcome, "policy.min_guest_svn", "guest SVN", _claim_int(claims, "guest_svn"), entry.min_guest_svn
        )
    if entry.min_report_version is not None:
        _check_minimum(
            outcome,
            "policy.min_report_version",
            "report version",
            _claim_int(claims, "version"),
            entry.min_report_version,
        )
    if entry.host_data is not None:
        _check_any_of(
            outcome,
            "policy.host_data",
            "HOST_DATA",
            _register(ev, "host_data"),
            [entry.host_data],
        )


def _check_provisional(ev: VerifiedEvidence, entry: SnpEntry, outcome: _Outcome) -> None:
    current = _tcb_value(ev.claims.get("current_tcb"))
    committed = _tcb_value(ev.claims.get("committed_tcb"))
    if "provisional-firmware" in ev.warnings:
        provisional: bool | None = True
    elif current is None or committed is None or type(current) is not type(committed):
        provisional = None
    else:
        provisional = current != committed
    if provisional is False:
        return
    if entry.unsafe_permit_provisional_firmware:
        outcome.use("unsafe_permit_provisional_firmware", "provisional-firmware")
    elif provisional is None:
        outcome.fail(
            "policy.provisional_firmware",
            'the evidence lacks comparable "current_tcb" and "committed_tcb" claims, so provisional firmware '
            "cannot be ruled out",
            got=None,
            expected="current_tcb == committed_tcb",
        )
    else:
        outcome.fail(
            "policy.provisional_firmware",
            "the running (current) firmware TCB is not the committed one: provisional firmware that can "
            "still be rolled back (accepting it needs unsafe_permit_provisional_firmware = true)",
            got=jsonable(ev.claims.get("current_tcb")),
            expected=jsonable(ev.claims.get("committed_tcb")),
        )


def _appraise_tdx(ev: VerifiedEvidence, entry: TdxEntry, outcome: _Outcome) -> None:
    _check_measurement(ev, outcome, "policy.measurement", "MRTD", entry.mr_td)
    for index, value in entry.rtmr.items():
        _check_any_of(
            outcome,
            f"policy.rtmr.{index}",
            f"RTMR{index}",
            _register(ev, f"rtmr{index}", f"rtmr_{index}"),
            [value],
        )
    if entry.mr_config_id is not None:
        _check_any_of(
            outcome,
            "policy.mr_config_id",
            "MRCONFIGID",
            _register(ev, "mr_config_id", "mrconfigid"),
            [entry.mr_config_id],
        )
    if entry.require_sept_ve_disable:
        sept = _sept_ve_disable(ev.claims)
        if sept is not True:
            outcome.fail(
                "policy.sept_ve_disable",
                "TD_ATTRIBUTES.SEPT_VE_DISABLE is not set"
                if sept is False
                else 'the evidence has no "td_attributes" claim to check SEPT_VE_DISABLE',
                got=sept,
                expected=True,
            )
    _check_tcb_status(ev, entry, outcome)


def _appraise_sgx(ev: VerifiedEvidence, entry: SgxEntry, outcome: _Outcome) -> None:
    if entry.unsafe_any_measurement:
        outcome.use("unsafe_any_measurement", "any-measurement")
    else:
        if entry.mrenclave:
            _check_any_of(outcome, "policy.measurement", "MRENCLAVE", bytes(ev.measurement), entry.mrenclave)
        if entry.mrsigner:
            _check_any_of(outcome, "policy.mrsigner", "MRSIGNER", _register(ev, "mrsigner"), entry.mrsigner)
    if entry.isv_prod_id is not None:
        prod = _claim_int(ev.claims, "isv_prod_id", "isvprodid")
        if prod != entry.isv_prod_id:
            outcome.fail(
                "policy.isv_prod_id",
                "ISVPRODID differs" if prod is not None else 'the evidence has no "isv_prod_id" claim',
                got=prod,
                expected=entry.isv_prod_id,
            )
    if entry.min_isv_svn is not None:
        _check_minimum(
            outcome,
            "policy.min_isv_svn",
            "ISVSVN",
            _claim_int(ev.claims, "isv_svn", "isvsvn"),
            entry.min_isv_svn,
        )
    _check_tcb_status(ev, entry, outcome)


def _check_tcb_status(ev: VerifiedEvidence, entry: TdxEntry | SgxEntry, outcome: _Outcome) -> None:
    status = ev.tcb_status
    if status is None:
        if entry.unsafe_skip_tcb_collateral:
            outcome.use("unsafe_skip_tcb_collateral", "tcb-collateral-missing")
        elif "tcb-collateral-incomplete" in ev.warnings:
            missing = _missing_collateral(ev.claims)
            outcome.fail(
                "policy.tcb_collateral",
                "the Intel collateral is incomplete"
                + (f" (missing: {', '.join(missing)})" if missing else "")
                + ", so the platform's TCB status is unknown; supply every current item (tcbInfo, QE identity, "
                "PCK CRL, root CRL), or accept the risk with unsafe_skip_tcb_collateral = true",
                got=None,
                expected=list(entry.accept_tcb_status),
            )
        else:
            outcome.fail(
                "policy.tcb_collateral",
                "no Intel TCB collateral was verified, so the platform's TCB status is unknown; supply it "
                "(--collateral DIR, or in the evidence envelope), or accept the risk with "
                "unsafe_skip_tcb_collateral = true",
                got=None,
                expected=list(entry.accept_tcb_status),
            )
    elif status in entry.accept_tcb_status:
        return
    elif status in entry.unsafe_accept_tcb_status and status != "Revoked":
        outcome.use("unsafe_accept_tcb_status", f"tcb-status-{status}")
    else:
        outcome.fail(
            "policy.tcb_status",
            f"the platform's TCB status is {status}",
            got=status,
            expected=[*entry.accept_tcb_status, *entry.unsafe_accept_tcb_status],
        )


def _missing_collateral(claims: Mapping[str, object]) -> list[str]:
    tcb = claims.get("tcb")
    missing = tcb.get("missing") if isinstance(tcb, Mapping) else None
    return [str(item) for item in missing] if isinstance(missing, list | tuple) else []


def _appraise_nitro(ev: VerifiedEvidence, entry: NitroEntry, outcome: _Outcome) -> None:
    if entry.unsafe_any_measurement:
        outcome.use("unsafe_any_measurement", "any-measurement")
    for index, value in entry.pcr.items():
        got = _register(ev, f"pcr{index}", f"pcr_{index}")
        if got is None and index == 0:
            got = bytes(ev.measurement)
        _check_any_of(outcome, f"policy.pcr.{index}", f"PCR{index}", got, [value])


# --- claim helpers (the verifiers' claim shapes vary; anything unusable reads as missing) -------------------


def _check_minimum(outcome: _Outcome, check: str, what: str, have: int | None, minimum: int) -> None:
    if have is None:
        outcome.fail(check, f"the evidence has no {what} claim", expected=minimum)
    elif have < minimum:
        outcome.fail(check, f"the {what} {have} is below the minimum {minimum}", got=have, expected=minimum)


def _is_debug(ev: VerifiedEvidence) -> bool:
    if ev.debug:
        return True
    if ev.platform in ("sev-snp", "simulation"):  # defence in depth: POLICY.DEBUG is bit 19
        guest_policy = _claim_int(ev.claims, "policy")
        return guest_policy is not None and bool(guest_policy >> SNP_POLICY_BITS["debug"] & 1)
    return False


def _product_in(product: str, names: Iterable[str]) -> str | None:
    """The entry of ``names`` naming ``product`` ("Milan" names "Milan" and "Milan-B0"), or None."""
    for name in names:
        if product == name or product.startswith(f"{name}-"):
            return name
    return None


def _claim_int(claims: Mapping[str, object], *names: str) -> int | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                return None
    return None


def _register(ev: VerifiedEvidence, *names: str) -> bytes | None:
    """A named register from ``measurements`` (bytes) or ``claims`` (bytes or hex), or None."""
    for name in names:
        for source in (ev.measurements, ev.claims):
            value = source.get(name)
            if isinstance(value, bytes | bytearray):
                return bytes(value)
            if isinstance(value, str):
                try:
                    return bytes.fromhex(value.removeprefix("0x"))
                except ValueError:
                    return None
    return None


def _tcb_value(value: object) -> int | dict[str, int] | None:
    """Normalise a TCB claim for equality tests: int, hex string, 8 raw bytes, ``{"raw": hex, ...}`` or a
    mapping of component SVNs."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.removeprefix("0x"), 16)
        except ValueError:
            return None
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "little")
    if isinstance(value, Mapping):
        if "raw" in value:  # the SNP verifier's shape: {"raw": "<16 hex>", "bl": 3, ...}
            return _tcb_value(value["raw"])
        out = {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
        return out or None
    return None


def _sept_ve_disable(claims: Mapping[str, object]) -> bool | None:
    direct = claims.get("sept_ve_disable")
    if isinstance(direct, bool):
        return direct
    attributes = claims.get("td_attributes")
    if isinstance(attributes, bytes | bytearray) and len(attributes) == 8:
        return bool(int.from_bytes(attributes, "little") & _TD_ATTRIBUTES_SEPT_VE_DISABLE)
    number = _claim_int(claims, "td_attributes")
    if number is None:
        return None
    return bool(number & _TD_ATTRIBUTES_SEPT_VE_DISABLE)


def _trust_vector(ev: VerifiedEvidence, best: _Outcome, simulation: bool) -> dict[str, Tier]:
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


def _aware(moment: datetime) -> datetime:
    """Evidence times are UTC; a naive one (a verifier's slip) is read as UTC rather than compared wrongly."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix (a naive time is read as UTC)."""
    return _aware(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


def jsonable(value: object) -> Any:
    """Convert claim values to JSON types: bytes -> hex, mappings -> objects, sequences -> arrays."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=repr)
    return str(value)
