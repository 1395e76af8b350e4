"""Pure attestation layer (platforms Intel TDX and SGX): the PCK certificate chain of a DCAP quote and the PCK
certificate's SGX extension. Nothing is verified here; ``intel_dcap`` walks the chain to a pinned root.

Invariants:

* ``split_pck_chain`` accepts exactly three PEM certificates (PCK, PCK CA, root; optionally NUL-terminated, as
  some QEs write it) with only whitespace around them, and reads every lazily parsed field once, so a corrupt
  certificate is ``MalformedEvidence`` (``dcap.pck_chain.pem``, ``dcap.pck_chain.length``) here, never a
  ``ValueError`` inside the chain walker;
* ``pck_extensions`` reads Intel's SGX extension (``1.2.840.113741.1.13.1``) with the strict DER reader of
  ``crypto.der``; every fault is ``MalformedEvidence`` (``dcap.pck.extension``), a certificate without the
  extension is ``ChainError`` (``dcap.pck.extension``: it is not a PCK). Unknown entries are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from cc_kernel.crypto import der
from cc_kernel.crypto.x509load import load_certificate
from cc_kernel.errors import ChainError, MalformedEvidence

__all__ = ["SGX_EXTENSION_OID", "PckExtensions", "pck_extensions", "split_pck_chain"]

#: Intel's SGX extension in PCK certificates, and its sub-arcs.
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_OID_PPID = f"{SGX_EXTENSION_OID}.1"
_OID_TCB = f"{SGX_EXTENSION_OID}.2"
_OID_PCESVN = f"{_OID_TCB}.17"
_OID_CPUSVN = f"{_OID_TCB}.18"
_OID_PCEID = f"{SGX_EXTENSION_OID}.3"
_OID_FMSPC = f"{SGX_EXTENSION_OID}.4"
_OID_SGX_TYPE = f"{SGX_EXTENSION_OID}.5"
_OID_PLATFORM_INSTANCE_ID = f"{SGX_EXTENSION_OID}.6"
_OID_CONFIGURATION = f"{SGX_EXTENSION_OID}.7"
_CONFIGURATION_NAMES: Mapping[str, str] = MappingProxyType(
    {
        f"{_OID_CONFIGURATION}.1": "dynamic_platform",
        f"{_OID_CONFIGURATION}.2": "cached_keys",
        f"{_OID_CONFIGURATION}.3": "smt_enabled",
    }
)

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----")


def split_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The PEM certificates of certification data type 5, in order; only whitespace may surround them (and
    NUL terminators at the very end)."""
    text = pem.rstrip(b"\x00")
    blocks = list(_PEM_BLOCK.finditer(text))
    cursor = 0
    for block in [*blocks, None]:
        gap = text[cursor : block.start() if block is not None else len(text)]
        if gap.strip():
            raise MalformedEvidence(
                "the PCK certificate chain holds something other than PEM certificates",
                check="dcap.pck_chain.pem",
                got=gap[:64],
                expected="PEM CERTIFICATE blocks",
            )
        if block is not None:
            cursor = block.end()
    if len(blocks) != 3:
        raise MalformedEvidence(
            "the PCK certificate chain must be the PCK certificate, its CA and the root, in that order",
            check="dcap.pck_chain.length",
            got=len(blocks),
            expected=3,
        )
    certs: list[x509.Certificate] = []
    for index, block in enumerate(blocks):
        try:
            cert = load_certificate(block.group(0))
            _parse_lazy_fields(cert)
        except MalformedEvidence as exc:
            raise MalformedEvidence(
                f"PCK chain certificate {index} does not parse: {exc.message}", check="dcap.pck_chain.pem", index=index
            ) from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise MalformedEvidence(
                f"PCK chain certificate {index} does not parse: {exc}", check="dcap.pck_chain.pem", index=index
            ) from exc
        certs.append(cert)
    return tuple(certs)


def _parse_lazy_fields(cert: x509.Certificate) -> None:
    """``cryptography`` decodes names, validity, key and algorithms on first access: do it now, so a corrupt
    field is ``MalformedEvidence`` here rather than a ``ValueError`` from inside the chain walker."""
    _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
    _ = (cert.signature_algorithm_oid, cert.signature_hash_algorithm, cert.public_key())


# --- the PCK certificate's SGX extension (read with the strict DER reader of crypto.der) ---------------------


