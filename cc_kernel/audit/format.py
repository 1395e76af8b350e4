"""Pure audit layer: the session log format (docs/audit-log.md) — records, canonical entries, hashes, digests.

Invariants:

* no I/O and no clock: times are parameters, bytes come in and go out;
* every hash is ``crypto.hashing.tagged_hash`` (domain tag first, every part length-prefixed) with one of the
  ``TAG_AUDIT_*`` tags; plain SHA-256 appears only as a content fingerprint *inside* a tagged hash (upload
  content, stream text), so it can be checked with ``sha256sum``;
* entry bodies and payloads are canonical msgpack (``protocol.codec``, the only msgpack call site) and decoding
  re-encodes them and insists on byte equality, so no changed byte can decode to the same value;
* the record decoder is incremental (``feed`` / ``next_record`` returning ``NEED_DATA``), never allocates more
  than the capped length of one record, and tells a cut-short tail (``end()``) apart from corrupt framing
  (``record.length``) — a single changed byte can never look like a cut-short tail;
* schema violations raise ``LogVerificationError`` naming the check (``entry.decode``, ``entry.schema``, ...);
  the caller fills in the entry index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cc_kernel.crypto.hashing import (
    TAG_AUDIT_CODE,
    TAG_AUDIT_ENTRY,
    TAG_AUDIT_OUTPUT,
    TAG_AUDIT_SIGNATURE,
    constant_time_equal,
    lp,
    tagged_hash,
)
from cc_kernel.crypto.keys import verify_ed25519
from cc_kernel.errors import AuditError, LogVerificationError, RemoteProtocolError
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import OUTPUT_TYPES
from cc_kernel.protocol.framing import NEED_DATA, NeedData

__all__ = [
    "ENTRY_TYPES",
    "FORMAT_VERSION",
    "GENESIS",
    "HASH_SIZE",
    "HEADER_SIZE",
    "KINDS",
    "MAGIC",
    "MAX_INLINE_CODE",
    "MAX_LISTED_OUTPUTS",
    "MAX_RECORD_SIZE",
    "NEED_DATA",
    "OUTPUT_KINDS",
    "REDACTIONS",
    "SIGNATURE_SIZE",
    "STATUSES",
    "Body",
    "ClosingEntry",
    "EntryCheck",
    "LogDecoder",
    "OpeningEntry",
    "OutputDigester",
    "OutputDigests",
    "ReceiptEntry",
    "Record",
    "Truncation",
    "UploadInfo",
    "check_signed_entry",
    "code_hash",
    "decode_body_unverified",
    "decode_payload_unverified",
    "encode_body",
    "encode_payload",
    "encode_record",
    "entry_hash",
    "output_digest",
    "signed_message",
    "stream_digest",
]

#: The first 16 bytes of every session log (ASCII, so ``head -c 16`` identifies the file).
MAGIC: Final = b"cc-audit-log/v1\n"
#: The ``"v"`` of every entry body.
FORMAT_VERSION: Final = 1
#: A record header: u32be(n) ‖ u32be(n XOR 0xFFFFFFFF).
HEADER_SIZE: Final = 8
#: Largest record payload accepted (the opening entry carries the evidence envelope, policy and result).
MAX_RECORD_SIZE: Final = 1024 * 1024
HASH_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
SESSION_ID_SIZE: Final = 16
AUDIT_PUB_SIZE: Final = 32
NONCE_SIZE: Final = 32
#: The ``prev`` of the opening entry (seq 0).
GENESIS: Final = bytes(HASH_SIZE)
_U63: Final = 2**63 - 1

ENTRY_TYPES: Final = ("opening", "receipt", "closing")
#: What a receipt is for. ``cell``: execute_request with silent=false; ``silent``: silent=true (variable
#: viewers); ``comm``: a comm_open/msg/close from the frontend ran a handler; ``complete``/``inspect``/
#: ``is_complete``/``history``: those requests (they run user code such as ``__getattr__`` or properties);
#: ``upload``: data bound into the namespace by ``%cc_upload``; ``background``: output forwarded while no request
#: was in hand (from a thread a cell started), for the id of the request receipted last; its code is "".
KINDS: Final = ("cell", "silent", "comm", "complete", "inspect", "is_complete", "history", "upload", "background")
#: ``ok``/``error``/``aborted`` as in execute_reply; ``interrupted``: stopped by an interrupt (KeyboardInterrupt).
STATUSES: Final = ("ok", "error", "aborted", "interrupted")
#: Why ``code`` is nil: ``none`` (it is not), ``config`` (redaction configured), ``size`` (too big to inline).
REDACTIONS: Final = ("none", "config", "size")
#: Rich output kinds listed in a receipt's ``outputs``: every output message type but ``stream`` (streams are
#: digested by name), and ``overflow``, which folds the ones past the listing cap.
OUTPUT_KINDS: Final = (*sorted(OUTPUT_TYPES - {"stream"}), "overflow")
#: At most this many ``outputs`` items are listed one by one; the rest fold into one ``overflow`` item.
MAX_LISTED_OUTPUTS: Final = 256
#: Code longer than this (UTF-8 bytes) is hashed but not inlined (``redaction = "size"``), so a receipt always
#: fits ``protocol.messages.MAX_RECEIPT`` (64 KiB): 24 KiB code + 256 outputs (~15 KiB) + names (<= 8 KiB).
MAX_INLINE_CODE: Final = 24 * 1024

#: Which fields of a rich output's Jupyter content its digest covers (absent metadata = {}, buffers = []).
_OUTPUT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "display_data": ("data", "metadata"),
    "update_display_data": ("data", "metadata"),
    "execute_result": ("data", "metadata"),
    "error": ("ename", "evalue", "traceback"),
    "clear_output": ("wait",),
    "comm_open": ("comm_id", "target_name", "data", "metadata", "buffers"),
    "comm_msg": ("comm_id", "data", "metadata", "buffers"),
    "comm_close": ("comm_id", "data", "metadata", "buffers"),
}
_OUTPUT_DEFAULTS: Final[Mapping[str, Callable[[], Any]]] = {"metadata": dict, "buffers": list}


# --- hashes ---------------------------------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    # Lone surrogates cannot travel in JSON or msgpack str; encode them reversibly rather than crash.
    return text.encode("utf-8", "surrogatepass")


def entry_hash(body: bytes) -> bytes:
    """``tagged_hash(TAG_AUDIT_ENTRY, body)``: the hash of one entry, chained into the next entry's ``prev``."""
    return tagged_hash(TAG_AUDIT_ENTRY, body)


