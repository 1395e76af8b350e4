"""Pure: the whole exception tree of cc_kernel, and nothing else.

Errors say who is at fault: Local vs Remote protocol errors (we vs the peer broke the protocol), Closed vs
Broken channels (we closed it vs the peer or the network broke it), and verification errors that name the
failing ``check`` with ``got``/``expected`` values. Programmer misuse is a plain TypeError/ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence


class CCKernelError(Exception):
    """Base class of every error cc_kernel raises on purpose."""


# --- wire protocol -------------------------------------------------------------------------------------------


class ProtocolError(CCKernelError):
    """The kernel <-> enclave protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug on our side, or misuse of the API)."""


class MessageTooLarge(LocalProtocolError):  # noqa: N818 - named for what happened, like h11's errors
    """One message we tried to send encodes to more than the frame size limit.

    Nothing was sent and the connection's state is unchanged: the caller may fail that one request and go on.
    ``size`` and ``limit`` are in bytes (the encoded frame body and the connection's ``max_frame_size``).
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: a malformed, oversized or out-of-order frame."""


# --- channel -------------------------------------------------------------------------------------------------


class ChannelError(CCKernelError):
    """The attested channel cannot carry data."""


class ClosedChannelError(ChannelError):
    """We closed the channel and then tried to use it."""


class BrokenChannelError(ChannelError):
    """The peer or the network broke the channel: reset, EOF mid-frame, TLS record failure, timeout."""


class ConnectError(ChannelError):
    """The channel could not be established (nothing listening, TLS handshake refused, ...)."""


class ServerBusy(ConnectError):  # noqa: N818 - names the server's state, as the other findings do
    """The enclave server answered that it runs as many sessions as it may (``--max-sessions``).

    ``active`` and ``maximum`` are what the server said (unauthenticated text: a hint, never trusted)."""

    def __init__(self, message: str, *, active: int | None = None, maximum: int | None = None) -> None:
        super().__init__(message)
        self.active = active
        self.maximum = maximum


class ClientNotAuthorized(ConnectError):  # noqa: N818
    """The enclave server refused this client's key at the TLS handshake (it is not in its authorised
    clients). ``line`` is what the server's owner must add to authorise it (empty if no key was presented)."""

    def __init__(self, message: str, *, line: str = "") -> None:
        super().__init__(message)
        self.line = line
# --- uploads -------------------------------------------------------------------------------------------------


class UploadError(CCKernelError):
    """``%cc_upload`` cannot send this file: bad arguments, unreadable, not a regular file, or it changed size
    while it was read. ``ename`` is the name the notebook shows (``UsageError``, ``FileNotFoundError``,
    ``NotARegularFile``, ``UploadError`` ...)."""

    def __init__(self, message: str, *, ename: str = "UploadError") -> None:
        super().__init__(message)
        self.ename = ename


# --- attestation ---------------------------------------------------------------------------------------------


class VerificationError(CCKernelError):
    """Evidence, a certificate chain, a binding, a policy or a log failed verification.

    ``check`` names the failing step (stable, tests assert it), ``got``/``expected`` show the values,
    ``index`` locates the failure (certificate position, log entry index) when that applies.
    """

    def __init__(
        self,
        message: str,
        *,
        check: str,
        got: object = None,
        expected: object = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.check = check
        self.got = got
        self.expected = expected
        self.index = index

    def __str__(self) -> str:
        parts = [f"[{self.check}] {self.message}"]
        if self.got is not None or self.expected is not None:
            parts.append(f"(got {_short(self.got)}, expected {_short(self.expected)})")
        if self.index is not None:
            parts.append(f"at index {self.index}")
        return " ".join(parts)


def _short(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        text = bytes(value).hex()
        return text if len(text) <= 40 else f"{text[:32]}...({len(value)} bytes)"
    return repr(value)


class MalformedEvidence(VerificationError):  # noqa: N818 - names the finding, as sigstore does
    """Evidence bytes do not parse: wrong length, reserved bits set, truncated, bad encoding."""


class UntrustedRoot(VerificationError):  # noqa: N818
    """The certificate chain does not end at a pinned trust anchor."""


class ChainError(VerificationError):
    """A certificate in the chain is not validly issued by the next, or is not allowed to issue."""


class CertificateExpired(VerificationError):  # noqa: N818
    """A certificate is not valid at the verification time."""


class SignatureInvalid(VerificationError):  # noqa: N818
    """A signature over evidence, a certificate or a log entry does not verify."""


class BindingMismatch(VerificationError):  # noqa: N818
    """The evidence's report_data does not bind the channel key, audit key, nonce and session id."""


class StaleEvidence(VerificationError):  # noqa: N818
    """The evidence does not answer this connection's nonce (replayed) or is too old."""


class PolicyViolation(VerificationError):  # noqa: N818
    """Authentic evidence that the policy does not accept. ``failures`` lists every failed clause."""

    def __init__(self, message: str, *, failures: Sequence[VerificationError]) -> None:
        first = failures[0] if failures else None
        super().__init__(
            message,
            check=first.check if first else "policy",
            got=first.got if first else None,
            expected=first.expected if first else None,
        )
        self.failures = tuple(failures)

    def __str__(self) -> str:
        lines = [self.message]
        lines.extend(f"  - {failure}" for failure in self.failures)
        return "\n".join(lines)


# --- configuration -------------------------------------------------------------------------------------------


class PolicyError(CCKernelError):
    """A policy file cannot be used: unreadable, invalid TOML, unknown key, wrong type or length."""


class ConfigError(CCKernelError):
    """The kernel or enclave configuration is invalid or names something that does not exist."""


# --- enclave side --------------------------------------------------------------------------------------------


class EvidenceUnavailable(CCKernelError):  # noqa: N818
    """No evidence provider works on this machine (no TEE device, busy, generation race)."""


class EnclaveError(CCKernelError):
    """The enclave failed: died, exited, or reported an internal failure (not a user's cell error)."""


class SandboxError(CCKernelError):
    """The worker's sandbox could not be applied; the message names the part and the operating system's reason."""


# --- audit ---------------------------------------------------------------------------------------------------


class AuditError(CCKernelError):
    """A session log could not be written or read."""


class LogVerificationError(VerificationError):
    """A session log is invalid; ``index`` is the first bad entry."""


class LogUnterminated(LogVerificationError):  # noqa: N818
    """The log verifies entry by entry but has no closing entry (crash, or a truncated tail)."""


# --- datasets (sealed files, rules, release by the owner's broker) -----------------------------------------------


class DatasetError(VerificationError):
    """A sealed dataset, its rules or its release cannot be used. ``check`` names the step (``dataset.*``,
    ``rules.*``, ``release.*``); ``index`` is the chunk index where one applies."""


class TamperedDataset(DatasetError):  # noqa: N818 - names the finding
    """The sealed file was changed: a chunk, the header, truncated, extended or reordered (or the key is wrong)."""


class RulesError(DatasetError):
    """A rules file is not valid: not TOML, an unknown key, a wrong type, a missing or contradictory setting."""


class WrongBroker(DatasetError):  # noqa: N818
    """The broker reached is not the one the sealed file names (address or pinned key differ)."""


class ReleaseRefused(DatasetError):  # noqa: N818
    """The broker refused to release a data key; ``check`` names the failed step."""


class DatasetExpired(ReleaseRefused):
    """The dataset's rules forbid any release after ``not_after``."""
