"""Pure attestation layer: one module per evidence platform and its parts.

``sev_snp`` (AMD SEV-SNP reports), ``simulation`` (the simulated authority), ``intel_quote`` (parsing),
``intel_pck`` (the PCK chain), ``intel_dcap`` (verifying), ``intel_collateral`` (loading) and ``intel_tcb``
(checking collateral, TCB status) for Intel TDX and SGX, ``nitro`` (AWS Nitro documents), ``ratls_interop``
(other projects' RA-TLS certificates). Each verifier establishes authenticity only and returns a sealed
``VerifiedEvidence``, labelled by the pinned root that verified it. Check names: in each verifier's docstring;
those a session log can hold, in docs/audit-log.md §9.
Here: where each hardware platform's evidence interface lives (``HARDWARE_INTERFACES``).
"""

#: Where each hardware platform's guest evidence interface lives (docs/deploy/): the enclave
#: collects evidence there, and the kernel names these paths when a machine has none of them.
HARDWARE_INTERFACES: tuple[tuple[str, str], ...] = (
    ("configfs-tsm (SEV-SNP / TDX)", "/sys/kernel/config/tsm/report"),
    ("SEV-SNP guest device", "/dev/sev-guest"),
    ("Gramine SGX attestation", "/dev/attestation/quote"),
    ("AWS Nitro Secure Module", "/dev/nsm"),
)
