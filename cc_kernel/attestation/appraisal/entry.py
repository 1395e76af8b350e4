"""Pure attestation layer: what every ``[[accept]]`` entry type shares, and the clause helpers entries use.

One class per platform (``snp``, ``intel``, ``nitro``; listed once in ``registry``) says everything about its
platform: the keys it reads (``KEYS``), how it is built from TOML (``build``), the clauses it checks
(``appraise``, as a sigstore policy object verifies), how ``cc-kernel policy init`` writes it (``render``),
and what pins the code (``CODE_PIN_RULE``). Adding a platform means adding one class.

Invariants: an entry's unsafe flags hold the *effective* value (top level OR entry); ``evaluate`` records every
failed clause (never only the first) and every weakening it needed; pinned values are compared in constant
time; a claim the verifier did not provide fails the clause that needs it (fail closed).
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final, Self

from cc_kernel.attestation.appraisal.reader import Reader, quoted
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.errors import VerificationError

#: Every weakening, in the order ``Policy.unsafe_flags`` lists them.
UNSAFE_FLAGS: Final = (
    "unsafe_allow_simulation",
    "unsafe_allow_debug",
    "unsafe_any_measurement",
    "unsafe_permit_provisional_firmware",
    "unsafe_skip_tcb_collateral",
    "unsafe_accept_tcb_status",
)
#: The weakenings an entry may set (and the top level, for every entry that has the key).
ENTRY_FLAGS: Final = UNSAFE_FLAGS[1:]
#: Keys every entry type reads.
COMMON_ENTRY_KEYS: Final = frozenset({"platform", "unsafe_allow_debug", "unsafe_any_measurement"})


@dataclass(frozen=True, kw_only=True)
class AcceptEntry(ABC):
    """One ``[[accept]]`` entry. Subclasses, one per platform, set the class constants and the four methods."""

    #: The ``platform`` value this type reads.
    PLATFORM: ClassVar[str]
    #: The keys an entry of this platform may hold.
    KEYS: ClassVar[frozenset[str]]
    #: What "pins the code" means for this platform (named in errors; docs/policy.md "Every entry pins the code").
    CODE_PIN_RULE: ClassVar[str]
    #: The ``cc-kernel policy init`` options that write such an entry.
    INIT_HINT: ClassVar[str]
    #: The key ``policy init`` pins measurements under, and their size in bytes.
    MEASUREMENT_KEY: ClassVar[tuple[str, int]]
    #: The ``render_policy`` options this platform takes besides measurements.
    RENDER_OPTIONS: ClassVar[frozenset[str]] = frozenset()

    number: int
    platform: str
    unsafe_allow_debug: bool = False
    unsafe_any_measurement: bool = False

    @property
    def unsafe_flags(self) -> tuple[str, ...]:
        """The weakenings in force for this entry, in ``UNSAFE_FLAGS`` order."""
        return tuple(name for name in UNSAFE_FLAGS if bool(getattr(self, name, False)))

    @property
    def label(self) -> str:
        """``[[accept]] #N (platform "P")``, as error messages name the entry."""
        return f'[[accept]] #{self.number} (platform "{self.platform}")'

    # --- reading, appraising and writing an entry of this platform ----------------------------------------

    @classmethod
    @abstractmethod
    def build(cls, item: Mapping[str, Any], where: str, reader: Reader, common: Mapping[str, Any]) -> Self:
        """The entry from its TOML table (its keys already checked against ``KEYS``; ``common`` holds number,
        platform and effective flags). Raises PolicyError (through ``reader``)."""

    @abstractmethod
    def appraise(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        """Check this platform's clauses on ``ev``, recording failures and weakenings in ``outcome``."""

    @classmethod
    @abstractmethod
    def render(cls, reader: Reader, pinned: Sequence[str], options: Mapping[str, Any]) -> list[str]:
        """Commented TOML lines of an entry pinning ``pinned`` (hex), with ``RENDER_OPTIONS`` from ``options``."""

    @classmethod
    def is_debug(cls, ev: VerifiedEvidence) -> bool:
        """Whether evidence of this platform shows a debuggable TEE (the verifier's flag; platforms add more)."""
        return ev.debug

    @classmethod
    def attester_freshness(cls, ev: VerifiedEvidence, window: int, now: datetime) -> list[VerificationError]:
        """Failures of the freshness of the attester's own timestamp, where the platform signs one."""
        return []

    # --- shared steps --------------------------------------------------------------------------------------

    def evaluate(self, ev: VerifiedEvidence) -> Outcome:
        """Every clause of this entry on ``ev``: debug first, then the platform's own."""
        outcome = Outcome(self)
        # a. debug: the host can read and write the TEE's memory
        if self.is_debug(ev):
            if self.unsafe_allow_debug:
                outcome.use("unsafe_allow_debug", "debug-enabled")
            else:
                outcome.fail(
                    "policy.debug",
                    "the TEE runs in DEBUG mode: the host can read and write its memory "
                    "(accepting this needs unsafe_allow_debug = true)",
                    got=True,
                    expected=False,
                )
        # b. the platform's clauses
        self.appraise(ev, outcome)
        return outcome

    @classmethod
    def require_code_pin(
        cls, reader: Reader, where: str, common: Mapping[str, Any], pinned: Sequence[str], missing: Sequence[str]
    ) -> None:
        """Every entry pins the platform's code measurement unless ``unsafe_any_measurement`` is in force.

        ``pinned`` names the code-identifying keys the entry sets; ``missing`` the ones the rule still needs.
        """
        if common["unsafe_any_measurement"] and pinned:
            reader.fail(
                f"{where} pins {pinned[0]} but unsafe_any_measurement = true is in force for it; "
                "these contradict each other: remove one"
            )
        if not common["unsafe_any_measurement"] and missing:
            reader.fail(
                f"{where} does not pin the enclave's code: {quoted(missing)} missing; a {cls.PLATFORM} entry "
                f"must set {cls.CODE_PIN_RULE} (e.g. `cc-kernel policy init {cls.INIT_HINT}`), "
                "or, to accept any enclave code, set unsafe_any_measurement = true"
            )


@dataclass
class Outcome:
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

    def check_any_of(self, check: str, what: str, got: bytes | None, pinned: Sequence[bytes]) -> None:
        """Fail ``check`` unless ``got`` equals one of ``pinned`` (constant-time compare of each)."""
        if got is None:
            self.fail(check, f"the evidence has no {what} claim", got=None, expected=[p.hex() for p in pinned])
            return
        matched = False
        for value in pinned:
            matched |= hmac.compare_digest(got, value)
        if not matched:
            # the re-pin advice is added once, to the PolicyViolation's message
            self.fail(check, f"the {what} is not one of the {len(pinned)} pinned value(s)", got=got.hex(),
                      expected=[p.hex() for p in pinned])

    def check_measurement(self, ev: VerifiedEvidence, check: str, what: str, pinned: Sequence[bytes]) -> None:
        """The code measurement clause: pinned values, or the ``unsafe_any_measurement`` weakening."""
        if self.entry.unsafe_any_measurement:
            self.use("unsafe_any_measurement", "any-measurement")
        else:
            self.check_any_of(check, what, bytes(ev.measurement), pinned)

    def check_minimum(self, check: str, what: str, have: int | None, minimum: int) -> None:
        """Fail ``check`` unless ``have`` is present and at least ``minimum``."""
        if have is None:
            self.fail(check, f"the evidence has no {what} claim", expected=minimum)
        elif have < minimum:
            self.fail(check, f"the {what} {have} is below the minimum {minimum}", got=have, expected=minimum)



# --- claim readers (the verifiers' claim shapes vary; anything unusable reads as missing) -------------------


def int_value(value: object, *, base: int) -> int | None:
    """``value`` as an integer: an ``int`` (never a ``bool``) or a string in ``base`` (0: Python's prefixes),
    else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, base)
        except ValueError:
            return None
    return None


def claim_int(claims: Mapping[str, object], *names: str) -> int | None:
    """The value of the first of ``names`` holding an integer (or an integer string), else None."""
    for name in names:
        value = claims.get(name)
        if isinstance(value, int | str):
            return int_value(value, base=0)
    return None


def register(ev: VerifiedEvidence, *names: str) -> bytes | None:
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