def signed_message(entry_hash_: bytes) -> bytes:
    """The exact bytes the enclave's Ed25519 audit key signs: ``lp(TAG_AUDIT_SIGNATURE) ‖ lp(entry_hash)``."""
    if len(entry_hash_) != HASH_SIZE:
        raise ValueError("an entry hash is 32 bytes")
    return lp(TAG_AUDIT_SIGNATURE) + lp(entry_hash_)


def code_hash(code: str) -> bytes:
    """``tagged_hash(TAG_AUDIT_CODE, utf8(code))``: what a receipt's ``code_sha256`` and a notebook cell share."""
    return tagged_hash(TAG_AUDIT_CODE, _utf8(code))


def stream_digest(name: str, text_sha256: bytes) -> bytes:
    """Digest of all text one stream (``stdout``/``stderr``) printed during a request:
    ``tagged_hash(TAG_AUDIT_OUTPUT, b"stream", utf8(name), SHA-256(utf8(all its text, concatenated)))``."""
    return tagged_hash(TAG_AUDIT_OUTPUT, b"stream", _utf8(name), text_sha256)


def output_digest(kind: str, content: Mapping[str, Any]) -> bytes:
    """Digest of one rich output: ``tagged_hash(TAG_AUDIT_OUTPUT, utf8(kind), packb({selected fields}))``.

    The fields per kind are listed in docs/audit-log.md (display data: ``data`` and ``metadata``; error: ``ename``,
    ``evalue``, ``traceback``; ...). ``transient`` (display ids) and ``execution_count`` are never covered.

    Raises:
        ValueError: unknown kind, a required field is missing, or a value cannot be encoded.
    """
    names = _OUTPUT_FIELDS.get(kind)
    if names is None:
        raise ValueError(f"not a rich output kind: {kind!r}")
    selected: dict[str, Any] = {}
    for name in names:
        if name in content:
            selected[name] = content[name]
        elif name in _OUTPUT_DEFAULTS:
            selected[name] = _OUTPUT_DEFAULTS[name]()
        else:
            raise ValueError(f"{kind} content has no {name!r}")
    return tagged_hash(TAG_AUDIT_OUTPUT, kind.encode("ascii"), codec.packb(selected))


def _overflow_digest(items: Sequence[tuple[str, bytes]]) -> bytes:
    parts: list[bytes] = []
    for kind, digest in items:
        parts += [kind.encode("ascii"), digest]
    return tagged_hash(TAG_AUDIT_OUTPUT, b"overflow", *parts)


