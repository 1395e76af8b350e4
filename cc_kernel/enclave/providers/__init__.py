"""Monitor (evidence providers): hardware evidence providers, one module per TEE interface, plus the selector.

* ``configfs_tsm.ConfigfsTsm`` — SEV-SNP and TDX through Linux configfs-tsm (preferred);
* ``sev_guest.SevGuestIoctl`` — SEV-SNP through the ``/dev/sev-guest`` ioctls;
* ``gramine.GramineDevAttestation`` — SGX DCAP quotes through Gramine's ``/dev/attestation``;
* ``nitro_nsm.NitroNsm`` — AWS Nitro attestation documents through ``/dev/nsm``;
* ``selector.select_provider`` — picks one in that order (or the configured one), never the simulation.

Each implements ``cc_kernel.enclave.evidence.EvidenceSource`` and returns an ``EvidenceEnvelope`` with the
vendor evidence byte for byte, its endorsements, the binding's non-secret inputs and ``collected_at_ms``.
The envelope's ``platform`` is a claim only; the kernel's verifier labels the result by the pinned anchor.
"""

# Names only (no provider code): ``python -m cc_kernel.enclave`` parses its options with these without loading
# any provider module, so a simulated enclave starts as fast as before.
AUTO = "auto"
PROVIDER_NAMES = ("configfs-tsm", "sev-guest", "gramine", "nitro-nsm")
PROVIDER_ENV = "CC_KERNEL_EVIDENCE_PROVIDER"

__all__ = ["AUTO", "PROVIDER_ENV", "PROVIDER_NAMES"]
