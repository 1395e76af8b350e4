"""Pure: the sealed results of verification. Only their producers (through ``seal``) can construct them.

Invariants: holding a ``VerifiedEvidence`` means a pinned anchor's chain verified the evidence signature at
the given time; holding a ``BoundEvidence`` means, in addition, that its report_data binds the given channel
key, audit key, nonce and session id. A sealed value cannot be changed or copied into a sealed value:
``dataclasses.replace``, ``copy.copy``/``deepcopy`` and pickling raise ``TypeError``, and ``require_sealed``
refuses any object that ``seal`` did not make itself (however else it was made).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, NoReturn, SupportsIndex, TypeVar, cast

Platform = Literal["sev-snp", "tdx", "sgx-dcap", "nitro", "simulation"]
PLATFORMS: tuple[str, ...] = ("sev-snp", "tdx", "sgx-dcap", "nitro", "simulation")

#: The class ``seal`` is constructing right now (in this thread or task), else None.
_SEALING: ContextVar[type[Sealed] | None] = ContextVar("cc_kernel_sealing", default=None)
#: Every instance ``seal`` made that is still alive, by id: the proof that an object is the sealed one.
_SEALED: weakref.WeakValueDictionary[int, Sealed] = weakref.WeakValueDictionary()

S = TypeVar("S", bound="Sealed")


class Sealed:
    """Base of frozen dataclasses that only ``seal`` builds (their producer names itself in ``PRODUCER``).

    A changed or copied value is not sealed: building one directly, ``dataclasses.replace``, ``copy.copy``,
    ``copy.deepcopy`` and pickling raise ``TypeError``.
    """

    PRODUCER: ClassVar[str] = "its verifier"

    def __post_init__(self) -> None:
        if _SEALING.get() is not type(self):
            raise TypeError(
                f"{type(self).__name__} is only produced by {self.PRODUCER}; a value built or changed "
                "elsewhere (dataclasses.replace included) is not verified"
            )
        _SEALED[id(self)] = self

    def _refuse_copy(self) -> NoReturn:
        raise TypeError(
            f"a {type(self).__name__} cannot be copied: a copy would not be the value {self.PRODUCER} sealed"
        )

    def __copy__(self) -> NoReturn:
        self._refuse_copy()

    def __deepcopy__(self, memo: object) -> NoReturn:
        self._refuse_copy()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        self._refuse_copy()


def seal(cls: type[S], /, **fields: object) -> S:
    """For producers only: construct ``cls`` from ``fields`` after every check that the type promises passed.

    Raises:
        TypeError: unknown or missing fields (as the dataclass constructor would).
    """
    mark = _SEALING.set(cls)
    try:
        return cast(Any, cls)(**fields)  # type: ignore[no-any-return]
    finally:
        _SEALING.reset(mark)


def require_sealed(value: object, cls: type[Sealed]) -> None:
    """Refuse ``value`` unless it is an instance of ``cls`` that ``seal`` made (not a copy of one).

    Raises:
        TypeError: ``value`` is not a ``cls``, or it is one that ``seal`` did not make.
    """
    if not isinstance(value, cls):
        raise TypeError(f"expected a {cls.__name__} from {cls.PRODUCER}, got {type(value).__name__}")
    if _SEALED.get(id(value)) is not value:
        raise TypeError(
            f"this {cls.__name__} was not sealed by {cls.PRODUCER} (a copy or a forgery): it is not verified"
        )


@dataclass(frozen=True)
class VerifiedEvidence(Sealed):
    """Authentic evidence: the signature chain ended at ``anchor_sha256`` (a pinned root) at ``verified_at``.

    ``platform`` is decided by which pinned anchor verified it, never by what the envelope claimed.
    """

    PRODUCER: ClassVar[str] = "a platform verifier"

    platform: Platform
    product: str
    measurement: bytes
    report_data: bytes
    debug: bool
    signer: str
    anchor_sha256: bytes
    evidence_sha256: bytes
    verified_at: datetime
    measurements: Mapping[str, bytes] = field(default_factory=dict)
    tcb: Mapping[str, int] = field(default_factory=dict)
    tcb_status: str | None = None
    claims: Mapping[str, object] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def seal_verified(**fields: object) -> VerifiedEvidence:
    """For platform verifiers only: construct a VerifiedEvidence after every authenticity check passed."""
    return seal(VerifiedEvidence, **fields)


@dataclass(frozen=True)
class BoundEvidence(Sealed):
    """Verified evidence whose report_data was recomputed from these inputs and matched (constant time)."""

    PRODUCER: ClassVar[str] = "check_binding"

    evidence: VerifiedEvidence
    tls_spki_sha256: bytes
    audit_pub: bytes
    nonce: bytes
    session_id: bytes


def seal_bound(**fields: object) -> BoundEvidence:
    """For ``binding.check_binding`` only."""
    return seal(BoundEvidence, **fields)