@dataclass(frozen=True)
class OutputDigests:
    """The output digests a receipt carries: one per stream name, one per rich output (in emission order)."""

    streams: tuple[tuple[str, bytes], ...] = ()
    outputs: tuple[tuple[str, bytes], ...] = ()
    output_count: int = 0


class OutputDigester:
    """Accumulates the digests of everything one request emitted. Memory O(number of rich outputs).

    The enclave calls ``add(msg)`` with every output protocol message it sends for the request (the same
    objects the kernel receives, so both sides can compute the same digests), then ``result()``. An auditor can
    recompute digests from Jupyter content with ``add_stream``/``add_output``.
    """

    def __init__(self) -> None:
        self._streams: dict[str, Any] = {}
        self._items: list[tuple[str, bytes]] = []

    def add(self, msg: m.Message) -> None:
        """Add one output message (Stream, DisplayData, UpdateDisplayData, ExecuteResult, Error, ClearOutput,
        CommOpen/CommMsg/CommClose sent by the enclave).

        Raises:
            TypeError: ``msg`` is not an output message.
        """
        if isinstance(msg, m.Stream):
            self.add_stream(msg.name, msg.text)
        elif isinstance(msg, m.DisplayData | m.UpdateDisplayData | m.ExecuteResult):
            self.add_output(msg.TYPE, {"data": msg.data, "metadata": msg.metadata})
        elif isinstance(msg, m.Error):
            self.add_output("error", {"ename": msg.ename, "evalue": msg.evalue, "traceback": msg.traceback})
        elif isinstance(msg, m.ClearOutput):
            self.add_output("clear_output", {"wait": msg.wait})
        elif isinstance(msg, m.CommOpen):
            self.add_output(
                "comm_open",
                {
                    "comm_id": msg.comm_id,
                    "target_name": msg.target_name,
                    "data": msg.data,
                    "metadata": msg.metadata,
                    "buffers": list(msg.buffers),
                },
            )
        elif isinstance(msg, m.CommMsg | m.CommClose):
            self.add_output(
                msg.TYPE,
                {"comm_id": msg.comm_id, "data": msg.data, "metadata": msg.metadata, "buffers": list(msg.buffers)},
            )
        else:
            raise TypeError(f"not an output message: {type(msg).__name__}")

    def add_stream(self, name: str, text: str) -> None:
        """Append ``text`` to stream ``name`` (all text of one name is digested as one string; a stream that
        printed nothing has no digest)."""
        if not text:
            return
        h = self._streams.get(name)
        if h is None:
            h = self._streams[name] = hashlib.sha256()
        h.update(_utf8(text))

    def add_output(self, kind: str, content: Mapping[str, Any]) -> None:
        """Append one rich output (Jupyter content of that message type). Raises ValueError like
        ``output_digest``."""
        self._items.append((kind, output_digest(kind, content)))

    def result(self) -> OutputDigests:
        """The digests so far (the digester can keep accumulating)."""
        streams = tuple((name, stream_digest(name, h.digest())) for name, h in sorted(self._streams.items()))
        items = list(self._items)
        if len(items) > MAX_LISTED_OUTPUTS:
            cut = MAX_LISTED_OUTPUTS - 1
            items = [*items[:cut], ("overflow", _overflow_digest(items[cut:]))]
        return OutputDigests(streams=streams, outputs=tuple(items), output_count=len(self._items))


# --- entries --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpeningEntry:
    """Entry 0, written by the kernel (unsigned): what was attested, under which policy, with which result.

    It is bound because ``audit_pub`` must be the key in the evidence's report_data (with ``tls_spki``,
    ``nonce`` and ``session_id``), and chained because the enclave's first signed entry has ``prev`` = its hash.
    """

    session_id: bytes
    evidence: bytes
    tls_spki: bytes
    nonce: bytes
    audit_pub: bytes
    policy: str
    policy_sha256: bytes
    policy_source: str
    result: str
    verified_at: str
    opened_ms: int
    versions: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, str | int | bool] = field(default_factory=dict)
    #: SPKI SHA-256 of the client key the kernel presented to a remote enclave server; None in local mode.
    client_key_sha256: bytes | None = None
    #: False only for an opening entry decoded from a log written before the field existed (it is then absent
    #: from the body, and encoding such an entry leaves it out again).
    client_key_recorded: bool = True
    seq: int = 0
    prev: bytes = GENESIS
    type: Literal["opening"] = "opening"


@dataclass(frozen=True)
class UploadInfo:
    """An upload bound into the namespace: ``sha256`` is plain SHA-256 of the content (as ``sha256sum``)."""

    name: str
    sha256: bytes
    size: int
    fmt: str


