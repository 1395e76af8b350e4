"""Monitor (evidence providers): what the hardware evidence providers share — file, device and ioctl access, bounded
retries, sanity checks of the evidence a TEE returned, and the collection itself (``HardwareProvider.collect``: check
the report_data, collect one provider at a time, put the evidence into the envelope they all produce).

Invariants:

* every failure to produce evidence is an ``EvidenceUnavailable`` whose message names the interface, the
  step and the cause (errno name, firmware code, ...); a wrong ``report_data`` argument is a ``ValueError``;
* retries are bounded (``Retry.attempts``) and sleep only through the injected ``Retry.sleep``;
* nothing here trusts the evidence: ``check_evidence`` only catches a TEE interface that answered with the
  wrong kind of bytes or for another request's report_data (a concurrent writer), so the error is reported
  where it happened instead of as a binding failure on the kernel side. The verifier decides everything.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cc_kernel.attestation.envelope import MAX_ENVELOPE_SIZE, Endorsement, EvidenceEnvelope, encode_envelope
from cc_kernel.attestation.platforms.sev_snp import LAYOUT as SNP_LAYOUT
from cc_kernel.attestation.platforms.sev_snp import REPORT_SIZE as SNP_REPORT_SIZE
from cc_kernel.errors import ConfigError, EvidenceUnavailable

__all__ = [
    "BUSY_ERRNOS",
    "MAX_EVIDENCE_SIZE",
    "REPORT_DATA_SIZE",
    "Collected",
    "HardwareProvider",
    "IoctlFn",
    "OsFilesystem",
    "Retry",
    "Transient",
    "TsmFilesystem",
    "check_evidence",
    "check_privilege_level",
    "check_report_data",
    "errno_name",
    "iowr",
    "make_envelope",
    "now_ms",
    "opened_device",
    "os_error_text",
    "system_ioctl",
]

REPORT_DATA_SIZE = 64
#: errno values meaning "the interface is busy, try again": EBUSY, and EAGAIN (== EWOULDBLOCK on Linux).
BUSY_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK})

#: ``ioctl(fd, request, arg) -> int`` with ``arg`` a mutable buffer (a ctypes structure) that the driver may
#: update — the signature of ``fcntl.ioctl`` with ``mutate_flag=True``. Like ``fcntl.ioctl`` it raises
#: ``OSError`` on failure *after* copying the (possibly updated) structure back into ``arg``.
IoctlFn = Callable[[int, int, Any], int]

_T = TypeVar("_T")


def system_ioctl(fd: int, request: int, arg: Any) -> int:
    """The real ioctl (``fcntl.ioctl`` with the buffer updated in place)."""
    return int(fcntl.ioctl(fd, request, arg, True))


def iowr(kind: int, number: int, size: int) -> int:
    """Linux ``_IOWR(kind, number, size)`` (asm-generic encoding, as on x86-64 and arm64): direction
    read|write in bits 31:30, the argument size in bits 29:16, the type in 15:8, the number in 7:0."""
    if not (0 <= kind <= 0xFF and 0 <= number <= 0xFF and 0 <= size < 1 << 14):
        raise ValueError(f"ioctl fields out of range: type {kind:#x}, nr {number:#x}, size {size}")
    return (3 << 30) | (size << 16) | (kind << 8) | number


def errno_name(code: int | None) -> str:
    """``EBUSY``-style name of an errno value (``errno 123`` when unknown)."""
    if code is None:
        return "unknown error"
    return errno.errorcode.get(code, f"errno {code}")


def os_error_text(exc: OSError) -> str:
    """``EBUSY (Device or resource busy)`` for an OSError."""
    return f"{errno_name(exc.errno)} ({exc.strerror or exc})"


def check_report_data(report_data: bytes) -> bytes:
    """Return ``report_data`` as bytes if it is exactly 64 bytes (the binding digest, docs/evidence.md §2).

    Raises:
        ValueError: any other length (a programming error of the caller).
    """
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes, got {len(data)}")
    return data


def check_privilege_level(level: int, what: str) -> None:
    """Raises ConfigError unless ``level`` is a VMPL / privilege level the hardware has (0..3); ``what`` names it."""
    if not 0 <= level <= 3:
        raise ConfigError(f"{what} must be 0..3, got {level}")


@contextlib.contextmanager
def opened_device(device: Path) -> Iterator[int]:
    """A read-write descriptor on the TEE ``device`` for the ``with`` block; closed after it, whatever happened.

    Raises:
        EvidenceUnavailable: the device cannot be opened (the errno is named).
    """
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise EvidenceUnavailable(f"cannot open {device}: {os_error_text(exc)}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


# --- bounded retries -----------------------------------------------------------------------------------------


class Transient(Exception):  # noqa: N818 - internal signal, never leaves this package
    """One attempt failed in a way that a later attempt may not (busy interface, concurrent writer).

    ``reason`` is the final error message's explanation if every attempt fails this way.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Retry:
    """At most ``attempts`` tries; before try *n* (n >= 2) sleep ``delay_s * 2**(n-2)`` through ``sleep``."""

    attempts: int = 5
    delay_s: float = 0.05
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be at least 1")
        if self.delay_s < 0:
            raise ValueError("Retry.delay_s must not be negative")

    def run(self, attempt: Callable[[], _T], *, what: str) -> _T:
        """Call ``attempt`` until it returns; ``Transient`` failures are retried, anything else propagates.

        Raises:
            EvidenceUnavailable: every attempt failed with ``Transient``; the message says ``what`` failed,
                how many times, and the last reason.
        """
        last = ""
        for n in range(self.attempts):
            if n:
                self.sleep(self.delay_s * 2 ** (n - 1))
            try:
                return attempt()
            except Transient as exc:
                last = exc.reason
        raise EvidenceUnavailable(f"{what} failed {self.attempts} times in a row: {last}")


