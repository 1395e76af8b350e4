"""Pure attestation layer: ``verify_evidence`` dispatches an envelope to its platform verifier (authenticity).

Invariants:

* dispatch is by ``env.format`` (which parser to run), never by ``env.platform``; the result's platform is the
  label of the pinned root that verified the evidence (hardware ARK -> ``sev-snp``, simulation ARK ->
  ``simulation``), so an envelope cannot talk its way into a label;
* simulation anchors are a separate argument, consulted only when given; ``anchors`` must hold no simulation
  root and ``simulation_anchors`` nothing else, so the two can never be confused;
* a simulated report presented without simulation anchors fails with ``UntrustedRoot`` whose message says so
  (the message is chosen by looking at subject text; the decision is only "no pinned root verified it").

Check names: ``envelope.format`` (no verifier for the format), ``envelope.endorsement`` (an endorsement the
format does not take), ``envelope.collateral`` (Intel collateral in the envelope that does not load); the
platform verifiers' own (``snp.*``, ``dcap.*``, ``collateral.*``, ``nitro.*``, ``chain.*``, ``x509.*``) pass
through. All are listed in docs/audit-log.md §9.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.envelope import EvidenceEnvelope
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.attestation.platforms import sev_snp
from cc_kernel.attestation.platforms.simulation import describes_simulation
from cc_kernel.errors import MalformedEvidence, UntrustedRoot

if TYPE_CHECKING:
    from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral

__all__ = [
    "COLLATERAL_ENDORSEMENT",
    "DCAP_FORMAT",
    "NITRO_FORMAT",
    "SNP_FORMATS",
    "SUPPORTED_FORMATS",
    "answered_nonce",
    "envelope_collateral",
    "verify_evidence",
]

#: Envelope formats carrying an SEV-SNP ATTESTATION_REPORT (real or simulated: same bytes, same verifier).
SNP_FORMATS = ("amd-snp-report", "cc-sim-snp-report")
#: An Intel DCAP quote (TDX v4/v5, SGX v3); the PCK chain travels inside the quote.
DCAP_FORMAT = "intel-dcap-quote"
#: An AWS Nitro attestation document (COSE_Sign1); the certificate bundle travels inside it.
NITRO_FORMAT = "aws-nitro-cose-sign1"
SUPPORTED_FORMATS = (*SNP_FORMATS, DCAP_FORMAT, NITRO_FORMAT)
#: Endorsement kind of an Intel collateral item in an envelope; its role is one of ``COLLATERAL_ITEMS``.
COLLATERAL_ENDORSEMENT = "intel-collateral"

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
    collateral: DcapCollateral | None = None,
) -> VerifiedEvidence:
    """Verify the authenticity of the evidence in ``env`` at time ``now``.

    ``anchors`` are the pinned hardware roots (``anchors.hardware_anchors()``); ``simulation_anchors`` only
    when the policy allows simulation. Binding, freshness and policy are later steps.

    Intel DCAP quotes are checked against ``collateral`` when the caller has it (e.g. fetched and cached on the
    trusted side), else against the collateral the envelope carries (``intel-collateral`` endorsements: the
    enclave's host may ship it; it is untrusted transport, every item is signature-checked), else without
    collateral (the result then warns ``tcb-collateral-missing`` and the policy decides).

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
    # DCAP and Nitro code loads only when such evidence arrives (the simulated and SNP paths start faster)
    if env.format == DCAP_FORMAT:
        from cc_kernel.attestation.platforms import intel_dcap

        effective = anchors if simulation_anchors is None else anchors.merged(simulation_anchors)
        chosen = collateral if collateral is not None else envelope_collateral(env)
        return intel_dcap.verify_quote(env.evidence, anchors=effective, now=now, collateral=chosen)
    if env.format == NITRO_FORMAT:  # no simulated Nitro exists: only the pinned AWS root can verify it
        from cc_kernel.attestation.platforms import nitro

        return nitro.verify_document(env.evidence, anchors=anchors, now=now)
    raise MalformedEvidence(
        f"evidence format {env.format!r} is not supported",
        check="envelope.format",
        got=env.format,
        expected=list(SUPPORTED_FORMATS),
    )


def envelope_collateral(env: EvidenceEnvelope) -> DcapCollateral | None:
    """The Intel collateral an envelope carries (parsed, not yet verified), or None if it carries none.

    Raises:
        MalformedEvidence: ``envelope.collateral``: an unknown or repeated item, an item that does not parse,
            or a tcbInfo / QE identity without its signing chain.
    """
    from cc_kernel.attestation.platforms.intel_collateral import COLLATERAL_ITEMS, load_collateral

    items: dict[str, bytes] = {}
    for e in env.endorsements:
        if e.kind != COLLATERAL_ENDORSEMENT:
            continue
        if e.role not in COLLATERAL_ITEMS or e.role in items:
            raise MalformedEvidence(
                f"the envelope's Intel collateral has an unknown or repeated item {e.role!r}",
                check="envelope.collateral",
                got=e.role,
                expected=list(COLLATERAL_ITEMS),
            )
        items[e.role] = e.data
    if not items:
        return None
    try:
        return load_collateral(items)
    except ValueError as exc:
        raise MalformedEvidence(
            f"the envelope's Intel collateral is incomplete: {exc}", check="envelope.collateral"
        ) from exc


def answered_nonce(evidence: VerifiedEvidence, env: EvidenceEnvelope) -> bytes:
    """The nonce the evidence says it answers, for ``check_binding(..., claimed_nonce=...)``.

    A Nitro document carries the nonce inside its signed payload: that one counts (the envelope's copy is an
    unsigned hint). Other platforms bind the nonce only through report_data; the envelope's copy lets a replay
    be named as such instead of as a binding mismatch.
    """
    if evidence.platform == "nitro":
        from cc_kernel.attestation.platforms import nitro

        signed = nitro.document_nonce(evidence)
        if signed is not None:
            return signed
    return env.nonce


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
    return verify_snp_report(
        env.evidence, vek_der=vek_der, ask_der=ask_der, ark_der=ark_der, anchors=effective, now=now,
        simulation_hint=SIMULATION_HINT if simulation_anchors is None else None,
    )


def verify_snp_report(
    report: bytes,
    *,
    vek_der: bytes,
    ask_der: bytes | None,
    ark_der: bytes | None,
    anchors: TrustAnchors,
    now: datetime,
    simulation_hint: str | None,
) -> VerifiedEvidence:
    """``sev_snp.verify_report``, except that an UntrustedRoot for a chain that describes the simulated authority
    says so: ``simulation_hint`` goes in front of its message (None: every UntrustedRoot as it is).

    Raises:
        VerificationError: as ``sev_snp.verify_report`` (the same check, got, expected and index).
    """
    try:
        return sev_snp.verify_report(
            report, vek_der=vek_der, ask_der=ask_der, ark_der=ark_der, anchors=anchors, now=now
        )
    except UntrustedRoot as exc:
        if simulation_hint is not None and describes_simulation(vek_der, ask_der, ark_der, report=report):
            raise UntrustedRoot(
                f"{simulation_hint}: {exc.message}",
                check=exc.check,
                got=exc.got,
                expected=exc.expected,
                index=exc.index,
            ) from exc
        raise
