"""Pure attestation layer: the verdict of an appraisal, ``AttestationResult`` (EAR ``ear.status`` + AR4SI).

Invariants: a result is only made by ``appraisal.appraise`` / ``appraise_offline`` for evidence that some
``[[accept]]`` entry accepted; simulated evidence has status ``"simulation"``, never ``"affirming"`` or
``"warning"``; times are written in ISO 8601 UTC with a ``Z`` (``iso_utc``, the one writer) and claims as JSON
types (``jsonable``). No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, Final, Literal

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


def aware_utc(moment: datetime) -> datetime:
    """Evidence times are UTC; a naive one (a verifier's slip) is read as UTC rather than compared wrongly."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix (a naive time is read as UTC)."""
    return aware_utc(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


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