@dataclass(frozen=True)
class ReceiptEntry:
    """A signed receipt: one request that ran user code (or an upload)."""

    session_id: bytes
    seq: int
    prev: bytes
    kind: str
    execution_count: int
    cell_id: str | None
    code_sha256: bytes
    code: str | None
    redaction: str
    streams: tuple[tuple[str, bytes], ...]
    outputs: tuple[tuple[str, bytes], ...]
    output_count: int
    status: str
    started_ms: int
    ended_ms: int
    upload: UploadInfo | None = None
    type: Literal["receipt"] = "receipt"


@dataclass(frozen=True)
class ClosingEntry:
    """The last entry, signed by the enclave at shutdown: ``count`` entries precede it, the last hashing to
    ``last``."""

    session_id: bytes
    seq: int
    prev: bytes
    count: int
    last: bytes
    ended_ms: int
    reason: str
    type: Literal["closing"] = "closing"


Body = OpeningEntry | ReceiptEntry | ClosingEntry


def encode_body(entry: Body) -> bytes:
    """The canonical msgpack body of an entry (what ``entry_hash`` covers).

    Raises:
        ValueError: a field does not fit the schema (the same rules ``decode_body_unverified`` applies).
    """
    common: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "type": entry.type,
        "session_id": entry.session_id,
        "seq": entry.seq,
        "prev": entry.prev,
    }
    if isinstance(entry, OpeningEntry):
        fields_ = {
            "evidence": entry.evidence,
            "tls_spki": entry.tls_spki,
            "nonce": entry.nonce,
            "audit_pub": entry.audit_pub,
            "policy": entry.policy,
            "policy_sha256": entry.policy_sha256,
            "policy_source": entry.policy_source,
            "result": entry.result,
            "verified_at": entry.verified_at,
            "opened_ms": entry.opened_ms,
            "versions": dict(entry.versions),
            "settings": dict(entry.settings),
        }
        if entry.client_key_recorded:
            fields_["client_key_sha256"] = entry.client_key_sha256
    elif isinstance(entry, ReceiptEntry):
        fields_ = {
            "kind": entry.kind,
            "execution_count": entry.execution_count,
            "cell_id": entry.cell_id,
            "code_sha256": entry.code_sha256,
            "code": entry.code,
            "redaction": entry.redaction,
            "streams": dict(entry.streams),
            "outputs": [[kind, digest] for kind, digest in entry.outputs],
            "output_count": entry.output_count,
            "status": entry.status,
            "started_ms": entry.started_ms,
            "ended_ms": entry.ended_ms,
            "upload": None
            if entry.upload is None
            else {
                "name": entry.upload.name,
                "sha256": entry.upload.sha256,
                "size": entry.upload.size,
                "fmt": entry.upload.fmt,
            },
        }
    elif isinstance(entry, ClosingEntry):
        fields_ = {
            "count": entry.count,
            "last": entry.last,
            "ended_ms": entry.ended_ms,
            "reason": entry.reason,
        }
    else:
        raise TypeError(f"not a log entry: {type(entry).__name__}")
    body = codec.packb({**common, **fields_})
    try:
        decode_body_unverified(body)
    except LogVerificationError as exc:
        raise ValueError(f"entry does not fit the log schema: {exc.message}") from None
    return body


def encode_payload(body: bytes, signature: bytes) -> bytes:
    """One entry as stored in a record (and as carried by ``AuditReceipt.receipt``): canonical msgpack
    ``{"body": bin, "sig": bin}``; ``sig`` is empty for the opening entry, 64 bytes otherwise."""
    return codec.packb({"body": body, "sig": signature})


def encode_record(payload: bytes) -> bytes:
    """Frame a payload: ``u32be(n) ‖ u32be(n XOR 0xFFFFFFFF) ‖ payload``."""
    n = len(payload)
    if not 1 <= n <= MAX_RECORD_SIZE:
        raise ValueError(f"record payload of {n} bytes is outside 1..{MAX_RECORD_SIZE}")
    return n.to_bytes(4, "big") + (n ^ 0xFFFFFFFF).to_bytes(4, "big") + payload


def _bad(check: str, message: str, *, got: object = None, expected: object = None) -> LogVerificationError:
    return LogVerificationError(message, check=check, got=got, expected=expected)


