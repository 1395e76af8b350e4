"""Pure attestation layer: one module per evidence platform (sev_snp, simulation, ...).

Each platform verifier establishes authenticity only and returns a sealed ``VerifiedEvidence``.
"""
