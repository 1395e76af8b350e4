"""Pure: the RA-TLS peer check — is the TLS peer an attested enclave that meets the policy?

Invariant: ``verify_peer`` either returns an ``AttestedPeer`` (authenticity, binding to the peer certificate's
key, the audit key and the session id, freshness for our nonce, and the policy all passed) or raises a
VerificationError subclass naming the failed check. Nothing else decides that the peer may receive code.

Check names: ``peer.certificate`` (no certificate, or one that does not parse), ``freshness.session_id``
(evidence for another session), ``binding.certificate_evidence`` (the certificate's start-up evidence names
another measurement or audit key than the fresh evidence), described in docs/evidence.md §2; and those of the
verification, binding and appraisal it calls (docs/audit-log.md §9, docs/policy.md §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import NONCE_SIZE, SESSION_ID_SIZE, check_binding
from cc_kernel.attestation.envelope import EvidenceEnvelope, parse_envelope_unverified
from cc_kernel.attestation.evidence import BoundEvidence
from cc_kernel.attestation.policy import Policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.attestation.verify import answered_nonce, verify_evidence
from cc_kernel.crypto.hashing import constant_time_equal
from cc_kernel.crypto.keys import peer_certificate_info
from cc_kernel.errors import BindingMismatch, MalformedEvidence, StaleEvidence

if TYPE_CHECKING:  # Intel collateral code loads only when a DCAP quote is verified
    from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral

#: The nonce and session id the enclave binds into the evidence it embeds in its certificate at start-up.
STARTUP_NONCE = bytes(NONCE_SIZE)
STARTUP_SESSION_ID = bytes(SESSION_ID_SIZE)


@dataclass(frozen=True)
class AttestedPeer:
    """The outcome of a successful peer check."""

    result: AttestationResult
    bound: BoundEvidence
    envelope: EvidenceEnvelope
    envelope_bytes: bytes
    tls_spki: bytes
    certificate_evidence_checked: bool


def verify_peer(
    *,
    peer_cert_der: bytes | None,
    envelope_bytes: bytes,
    nonce: bytes,
    session_id: bytes,
    policy: Policy,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None,
    now: datetime,
    collateral: DcapCollateral | None = None,
) -> AttestedPeer:
    """Check the enclave behind a TLS connection, in order; raise at the first failing step.

    Raises:
        MalformedEvidence: no peer certificate, or evidence that does not parse.
        UntrustedRoot / ChainError / CertificateExpired / SignatureInvalid: evidence is not authentic.
        StaleEvidence: the evidence answers another nonce or session (a replay).
        BindingMismatch: the evidence binds another TLS key or audit key than the ones in use.
        PolicyViolation: authentic, bound, fresh evidence that the policy does not accept (every clause).
    """
    # 1. the peer certificate: its SubjectPublicKeyInfo is what the evidence must bind
    if peer_cert_der is None:
        raise MalformedEvidence("the enclave presented no TLS certificate", check="peer.certificate")
    tls_spki, cert_evidence = peer_certificate_info(peer_cert_der)
    # 2. parse the fresh evidence (nothing trusted yet)
    env = parse_envelope_unverified(envelope_bytes)
    sim = simulation_anchors if policy.unsafe_allow_simulation else None
    # 3. authenticity: a pinned root's chain signed this evidence (platform decided by that root)
    verified = verify_evidence(env, anchors=anchors, now=now, simulation_anchors=sim, collateral=collateral)
    # 4. freshness and binding: answers our nonce and session, binds this certificate's key and the audit key
    if not constant_time_equal(env.session_id, session_id):
        raise StaleEvidence(
            "the evidence was produced for another session", check="freshness.session_id",
            got=env.session_id, expected=session_id,
        )
    bound = check_binding(
        verified, tls_spki=tls_spki, audit_pub=env.audit_pub, nonce=nonce, session_id=session_id,
        claimed_nonce=answered_nonce(verified, env),
    )
    # 5. the start-up evidence in the certificate (if any) must be authentic, bind the same key, and
    #    describe the same enclave (measurement) — a certificate cannot carry someone else's evidence
    checked_cert = False
    if cert_evidence is not None:
        cert_env = parse_envelope_unverified(cert_evidence)
        cert_verified = verify_evidence(
            cert_env, anchors=anchors, now=now, simulation_anchors=sim, collateral=collateral
        )
        check_binding(
            cert_verified, tls_spki=tls_spki, audit_pub=cert_env.audit_pub, nonce=STARTUP_NONCE,
            session_id=STARTUP_SESSION_ID,
        )
        if not constant_time_equal(cert_verified.measurement, verified.measurement) or not constant_time_equal(
            cert_env.audit_pub, env.audit_pub
        ):
            raise BindingMismatch(
                "the certificate's start-up evidence describes another enclave than the fresh evidence",
                check="binding.certificate_evidence", got=cert_verified.measurement, expected=verified.measurement,
            )
        checked_cert = True
    # 6. policy: measurement, debug, TCB, platform, simulation allowance — every failed clause reported
    result = appraise(bound, policy, now=now)
    return AttestedPeer(
        result=result, bound=bound, envelope=env, envelope_bytes=envelope_bytes, tls_spki=tls_spki,
        certificate_evidence_checked=checked_cert,
    )
