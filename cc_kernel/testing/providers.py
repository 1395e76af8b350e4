"""Test helpers: what a host hands the enclave's hardware evidence providers — an SEV-SNP host's GHCB certificate
table, built as the host writes it (the providers only ever parse one: ``enclave.providers.amd_certs``).

Invariant: the table layout is ``amd_certs.TABLE_ENTRY``'s, the one definition the parser uses too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from cc_kernel.enclave.providers.amd_certs import TABLE_ENTRY

__all__ = ["build_cert_table"]


def build_cert_table(certs: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """A GHCB certificate table holding ``certs`` in order (RFC-order GUIDs), as a host writes it."""
    items = list(certs)
    offset = (len(items) + 1) * TABLE_ENTRY.size
    header = bytearray()
    body = bytearray()
    for guid, data in items:
        header += TABLE_ENTRY.pack(guid.bytes, offset + len(body), len(data))
        body += data
    header += TABLE_ENTRY.pack(bytes(16), 0, 0)
    return bytes(header + body)
