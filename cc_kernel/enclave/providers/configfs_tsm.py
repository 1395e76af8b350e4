"""Monitor (evidence providers): evidence from Linux configfs-tsm (``/sys/kernel/config/tsm/report``), for SEV-SNP and
TDX guests.

The kernel interface (Documentation/ABI/testing/configfs-tsm-report, Linux >= 6.7), as used here:

1. ``mkdir <root>/<unique name>`` creates a request context with its attribute files;
2. ``provider`` (RO) names the TSM: ``sev_guest`` -> SEV-SNP report (+ ``auxblob`` certificate table),
   ``tdx_guest`` -> TDX DCAP quote;
3. ``generation`` (RO) counts writes to the entry's attributes; we read it first (N);
4. ``inblob`` (WO, binary) <- the 64-byte report_data; then ``privlevel`` (WO; SNP: the VMPL) if configured.
   configfs commits a binary attribute when the file is closed and ignores an error there, so a refused
   write is only visible as a generation that did not advance;
5. ``generation`` must now be N + (number of our writes); then ``outblob`` (and ``auxblob`` for SNP) are read
   — reading makes the kernel generate the report for the current generation — and ``generation`` must
   still be N + writes. Anything else means another process wrote to our entry: the outblob may answer its
   inblob, so the attempt is discarded;
6. ``rmdir`` the entry, whatever happened.

Busy interfaces (EBUSY / EAGAIN from any step) and generation races are retried a bounded number of times
with a fresh entry; then ``EvidenceUnavailable`` names the cause.
"""

from __future__ import annotations

import errno
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cc_kernel.attestation.envelope import Endorsement
from cc_kernel.enclave.providers.amd_certs import snp_endorsements
from cc_kernel.enclave.providers.base import (
    BUSY_ERRNOS,
    MAX_EVIDENCE_SIZE,
    Collected,
    HardwareProvider,
    OsFilesystem,
    Transient,
    TsmFilesystem,
    check_evidence,
    check_privilege_level,
    os_error_text,
)
from cc_kernel.errors import ConfigError, EvidenceUnavailable

__all__ = ["CONFIGFS_TSM_ROOT", "TSM_PROVIDERS", "ConfigfsTsm", "probe_configfs_tsm"]

log = logging.getLogger("cc_kernel.enclave")

CONFIGFS_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
#: configfs-tsm ``provider`` value -> (envelope platform claim, envelope format).
TSM_PROVIDERS: dict[str, tuple[str, str]] = {
    "sev_guest": ("sev-snp", "amd-snp-report"),
    "tdx_guest": ("tdx", "intel-dcap-quote"),
}
#: The host's certificate table is at most a few certificates; refuse anything absurd.
MAX_AUXBLOB_SIZE = 32 * 1024
_SMALL = 64  # provider / generation / privlevel_floor are short text
_ENTRY_PREFIX = "cc-kernel-"


def _entry_name() -> str:
    return f"{_ENTRY_PREFIX}{secrets.token_hex(12)}"


def _describe_mkdir_error(root: Path, exc: OSError) -> str:
    hint = {
        errno.ENXIO: "no TSM provider is registered (is the sev-guest or tdx-guest driver loaded?)",
        errno.ENOENT: "the directory does not exist (no configfs-tsm in this kernel, or configfs not mounted)",
        errno.EACCES: "permission denied (the enclave server needs root or write access to configfs-tsm)",
        errno.EPERM: "operation not permitted (the enclave server needs root or write access to configfs-tsm)",
    }.get(exc.errno or 0, "")
    return f"cannot create a report entry in {root}: {os_error_text(exc)}" + (f"; {hint}" if hint else "")


