"""Pure attestation layer: parse evidence (``*_unverified``), verify authenticity (-> VerifiedEvidence),
check the binding to the channel (-> BoundEvidence), appraise against a policy (-> AttestationResult).

No I/O and no clock: every function takes bytes, pinned anchors and ``now``.
"""