@dataclass(frozen=True)
class PckExtensions:
    """Intel's SGX extension (``1.2.840.113741.1.13.1``) of a PCK certificate."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    configuration: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))


_PCK_DER = der.DerReader("dcap.pck.extension", "PCK SGX extension")


def _der_expect(item: tuple[int, bytes], tag: int, what: str) -> bytes:
    if item[0] != tag:
        raise _PCK_DER.fail(f"{what} has DER tag 0x{item[0]:02x}, expected 0x{tag:02x}")
    return item[1]


def _der_octets(item: tuple[int, bytes], size: int, what: str) -> bytes:
    value = _der_expect(item, der.OCTET_STRING, what)
    if len(value) != size:
        raise _PCK_DER.fail(f"{what} must be {size} bytes, got {len(value)}", value.hex())
    return value


def _der_pairs(content: bytes, what: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE { OID, value } as OID -> value; duplicate OIDs are malformed."""
    pairs: dict[str, tuple[int, bytes]] = {}
    for item in _PCK_DER.items(content):
        inner = _PCK_DER.items(_der_expect(item, der.SEQUENCE, f"an entry of {what}"))
        if len(inner) != 2:
            raise _PCK_DER.fail(f"an entry of {what} must be (OID, value), has {len(inner)} parts")
        oid = _PCK_DER.object_identifier(_der_expect(inner[0], der.OBJECT_IDENTIFIER, f"an entry name of {what}"))
        if oid in pairs:
            raise _PCK_DER.fail(f"{oid} appears twice in {what}", oid)
        pairs[oid] = inner[1]
    return pairs


def _required(pairs: Mapping[str, tuple[int, bytes]], oid: str, what: str) -> tuple[int, bytes]:
    item = pairs.get(oid)
    if item is None:
        raise _PCK_DER.fail(f"{what} ({oid}) is missing")
    return item


def pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Decode Intel's SGX extension of a PCK certificate (unknown entries are ignored).

    Raises:
        ChainError: ``dcap.pck.extension``: the certificate has no SGX extension (it is not a PCK).
        MalformedEvidence: ``dcap.pck.extension``: the extension is not the DER Intel defines.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound as exc:
        raise ChainError(
            "the PCK certificate has no SGX extension (1.2.840.113741.1.13.1)",
            check="dcap.pck.extension",
            expected=SGX_EXTENSION_OID,
        ) from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - cryptography does not know it
        raise _PCK_DER.fail("unexpected decoded extension type")
    raw = value.value
    content = _PCK_DER.single(raw, der.SEQUENCE)
    top = _der_pairs(content, "the SGX extension")
    tcb = _der_pairs(_der_expect(_required(top, _OID_TCB, "TCB"), der.SEQUENCE, "TCB"), "the TCB entry")
    components = tuple(
        _PCK_DER.unsigned(
            _der_expect(_required(tcb, f"{_OID_TCB}.{i}", f"TCB component {i}"), der.INTEGER, f"TCB component {i}"),
            f"TCB component {i}",
            0xFF,
        )
        for i in range(1, 17)
    )
    pcesvn_item = _der_expect(_required(tcb, _OID_PCESVN, "PCESVN"), der.INTEGER, "PCESVN")
    pcesvn = _PCK_DER.unsigned(pcesvn_item, "PCESVN", 0xFFFF)
    cpusvn = _der_octets(_required(tcb, _OID_CPUSVN, "CPUSVN"), 16, "CPUSVN")
    sgx_type_item = _required(top, _OID_SGX_TYPE, "SGX type")
    if sgx_type_item[0] not in (der.ENUMERATED, der.INTEGER):
        raise _PCK_DER.fail("SGX type must be an ENUMERATED", hex(sgx_type_item[0]))
    instance = top.get(_OID_PLATFORM_INSTANCE_ID)
    configuration: dict[str, bool] = {}
    config_item = top.get(_OID_CONFIGURATION)
    if config_item is not None:
        for oid, item in _der_pairs(_der_expect(config_item, der.SEQUENCE, "configuration"), "configuration").items():
            flag = _der_expect(item, der.BOOLEAN, f"configuration {oid}")
            if flag not in (b"\x00", b"\xff"):
                raise _PCK_DER.fail(f"configuration {oid} is not a DER BOOLEAN", flag.hex())
            configuration[_CONFIGURATION_NAMES.get(oid, oid)] = flag == b"\xff"
    return PckExtensions(
        ppid=_der_octets(_required(top, _OID_PPID, "PPID"), 16, "PPID"),
        tcb_components=components,
        pcesvn=pcesvn,
        cpusvn=cpusvn,
        pce_id=_der_octets(_required(top, _OID_PCEID, "PCE-ID"), 2, "PCE-ID"),
        fmspc=_der_octets(_required(top, _OID_FMSPC, "FMSPC"), 6, "FMSPC"),
        sgx_type=_PCK_DER.unsigned(sgx_type_item[1], "SGX type", 0xFF),
        platform_instance_id=None if instance is None else _der_octets(instance, 16, "platform instance id"),
        configuration=MappingProxyType(configuration),
    )