def _decode_canonical(data: bytes, what: str) -> Any:
    try:
        value = codec.unpackb(data, max_size=MAX_RECORD_SIZE)
    except RemoteProtocolError as exc:
        raise _bad("entry.decode", f"the {what} is not valid msgpack: {exc}") from None
    try:
        again = codec.packb(value)
    except ValueError as exc:
        raise _bad("entry.decode", f"the {what} holds values the log format never writes: {exc}") from None
    if not constant_time_equal(again, data):
        raise _bad("entry.decode", f"the {what} is not canonically encoded (sorted keys, shortest forms)")
    return value


def decode_payload_unverified(payload: bytes) -> tuple[bytes, bytes]:
    """Split a record payload into (body, signature). Nothing is verified.

    Raises:
        LogVerificationError: ``entry.decode`` (not canonical msgpack ``{"body": bin, "sig": bin}``).
    """
    value = _decode_canonical(payload, "entry")
    if not isinstance(value, dict) or set(value) != {"body", "sig"}:
        raise _bad("entry.decode", 'an entry must be the map {"body": bin, "sig": bin}')
    body, sig = value["body"], value["sig"]
    if not isinstance(body, bytes) or not isinstance(sig, bytes):
        raise _bad("entry.decode", 'an entry\'s "body" and "sig" must be binary')
    return body, sig


# -- body schema --


