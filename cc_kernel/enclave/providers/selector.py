"""Monitor (evidence providers): choose this machine's hardware evidence provider — never the simulation.

Order (docs/deploy/README.md, "The common model"), first usable wins:

1. ``configfs-tsm`` — ``/sys/kernel/config/tsm/report`` with a registered ``sev_guest`` or ``tdx_guest``
   provider (probed by creating an entry and reading ``provider``; no report is generated);
2. ``sev-guest`` — ``/dev/sev-guest`` (SEV-SNP ioctls) that this process can open;
3. ``gramine`` — ``/dev/attestation/attestation_type`` reading ``dcap``;
4. ``nitro-nsm`` — ``/dev/nsm`` that this process can open.

A provider can be forced with ``preferred=`` (the enclave's ``--evidence-provider``) or the environment
variable ``CC_KERNEL_EVIDENCE_PROVIDER``; ``auto`` (the default) walks the order above. A forced provider
that is not usable is an error, not a reason to try another. Operator-supplied AMD certificates for SNP
hosts that deliver none: ``CC_KERNEL_SNP_CERTS_DIR`` (``vcek.der``, ``ask.pem``, ...; see
``amd_certs.load_certificate_dir``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cc_kernel.attestation.envelope import Endorsement
from cc_kernel.enclave.evidence import EvidenceSource
from cc_kernel.enclave.providers import AUTO, PROVIDER_ENV, PROVIDER_NAMES
from cc_kernel.enclave.providers.amd_certs import load_certificate_dir
from cc_kernel.enclave.providers.base import OsFilesystem, TsmFilesystem, os_error_text
from cc_kernel.enclave.providers.configfs_tsm import CONFIGFS_TSM_ROOT, ConfigfsTsm, probe_configfs_tsm
from cc_kernel.enclave.providers.gramine import GRAMINE_ATTESTATION_ROOT, GramineDevAttestation, probe_gramine
from cc_kernel.enclave.providers.nitro_nsm import NSM_DEVICE, NitroNsm
from cc_kernel.enclave.providers.sev_guest import SEV_GUEST_DEVICE, SevGuestIoctl
from cc_kernel.errors import ConfigError, EvidenceUnavailable

__all__ = ["AUTO", "PROVIDER_ENV", "PROVIDER_NAMES", "SNP_CERTS_ENV", "HardwarePaths", "select_provider"]

log = logging.getLogger("cc_kernel.enclave")

SNP_CERTS_ENV = "CC_KERNEL_SNP_CERTS_DIR"

_DESCRIPTIONS = {
    "configfs-tsm": "configfs-tsm (SEV-SNP / TDX)",
    "sev-guest": "SEV-SNP guest device",
    "gramine": "Gramine SGX attestation (DCAP)",
    "nitro-nsm": "AWS Nitro Secure Module",
}


@dataclass(frozen=True)
class HardwarePaths:
    """Where each provider's interface lives (tests point these at fakes)."""

    configfs_tsm: Path = CONFIGFS_TSM_ROOT
    sev_guest: Path = SEV_GUEST_DEVICE
    gramine: Path = GRAMINE_ATTESTATION_ROOT
    nsm: Path = NSM_DEVICE

    def of(self, provider: str) -> Path:
        return {
            "configfs-tsm": self.configfs_tsm,
            "sev-guest": self.sev_guest,
            "gramine": self.gramine,
            "nitro-nsm": self.nsm,
        }[provider]


def _probe_device(path: Path) -> str | None:
    if not path.exists():
        return f"{path} does not exist"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{path} exists but cannot be opened: {os_error_text(exc)}"
    os.close(fd)
    return None


def _probe(provider: str, paths: HardwarePaths, fs: TsmFilesystem) -> str | None:
    """None if ``provider`` can be used here, else why not."""
    if provider == "configfs-tsm":
        tsm, reason = probe_configfs_tsm(paths.configfs_tsm, fs)
        if tsm is not None:
            log.info("configfs-tsm provider: %s", tsm)
        return None if tsm is not None else reason
    if provider == "gramine":
        return probe_gramine(paths.gramine, fs)
    return _probe_device(paths.of(provider))


def _create(
    provider: str, paths: HardwarePaths, fs: TsmFilesystem, snp_certificates: tuple[Endorsement, ...]
) -> EvidenceSource:
    if provider == "configfs-tsm":
        return ConfigfsTsm(root=paths.configfs_tsm, fs=fs, snp_certificates=snp_certificates)
    if provider == "sev-guest":
        return SevGuestIoctl(device=paths.sev_guest, snp_certificates=snp_certificates)
    if provider == "gramine":
        return GramineDevAttestation(root=paths.gramine, fs=fs)
    return NitroNsm(device=paths.nsm)


def select_provider(
    preferred: str | None = None,
    *,
    paths: HardwarePaths | None = None,
    fs: TsmFilesystem | None = None,
    environ: Mapping[str, str] | None = None,
) -> EvidenceSource:
    """The evidence provider to use: ``preferred``, else ``$CC_KERNEL_EVIDENCE_PROVIDER``, else ``auto``.

    Raises:
        ConfigError: an unknown provider name, or an unusable ``CC_KERNEL_SNP_CERTS_DIR``.
        EvidenceUnavailable: the forced provider is not usable here, or (``auto``) none is; the message lists
            every interface looked for and why it was not used.
    """
    paths = paths or HardwarePaths()
    fs = fs or OsFilesystem()
    environ = os.environ if environ is None else environ
    choice = (preferred or environ.get(PROVIDER_ENV) or AUTO).strip().lower()
    if choice not in (AUTO, *PROVIDER_NAMES):
        raise ConfigError(f"unknown evidence provider {choice!r}; choose one of: {', '.join((AUTO, *PROVIDER_NAMES))}")
    candidates = PROVIDER_NAMES if choice == AUTO else (choice,)
    looked: list[str] = []
    for provider in candidates:
        reason = _probe(provider, paths, fs)
        if reason is None:
            certs_dir = environ.get(SNP_CERTS_ENV)
            snp_certificates = (
                load_certificate_dir(Path(certs_dir))
                if certs_dir and provider in ("configfs-tsm", "sev-guest")
                else ()
            )
            log.info("evidence provider: %s at %s", provider, paths.of(provider))
            return _create(provider, paths, fs, snp_certificates)
        looked.append(f"{_DESCRIPTIONS[provider]} [{provider}]: {reason}")
    if choice != AUTO:
        raise EvidenceUnavailable(
            f"the evidence provider {choice!r} was requested but is not usable here: {looked[0]}. "
            "Refusing rather than trying another provider or the simulation."
        )
    raise EvidenceUnavailable(
        "no TEE evidence provider works on this machine (looked for: "
        + "; ".join(looked)
        + "). Use the 'Confidential Python (SIMULATION)' kernel for teaching, or run `cc-kernel enclave serve` "
        "inside a confidential VM / enclave and connect to it with CC_KERNEL_ENCLAVE=tcp://HOST:PORT."
    )
