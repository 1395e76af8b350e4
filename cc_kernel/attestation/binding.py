"""Pure: the report_data binding (docs/evidence.md §2) and its check.

REPORT_DATA = SHA-512(tag ‖ lp(tls_spki_der) ‖ lp(audit_pub) ‖ lp(nonce) ‖ lp(session_id)), 64 bytes.

A dataset release (docs/dataset.md §3) binds under its own tag, so channel evidence can never be replayed as
release evidence or the other way round:
REPORT_DATA = SHA-512(lp(TAG_DATASET_RELEASE) ‖ lp(nonce) ‖ lp(dataset_id) ‖ lp(release_pub) ‖
lp(requester_spki_sha256)).

Invariant: a ``Bound*`` value is made only here, after the freshness check and then the binding check, both
compared in constant time. Check names: ``freshness.nonce`` (the evidence answers another nonce: a replay),
``binding.report_data`` (channel evidence) and ``binding.release`` (release evidence) for a REPORT_DATA that
is not the one the inputs demand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final, NamedTuple

from cc_kernel.attestation.evidence import BoundEvidence, VerifiedEvidence, require_sealed, seal_bound
from cc_kernel.crypto.hashing import TAG_DATASET_RELEASE, TAG_REPORT_DATA, constant_time_equal, tagged_hash
from cc_kernel.errors import BindingMismatch, StaleEvidence

NONCE_SIZE = 32
SESSION_ID_SIZE = 16
AUDIT_PUB_SIZE = 32
RELEASE_PUB_SIZE = 32
DATASET_ID_SIZE = 16


def require_bound(got: bytes, expected: bytes, *, check: str, message: str) -> None:
    """The one binding comparison: ``got`` must equal ``expected`` (constant time).

    Raises BindingMismatch(``message``, ``check``) with both values.
    """
    if not constant_time_equal(got, expected):
        raise BindingMismatch(message, check=check, got=got, expected=expected)


class _Kind(NamedTuple):
    """What a binding is called in its errors: the check name, the replay text and the mismatch text."""

    check: str
    replayed: str
    mismatch: str


_CHANNEL: Final = _Kind(
    "binding.report_data",
    "the evidence answers a different nonce: it was replayed from an earlier connection",
    "report_data does not bind this connection's TLS key, audit key, nonce and session id",
)
_RELEASE: Final = _Kind(
    "binding.release",
    "the evidence answers a different challenge: it was replayed from an earlier release exchange",
    "report_data does not bind this release: its challenge, dataset id, release key and requester",
)


def expected_report_data(*, tls_spki: bytes, audit_pub: bytes, nonce: bytes, session_id: bytes) -> bytes:
    """The 64-byte report_data an enclave must produce for these inputs."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if len(session_id) != SESSION_ID_SIZE:
        raise ValueError(f"session id must be {SESSION_ID_SIZE} bytes")
    return tagged_hash(TAG_REPORT_DATA, tls_spki, audit_pub, nonce, session_id, algorithm="sha512")


def check_binding(
    evidence: VerifiedEvidence,
    *,
    tls_spki: bytes,
    audit_pub: bytes,
    nonce: bytes,
    session_id: bytes,
    claimed_nonce: bytes | None = None,
) -> BoundEvidence:
    """Return BoundEvidence if the evidence's report_data binds exactly these inputs.

    ``claimed_nonce`` is the nonce the enclave says it answered (from the envelope); if it differs from ours
    the evidence is a replay (StaleEvidence). Otherwise a mismatch is a BindingMismatch: the certificate key,
    audit key or session id is not the one the TEE bound.

    Raises:
        StaleEvidence: the evidence answers another nonce.
        BindingMismatch: report_data does not bind this channel key / audit key / session.
        TypeError: ``evidence`` is not a VerifiedEvidence sealed by a platform verifier (e.g. a copy).
    """
    return _bind(
        evidence, _CHANNEL, nonce=nonce, claimed_nonce=claimed_nonce,
        expected=lambda: expected_report_data(
            tls_spki=tls_spki, audit_pub=audit_pub, nonce=nonce, session_id=session_id
        ),
        tls_spki_sha256=hashlib.sha256(tls_spki).digest(), audit_pub=audit_pub, session_id=session_id,
    )


