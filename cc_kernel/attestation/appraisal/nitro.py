"""Pure attestation layer: ``[[accept]]`` entries for AWS Nitro Enclaves attestation documents.

Invariants: each pinned PCR must equal its value (PCR0, the enclave image, is the code pin); the document's
own timestamp must lie within the policy's freshness window of the appraisal time.

Check names: ``policy.pcr.<i>``, ``policy.freshness`` (the document timestamp).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Self

from cc_kernel.attestation.appraisal.entry import (
    COMMON_ENTRY_KEYS,
    AcceptEntry,
    Outcome,
    claim_int,
    register,
)
from cc_kernel.attestation.appraisal.reader import Reader, toml_str
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.errors import VerificationError


@dataclass(frozen=True, kw_only=True)
class NitroEntry(AcceptEntry):
    """An ``[[accept]]`` entry for AWS Nitro attestation documents. ``pcr`` maps index -> expected value."""

    PLATFORM: ClassVar[str] = "nitro"
    KEYS: ClassVar[frozenset[str]] = COMMON_ENTRY_KEYS | {"pcr"}
    CODE_PIN_RULE: ClassVar[str] = '"pcr" with index 0 (PCR0: the enclave image file)'
    INIT_HINT: ClassVar[str] = "--platform nitro --measurement PCR0"
    MEASUREMENT_KEY: ClassVar[tuple[str, int]] = ("pcr", 48)

    pcr: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, item: Mapping[str, Any], where: str, reader: Reader, common: Mapping[str, Any]) -> Self:
        pcr = reader.hex_map(item, "pcr", where, size=48, max_index=31, what="PCR index")
        # PCR3 (IAM role), PCR4 (instance) and PCR8 (EIF signer) are chosen by the operator: only PCR0 pins the code
        cls.require_code_pin(reader, where, common, ["pcr.0"] if 0 in pcr else [], [] if 0 in pcr else ["pcr.0"])
        return cls(**common, pcr=pcr)

    def appraise(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        if self.unsafe_any_measurement:
            outcome.use("unsafe_any_measurement", "any-measurement")
        for index, value in self.pcr.items():
            got = register(ev, f"pcr{index}", f"pcr_{index}")
            if got is None and index == 0:
                got = bytes(ev.measurement)
            outcome.check_any_of(f"policy.pcr.{index}", f"PCR{index}", got, [value])

    @classmethod
    def attester_freshness(cls, ev: VerifiedEvidence, window: int, now: datetime) -> list[VerificationError]:
        """The document's own timestamp (milliseconds since the epoch) must be within ``window`` s of ``now``."""
        stamp = claim_int(ev.claims, "timestamp_ms", "timestamp")
        if stamp is None:
            return [
                VerificationError(
                    "the Nitro document has no timestamp claim, so its freshness cannot be checked",
                    check="policy.freshness",
                    got=None,
                    expected=f"a timestamp within {window} s",
                )
            ]
        doc_age = now.timestamp() - stamp / 1000
        if abs(doc_age) <= window:
            return []
        return [
            VerificationError(
                f"the Nitro document's timestamp is {doc_age:.0f} s from now; the policy allows {window} s",
                check="policy.freshness",
                got=round(doc_age),
                expected=window,
            )
        ]

    @classmethod
    def render(cls, reader: Reader, pinned: Sequence[str], options: Mapping[str, Any]) -> list[str]:
        out = ["[[accept]]", "# AWS Nitro Enclave, verified against the pinned AWS Nitro root.", 'platform = "nitro"']
        out.append("# PCR0 (hash of the enclave image file), 48 bytes hex.")
        out.append(f"pcr = {{ 0 = {toml_str(pinned[0])} }}")
        # several PCR0 values need several entries: Nitro pins are per-index, not any-of
        for extra in pinned[1:]:
            out += ["", "[[accept]]", 'platform = "nitro"', f"pcr = {{ 0 = {toml_str(extra)} }}"]
        return out
