"""Pure audit layer: producing a session log — the enclave's ``ReceiptSigner`` and the kernel's ``LogWriter``.

Invariants:

* the signer holds the chain state (next sequence number, previous entry hash) and signs nothing before
  ``start(opening_hash)`` nor anything after its closing entry; every receipt fits ``MAX_RECEIPT``;
* the writer appends a receipt only after it checked, against the opening entry it wrote, the signature (the
  session's attested audit key), session id, sequence number and chain; a bad receipt raises
  ``LogVerificationError`` and leaves the writer failed (nothing more is ever appended); so does an entry its
  caller's ``admit`` check refuses; the closing entry is the last thing it appends;
* which requests get a receipt, and with which kind and code, is defined once: ``expected_receipt``;
* no I/O here: the writer calls the injected ``sink`` once per entry with the exact bytes to append (the
  kernel's sink appends and fsyncs); times are parameters.

Check names: the writer reports the entry checks of docs/audit-log.md §9 (``entry.signature``,
``entry.session_id``, ``entry.seq``, ``entry.prev``, ``entry.type``, ...), and ``entry.decode`` for a receipt
that cannot be read at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cc_kernel.attestation.policy import Policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.audit.format import (
    GENESIS,
    HASH_SIZE,
    KINDS,
    MAGIC,
    MAX_INLINE_CODE,
    STATUSES,
    ClosingEntry,
    OpeningEntry,
    OutputDigests,
    ReceiptEntry,
    UploadInfo,
    check_signed_entry,
    code_hash,
    encode_body,
    encode_payload,
    encode_record,
    entry_hash,
    signed_message,
)
from cc_kernel.crypto.hashing import constant_time_equal
from cc_kernel.crypto.keys import AuditKey
from cc_kernel.errors import AuditError, LogVerificationError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.messages import MAX_RECEIPT

__all__ = [
    "AppendedEntry", "LogWriter", "ReceiptSigner", "comm_input_text", "expected_receipt", "make_opening",
    "result_json",
]

#: Bytes the payload wrapper adds to a body: map, two keys, bin headers, a 64-byte signature.
_PAYLOAD_OVERHEAD = 96


def result_json(result: AttestationResult) -> str:
    """The AttestationResult as the opening entry stores it: ``to_json_dict()`` as compact JSON, sorted keys."""
    return json.dumps(result.to_json_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_opening(
    *,
    result: AttestationResult,
    envelope_bytes: bytes,
    tls_spki: bytes,
    policy: Policy,
    opened_ms: int,
    versions: Mapping[str, str],
    settings: Mapping[str, str | int | bool] | None = None,
    client_key_sha256: bytes | None = None,
) -> OpeningEntry:
    """The opening entry for a session the kernel has just verified (``channel.ratls.verify_peer``'s
    ``AttestedPeer``: ``result``, ``envelope_bytes``, ``tls_spki``) under ``policy``.

    Session id, nonce and audit key come from ``result`` (they are the ones ``check_binding`` bound).
    ``client_key_sha256``: the SPKI SHA-256 of the client key the kernel presented (remote mode), else None.

    Raises:
        ValueError: ``tls_spki`` or ``policy`` are not the ones ``result`` was computed for, or
            ``client_key_sha256`` is not 32 bytes.
    """
    if client_key_sha256 is not None and len(client_key_sha256) != 32:
        raise ValueError("client_key_sha256 must be a 32-byte SHA-256 digest")
    if not constant_time_equal(hashlib.sha256(tls_spki).digest(), result.tls_spki_sha256):
        raise ValueError("tls_spki is not the key the attestation result was bound to")
    if not constant_time_equal(policy.sha256, result.policy_sha256):
        raise ValueError("policy is not the one the attestation result was appraised under")
    doc = result.to_json_dict()
    return OpeningEntry(
        session_id=result.session_id,
        evidence=envelope_bytes,
        tls_spki=tls_spki,
        nonce=result.nonce,
        audit_pub=result.audit_pub,
        policy=policy.canonical.decode("utf-8"),
        policy_sha256=policy.sha256,
        policy_source=policy.source,
        result=result_json(result),
        verified_at=str(doc["verified_at"]),
        opened_ms=opened_ms,
        versions=dict(versions),
        settings=dict(settings or {}),
        client_key_sha256=client_key_sha256,
    )


class ReceiptSigner:
    """Enclave side: signs the session's receipts and its closing entry with the attested audit key.

    ``opening_hash`` (the hash of the kernel's opening entry, which the kernel sends after attestation) may be
    given here or later with ``start``. Not thread-safe: call it from the thread that runs requests.
    """

    def __init__(
        self,
        audit_key: AuditKey,
        session_id: bytes,
        *,
        opening_hash: bytes | None = None,
        max_receipt_size: int = MAX_RECEIPT,
        max_inline_code: int = MAX_INLINE_CODE,
    ) -> None:
        if len(session_id) != 16:
            raise ValueError("session id must be 16 bytes")
        self._key = audit_key
        self._session_id = bytes(session_id)
        self._max_size = max_receipt_size
        self._max_code = max_inline_code
        self._seq = 1
        self._prev: bytes | None = None
        self._closed = False
        if opening_hash is not None:
            self.start(opening_hash)

    def start(self, opening_hash: bytes) -> None:
        """Chain the first receipt to the kernel's opening entry.

        Raises:
            ValueError: not 32 bytes, or already started.
        """
        if self._prev is not None:
            raise ValueError("the receipt signer has already started")
        if len(opening_hash) != HASH_SIZE or constant_time_equal(opening_hash, GENESIS):
            raise ValueError("opening hash must be the 32-byte hash of the opening entry")
        self._prev = bytes(opening_hash)

    @property
    def started(self) -> bool:
        return self._prev is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def next_seq(self) -> int:
        """The sequence number the next signed entry will carry."""
        return self._seq

    def _sign(self, body: bytes) -> bytes:
        digest = entry_hash(body)
        payload = encode_payload(body, self._key.sign(signed_message(digest)))
        self._prev = digest
        self._seq += 1
        return payload

    def _ready(self) -> bytes:
        if self._closed:
            raise ValueError("the session's closing entry was signed: nothing more can be signed")
        if self._prev is None:
            raise ValueError("call start(opening_hash) before signing receipts")
        return self._prev

    def sign_receipt(
        self,
        *,
        kind: str,
        execution_count: int,
        code: str,
        outputs: OutputDigests,
        status: str,
        started_ms: int,
        ended_ms: int,
        cell_id: str | None = None,
        redact_code: bool = False,
        upload: UploadInfo | None = None,
    ) -> bytes:
        """Sign the receipt of one request; returns the bytes for ``AuditReceipt.receipt``.

        ``code`` is the request's code as received (for ``comm``: ``comm_input_text``; for ``upload``: "").
        The code is always hashed; it is inlined unless ``redact_code`` or longer than ``max_inline_code``.

        Raises:
            ValueError: bad kind/status, ``upload`` given for another kind or missing for an upload, not
                started, already closed, or the receipt cannot fit ``max_receipt_size``.
        """
        prev = self._ready()
        if kind not in KINDS:
            raise ValueError(f"unknown receipt kind {kind!r}; one of {KINDS}")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        digest = code_hash(code)
        inline = not redact_code and len(code.encode("utf-8", "surrogatepass")) <= self._max_code
        redaction = "none" if inline else ("config" if redact_code else "size")
        entry = ReceiptEntry(
            session_id=self._session_id,
            seq=self._seq,
            prev=prev,
            kind=kind,
            execution_count=execution_count,
            cell_id=cell_id,
            code_sha256=digest,
            code=code if inline else None,
            redaction=redaction,
            streams=outputs.streams,
            outputs=outputs.outputs,
            output_count=outputs.output_count,
            status=status,
            started_ms=started_ms,
            ended_ms=ended_ms,
            upload=upload,
        )
        body = encode_body(entry)
        if len(body) + _PAYLOAD_OVERHEAD > self._max_size:
            raise ValueError(f"the receipt would exceed {self._max_size} bytes")
        return self._sign(body)

    def sign_closing(self, *, ended_ms: int, reason: str = "shutdown") -> bytes:
        """Sign the closing entry (count and last hash); nothing can be signed after it.

        Raises:
            ValueError: not started, or already closed.
        """
        prev = self._ready()
        entry = ClosingEntry(
            session_id=self._session_id,
            seq=self._seq,
            prev=prev,
            count=self._seq,
            last=prev,
            ended_ms=ended_ms,
            reason=reason,
        )
        payload = self._sign(encode_body(entry))
        self._closed = True
        return payload


def comm_input_text(kind: str, comm_id: str, data: Mapping[str, object], target_name: str | None = None) -> str:
    """The ``code`` of a ``comm`` receipt: compact sorted-key JSON of what the frontend sent, e.g.
    ``{"comm_id":"..","data":{..},"msg_type":"comm_msg"}`` (``target_name`` too for comm_open)."""
    doc: dict[str, object] = {"msg_type": kind, "comm_id": comm_id, "data": data}
    if target_name is not None:
        doc["target_name"] = target_name
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def expected_receipt(msg: m.Message) -> tuple[str, str] | None:
    """The ``(kind, code)`` of the receipt a request must get when the session keeps a log, or None for a
    message that is not a receipted request.

    Receipted: ``ExecuteRequest`` (``cell``, or ``silent`` when silent: its code), ``CompleteRequest``
    (``complete``), ``InspectRequest`` (``inspect``), ``IsCompleteRequest`` (``is_complete``) with the code
    sent, ``CommOpen``/``CommMsg``/``CommClose`` (``comm``: ``comm_input_text`` of what was sent) and an
    upload, once, at its ``UploadStart`` (``upload``: the ``%cc_upload`` cell's code). Not receipted:
    ``HistoryRequest`` and ``CommInfoRequest`` (they read state and run no user code), ``UploadChunk`` and
    ``UploadEnd`` (parts of the upload), and every message that is not a request. Every receipted request gets
    its receipt whatever its outcome (an error, an interrupt, a refused upload).
    """
    if isinstance(msg, m.ExecuteRequest):
        return ("silent" if msg.silent else "cell"), msg.code
    if isinstance(msg, m.CompleteRequest):
        return "complete", msg.code
    if isinstance(msg, m.InspectRequest):
        return "inspect", msg.code
    if isinstance(msg, m.IsCompleteRequest):
        return "is_complete", msg.code
    if isinstance(msg, m.CommOpen):
        return "comm", comm_input_text("comm_open", msg.comm_id, msg.data, msg.target_name)
    if isinstance(msg, m.CommMsg):
        return "comm", comm_input_text("comm_msg", msg.comm_id, msg.data)
    if isinstance(msg, m.CommClose):
        return "comm", comm_input_text("comm_close", msg.comm_id, msg.data)
    if isinstance(msg, m.UploadStart):
        return "upload", msg.code
    return None


@dataclass(frozen=True)
class AppendedEntry:
    """An entry the writer checked and appended: its index in the log, its hash and its parsed body."""

    index: int
    hash: bytes
    entry: ReceiptEntry | ClosingEntry


class LogWriter:
    """Kernel side: writes one session log through ``sink`` (called once per entry with the bytes to append).

    ``open(opening)`` writes the file header and the opening entry and returns its hash (send it to the
    enclave, which chains its first receipt to it); ``append(receipt)`` checks and appends each
    ``AuditReceipt.receipt`` — receipts and, last, the closing entry.
    """

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        self._opening: OpeningEntry | None = None
        self._last: bytes | None = None
        self._count = 0
        self._closed = False
        self._failed: BaseException | None = None

    @property
    def count(self) -> int:
        """Entries written so far (the opening entry included)."""
        return self._count

    @property
    def last_hash(self) -> bytes | None:
        return self._last

    @property
    def closed(self) -> bool:
        """True once the closing entry is written."""
        return self._closed

    @property
    def failed(self) -> bool:
        """True once a receipt was refused or the sink failed: the log ends there (it will verify as
        unterminated, or invalid if a write was torn)."""
        return self._failed is not None

    @property
    def opening(self) -> OpeningEntry | None:
        return self._opening

    def _write(self, data: bytes) -> None:
        try:
            self._sink(data)
        except Exception as exc:  # the sink is the kernel's file I/O: whatever it raises, the log is broken
            self._failed = exc
            raise AuditError(f"the audit log could not be written: {exc}") from exc

    def _usable(self) -> None:
        if self._failed is not None:
            raise AuditError(f"the audit log stopped at entry {self._count} after an earlier failure") from None
        if self._closed:
            raise AuditError("the audit log is closed: its closing entry was written")

    def open(self, opening: OpeningEntry) -> bytes:
        """Write ``MAGIC`` and the opening entry (one sink call). Returns the opening entry's hash.

        Raises:
            ValueError: already opened, or the entry is not an opening entry at seq 0.
            AuditError: the sink failed.
        """
        if self._opening is not None:
            raise ValueError("the log is already open")
        if not isinstance(opening, OpeningEntry) or opening.seq != 0 or opening.prev != GENESIS:
            raise ValueError("the first entry must be an opening entry with seq 0 and prev = 32 zero bytes")
        self._usable()
        body = encode_body(opening)
        self._write(MAGIC + encode_record(encode_payload(body, b"")))
        self._opening = opening
        self._last = entry_hash(body)
        self._count = 1
        return self._last

    def append(
        self, receipt: bytes, *, admit: Callable[[ReceiptEntry | ClosingEntry], None] | None = None
    ) -> AppendedEntry:
        """Check one signed entry from the enclave (``AuditReceipt.receipt``) and append it.

        ``admit``, if given, is called with the verified entry before anything is written; whatever it raises
        propagates, nothing is written and the writer stays failed (the log ends before this entry). The kernel
        uses it to refuse a closing entry that would terminate a log with a receipt missing.

        Raises:
            LogVerificationError: the receipt fails a check (``entry.signature``, ``entry.session_id``,
                ``entry.seq``, ``entry.prev``, ``entry.decode``, ``entry.schema``, ``closing.*``); ``index``
                is the position it would have had. Nothing is written and the writer stays failed.
            AuditError: the writer is not open, already failed or closed, or the sink failed.
        """
        if self._opening is None or self._last is None:
            raise AuditError("the audit log is not open: write the opening entry first")
        self._usable()
        checked = check_signed_entry(
            receipt,
            index=self._count,
            audit_pub=self._opening.audit_pub,
            session_id=self._opening.session_id,
            expected_seq=self._count,
            prev_hash=self._last,
        )
        if checked.errors or checked.entry is None or checked.hash is None:
            error = checked.errors[0] if checked.errors else LogVerificationError(
                "receipt could not be checked", check="entry.decode", index=self._count
            )
            self._failed = error
            raise error
        entry = checked.entry
        if isinstance(entry, OpeningEntry):  # unreachable: check_signed_entry reports it as entry.type
            raise LogVerificationError("an opening entry can only be the first", check="entry.type",
                                       index=self._count)
        if admit is not None:
            try:
                admit(entry)
            except BaseException as exc:
                self._failed = exc
                raise
        self._write(encode_record(receipt))
        appended = AppendedEntry(index=self._count, hash=checked.hash, entry=entry)
        self._last = checked.hash
        self._count += 1
        if isinstance(entry, ClosingEntry):
            self._closed = True
        return appended
