"""Enclave: evidence providers. ``collect(report_data, ...)`` returns an EvidenceEnvelope for the kernel.

The simulated provider signs byte-exact SEV-SNP reports with the simulated authority; its teaching faults
(debug, outdated TCB, swapped key, replay) change only what a real TEE could get wrong, so the kernel's real
verifier reports exactly the error real hardware would cause. Hardware providers (configfs-tsm,
/dev/sev-guest, Gramine, Nitro NSM) belong to the hardware work and plug in through the same interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import EvidenceEnvelope
from cc_kernel.attestation.platforms import HARDWARE_INTERFACES
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report, simulated_envelope
from cc_kernel.crypto.keys import new_tls_key, spki_der_of_key
from cc_kernel.errors import EvidenceUnavailable

#: Guest policy bit 19: the hypervisor may read and write guest memory through the debug API.
DEBUG_POLICY_BIT = 1 << 19
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




def detect_hardware_source() -> EvidenceSource:
    """The first hardware evidence provider present on this machine.

    Raises:
        EvidenceUnavailable: no TEE interface exists here (the message lists what was looked for), or one
            exists but its provider is not available in this version.
    """
    import os

    found = [(name, path) for name, path in HARDWARE_INTERFACES if os.path.exists(path)]
    looked = "; ".join(f"{name} at {path}" for name, path in HARDWARE_INTERFACES)
    if not found:
        raise EvidenceUnavailable(
            f"no TEE hardware found on this machine (looked for: {looked}). Use the 'Confidential Python "
            "(SIMULATION)' kernel for teaching, or run `cc-kernel enclave serve` inside a confidential VM / "
            "enclave and connect to it with CC_KERNEL_ENCLAVE=tcp://HOST:PORT."
        )
    name, path = found[0]
    raise EvidenceUnavailable(
        f"found {name} at {path}, but hardware evidence generation is not available in this version of "
        "cc-kernel yet; refusing rather than falling back to simulation."
    )
