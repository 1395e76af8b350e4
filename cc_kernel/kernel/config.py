"""Kernel side: the kernel's settings — traitlets (``--ConfidentialKernel.x``, ``jupyter_config``) whose defaults
come from ``CC_KERNEL_*`` environment variables. Declarations only; ``ConfidentialKernel`` inherits them."""

from __future__ import annotations

import os

from traitlets import Bool, Enum, Float, List, Unicode, default
from traitlets.config import Configurable

from cc_kernel.kernel.auditlog import ENV_AUDIT_DIR


class KernelSettings(Configurable):
    """What a ``ConfidentialKernel`` is configured with (the README's configuration table)."""

    mode = Enum(["simulation", "hardware"], default_value="simulation", config=True,
                help="simulation: the simulated TEE (no protection); hardware: verified TEE hardware only")
    policy_file = Unicode("", config=True, help="verification policy (TOML). Env: CC_KERNEL_POLICY")
    enclave = Unicode("", config=True,
                      help="remote enclave address tcp://HOST:PORT or unix:PATH. Env: CC_KERNEL_ENCLAVE")
    sim_dir = Unicode("", config=True, help="simulated TEE authority directory. Env: CC_KERNEL_SIM_DIR")
    faults = List(Unicode(), config=True, help="teaching faults for the simulated enclave. Env: CC_KERNEL_FAULTS")
    collateral_dir = Unicode("", config=True,
                             help="Intel collateral for a TDX/SGX enclave, fetched on this side (tcb_info.json, "
                             "qe_identity.json, pck_crl.der, root_crl.der, tcb_signing_chain.pem). "
                             "Env: CC_KERNEL_DCAP_COLLATERAL")
    attest_timeout = Float(60.0, config=True, help="seconds to wait for the enclave to start and attest")
    show_badge = Bool(True, config=True, help="show the attestation badge as the first output of a session")
    audit = Bool(True, config=True, help="keep an enclave-signed session log. Env: CC_KERNEL_AUDIT=0 disables")
    audit_dir = Unicode("", config=True,
                        help="directory of session logs (default <jupyter data dir>/cc_kernel/audit). "
                        "Env: CC_KERNEL_AUDIT_DIR")
    brokers = List(Unicode(), config=True,
                   help="the only data owners' brokers %cc_dataset may reach (HOST:PORT); empty: the broker each "
                   "sealed file names. Env: CC_KERNEL_BROKERS (comma separated)")
    redact_code = Bool(False, config=True,
                       help="receipts carry only the hash of each cell's code. Env: CC_KERNEL_AUDIT_REDACT=1")

    @default("audit")
    def _audit_default(self) -> bool:
        return os.environ.get("CC_KERNEL_AUDIT", "1") not in ("0", "false", "no")

    @default("audit_dir")
    def _audit_dir_default(self) -> str:
        return os.environ.get(ENV_AUDIT_DIR, "")

    @default("redact_code")
    def _redact_default(self) -> bool:
        return os.environ.get("CC_KERNEL_AUDIT_REDACT", "0") in ("1", "true", "yes")

    @default("policy_file")
    def _policy_default(self) -> str:
        return os.environ.get("CC_KERNEL_POLICY", "")

    @default("enclave")
    def _enclave_default(self) -> str:
        return os.environ.get("CC_KERNEL_ENCLAVE", "")

    @default("collateral_dir")
    def _collateral_dir_default(self) -> str:
        return os.environ.get("CC_KERNEL_DCAP_COLLATERAL", "")

    @default("sim_dir")
    def _sim_dir_default(self) -> str:
        return os.environ.get("CC_KERNEL_SIM_DIR", "")

    @default("brokers")
    def _brokers_default(self) -> list[str]:
        return [b.strip() for b in os.environ.get("CC_KERNEL_BROKERS", "").split(",") if b.strip()]

    @default("faults")
    def _faults_default(self) -> list[str]:
        return [f for f in os.environ.get("CC_KERNEL_FAULTS", "").split(",") if f]