def expected_release_report_data(
    *, nonce: bytes, dataset_id: bytes, release_pub: bytes, requester_spki_sha256: bytes
) -> bytes:
    """The 64-byte report_data a monitor must produce to obtain a dataset key (docs/dataset.md §3)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if len(dataset_id) != DATASET_ID_SIZE:
        raise ValueError(f"dataset id must be {DATASET_ID_SIZE} bytes")
    if len(release_pub) != RELEASE_PUB_SIZE:
        raise ValueError(f"release key must be {RELEASE_PUB_SIZE} bytes")
    if len(requester_spki_sha256) != 32:
        raise ValueError("requester_spki_sha256 must be 32 bytes")
    return tagged_hash(
        TAG_DATASET_RELEASE, nonce, dataset_id, release_pub, requester_spki_sha256, algorithm="sha512"
    )


def check_release_binding(
    evidence: VerifiedEvidence,
    *,
    nonce: bytes,
    dataset_id: bytes,
    release_pub: bytes,
    requester_spki_sha256: bytes,
    claimed_nonce: bytes | None = None,
) -> BoundEvidence:
    """Return BoundEvidence if the evidence's report_data binds this release exchange.

    The result maps the release onto BoundEvidence's fields: ``nonce`` the broker's challenge, ``session_id``
    the dataset id, ``audit_pub`` the release key, ``tls_spki_sha256`` the requester's TLS key digest.

    Raises:
        StaleEvidence: ``freshness.nonce``: the evidence answers another challenge (a replayed exchange).
        BindingMismatch: ``binding.release``: report_data binds another release key, dataset or requester.
        TypeError: ``evidence`` is not a VerifiedEvidence sealed by a platform verifier (e.g. a copy).
    """
    return _bind(
        evidence, _RELEASE, nonce=nonce, claimed_nonce=claimed_nonce,
        expected=lambda: expected_release_report_data(
            nonce=nonce, dataset_id=dataset_id, release_pub=release_pub, requester_spki_sha256=requester_spki_sha256
        ),
        tls_spki_sha256=requester_spki_sha256, audit_pub=release_pub, session_id=dataset_id,
    )


def _bind(
    evidence: VerifiedEvidence,
    kind: _Kind,
    *,
    expected: Callable[[], bytes],
    nonce: bytes,
    claimed_nonce: bytes | None,
    tls_spki_sha256: bytes,
    audit_pub: bytes,
    session_id: bytes,
) -> BoundEvidence:
    """The two checks every binding makes, then the seal: ``expected()`` is the report_data the inputs demand
    (computed after the freshness check, so a replay is reported as one).

    Raises StaleEvidence (``freshness.nonce``) or BindingMismatch (``kind.check``), with ``kind``'s texts, and
    TypeError for evidence that a platform verifier did not seal (e.g. a copy of sealed evidence).
    """
    require_sealed(evidence, VerifiedEvidence)
    # 1. freshness: the evidence must answer the nonce (challenge) chosen for this exchange
    if claimed_nonce is not None and not constant_time_equal(claimed_nonce, nonce):
        raise StaleEvidence(kind.replayed, check="freshness.nonce", got=claimed_nonce, expected=nonce)
    # 2. binding: the recomputed report_data, compared in constant time
    require_bound(evidence.report_data, expected(), check=kind.check, message=kind.mismatch)
    return seal_bound(
        evidence=evidence, tls_spki_sha256=tls_spki_sha256, audit_pub=audit_pub, nonce=nonce, session_id=session_id
    )
