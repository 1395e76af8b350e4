"""Monitor: the evidence sources — ``collect(report_data, ...)`` returns an EvidenceEnvelope for the kernel.

The simulated provider signs byte-exact SEV-SNP reports with the simulated authority; its teaching faults
(debug, outdated TCB, swapped key, replay) change only what a real TEE could get wrong, so the kernel's real
verifier reports exactly the error real hardware would cause. Hardware providers (configfs-tsm,
/dev/sev-guest, Gramine, Nitro NSM) live in ``cc_kernel.enclave.providers`` and implement the same interface;
``detect_hardware_source`` picks one and never falls back to the simulation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import EvidenceEnvelope
from cc_kernel.attestation.platforms.sev_snp import DEBUG_POLICY_BIT
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report, simulated_envelope
from cc_kernel.crypto.keys import new_tls_key, spki_der_of_key

FAULTS = ("debug", "old-tcb", "swapped-key", "replay")


class EvidenceSource(Protocol):
    """Something that can produce attestation evidence binding ``report_data``."""

    name: str

    def collect(
        self, report_data: bytes, *, audit_pub: bytes, session_id: bytes, nonce: bytes
    ) -> EvidenceEnvelope: ...


@dataclass
class SimulatedSource:
    """The simulated TEE: SEV-SNP v5 reports signed by the simulated ARK -> ASK -> VCEK chain.

    ``faults`` switches on teaching faults (names in FAULTS). For ``old-tcb`` the caller passes an authority
    whose VCEK was derived for an older TCB (as AMD derives one VCEK per TCB); the report states that TCB.
    ``swapped-key``: every report binds the SPKI of another key than the TLS key the caller bound (what a
    host presenting its own certificate in front of a genuine enclave would show). ``replay``: the first
    envelope collected (the start-up evidence in the certificate, in a one-session process) is answered
    again to every later challenge, as a host replaying recorded evidence would.
    """

    authority: SimulationAuthority
    measurement: bytes
    faults: frozenset[str] = frozenset()
    name: str = "simulation"
    _first: EvidenceEnvelope | None = field(default=None, repr=False)
    _other_spki: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown simulation fault(s) {sorted(unknown)}; known: {list(FAULTS)}")

    def collect(
        self, report_data: bytes, *, audit_pub: bytes, session_id: bytes, nonce: bytes
    ) -> EvidenceEnvelope:
        if "replay" in self.faults and self._first is not None and nonce != bytes(len(nonce)):
            return self._first  # a host replaying evidence recorded from an earlier connection
        if "swapped-key" in self.faults:
            if self._other_spki is None:
                self._other_spki = spki_der_of_key(new_tls_key())
            report_data = expected_report_data(
                tls_spki=self._other_spki, audit_pub=audit_pub, nonce=nonce, session_id=session_id
            )
        policy = 0x30000 | (DEBUG_POLICY_BIT if "debug" in self.faults else 0)
        report = sign_report(self.authority, report_data=report_data, measurement=self.measurement, policy=policy)
        env = simulated_envelope(
            self.authority, report, audit_pub=audit_pub, session_id=session_id, nonce=nonce,
            collected_at_ms=int(time.time() * 1000),
        )
        if self._first is None:
            self._first = env
        return env


def detect_hardware_source(preferred: str | None = None) -> EvidenceSource:
    """The hardware evidence provider of this machine (``cc_kernel.enclave.providers.selector``).

    ``preferred`` forces one provider (``configfs-tsm``, ``sev-guest``, ``gramine``, ``nitro-nsm``; ``auto`` or
    None = the environment variable ``CC_KERNEL_EVIDENCE_PROVIDER``, else the first usable in that order).

    Raises:
        ConfigError: an unknown provider name.
        EvidenceUnavailable: the forced provider is not usable, or no TEE interface works here (the message
            lists what was looked for and why each was not used). Never falls back to the simulation.
    """
    from cc_kernel.enclave.providers.selector import select_provider  # hardware code loads only when asked for

    return select_provider(preferred)