# --- file access ---------------------------------------------------------------------------------------------


class TsmFilesystem(Protocol):
    """The few file operations the file-based providers need (configfs-tsm, Gramine's /dev/attestation).

    Each method raises ``OSError`` exactly as the system call would.
    """

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path, limit: int) -> bytes: ...

    def write(self, path: Path, data: bytes) -> None: ...


class OsFilesystem:
    """The real file system. ``write`` is one ``write(2)`` on an existing file (no create, no truncate: a
    configfs attribute or a Gramine pseudo-file always exists); ``read`` reads to EOF but at most ``limit + 1``
    bytes, so a caller can tell an oversized answer from a fitting one without reading it all."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path, limit: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, min(65536, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes", str(path))


# --- sanity checks of returned evidence ----------------------------------------------------------------------

_DCAP_HEADER_SIZE = 48
_TDX_BODY_V4_SIZE = 584
_SGX_BODY_SIZE = 384
_TDX_REPORT_DATA_IN_BODY = 520
_SGX_REPORT_DATA_IN_BODY = 320
_TEE_TYPE_TDX = 0x81
_TEE_TYPE_SGX = 0x00
#: Upper bound for one piece of vendor evidence; the whole envelope must stay under 64 KiB.
MAX_EVIDENCE_SIZE = 32 * 1024


def _dcap_report_data(quote: bytes, *, tdx: bool, source: str) -> bytes:
    """REPORT_DATA of a DCAP quote (header v3/v4/v5), after the few structural checks needed to find it."""
    what = "TDX" if tdx else "SGX"
    if len(quote) < _DCAP_HEADER_SIZE + 6:
        raise EvidenceUnavailable(f"{source} returned {len(quote)} bytes: too short for an Intel DCAP quote")
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    allowed = (4, 5) if tdx else (3, 4, 5)
    if version not in allowed:
        raise EvidenceUnavailable(
            f"{source} returned a DCAP quote of version {version}; a {what} quote has version "
            f"{' or '.join(map(str, allowed))}"
        )
    if version >= 4 and tee_type != (_TEE_TYPE_TDX if tdx else _TEE_TYPE_SGX):
        raise EvidenceUnavailable(f"{source} returned a quote with TEE type {tee_type:#x}, not a {what} quote")
    body_at, body_size = _DCAP_HEADER_SIZE, (_TDX_BODY_V4_SIZE if tdx else _SGX_BODY_SIZE)
    if version == 5:  # header, then body type u16 and body size u32, then the body
        body_type, body_size = struct.unpack_from("<HI", quote, _DCAP_HEADER_SIZE)
        wanted_types = (2, 3) if tdx else (1,)
        if body_type not in wanted_types:
            raise EvidenceUnavailable(f"{source} returned a v5 quote with body type {body_type}, not a {what} body")
        body_at = _DCAP_HEADER_SIZE + 6
    # the body, then at least the u32 signature-data length must be there
    if len(quote) < body_at + body_size + 4:
        raise EvidenceUnavailable(
            f"{source} returned a truncated {what} quote ({len(quote)} bytes, the body alone ends at "
            f"{body_at + body_size})"
        )
    at = body_at + (_TDX_REPORT_DATA_IN_BODY if tdx else _SGX_REPORT_DATA_IN_BODY)
    return quote[at : at + REPORT_DATA_SIZE]


def check_evidence(fmt: str, platform: str, evidence: bytes, report_data: bytes, *, source: str) -> None:
    """Check that ``evidence`` is the kind of bytes ``fmt`` names and carries ``report_data`` where the
    platform puts it (SNP REPORT_DATA, DCAP REPORT_DATA). Nitro documents are checked by their provider.

    Raises:
        EvidenceUnavailable: wrong size or shape (``source`` answered with something else).
        Transient: another report_data (someone else's request was answered: a concurrent writer); call this
            inside ``Retry.run``, which retries it.
    """
    if len(evidence) > MAX_EVIDENCE_SIZE:
        raise EvidenceUnavailable(f"{source} returned {len(evidence)} bytes, more than {MAX_EVIDENCE_SIZE}")
    if fmt == "amd-snp-report":
        if len(evidence) != SNP_REPORT_SIZE:
            raise EvidenceUnavailable(
                f"{source} returned {len(evidence)} bytes; an SEV-SNP attestation report is exactly "
                f"{SNP_REPORT_SIZE}"
            )
        field_ = SNP_LAYOUT["report_data"]
        got = evidence[field_.offset : field_.end]
    elif fmt == "intel-dcap-quote":
        got = _dcap_report_data(evidence, tdx=platform == "tdx", source=source)
    else:
        raise ValueError(f"check_evidence does not know format {fmt!r}")
    if got != report_data:
        raise Transient(
            f"{source} answered with evidence for another report_data (got {got[:8].hex()}..., asked for "
            f"{report_data[:8].hex()}...): another writer used the same interface concurrently"
        )


# --- the envelope --------------------------------------------------------------------------------------------


def make_envelope(
    *,
    platform: str,
    fmt: str,
    evidence: bytes,
    endorsements: tuple[Endorsement, ...],
    audit_pub: bytes,
    session_id: bytes,
    nonce: bytes,
    collected_at_ms: int,
    provider: str,
) -> EvidenceEnvelope:
    """The envelope a hardware provider returns: ``platform`` is only a claim (the verifier labels the result
    by the anchor that verified it), ``evidence`` is the vendor's bytes unchanged, ``extra_claims`` names
    the provider that collected it (informational).

    Raises:
        EvidenceUnavailable: the encoded envelope would exceed the 64 KiB cap (evidence plus endorsements).
    """
    env = EvidenceEnvelope(
        platform=platform,
        format=fmt,
        evidence=bytes(evidence),
        audit_pub=bytes(audit_pub),
        session_id=bytes(session_id),
        nonce=bytes(nonce),
        endorsements=endorsements,
        collected_at_ms=collected_at_ms,
        extra_claims={"evidence_provider": provider},
    )
    try:
        encode_envelope(env)
    except ValueError as exc:
        raise EvidenceUnavailable(
            f"{provider}: the evidence and its {len(endorsements)} endorsement(s) do not fit one envelope "
            f"({MAX_ENVELOPE_SIZE} bytes): {exc}"
        ) from exc
    return env


# --- the collection every hardware provider makes ----------------------------------------------------------


@dataclass(frozen=True)
class Collected:
    """What one collection produced, before it is put into an envelope (see ``make_envelope``)."""

    platform: str
    fmt: str
    evidence: bytes
    endorsements: tuple[Endorsement, ...]
    provider: str


@dataclass(kw_only=True)
class HardwareProvider(abc.ABC):
    """The part of an ``EvidenceSource`` every hardware provider shares: ``collect`` checks the report_data,
    lets the provider's ``_collect`` produce the evidence and puts it into an envelope stamped by ``clock``.

    ``retry`` and ``clock`` are injectable for tests; ``_serialised`` runs one provider's attempts one
    collection at a time (the TEE interfaces are process-wide).
    """

    retry: Retry = field(default_factory=Retry)
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def collect(
        self, report_data: bytes, *, audit_pub: bytes, session_id: bytes, nonce: bytes
    ) -> EvidenceEnvelope:
        """Evidence binding ``report_data`` (64 bytes), in an envelope with the audit key, session id and nonce.

        Raises:
            ValueError: report_data is not 64 bytes.
            EvidenceUnavailable: the TEE interface is missing, refused (named), stayed busy, or answered
                with unusable bytes; each provider's ``_collect`` lists its causes.
            ConfigError: the TEE refused the provider's configuration.
        """
        got = self._collect(check_report_data(report_data), bytes(nonce))
        return make_envelope(
            platform=got.platform, fmt=got.fmt, evidence=got.evidence, endorsements=got.endorsements,
            audit_pub=audit_pub, session_id=session_id, nonce=nonce, collected_at_ms=now_ms(self.clock),
            provider=got.provider,
        )

    @abc.abstractmethod
    def _collect(self, report_data: bytes, nonce: bytes) -> Collected:
        """The evidence for ``report_data`` (checked: 64 bytes) and the kernel's ``nonce``."""

    def _serialised(self, attempt: Callable[[], _T], *, what: str) -> _T:
        """``retry.run(attempt, what=what)`` while no other collection of this provider runs."""
        with self._lock:
            return self.retry.run(attempt, what=what)


def now_ms(clock: Callable[[], float]) -> int:
    """Milliseconds since the epoch from a ``time.time``-like clock."""
    return int(clock() * 1000)
