"""Monitor (evidence providers): AWS Nitro Enclaves attestation documents from the Nitro Secure Module (``/dev/nsm``).

The interface (Linux ``include/uapi/linux/nsm.h``; aws/aws-nitro-enclaves-nsm-api ``src/driver``):
``ioctl(fd, NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw), &msg)`` with ``struct nsm_raw {struct nsm_iovec
request; struct nsm_iovec response}`` and ``struct nsm_iovec {u64 addr; u64 len}``. The request is CBOR (at
most 0x1000 bytes), the response buffer 0x3000 bytes; the driver sets ``response.len`` to the bytes written.

Request (serde's externally tagged encoding): ``{"Attestation": {"user_data": bstr, "nonce": bstr,
"public_key": null}}``; response ``{"Attestation": {"document": bstr}}`` (a COSE_Sign1 attestation document)
or ``{"Error": "<ErrorCode>"}``.

Binding (docs/evidence.md §2): **``user_data`` carries our 64-byte report_data** — the Nitro verifier maps it
to ``VerifiedEvidence.report_data`` — and ``nonce`` carries the kernel's raw 32-byte nonce, which the document
echoes for the freshness check. ``public_key`` stays null: the TLS key is already bound through its SPKI in
report_data, and a second, unbound key field would only invite misuse.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from cc_kernel.enclave.providers.base import (
    BUSY_ERRNOS,
    Collected,
    HardwareProvider,
    IoctlFn,
    Transient,
    iowr,
    opened_device,
    os_error_text,
    system_ioctl,
)
from cc_kernel.errors import EvidenceUnavailable

__all__ = [
    "NSM_DEVICE",
    "NSM_ERRORS",
    "NSM_IOCTL_RAW",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "NitroNsm",
    "NsmIovec",
    "NsmRaw",
    "attestation_request",
]

NSM_DEVICE = Path("/dev/nsm")
NSM_REQUEST_MAX_SIZE = 0x1000
NSM_RESPONSE_MAX_SIZE = 0x3000
_NSM_MAGIC = 0x0A
_COSE_SIGN1_TAG = 18


class NsmIovec(ctypes.Structure):
    """``struct nsm_iovec`` (16 bytes)."""

    _fields_ = (("addr", ctypes.c_uint64), ("len", ctypes.c_uint64))


class NsmRaw(ctypes.Structure):
    """``struct nsm_raw`` (32 bytes)."""

    _fields_ = (("request", NsmIovec), ("response", NsmIovec))


NSM_IOCTL_RAW = iowr(_NSM_MAGIC, 0x0, ctypes.sizeof(NsmRaw))  # 0xC0200A00

#: The NSM's ErrorCode values (aws-nitro-enclaves-nsm-api ``api::ErrorCode``), explained.
NSM_ERRORS: dict[str, str] = {
    "InvalidArgument": "an input argument is invalid",
    "InvalidIndex": "PCR index out of bounds",
    "InvalidResponse": "the response does not correspond to the request",
    "ReadOnlyIndex": "the PCR is read-only",
    "InvalidOperation": "the request cannot be fulfilled due to missing capabilities",
    "BufferTooSmall": "the response buffer is too small",
    "InputTooLarge": "the input is too large (user_data and nonce are limited to 512 bytes)",
    "InternalError": "the NSM failed internally",
}


def attestation_request(report_data: bytes, nonce: bytes) -> bytes:
    """The CBOR ``Attestation`` request: ``user_data`` = report_data, ``nonce`` = nonce, no public key."""
    return bytes(
        cbor2.dumps({"Attestation": {"user_data": bytes(report_data), "nonce": bytes(nonce), "public_key": None}})
    )


def _unexpected(what: str) -> EvidenceUnavailable:
    return EvidenceUnavailable(f"the Nitro Secure Module sent an unexpected response: {what}")


def _document_of(response: bytes) -> bytes:
    try:
        decoded: Any = cbor2.loads(response)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise _unexpected(f"not CBOR ({exc})") from exc
    if isinstance(decoded, dict) and set(decoded) == {"Error"}:
        code = decoded["Error"]
        explanation = NSM_ERRORS.get(code, "unknown error code") if isinstance(code, str) else "malformed error"
        raise EvidenceUnavailable(f"the Nitro Secure Module refused the attestation request: {code} ({explanation})")
    if not (isinstance(decoded, dict) and set(decoded) == {"Attestation"}):
        keys = sorted(map(str, decoded)) if isinstance(decoded, dict) else type(decoded).__name__
        raise _unexpected(f"expected an Attestation answer, got {keys}")
    body = decoded["Attestation"]
    document = body.get("document") if isinstance(body, dict) else None
    if not isinstance(document, bytes) or not document:
        raise _unexpected("the Attestation answer carries no document")
    return document


def _check_document(document: bytes, report_data: bytes, nonce: bytes) -> None:
    """The document is a COSE_Sign1 whose payload echoes our user_data and nonce (signature: verifier)."""
    try:
        cose: Any = cbor2.loads(document)
        if isinstance(cose, cbor2.CBORTag):
            if cose.tag != _COSE_SIGN1_TAG:
                raise ValueError(f"CBOR tag {cose.tag}, not COSE_Sign1 (18)")
            cose = cose.value
        if not (isinstance(cose, list | tuple) and len(cose) == 4 and isinstance(cose[2], bytes)):
            raise ValueError("not a 4-element COSE_Sign1 array with a byte-string payload")
        payload: Any = cbor2.loads(cose[2])
        if not isinstance(payload, dict):
            raise ValueError("the payload is not a map")
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise EvidenceUnavailable(f"the Nitro Secure Module's document is not an attestation document: {exc}") from exc
    if payload.get("user_data") != report_data or payload.get("nonce") != nonce:
        raise Transient(
            "the Nitro attestation document does not echo the user_data and nonce we sent: it answers another "
            "request"
        )


@dataclass
class NitroNsm(HardwareProvider):
    """Attestation documents from ``/dev/nsm`` (see the module docstring for the binding).

    ``device``, ``ioctl``, ``retry`` and ``clock`` are injectable for tests.
    """

    device: Path = NSM_DEVICE
    ioctl: IoctlFn = system_ioctl
    name: str = "nitro-nsm"

    def _collect(self, report_data: bytes, nonce: bytes) -> Collected:
        """A COSE_Sign1 attestation document with ``user_data`` = report_data and ``nonce`` = nonce.

        Raises:
            EvidenceUnavailable: the device cannot be opened, the ioctl fails (errno named), the NSM answers
                an error code, or the answer is not an attestation document for this request.
        """
        request = attestation_request(report_data, nonce)
        if len(request) > NSM_REQUEST_MAX_SIZE:
            raise EvidenceUnavailable(f"the NSM request is {len(request)} bytes, above {NSM_REQUEST_MAX_SIZE}")
        document = self._serialised(
            lambda: self._attempt(request, report_data, nonce), what=f"requesting an attestation from {self.device}"
        )
        return Collected(
            platform="nitro", fmt="aws-nitro-cose-sign1", evidence=document, endorsements=(), provider="nitro-nsm"
        )

    def _attempt(self, request: bytes, report_data: bytes, nonce: bytes) -> bytes:
        with opened_device(self.device) as fd:
            response = self._call(fd, request)
        document = _document_of(response)
        _check_document(document, report_data, nonce)
        return document

    def _call(self, fd: int, request: bytes) -> bytes:
        req_buf = ctypes.create_string_buffer(request, len(request))
        resp_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        msg = NsmRaw(
            request=NsmIovec(addr=ctypes.addressof(req_buf), len=len(request)),
            response=NsmIovec(addr=ctypes.addressof(resp_buf), len=NSM_RESPONSE_MAX_SIZE),
        )
        try:
            self.ioctl(fd, NSM_IOCTL_RAW, msg)
        except OSError as exc:
            if exc.errno in BUSY_ERRNOS:
                raise Transient(f"{self.device} is busy: {os_error_text(exc)}") from exc
            hint = {
                errno.EMSGSIZE: "the request or response exceeds the NSM's limits",
                errno.EPERM: "the raw NSM ioctl needs CAP_SYS_ADMIN in the enclave",
                errno.EACCES: "permission denied",
            }.get(exc.errno or 0, "")
            raise EvidenceUnavailable(
                f"{self.device} NSM_IOCTL_RAW failed: {os_error_text(exc)}" + (f"; {hint}" if hint else "")
            ) from exc
        length = int(msg.response.len)
        if length == 0:
            raise _unexpected("an empty response")
        if length > NSM_RESPONSE_MAX_SIZE:
            raise _unexpected(f"a response length of {length}, above the {NSM_RESPONSE_MAX_SIZE}-byte buffer")
        return ctypes.string_at(resp_buf, length)
