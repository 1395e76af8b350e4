"""Monitor (evidence providers): SGX DCAP quotes through Gramine's ``/dev/attestation`` pseudo-files.

Gramine (Documentation/attestation.rst) exposes, inside the enclave: ``attestation_type`` (``none`` or
``dcap``; set by ``sgx.remote_attestation`` in the manifest), ``user_report_data`` (64 bytes -> SGX
REPORT_DATA) and ``quote`` (a DCAP quote over the current ``user_report_data``). The flow: check the type,
write our 64-byte report_data, read the quote. The pseudo-files are process-wide, so collections are
serialised, and a quote that carries another REPORT_DATA (another thread wrote in between) is discarded and
retried.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

from cc_kernel.enclave.providers.base import (
    BUSY_ERRNOS,
    MAX_EVIDENCE_SIZE,
    Collected,
    HardwareProvider,
    OsFilesystem,
    Transient,
    TsmFilesystem,
    check_evidence,
    os_error_text,
)
from cc_kernel.errors import EvidenceUnavailable

__all__ = ["GRAMINE_ATTESTATION_ROOT", "GramineDevAttestation", "probe_gramine"]

GRAMINE_ATTESTATION_ROOT = Path("/dev/attestation")
_SMALL = 64


def _type_problem(kind: str) -> str:
    if kind == "none":
        return (
            "Gramine runs this enclave without remote attestation (attestation_type 'none'); set "
            'sgx.remote_attestation = "dcap" in the manifest'
        )
    if kind == "epid":
        return "Gramine is configured for EPID attestation, which is retired; set sgx.remote_attestation = \"dcap\""
    return f"unsupported Gramine attestation_type {kind!r} (only 'dcap' is supported)"


def probe_gramine(root: Path = GRAMINE_ATTESTATION_ROOT, fs: TsmFilesystem | None = None) -> str | None:
    """None if Gramine DCAP attestation is usable at ``root``, else the reason it is not."""
    fs = fs or OsFilesystem()
    path = root / "attestation_type"
    try:
        kind = fs.read(path, _SMALL).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"cannot read {path}: {os_error_text(exc)}"
    return None if kind == "dcap" else _type_problem(kind)


@dataclass
class GramineDevAttestation(HardwareProvider):
    """SGX DCAP quotes inside a Gramine enclave; the 64-byte report_data becomes the quote's REPORT_DATA."""

    root: Path = GRAMINE_ATTESTATION_ROOT
    fs: TsmFilesystem = field(default_factory=OsFilesystem)
    name: str = "gramine"

    def _collect(self, report_data: bytes, nonce: bytes) -> Collected:
        """A DCAP quote whose REPORT_DATA is ``report_data``.

        Raises:
            EvidenceUnavailable: not a Gramine DCAP enclave (``attestation_type`` missing or not ``dcap``), a
                pseudo-file refused (errno named), or the quote is not an SGX quote for our report_data.
        """
        quote = self._serialised(lambda: self._attempt(report_data), what=f"getting a quote from {self.root}")
        return Collected(
            platform="sgx-dcap", fmt="intel-dcap-quote", evidence=quote, endorsements=(), provider="gramine"
        )

    def _attempt(self, report_data: bytes) -> bytes:
        problem = probe_gramine(self.root, self.fs)
        if problem is not None:
            raise EvidenceUnavailable(problem)
        try:
            self.fs.write(self.root / "user_report_data", report_data)
        except OSError as exc:
            raise self._failure(exc, "writing user_report_data") from exc
        try:
            quote = self.fs.read(self.root / "quote", MAX_EVIDENCE_SIZE)
        except OSError as exc:
            raise self._failure(exc, "reading quote") from exc
        if not quote:
            raise EvidenceUnavailable(f"{self.root / 'quote'} is empty: Gramine produced no quote")
        check_evidence("intel-dcap-quote", "sgx-dcap", quote, report_data, source=str(self.root / "quote"))
        return quote

    def _failure(self, exc: OSError, step: str) -> Exception:
        if exc.errno in BUSY_ERRNOS:
            return Transient(f"Gramine /dev/attestation is busy {step}: {os_error_text(exc)}")
        hint = ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EIO):
            hint = " (is the AESM / quoting enclave service reachable from this Gramine enclave?)"
        return EvidenceUnavailable(f"Gramine /dev/attestation failed {step}: {os_error_text(exc)}{hint}")
