"""Kernel side: what a refusal means and what to do about it — the text the badge, the notebook and the CLI show.

Layer: pure (no I/O); the Jupyter side's advice, kept apart from the kernel class so it can be read and tested on
its own. A refusal is shown as what failed (``refusal_text``: a summary, then ``failure_lines``, one line per
failed check) and, last and once, what to do (``advice_for(exc, mode)``). The appraisal's own re-pin advice
(``REPIN_HINT``, in a PolicyViolation's message and in each measurement failure) is left out of the first part,
so that the advice appears exactly once.
"""

from __future__ import annotations

from cc_kernel.attestation.result import REPIN_HINT
from cc_kernel.errors import (
    BindingMismatch,
    CCKernelError,
    CertificateExpired,
    ClientNotAuthorized,
    ConfigError,
    EnclaveError,
    PolicyError,
    PolicyViolation,
    ServerBusy,
    StaleEvidence,
    VerificationError,
)

__all__ = ["advice_for", "failure_lines", "refusal_text"]


def without_repin_hint(text: str) -> str:
    for separator in (". ", "\n", " ", ""):
        text = text.replace(separator + REPIN_HINT, "")
    return text


def refusal_text(exc: BaseException) -> str:
    """What was refused, without advice: ``str(exc)``, for a PolicyViolation without the appraisal's re-pin hint."""
    if isinstance(exc, PolicyViolation):
        return "\n".join([without_repin_hint(exc.message), *(f"  - {line}" for line in failure_lines(exc))])
    return str(exc)


def failure_lines(exc: BaseException) -> list[str]:
    if isinstance(exc, PolicyViolation):
        return [without_repin_hint(str(f)) for f in exc.failures]
    if isinstance(exc, VerificationError | CCKernelError):
        return [str(exc)]
    return [f"{type(exc).__name__}: {exc}"]


#: Policy checks whose failure means "this is not the enclave code you pinned" (those the appraisal attaches
#: ``REPIN_HINT`` to); the advice depends on the kernel's mode.
_MEASUREMENT_CHECKS = ("policy.measurement", "policy.mrsigner", "policy.mr_config_id", "policy.pcr.", "policy.rtmr.")
_REPIN_HINTS = {
    "simulation": "If you changed the enclave deliberately, re-pin its measurement with "
    "`cc-kernel policy init --simulation --output FILE --force` (or delete "
    "<jupyter data dir>/cc_kernel/policy-simulation.toml for the simulation kernel); otherwise do not "
    "trust this enclave.",
    "hardware": "If you changed the enclave deliberately, re-pin its measurement in the policy file "
    "(CC_KERNEL_POLICY) with `cc-kernel policy init --platform P --measurement HEX --output FILE --force`; "
    "otherwise do not trust this enclave.",
}

#: What to do about another refused policy check, by the check's name (the first matching prefix wins).
_POLICY_HINTS: tuple[tuple[str, str], ...] = (
    ("policy.debug", "The enclave runs in DEBUG mode: its host can read and change its memory, so nothing in it is "
     "confidential. Start it without debug; a policy accepts debug only with `unsafe_allow_debug = true`, for "
     "development."),
    ("policy.min_tcb", "The platform's firmware/microcode (TCB) is older than the policy's minimum: it has known "
     "vulnerabilities. The platform operator must update it; lower `min_tcb` only if you accept those risks."),
    ("policy.tcb_status", "Intel's collateral rates this platform's TCB below what the policy accepts: the platform "
     "operator must update it."),
    ("policy.simulation", "This is the SIMULATED TEE, which protects nothing. Use the 'Confidential Python "
     "(SIMULATION)' kernel for teaching, or connect to an enclave on real TEE hardware."),
    ("policy.platform", "The enclave runs on a platform the policy does not list: add an [[accept]] entry for it "
     "only if you trust that platform."),
    ("policy.freshness", "The evidence is too old or from the future: check the clocks of both machines."),
)


def advice_for(exc: BaseException, mode: str) -> str:
    """One actionable sentence for a refusal: what it means and what to do (never just "restart")."""
    cause = exc.__cause__ if isinstance(exc, EnclaveError) else exc
    if isinstance(cause, ClientNotAuthorized):
        return ("The enclave server accepts only client keys its owner authorised: send the owner the line above "
                "(`cc-kernel client-key` prints it again), then restart the kernel.")
    if isinstance(cause, ServerBusy):
        return ("The enclave server already runs as many sessions as it may: restart the kernel later, or ask its "
                "owner for more sessions (--max-sessions).")
    if isinstance(exc, PolicyViolation):
        checks = [f.check for f in exc.failures]
        if any(check.startswith(_MEASUREMENT_CHECKS) for check in checks):
            return _REPIN_HINTS["simulation" if mode == "simulation" else "hardware"]
        for prefix, hint in _POLICY_HINTS:
            if any(check.startswith(prefix) for check in checks):
                return hint
        return ("The enclave is genuine but does not meet the pinned policy (each failed check is listed above). "
                "Change the enclave, or the policy if you accept the difference.")
    if isinstance(exc, BindingMismatch):
        return ("The evidence does not vouch for the key of this connection: something between the kernel and the "
                "enclave (the host or a proxy) presented its own certificate. Do not trust this connection.")
    if isinstance(exc, StaleEvidence):
        return ("The evidence does not answer this connection's fresh challenge: it was recorded earlier and "
                "replayed. Do not trust the host that sent it.")
    if isinstance(exc, CertificateExpired):
        return "A certificate of the evidence is outside its validity period: check this machine's clock."
    if isinstance(exc, VerificationError):
        return ("The evidence is not signed by a pinned TEE vendor root, or was altered on the way: the machine "
                "is not a genuine TEE, or the traffic was tampered with. Do not trust it.")
    if isinstance(exc, EnclaveError | ConfigError) and mode == "hardware":
        return ("No TEE hardware was found or reached. Use the 'Confidential Python (SIMULATION)' kernel for "
                "teaching, or run `cc-kernel enclave serve` on a confidential VM and set "
                "CC_KERNEL_ENCLAVE=tcp://HOST:PORT.")
    if isinstance(exc, PolicyError):
        return "Fix the policy file (the message names the key), then restart the kernel."
    return "Restart the kernel to try again; the kernel log has details."
