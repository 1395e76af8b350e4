"""Monitor (evidence providers): the AMD certificates that travel with an SEV-SNP report, as envelope endorsements.

Sources: the host's extended-report certificate table (GHCB spec #56421 §4.1.8.1; configfs-tsm ``auxblob``
with provider ``sev_guest``, or the buffer of ``SNP_GET_EXT_REPORT``), and optionally a directory the operator
fills from AMD KDS (``vcek.der``, ``ask.pem``, ...) for hosts that deliver no table.

Table layout: 24-byte entries ``{GUID (16 bytes), offset u32 LE, length u32 LE}`` ending at an entry whose GUID
is all zero; offsets count from the start of the table; certificates are DER (PEM is accepted and converted).
GUIDs are compared in RFC byte order (as AMD's tools and go-sev-guest write them) and, for hosts that store
them Microsoft-style, in mixed-endian order too.

Nothing here decides trust: certificates are untrusted transport, checked by signature in the verifier.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path

from cc_kernel.attestation.envelope import Endorsement
from cc_kernel.attestation.platforms.sev_snp import LAYOUT as SNP_LAYOUT
from cc_kernel.crypto.x509load import certificate_der, load_amd_certificate
from cc_kernel.errors import ConfigError, EvidenceUnavailable, MalformedEvidence

__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "CERTIFICATE_ROLES",
    "TABLE_ENTRY",
    "VCEK_GUID",
    "VLEK_GUID",
    "load_certificate_dir",
    "parse_cert_table",
    "report_signing_key",
    "snp_endorsements",
]

log = logging.getLogger("cc_kernel.enclave")

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # the ASVK under a VLEK uses the same GUID
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

#: Envelope roles, in the order endorsements are emitted.
CERTIFICATE_ROLES = ("vcek", "vlek", "ask", "asvk", "ark")

#: One entry of the host's certificate table: GUID (16 bytes), offset u32 LE, length u32 LE.
TABLE_ENTRY = struct.Struct("<16sII")
_MAX_ENTRIES = 32
_SIGNING_KEY_VLEK = 1


def _known_guids() -> dict[bytes, uuid.UUID]:
    known: dict[bytes, uuid.UUID] = {}
    for guid in (VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID):
        known[guid.bytes] = guid
        known[guid.bytes_le] = guid
    return known


_KNOWN = _known_guids()


def _bad_table(message: str) -> EvidenceUnavailable:
    return EvidenceUnavailable(f"the host's SEV-SNP certificate table is malformed: {message}")


def parse_cert_table(table: bytes) -> dict[uuid.UUID, bytes]:
    """GUID -> certificate bytes for every entry of a GHCB certificate table (empty table -> empty dict).

    Unknown GUIDs (a CRL, vendor additions) are returned too, under their RFC-order GUID; the four AMD GUIDs are
    recognised in either byte order.

    Raises:
        EvidenceUnavailable: no terminating entry, more than 32 entries, an entry outside the table or
            overlapping the entry list, or a GUID listed twice (the host delivered a broken table).
    """
    if not table.strip(b"\x00"):
        return {}
    raw_entries: list[tuple[bytes, int, int]] = []
    for index in range(_MAX_ENTRIES + 1):
        at = index * TABLE_ENTRY.size
        if at + TABLE_ENTRY.size > len(table):
            raise _bad_table(f"no all-zero terminating entry within its {len(table)} bytes")
        guid_raw, offset, length = TABLE_ENTRY.unpack_from(table, at)
        if guid_raw == bytes(16):
            break
        if index == _MAX_ENTRIES:
            raise _bad_table(f"more than {_MAX_ENTRIES} entries")
        raw_entries.append((guid_raw, offset, length))
    entries_end = (len(raw_entries) + 1) * TABLE_ENTRY.size
    certs: dict[uuid.UUID, bytes] = {}
    for guid_raw, offset, length in raw_entries:
        guid = _KNOWN.get(guid_raw, uuid.UUID(bytes=guid_raw))
        if offset < entries_end or offset + length > len(table):
            raise _bad_table(
                f"entry {guid} points at bytes {offset}..{offset + length}, outside the certificate area "
                f"{entries_end}..{len(table)}"
            )
        if guid in certs:
            raise _bad_table(f"GUID {guid} is listed twice")
        certs[guid] = table[offset : offset + length]
    return certs


def report_signing_key(report: bytes) -> int:
    """SIGNER_INFO bits 4:2 of an SNP report (0 = VCEK, 1 = VLEK): which certificate the report needs."""
    f = SNP_LAYOUT["signer_info"]
    return (int.from_bytes(report[f.offset : f.end], "little") >> 2) & 0x7


def _as_der(data: bytes, what: str) -> bytes:
    """DER bytes unchanged; PEM converted to DER (some hosts store PEM)."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return bytes(data)
    try:
        return certificate_der(load_amd_certificate(data))
    except MalformedEvidence as exc:
        raise EvidenceUnavailable(f"the {what} certificate is PEM that does not parse: {exc}") from exc


def snp_endorsements(
    table: bytes, report: bytes, *, extra: Sequence[Endorsement] = ()
) -> tuple[Endorsement, ...]:
    """The ``x509-der`` endorsements for ``report``: VCEK / VLEK, ASK (role ``asvk`` when the report is
    VLEK-signed, since the ASVK shares the ASK's GUID) and ARK from the host's table, then any role the table
    lacks from ``extra`` (operator-supplied certificates). Unknown GUIDs are left out.

    Raises:
        EvidenceUnavailable: the table is malformed (see ``parse_cert_table``) or holds unparseable PEM.
    """
    certs = parse_cert_table(table)
    vlek_signed = report_signing_key(report) == _SIGNING_KEY_VLEK
    role_of = {
        VCEK_GUID: "vcek",
        VLEK_GUID: "vlek",
        ASK_GUID: "asvk" if vlek_signed else "ask",
        ARK_GUID: "ark",
    }
    by_role: dict[str, bytes] = {}
    for guid, data in certs.items():
        role = role_of.get(guid)
        if role is None:
            log.debug("host certificate table: ignoring entry %s (%d bytes)", guid, len(data))
            continue
        if data:
            by_role[role] = _as_der(data, role.upper())
    for e in extra:
        if e.kind == "x509-der" and e.role in CERTIFICATE_ROLES and e.role not in by_role:
            by_role[e.role] = e.data
    return tuple(
        Endorsement(kind="x509-der", role=role, data=by_role[role]) for role in CERTIFICATE_ROLES if role in by_role
    )


def load_certificate_dir(directory: Path) -> tuple[Endorsement, ...]:
    """Operator-supplied AMD certificates: ``<role>.der`` / ``.pem`` / ``.crt`` for each role in
    ``CERTIFICATE_ROLES`` (e.g. a VCEK and chain fetched from AMD KDS for this chip and TCB). Missing roles
    are simply absent.

    Raises:
        ConfigError: the directory does not exist or a file cannot be read or parsed.
    """
    if not directory.is_dir():
        raise ConfigError(f"SEV-SNP certificate directory {directory} does not exist")
    found: list[Endorsement] = []
    for role in CERTIFICATE_ROLES:
        for suffix in (".der", ".pem", ".crt"):
            path = directory / f"{role}{suffix}"
            if not path.exists():
                continue
            try:
                data = path.read_bytes()
                der = certificate_der(load_amd_certificate(data))
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
            except MalformedEvidence as exc:
                raise ConfigError(f"{path} is not an X.509 certificate: {exc}") from exc
            found.append(Endorsement(kind="x509-der", role=role, data=der))
            break
    return tuple(found)