def probe_configfs_tsm(root: Path = CONFIGFS_TSM_ROOT, fs: TsmFilesystem | None = None) -> tuple[str | None, str]:
    """Can configfs-tsm produce evidence here? Creates an entry, reads its ``provider``, removes it (no report
    is generated). Returns ``(provider, "")`` when usable, else ``(None, reason)``."""
    fs = fs or OsFilesystem()
    if not root.is_dir():
        return None, f"{root} does not exist"
    entry = root / _entry_name()
    try:
        fs.mkdir(entry)
    except OSError as exc:
        return None, _describe_mkdir_error(root, exc)
    try:
        provider = fs.read(entry / "provider", _SMALL).decode("ascii", "replace").strip()
    except OSError as exc:
        return None, f"cannot read {entry / 'provider'}: {os_error_text(exc)}"
    finally:
        _remove(fs, entry)
    if provider not in TSM_PROVIDERS:
        return None, f"unsupported TSM provider {provider!r} (supported: {', '.join(TSM_PROVIDERS)})"
    return provider, ""


def _remove(fs: TsmFilesystem, entry: Path) -> None:
    try:
        fs.rmdir(entry)
    except OSError as exc:  # a leftover entry is harmless but worth a line in the log
        log.warning("could not remove configfs-tsm entry %s: %s", entry, os_error_text(exc))


