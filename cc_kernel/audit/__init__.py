"""Pure audit layer: attested session logs — enclave-signed, hash-chained receipts and their offline verifier.

The format is specified in docs/audit-log.md. Enclave side: ``ReceiptSigner`` + ``OutputDigester``. Kernel
side: ``make_opening`` + ``LogWriter`` (over an injected sink). Auditor side: ``verify_log`` + ``match_notebook``.
No I/O and no clock anywhere in this package.
"""

from __future__ import annotations

from cc_kernel.audit.format import (
    KINDS,
    MAGIC,
    STATUSES,
    ClosingEntry,
    OpeningEntry,
    OutputDigester,
    OutputDigests,
    ReceiptEntry,
    UploadInfo,
    code_hash,
)
from cc_kernel.audit.receipts import AppendedEntry, LogWriter, ReceiptSigner, comm_input_text, make_opening
from cc_kernel.audit.verify import CellFinding, Finding, LogReport, match_notebook, verify_log

__all__ = [
    "KINDS",
    "MAGIC",
    "STATUSES",
    "AppendedEntry",
    "CellFinding",
    "ClosingEntry",
    "Finding",
    "LogReport",
    "LogWriter",
    "OpeningEntry",
    "OutputDigester",
    "OutputDigests",
    "ReceiptEntry",
    "ReceiptSigner",
    "UploadInfo",
    "code_hash",
    "comm_input_text",
    "make_opening",
    "match_notebook",
    "verify_log",
]