class _Fields:
    """Typed access to a decoded body map; every failure is an ``entry.schema`` error naming the field."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def fail(self, name: str, what: str, value: object) -> LogVerificationError:
        return _bad(
            "entry.schema", f"{self.where} field {name!r} must be {what}", got=_type_name(value), expected=what
        )

    def bin(self, name: str, size: int | None = None) -> bytes:
        value = self.raw[name]
        if not isinstance(value, bytes) or (size is not None and len(value) != size):
            raise self.fail(name, f"{size}-byte binary" if size else "binary", value)
        return value

    def text(self, name: str, choices: Sequence[str] | None = None, *, nullable: bool = False) -> Any:
        value = self.raw[name]
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise self.fail(name, "a string" + (" or nil" if nullable else ""), value)
        if choices is not None and value not in choices:
            raise _bad(
                "entry.schema",
                f"{self.where} field {name!r} is {value!r}, not one of {', '.join(choices)}",
                got=value,
                expected=list(choices),
            )
        return value

    def uint(self, name: str, raw: Mapping[str, Any] | None = None) -> int:
        value = (self.raw if raw is None else raw)[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U63:
            raise self.fail(name, "an integer in 0..2**63-1", value)
        return value


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


_COMMON_KEYS: Final = frozenset({"v", "type", "session_id", "seq", "prev"})
_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "opening": _COMMON_KEYS
    | {
        "evidence",
        "tls_spki",
        "nonce",
        "audit_pub",
        "policy",
        "policy_sha256",
        "policy_source",
        "result",
        "verified_at",
        "opened_ms",
        "versions",
        "settings",
    },
    "receipt": _COMMON_KEYS
    | {
        "kind",
        "execution_count",
        "cell_id",
        "code_sha256",
        "code",
        "redaction",
        "streams",
        "outputs",
        "output_count",
        "status",
        "started_ms",
        "ended_ms",
        "upload",
    },
    "closing": _COMMON_KEYS | {"count", "last", "ended_ms", "reason"},
}
#: Keys an entry may also have: the opening's ``client_key_sha256`` is absent from logs written before it existed.
_OPTIONAL_KEYS: Final[Mapping[str, frozenset[str]]] = {"opening": frozenset({"client_key_sha256"})}


def decode_body_unverified(body: bytes) -> Body:
    """Decode an entry body (canonical msgpack map, exact key set per type, typed fields). Nothing is verified
    except the body's internal consistency (a present ``code`` must hash to ``code_sha256``, an ``upload``
    exactly on upload receipts, ...).

    Raises:
        LogVerificationError: ``entry.decode`` (encoding), ``entry.version``, ``entry.type``, ``entry.schema``
            (keys, types, sizes, choices) or ``receipt.code_sha256``.
    """
    raw = _decode_canonical(body, "entry body")
    if not isinstance(raw, dict):
        raise _bad("entry.decode", "an entry body must be a map", got=_type_name(raw))
    version = raw.get("v")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise _bad("entry.version", "unsupported entry format version", got=version, expected=FORMAT_VERSION)
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise _bad("entry.type", "unknown entry type", got=kind, expected=list(ENTRY_TYPES))
    keys = set(raw) - (set(raw) & _OPTIONAL_KEYS.get(kind, frozenset()))
    if keys != _KEYS[kind]:
        extra, missing = sorted(keys - _KEYS[kind]), sorted(_KEYS[kind] - keys)
        raise _bad(
            "entry.schema",
            f"{kind} entry has " + (f"unknown field {extra[0]!r}" if extra else f"no field {missing[0]!r}"),
            got=extra or None,
            expected=missing or None,
        )
    f = _Fields(raw, kind)
    session_id, seq, prev = f.bin("session_id", SESSION_ID_SIZE), f.uint("seq"), f.bin("prev", HASH_SIZE)
    if kind == "opening":
        return _decode_opening(f, session_id, seq, prev)
    if kind == "receipt":
        return _decode_receipt(f, session_id, seq, prev)
    return ClosingEntry(
        session_id=session_id,
        seq=seq,
        prev=prev,
        count=f.uint("count"),
        last=f.bin("last", HASH_SIZE),
        ended_ms=f.uint("ended_ms"),
        reason=f.text("reason"),
    )


def _decode_opening(f: _Fields, session_id: bytes, seq: int, prev: bytes) -> OpeningEntry:
    versions = f.raw["versions"]
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise f.fail("versions", "a map of strings", versions)
    settings = f.raw["settings"]
    if not isinstance(settings, dict) or not all(
        isinstance(v, str | bool) or (isinstance(v, int) and -(2**63) <= v <= _U63) for v in settings.values()
    ):
        raise f.fail("settings", "a map of strings, integers and booleans", settings)
    recorded = "client_key_sha256" in f.raw
    client_key = f.raw.get("client_key_sha256")
    if client_key is not None:
        client_key = f.bin("client_key_sha256", HASH_SIZE)
    return OpeningEntry(
        session_id=session_id,
        seq=seq,
        prev=prev,
        evidence=f.bin("evidence"),
        tls_spki=f.bin("tls_spki"),
        nonce=f.bin("nonce", NONCE_SIZE),
        audit_pub=f.bin("audit_pub", AUDIT_PUB_SIZE),
        policy=f.text("policy"),
        policy_sha256=f.bin("policy_sha256", HASH_SIZE),
        policy_source=f.text("policy_source"),
        result=f.text("result"),
        verified_at=f.text("verified_at"),
        opened_ms=f.uint("opened_ms"),
        versions=dict(versions),
        settings=dict(settings),
        client_key_sha256=client_key,
        client_key_recorded=recorded,
    )


def _decode_receipt(f: _Fields, session_id: bytes, seq: int, prev: bytes) -> ReceiptEntry:
    kind = f.text("kind", KINDS)
    code_sha256 = f.bin("code_sha256", HASH_SIZE)
    code = f.text("code", nullable=True)
    redaction = f.text("redaction", REDACTIONS)
    if (code is None) != (redaction != "none"):
        raise _bad(
            "entry.schema",
            'receipt field "code" must be nil exactly when "redaction" is not "none"',
            got=redaction,
        )
    if code is not None and not constant_time_equal(code_hash(code), code_sha256):
        raise _bad(
            "receipt.code_sha256",
            "the receipt's code does not hash to its code_sha256",
            got=code_hash(code),
            expected=code_sha256,
        )
    streams_raw = f.raw["streams"]
    if not isinstance(streams_raw, dict) or not all(
        isinstance(v, bytes) and len(v) == HASH_SIZE for v in streams_raw.values()
    ):
        raise f.fail("streams", "a map of stream name to 32-byte digest", streams_raw)
    outputs_raw = f.raw["outputs"]
    if not isinstance(outputs_raw, list) or len(outputs_raw) > MAX_LISTED_OUTPUTS:
        raise f.fail("outputs", f"a list of at most {MAX_LISTED_OUTPUTS} [kind, digest] pairs", outputs_raw)
    outputs: list[tuple[str, bytes]] = []
    for number, item in enumerate(outputs_raw):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or item[0] not in OUTPUT_KINDS
            or not isinstance(item[1], bytes)
            or len(item[1]) != HASH_SIZE
            or (item[0] == "overflow" and number != len(outputs_raw) - 1)
        ):
            raise f.fail(f"outputs[{number}]", "[output kind, 32-byte digest] (overflow only last)", item)
        outputs.append((item[0], item[1]))
    output_count = f.uint("output_count")
    overflow = bool(outputs) and outputs[-1][0] == "overflow"
    if (overflow and output_count < len(outputs)) or (not overflow and output_count != len(outputs)):
        raise _bad(
            "entry.schema",
            'receipt field "output_count" does not agree with its "outputs" list',
            got=output_count,
            expected=len(outputs),
        )
    upload_raw = f.raw["upload"]
    upload: UploadInfo | None = None
    if upload_raw is not None:
        if not isinstance(upload_raw, dict) or set(upload_raw) != {"name", "sha256", "size", "fmt"}:
            raise f.fail("upload", 'nil or {"name", "sha256", "size", "fmt"}', upload_raw)
        name, digest, fmt = upload_raw["name"], upload_raw["sha256"], upload_raw["fmt"]
        if not isinstance(name, str) or not isinstance(fmt, str):
            raise f.fail("upload", "an upload with string name and fmt", upload_raw)
        if not isinstance(digest, bytes) or len(digest) != HASH_SIZE:
            raise f.fail("upload.sha256", "32-byte binary", digest)
        upload = UploadInfo(name=name, sha256=digest, size=f.uint("size", upload_raw), fmt=fmt)
    if (upload is None) != (kind != "upload"):
        raise _bad("entry.schema", 'receipt field "upload" must be present exactly on "upload" receipts', got=kind)
    return ReceiptEntry(
        session_id=session_id,
        seq=seq,
        prev=prev,
        kind=kind,
        execution_count=f.uint("execution_count"),
        cell_id=f.text("cell_id", nullable=True),
        code_sha256=code_sha256,
        code=code,
        redaction=redaction,
        streams=tuple(sorted(streams_raw.items())),
        outputs=tuple(outputs),
        output_count=output_count,
        status=f.text("status", STATUSES),
        started_ms=f.uint("started_ms"),
        ended_ms=f.uint("ended_ms"),
        upload=upload,
    )


# --- checking one signed entry (shared by the kernel's writer and the offline verifier) -----------------------


@dataclass(frozen=True)
class EntryCheck:
    """What ``check_signed_entry`` found: the parts, the parsed body (None if it does not decode) and every
    failed check in order. ``signature_ok`` is None when no key was available to check it."""

    body: bytes | None
    signature: bytes | None
    hash: bytes | None
    entry: Body | None
    signature_ok: bool | None
    errors: tuple[LogVerificationError, ...]


def check_signed_entry(
    payload: bytes,
    *,
    index: int,
    audit_pub: bytes | None,
    session_id: bytes | None,
    expected_seq: int | None,
    prev_hash: bytes | None,
) -> EntryCheck:
    """Check entry ``index`` (>= 1) of a log: a receipt or the closing entry, signed by ``audit_pub``.

    Checks, in order (a ``None`` expectation skips its check): 1. payload decodes; 2. Ed25519 signature over
    ``signed_message(entry_hash(body))``; 3. body decodes and fits the schema; 4. it is not an opening entry;
    5. session id; 6. sequence number; 7. ``prev`` is the previous entry's hash; 8. a closing entry's ``count``
    equals ``index`` and its ``last`` equals ``prev_hash``. Every failure is collected (with ``index`` set).
    """
    errors: list[LogVerificationError] = []

    def bad(check: str, message: str, *, got: object = None, expected: object = None) -> None:
        errors.append(LogVerificationError(message, check=check, got=got, expected=expected, index=index))

    # 1. the payload: canonical {"body", "sig"}
    try:
        body, sig = decode_payload_unverified(payload)
    except LogVerificationError as exc:
        bad(exc.check, exc.message, got=exc.got, expected=exc.expected)
        return EntryCheck(None, None, None, None, None, tuple(errors))
    digest = entry_hash(body)
    # 2. authenticity: the enclave's audit key signed this entry's hash
    signature_ok: bool | None = None
    if audit_pub is not None:
        signature_ok = len(sig) == SIGNATURE_SIZE and verify_ed25519(audit_pub, sig, signed_message(digest))
        if not signature_ok:
            bad(
                "entry.signature",
                "the entry is not signed by the session's audit key (altered, or from another enclave)",
                got=sig,
            )
    # 3. the body
    try:
        entry = decode_body_unverified(body)
    except LogVerificationError as exc:
        bad(exc.check, exc.message, got=exc.got, expected=exc.expected)
        return EntryCheck(body, sig, digest, None, signature_ok, tuple(errors))
    # 4. position: only entry 0 may be an opening entry
    if isinstance(entry, OpeningEntry):
        bad("entry.type", "an opening entry can only be the first entry", got="opening", expected="receipt|closing")
    # 5. session
    if session_id is not None and not constant_time_equal(entry.session_id, session_id):
        bad(
            "entry.session_id",
            "the entry belongs to another session (spliced in)",
            got=entry.session_id,
            expected=session_id,
        )
    # 6. sequence
    if expected_seq is not None and entry.seq != expected_seq:
        bad("entry.seq", "sequence number out of order (an entry dropped, duplicated or moved)",
            got=entry.seq, expected=expected_seq)
    # 7. chain
    if prev_hash is not None and not constant_time_equal(entry.prev, prev_hash):
        bad("entry.prev", "the entry does not chain to the entry before it", got=entry.prev, expected=prev_hash)
    # 8. closing: the count and last hash it signs
    if isinstance(entry, ClosingEntry):
        if entry.count != index:
            bad("closing.count", f"the closing entry counts {entry.count} entries before it, the log has {index}",
                got=entry.count, expected=index)
        if prev_hash is not None and not constant_time_equal(entry.last, prev_hash):
            bad("closing.last", "the closing entry names another last entry", got=entry.last, expected=prev_hash)
    return EntryCheck(body, sig, digest, entry, signature_ok, tuple(errors))


# --- records: incremental decoder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One framed record: its entry index, the file offset of its header, and its payload."""

    index: int
    offset: int
    payload: bytes