@dataclass
class ConfigfsTsm(HardwareProvider):
    """SEV-SNP reports / TDX quotes through configfs-tsm.

    ``privlevel``: SNP VMPL to request (written to ``privlevel``; None = the kernel default). ``root``, ``fs``,
    ``clock`` and ``retry`` are injectable for tests. ``snp_certificates``: operator-supplied AMD certificates
    used for roles the host's ``auxblob`` lacks (see ``amd_certs.snp_endorsements``).

    The 64-byte report_data goes into REPORT_DATA unchanged (SNP report offset 0x50, TDX TD report body).
    """

    root: Path = CONFIGFS_TSM_ROOT
    privlevel: int | None = None
    fs: TsmFilesystem = field(default_factory=OsFilesystem)
    snp_certificates: Sequence[Endorsement] = ()
    name: str = "configfs-tsm"

    def __post_init__(self) -> None:
        if self.privlevel is not None:
            check_privilege_level(self.privlevel, "configfs-tsm privlevel")

    def _collect(self, report_data: bytes, nonce: bytes) -> Collected:
        """Evidence binding ``report_data`` from the kernel's TSM.

        Raises:
            ConfigError: the configured privlevel is below the TSM's ``privlevel_floor``.
            EvidenceUnavailable: configfs-tsm is missing or refuses (the message names the step and errno),
                stayed busy, kept racing with another writer, or answered with unusable bytes.
        """
        provider, evidence, auxblob = self._serialised(
            lambda: self._attempt(report_data), what=f"collecting evidence through configfs-tsm at {self.root}"
        )
        platform, fmt = TSM_PROVIDERS[provider]
        endorsements: tuple[Endorsement, ...] = ()
        if provider == "sev_guest":
            endorsements = snp_endorsements(auxblob, evidence, extra=self.snp_certificates)
            if not any(e.role in ("vcek", "vlek") for e in endorsements):
                log.warning("configfs-tsm: the host delivered no VCEK/VLEK certificate; the verifier will need one")
        return Collected(
            platform=platform, fmt=fmt, evidence=evidence, endorsements=endorsements,
            provider=f"configfs-tsm/{provider}",
        )

    # -- one attempt ---------------------------------------------------------------------------------------

    def _attempt(self, report_data: bytes) -> tuple[str, bytes, bytes]:
        entry = self._make_entry()
        try:
            return self._request(entry, report_data)
        finally:
            _remove(self.fs, entry)

    def _make_entry(self) -> Path:
        for _ in range(3):  # a clash of 96 random bits means someone copies our names; try a few, then stop
            entry = self.root / _entry_name()
            try:
                self.fs.mkdir(entry)
                return entry
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in BUSY_ERRNOS:
                    raise Transient(f"configfs-tsm is busy: {os_error_text(exc)} creating an entry") from exc
                raise EvidenceUnavailable(_describe_mkdir_error(self.root, exc)) from exc
        raise EvidenceUnavailable(f"cannot create a uniquely named report entry in {self.root}: names keep existing")

    def _read(self, entry: Path, attribute: str, limit: int) -> bytes:
        try:
            data = self.fs.read(entry / attribute, limit)
        except OSError as exc:
            raise self._os_failure(exc, f"reading {attribute}") from exc
        if len(data) > limit:
            raise EvidenceUnavailable(f"configfs-tsm {attribute} is larger than {limit} bytes")
        return data

    def _write(self, entry: Path, attribute: str, data: bytes) -> None:
        try:
            self.fs.write(entry / attribute, data)
        except OSError as exc:
            raise self._os_failure(exc, f"writing {attribute}") from exc

    def _os_failure(self, exc: OSError, step: str) -> Exception:
        if exc.errno in BUSY_ERRNOS:
            return Transient(f"configfs-tsm is busy: {os_error_text(exc)} {step}")
        hint = {
            errno.EFBIG: "the report exceeds the kernel's maximum size",
            errno.ENXIO: "the TSM provider went away",
            errno.EIO: "the TSM provider failed (for TDX: is the host's quote generation service running?)",
        }.get(exc.errno or 0, "")
        return EvidenceUnavailable(f"configfs-tsm failed {step}: {os_error_text(exc)}" + (f"; {hint}" if hint else ""))

    def _generation(self, entry: Path) -> int:
        raw = self._read(entry, "generation", _SMALL)
        try:
            return int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as exc:
            raise EvidenceUnavailable(f"configfs-tsm generation is not a number: {raw!r}") from exc

    def _check_generation(self, entry: Path, expected: int, step: str) -> None:
        got = self._generation(entry)
        if got == expected:
            return
        if got < expected:
            raise Transient(
                f"the write was not accepted {step} (generation {got}, expected {expected}): the TSM refused "
                "or dropped it"
            )
        raise Transient(
            f"another writer raced on the report entry {step}: generation is {got}, expected {expected}, so "
            "the outblob may answer someone else's inblob"
        )

    def _request(self, entry: Path, report_data: bytes) -> tuple[str, bytes, bytes]:
        # 1. which TSM answers: decides the format (and whether there is a certificate table)
        provider = self._read(entry, "provider", _SMALL).decode("ascii", "replace").strip()
        if provider not in TSM_PROVIDERS:
            raise EvidenceUnavailable(
                f"configfs-tsm provider {provider!r} is not supported (supported: {', '.join(TSM_PROVIDERS)})"
            )
        # 2. the generation before our writes
        expected = self._generation(entry)
        # 3. our writes: inblob, then privlevel if configured; each must advance the generation by one
        self._write(entry, "inblob", report_data)
        expected += 1
        if self.privlevel is not None:
            self._write_privlevel(entry)
            expected += 1
        self._check_generation(entry, expected, "after writing the request")
        # 4. the answer, then the generation must not have moved while we read it
        platform, fmt = TSM_PROVIDERS[provider]
        outblob = self._read(entry, "outblob", MAX_EVIDENCE_SIZE)
        auxblob = self._read(entry, "auxblob", MAX_AUXBLOB_SIZE) if provider == "sev_guest" else b""
        self._check_generation(entry, expected, "while reading outblob")
        # 5. the bytes are the kind we asked for and answer OUR report_data
        check_evidence(fmt, platform, outblob, report_data, source=f"configfs-tsm ({provider}) outblob")
        return provider, outblob, auxblob

    def _write_privlevel(self, entry: Path) -> None:
        try:
            self.fs.write(entry / "privlevel", f"{self.privlevel}\n".encode("ascii"))
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                floor = self._privlevel_floor(entry)
                raise ConfigError(
                    f"configfs-tsm refused privlevel {self.privlevel}"
                    + (f": below this guest's privlevel_floor {floor}" if floor is not None else "")
                ) from exc
            raise self._os_failure(exc, "writing privlevel") from exc

    def _privlevel_floor(self, entry: Path) -> int | None:
        try:
            return int(self.fs.read(entry / "privlevel_floor", _SMALL).decode("ascii").strip())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
