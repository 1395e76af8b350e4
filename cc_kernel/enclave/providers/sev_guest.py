"""Monitor (evidence providers): SEV-SNP reports through the ``/dev/sev-guest`` ioctls (kernels without configfs-tsm).

The Linux uapi (include/uapi/linux/sev-guest.h), mirrored with ctypes:

* ``struct snp_guest_request_ioctl {u8 msg_version; u64 req_data; u64 resp_data; u64 exitinfo2}`` (32 bytes;
  ``exitinfo2`` = firmware error in bits 31:0, hypervisor error in bits 63:32);
* ``SNP_GET_REPORT = _IOWR('S', 0x0, struct snp_guest_request_ioctl)`` with ``req_data`` -> ``struct
  snp_report_req {u8 user_data[64]; u32 vmpl; u8 rsvd[28]}`` and ``resp_data`` -> ``struct snp_report_resp
  {u8 data[4000]}``;
* ``SNP_GET_EXT_REPORT = _IOWR('S', 0x2, ...)`` with ``struct snp_ext_report_req {struct snp_report_req data;
  u64 certs_address; u32 certs_len}``: the host's certificate table lands in a page-aligned buffer whose
  length is a multiple of the page size (at most 16 KiB); if it is too small the kernel fails with hypervisor
  error 1 (INVALID_LEN) and writes the needed length into ``certs_len``.

The response data starts with MSG_REPORT_RSP: ``status u32, report_size u32, 24 reserved bytes``, then the
1184-byte report at 0x20. ``user_data`` is REPORT_DATA: our 64-byte binding digest goes there unchanged.

The ioctl function is injectable (``ioctl=``): tests check the request code and the structures' bytes and
write the response, exactly as the driver would.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cc_kernel.attestation.envelope import Endorsement
from cc_kernel.attestation.platforms.sev_snp import REPORT_SIZE
from cc_kernel.enclave.providers.amd_certs import snp_endorsements
from cc_kernel.enclave.providers.base import (
    BUSY_ERRNOS,
    Collected,
    HardwareProvider,
    IoctlFn,
    Transient,
    check_evidence,
    check_privilege_level,
    iowr,
    opened_device,
    os_error_text,
    system_ioctl,
)
from cc_kernel.errors import ConfigError, EvidenceUnavailable

__all__ = [
    "FIRMWARE_ERRORS",
    "MAX_CERTS_LEN",
    "MSG_REPORT_STATUS",
    "SEV_GUEST_DEVICE",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "VMM_ERR_BUSY",
    "VMM_ERR_GENERIC",
    "VMM_ERR_INVALID_LEN",
    "SevGuestIoctl",
    "SnpExtReportReq",
    "SnpGuestRequestIoctl",
    "SnpReportReq",
    "SnpReportResp",
]

log = logging.getLogger("cc_kernel.enclave")

SEV_GUEST_DEVICE = Path("/dev/sev-guest")


class SnpReportReq(ctypes.Structure):
    """``struct snp_report_req`` (96 bytes)."""

    _fields_ = (
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    )


class SnpExtReportReq(ctypes.Structure):
    """``struct snp_ext_report_req`` (112 bytes with the C padding)."""

    _fields_ = (
        ("data", SnpReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    )


class SnpReportResp(ctypes.Structure):
    """``struct snp_report_resp`` (4000 bytes): MSG_REPORT_RSP."""

    _fields_ = (("data", ctypes.c_uint8 * 4000),)


class SnpGuestRequestIoctl(ctypes.Structure):
    """``struct snp_guest_request_ioctl`` (32 bytes)."""

    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


_IOC_TYPE = ord("S")
SNP_GET_REPORT = iowr(_IOC_TYPE, 0x0, ctypes.sizeof(SnpGuestRequestIoctl))  # 0xC0205300 on x86-64
SNP_GET_EXT_REPORT = iowr(_IOC_TYPE, 0x2, ctypes.sizeof(SnpGuestRequestIoctl))  # 0xC0205302
MSG_VERSION = 1

VMM_ERR_INVALID_LEN = 1  # SNP_GUEST_VMM_ERR_INVALID_LEN: the certificate buffer is too small
VMM_ERR_BUSY = 2  # SNP_GUEST_VMM_ERR_BUSY: the host is throttling guest requests
VMM_ERR_GENERIC = 0xFFFFFFFF  # SNP_GUEST_VMM_ERR_GENERIC
#: SEV_FW_BLOB_MAX_SIZE: the kernel refuses certificate buffers above 16 KiB.
MAX_CERTS_LEN = 0x4000
_PAGE = mmap.PAGESIZE

_RSP_HEADER = struct.Struct("<II")  # MSG_REPORT_RSP status, report_size
_RSP_REPORT_AT = 0x20

#: SEV firmware status codes (AMD SEV-SNP ABI "Status Codes"; Linux ``enum sev_ret_code``).
FIRMWARE_ERRORS: dict[int, str] = {
    0x01: "INVALID_PLATFORM_STATE",
    0x02: "INVALID_GUEST_STATE",
    0x03: "INVALID_CONFIG",
    0x04: "INVALID_LENGTH",
    0x05: "ALREADY_OWNED",
    0x06: "INVALID_CERTIFICATE",
    0x07: "POLICY_FAILURE",
    0x08: "INACTIVE",
    0x09: "INVALID_ADDRESS",
    0x0A: "BAD_SIGNATURE",
    0x0B: "BAD_MEASUREMENT",
    0x0C: "ASID_OWNED",
    0x0D: "INVALID_ASID",
    0x0E: "WBINVD_REQUIRED",
    0x0F: "DFFLUSH_REQUIRED",
    0x10: "INVALID_GUEST",
    0x11: "INVALID_COMMAND",
    0x12: "ACTIVE",
    0x13: "HWERROR_PLATFORM",
    0x14: "HWERROR_UNSAFE",
    0x15: "UNSUPPORTED",
    0x16: "INVALID_PARAM",
    0x17: "RESOURCE_LIMIT",
    0x18: "SECURE_DATA_INVALID",
    0x19: "INVALID_PAGE_SIZE",
    0x1A: "INVALID_PAGE_STATE",
    0x1B: "INVALID_MDATA_ENTRY",
    0x1C: "INVALID_PAGE_OWNER",
    0x1D: "AEAD_OFLOW",
    0x1F: "RMP_INIT_REQUIRED",
    0x20: "BAD_SVN",
    0x21: "BAD_VERSION",
    0x22: "SHUTDOWN_REQUIRED",
    0x23: "UPDATE_FAILED",
    0x24: "RESTORE_REQUIRED",
    0x25: "RMP_INITIALIZATION_FAILED",
    0x26: "INVALID_KEY",
}
#: MSG_REPORT_RSP.status values (SEV-SNP ABI, "MSG_REPORT_RSP Message").
MSG_REPORT_STATUS: dict[int, str] = {0x16: "INVALID_PARAMETERS", 0x27: "INVALID_KEY_SELECTION"}


def _firmware_text(code: int, table: dict[int, str]) -> str:
    return f"{code:#x} ({table.get(code, 'unknown code')})"


class _IoctlFailed(Exception):  # noqa: N818 - internal, converted before it leaves this module
    def __init__(self, exc: OSError, exitinfo2: int) -> None:
        super().__init__(str(exc))
        self.os_error = exc
        self.fw_error = exitinfo2 & 0xFFFFFFFF
        self.vmm_error = exitinfo2 >> 32


@dataclass
class SevGuestIoctl(HardwareProvider):
    """SEV-SNP reports from ``/dev/sev-guest``.

    ``extended`` asks SNP_GET_EXT_REPORT for the host's certificate table too (falling back to SNP_GET_REPORT
    when the kernel does not know that ioctl); ``cert_pages`` is the first certificate buffer size in pages
    (grown once if the host needs more, up to 16 KiB). ``vmpl`` is the VMPL to request (0 for our enclave).
    ``device``, ``ioctl``, ``retry`` and ``clock`` are injectable for tests.
    """

    device: Path = SEV_GUEST_DEVICE
    vmpl: int = 0
    extended: bool = True
    cert_pages: int = 4
    ioctl: IoctlFn = system_ioctl
    snp_certificates: Sequence[Endorsement] = ()
    name: str = "sev-guest"
    _ext_unsupported: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        check_privilege_level(self.vmpl, "VMPL")
        if not 1 <= self.cert_pages <= MAX_CERTS_LEN // _PAGE:
            raise ConfigError(f"cert_pages must be 1..{MAX_CERTS_LEN // _PAGE}, got {self.cert_pages}")

    def _collect(self, report_data: bytes, nonce: bytes) -> Collected:
        """An SEV-SNP report with REPORT_DATA = ``report_data``, plus the host's certificates when available.

        Raises:
            EvidenceUnavailable: the device cannot be opened, the firmware or hypervisor refused (the message
                names the firmware / hypervisor error code), the host stayed busy, or the response is unusable.
        """
        report, certs = self._serialised(
            lambda: self._attempt(report_data), what=f"requesting a report from {self.device}"
        )
        endorsements = snp_endorsements(certs, report, extra=self.snp_certificates)
        if not any(e.role in ("vcek", "vlek") for e in endorsements):
            log.warning("%s: no VCEK/VLEK certificate from the host; the verifier will need one", self.device)
        return Collected(
            platform="sev-snp", fmt="amd-snp-report", evidence=report, endorsements=endorsements, provider="sev-guest"
        )

    # -- one attempt ---------------------------------------------------------------------------------------

    def _attempt(self, report_data: bytes) -> tuple[bytes, bytes]:
        with opened_device(self.device) as fd:
            if self.extended and not self._ext_unsupported:
                try:
                    return self._ext_report(fd, report_data)
                except _IoctlFailed as failed:
                    if failed.os_error.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise self._failure(failed, "SNP_GET_EXT_REPORT") from failed.os_error
                    log.info("%s does not support SNP_GET_EXT_REPORT; using SNP_GET_REPORT", self.device)
                    self._ext_unsupported = True
            try:
                return self._plain_report(fd, report_data), b""
            except _IoctlFailed as failed:
                raise self._failure(failed, "SNP_GET_REPORT") from failed.os_error

    def _report_req(self, report_data: bytes) -> SnpReportReq:
        req = SnpReportReq()
        ctypes.memmove(req.user_data, report_data, len(report_data))
        req.vmpl = self.vmpl
        return req

    def _call(self, fd: int, code: int, req: ctypes.Structure) -> SnpReportResp:
        resp = SnpReportResp()
        msg = SnpGuestRequestIoctl(
            msg_version=MSG_VERSION, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp), exitinfo2=0
        )
        try:
            self.ioctl(fd, code, msg)
        except OSError as exc:
            raise _IoctlFailed(exc, msg.exitinfo2) from exc
        return resp

    def _plain_report(self, fd: int, report_data: bytes) -> bytes:
        req = self._report_req(report_data)
        return self._parse_response(self._call(fd, SNP_GET_REPORT, req), report_data)

    def _ext_report(self, fd: int, report_data: bytes) -> tuple[bytes, bytes]:
        length = self.cert_pages * _PAGE
        for _ in range(2):  # the first size, then once the size the host asked for
            raw = ctypes.create_string_buffer(length + _PAGE)
            address = (ctypes.addressof(raw) + _PAGE - 1) & ~(_PAGE - 1)  # page-aligned, as the kernel wants
            req = SnpExtReportReq(data=self._report_req(report_data), certs_address=address, certs_len=length)
            try:
                resp = self._call(fd, SNP_GET_EXT_REPORT, req)
            except _IoctlFailed as failed:
                if failed.vmm_error != VMM_ERR_INVALID_LEN:
                    raise
                needed = int(req.certs_len)
                if needed <= length or needed > MAX_CERTS_LEN:
                    raise EvidenceUnavailable(
                        f"SNP_GET_EXT_REPORT: the host's certificate table needs {needed} bytes; the buffer had "
                        f"{length} and the kernel allows at most {MAX_CERTS_LEN}"
                    ) from failed.os_error
                length = -(-needed // _PAGE) * _PAGE
                continue
            report = self._parse_response(resp, report_data)
            return report, ctypes.string_at(address, length)
        raise EvidenceUnavailable("SNP_GET_EXT_REPORT: the host changed its certificate table size twice in a row")

    def _parse_response(self, resp: SnpReportResp, report_data: bytes) -> bytes:
        data = bytes(resp)
        status, size = _RSP_HEADER.unpack_from(data, 0)
        if status != 0:
            raise EvidenceUnavailable(
                f"{self.device}: the AMD secure processor refused the report request: MSG_REPORT_RSP status "
                f"{_firmware_text(status, MSG_REPORT_STATUS)}"
            )
        if size != REPORT_SIZE:
            raise EvidenceUnavailable(
                f"{self.device}: the response announces a report of {size} bytes; an SEV-SNP attestation report "
                f"is exactly {REPORT_SIZE}"
            )
        report = data[_RSP_REPORT_AT : _RSP_REPORT_AT + size]
        check_evidence("amd-snp-report", "sev-snp", report, report_data, source=str(self.device))
        return report

    def _failure(self, failed: _IoctlFailed, call: str) -> Exception:
        exc = failed.os_error
        where = f"{self.device} {call}"
        if failed.vmm_error == VMM_ERR_BUSY or exc.errno in BUSY_ERRNOS:
            return Transient(f"{where}: the host is busy ({os_error_text(exc)}, hypervisor error {failed.vmm_error})")
        if failed.fw_error:
            return EvidenceUnavailable(
                f"{where}: the AMD secure processor refused the request: firmware error "
                f"{_firmware_text(failed.fw_error, FIRMWARE_ERRORS)} ({os_error_text(exc)})"
            )
        if failed.vmm_error == VMM_ERR_GENERIC:
            return EvidenceUnavailable(f"{where}: the hypervisor failed the guest request ({os_error_text(exc)})")
        if failed.vmm_error:
            return EvidenceUnavailable(
                f"{where}: the hypervisor refused the request with error {failed.vmm_error:#x} ({os_error_text(exc)})"
            )
        return EvidenceUnavailable(f"{where} failed: {os_error_text(exc)}")
