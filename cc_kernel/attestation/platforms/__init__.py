"""Pure attestation layer: one module per evidence platform (sev_snp, simulation, ...).

Each platform verifier establishes authenticity only and returns a sealed ``VerifiedEvidence``.
"""

#: Where each hardware platform's guest evidence interface lives (docs/deploy/): the enclave
#: collects evidence there, and the kernel names these paths when a machine has none of them.
HARDWARE_INTERFACES: tuple[tuple[str, str], ...] = (
    ("configfs-tsm (SEV-SNP / TDX)", "/sys/kernel/config/tsm/report"),
    ("SEV-SNP guest device", "/dev/sev-guest"),
    ("Gramine SGX attestation", "/dev/attestation/quote"),
    ("AWS Nitro Secure Module", "/dev/nsm"),
)
