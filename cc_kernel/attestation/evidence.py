"""Pure: the sealed results of verification. Only platform verifiers (via ``_seal``) can construct them.

Invariant: holding a ``VerifiedEvidence`` means a pinned anchor's chain verified the evidence signature at the
given time; holding a ``BoundEvidence`` means, in addition, that its report_data binds the given channel key,
audit key, nonce and session id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Platform = Literal["sev-snp", "tdx", "sgx-dcap", "nitro", "simulation"]
PLATFORMS: tuple[str, ...] = ("sev-snp", "tdx", "sgx-dcap", "nitro", "simulation")

_SEAL = object()


@dataclass(frozen=True)
class VerifiedEvidence:
    """Authentic evidence: the signature chain ended at ``anchor_sha256`` (a pinned root) at ``verified_at``.

    ``platform`` is decided by which pinned anchor verified it, never by what the envelope claimed.
    """

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
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _SEAL:
            raise TypeError("VerifiedEvidence is only produced by a platform verifier")


def seal_verified(**fields: object) -> VerifiedEvidence:
    """For platform verifiers only: construct a VerifiedEvidence after every authenticity check passed."""
    return VerifiedEvidence(**fields, _token=_SEAL)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BoundEvidence:
    """Verified evidence whose report_data was recomputed from these inputs and matched (constant time)."""

    evidence: VerifiedEvidence
    tls_spki_sha256: bytes
    audit_pub: bytes
    nonce: bytes
    session_id: bytes
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _SEAL:
            raise TypeError("BoundEvidence is only produced by check_binding")


def seal_bound(**fields: object) -> BoundEvidence:
    """For ``binding.check_binding`` only."""
    return BoundEvidence(**fields, _token=_SEAL)  # type: ignore[arg-type]