@dataclass(frozen=True)
class Truncation:
    """Bytes left at end of input that are not a whole record: a write cut short (crash) or a cut file."""

    index: int
    offset: int
    have: int
    need: int | None


class LogDecoder:
    """Incremental session-log decoder: ``feed(bytes)`` any number of times, ``next_record()`` until it
    returns ``NEED_DATA``, and ``end()`` at end of input.

    Raises (from ``feed``/``next_record``):
        AuditError: the input does not start with ``MAGIC`` (not a session log).
        LogVerificationError: ``record.length``: a record header is corrupt (its two halves disagree, or the
            length is 0 or above ``max_record_size``). The decoder stays failed.
    """

    def __init__(self, *, max_record_size: int = MAX_RECORD_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0  # read position in _buf
        self._consumed = 0  # file offset of _buf[0]
        self._magic_ok = False
        self._index = 0
        self._error: LogVerificationError | None = None
        self._max = max_record_size

    def feed(self, data: bytes) -> None:
        """Add input bytes."""
        self._buf += data
        if not self._magic_ok:
            self._check_magic()

    def _check_magic(self) -> None:
        have = bytes(self._buf[: len(MAGIC)])
        if not MAGIC.startswith(have):
            raise AuditError(
                f"not a cc-kernel audit log: it starts with {have[:16]!r}, a session log starts with {MAGIC!r}"
            )
        if len(have) == len(MAGIC):
            self._magic_ok = True
            self._pos = len(MAGIC)

    def next_record(self) -> Record | NeedData:
        """The next whole record, or ``NEED_DATA``."""
        if self._error is not None:
            raise self._error
        if not self._magic_ok:
            return NEED_DATA
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            return NEED_DATA
        p = self._pos
        n = int.from_bytes(self._buf[p : p + 4], "big")
        check = int.from_bytes(self._buf[p + 4 : p + 8], "big")
        offset = self._consumed + p
        if check != n ^ 0xFFFFFFFF or not 1 <= n <= self._max:
            self._error = LogVerificationError(
                f"corrupt record header at byte {offset}: length {n}, check {check:#010x}",
                check="record.length",
                got=bytes(self._buf[p : p + 8]),
                expected=f"u32be(n) ‖ u32be(n ^ 0xFFFFFFFF) with 1 <= n <= {self._max}",
                index=self._index,
            )
            raise self._error
        if avail < HEADER_SIZE + n:
            return NEED_DATA
        payload = bytes(self._buf[p + HEADER_SIZE : p + HEADER_SIZE + n])
        self._pos = p + HEADER_SIZE + n
        record = Record(index=self._index, offset=offset, payload=payload)
        self._index += 1
        if self._pos > 1 << 16 and self._pos * 2 > len(self._buf):  # compact now and then: O(n) overall
            del self._buf[: self._pos]
            self._consumed += self._pos
            self._pos = 0
        return record

    def end(self) -> Truncation | None:
        """At end of input: None if every byte was a whole record, else what is left over.

        Raises:
            AuditError: the input was empty or shorter than ``MAGIC``.
        """
        if not self._magic_ok:
            if not self._buf:
                raise AuditError("the file is empty: it holds no audit log entries")
            raise AuditError(f"not a cc-kernel audit log: only {len(self._buf)} bytes, shorter than its header")
        if self._error is not None:
            return None
        left = len(self._buf) - self._pos
        if left == 0:
            return None
        need = None
        if left >= HEADER_SIZE:
            need = HEADER_SIZE + int.from_bytes(self._buf[self._pos : self._pos + 4], "big")
        return Truncation(index=self._index, offset=self._consumed + self._pos, have=left, need=need)

    @property
    def records(self) -> int:
        """How many whole records were returned."""
        return self._index
