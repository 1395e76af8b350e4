"""Pure attestation layer: ``verify_evidence`` dispatches an envelope to its platform verifier (authenticity).

Invariants:

* dispatch is by ``env.format`` (which parser to run), never by ``env.platform``; the result's platform is the
  label of the pinned root that verified the evidence (hardware ARK -> ``sev-snp``, simulation ARK ->
  ``simulation``), so an envelope cannot talk its way into a label;
* simulation anchors are a separate argument, consulted only when given; ``anchors`` must hold no simulation
  root and ``simulation_anchors`` nothing else, so the two can never be confused;
* a simulated report presented without simulation anchors fails with ``UntrustedRoot`` whose message says so
  (the message is chosen by looking at subject text; the decision is only "no pinned root verified it").
"""

from __future__ import annotations

from datetime import datetime

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.envelope import EvidenceEnvelope
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.attestation.platforms import sev_snp
from cc_kernel.attestation.platforms.simulation import describes_simulation
from cc_kernel.errors import MalformedEvidence, UntrustedRoot

__all__ = ["SNP_FORMATS", "verify_evidence"]

#: Envelope formats carrying an SEV-SNP ATTESTATION_REPORT (real or simulated: same bytes, same verifier).
SNP_FORMATS = ("amd-snp-report", "cc-sim-snp-report")

SIMULATION_HINT = (
    "this evidence comes from the SIMULATED TEE (no hardware protection at all), and the verification "
    "policy does not allow simulation (no simulation trust anchors were given)"
)


def verify_evidence(
    env: EvidenceEnvelope,
    *,
    anchors: TrustAnchors,
    now: datetime,
    simulation_anchors: TrustAnchors | None = None,
) -> VerifiedEvidence:
    """Verify the authenticity of the evidence in ``env`` at time ``now``.

    ``anchors`` are the pinned hardware roots (``anchors.hardware_anchors()``); ``simulation_anchors`` only
    when the policy allows simulation. Binding, freshness and policy are later steps.

    Raises:
        MalformedEvidence: unsupported format (``envelope.format``), missing endorsement
            (``envelope.endorsement``), or malformed evidence.
        UntrustedRoot, ChainError, CertificateExpired, SignatureInvalid: from the platform verifier.
        ValueError: ``anchors`` contains a simulation root, or ``simulation_anchors`` a hardware one.
    """
    if "simulation" in anchors.platforms:
        raise ValueError("pass simulation roots as simulation_anchors=, never as anchors=")
    if simulation_anchors is not None and simulation_anchors.platforms - {"simulation"}:
        raise ValueError("simulation_anchors may only hold simulation roots")

    # 1. dispatch by format
    if env.format in SNP_FORMATS:
        return _verify_snp(env, anchors=anchors, now=now, simulation_anchors=simulation_anchors)
    raise MalformedEvidence(
        f"evidence format {env.format!r} is not supported yet",
        check="envelope.format",
        got=env.format,
        expected=list(SNP_FORMATS),
    )


def _verify_snp(
    env: EvidenceEnvelope,
    *,
    anchors: TrustAnchors,
    now: datetime,
    simulation_anchors: TrustAnchors | None,
) -> VerifiedEvidence:
    # 2. which VEK the report says signed it decides which endorsement to use (structure checked here too)
    parsed = sev_snp.parse_report_unverified(env.evidence)
    vek_role, ca_role = ("vlek", "asvk") if parsed.signing_key == sev_snp.SIGNING_KEY_VLEK else ("vcek", "ask")
    vek_der = env.endorsement("x509-der", vek_role)
    if vek_der is None:
        raise MalformedEvidence(
            f"the envelope carries no {vek_role.upper()} certificate for this report",
            check="envelope.endorsement",
            expected=vek_role,
        )
    ask_der = env.endorsement("x509-der", ca_role)
    ark_der = env.endorsement("x509-der", "ark")
    effective = anchors if simulation_anchors is None else anchors.merged(simulation_anchors)

    # 3. authenticity: the SNP verifier; the platform label comes from the root that verified it
    try:
        return sev_snp.verify_report(
            env.evidence, vek_der=vek_der, ask_der=ask_der, ark_der=ark_der, anchors=effective, now=now
        )
    except UntrustedRoot as exc:
        if simulation_anchors is None and describes_simulation(vek_der, ask_der, ark_der, report=env.evidence):
            raise UntrustedRoot(
                f"{SIMULATION_HINT}: {exc.message}",
                check=exc.check,
                got=exc.got,
                expected=exc.expected,
                index=exc.index,
            ) from exc
        raise
