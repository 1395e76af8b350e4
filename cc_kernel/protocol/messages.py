"""Pure protocol layer: the wire messages (frozen dataclasses) and their strict map encoding; no I/O.

Invariants: every message class has exactly one wire type name (``"t"``); ``decode_message`` accepts a map
only if ``"t"`` names a known type and the other keys are *exactly* that type's fields, each of the declared
type (``bool`` is not ``int``, ``bytes`` is not ``str``, Jupyter content is JSON: str keys, finite floats,
64-bit ints, bounded depth) and within its size cap; anything else is a ``RemoteProtocolError`` naming the
field.
``encode_message`` applies the same checks to our own messages (``LocalProtocolError``), so whatever we encode
the peer can decode. Content shapes mirror the Jupyter messaging spec (v5.3).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

from cc_kernel.errors import LocalProtocolError, RemoteProtocolError

#: The protocol version this code speaks by default, and every version it can speak.
#: Version 2: the enclave is a monitor and a sandboxed worker (``SessionInfo``, ``AuditOff``, ``WorkerReady``,
#: ``Shutdown.reason``); version 1 peers are refused with "no common protocol version".
PROTOCOL_VERSION: Final = 2
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (2,)

# --- size caps (characters for str, bytes for bytes, items for lists) --------------------------------------

#: Identifiers and names: ename, cell_id, comm_id, target_name, upload name, software, indent.
MAX_NAME: Final = 1024
#: The free-form ``ExecuteRequest.kind`` label.
MAX_KIND: Final = 64
#: Human-readable reasons: ``Fatal.reason``, ``UploadReply.message``.
MAX_REASON: Final = 64 * 1024
#: The evidence envelope travels before the peer is verified, so it gets a small cap of its own.
MAX_ENVELOPE: Final = 1024 * 1024
#: An opaque signed audit receipt.
MAX_RECEIPT: Final = 64 * 1024
#: Versions offered in one Hello.
MAX_VERSIONS: Final = 32
#: Nesting depth of a JSON field's containers, the field's own dict/list included; keeps validation and
#: encoding far from recursion limits.
MAX_JSON_DEPTH: Final = 64

_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_U64_MAX: Final = 2**64 - 1


# --- schema markers used inside Annotated[...] --------------------------------------------------------------


@dataclass(frozen=True)
class _Len:
    """Length bounds (inclusive) for str, bytes, list and dict values."""

    lo: int
    hi: int


@dataclass(frozen=True)
class _Range:
    """Value bounds (inclusive) for int values."""

    lo: int
    hi: int


class _JsonMarker:
    """Marks a dict/list field whose contents are JSON (Jupyter content)."""


_JSON: Final = _JsonMarker()

ReqId = Annotated[int, _Range(0, _I64_MAX)]
Count = Annotated[int, _Range(0, _I64_MAX)]
SignedInt = Annotated[int, _Range(_I64_MIN, _I64_MAX)]
Name = Annotated[str, _Len(0, MAX_NAME)]
JsonDict = Annotated[dict[str, Any], _JSON]
JsonList = Annotated[list[Any], _JSON]
ReplyStatus = Literal["ok", "error"]
#: The Jupyter ``msg_id`` of the frontend's request (kernel -> enclave; "" otherwise): what ipykernel's
#: ``get_parent()`` gives user code, e.g. ipywidgets' Output widget, which captures that request's output.
ParentMsgId = Name


# --- validation -------------------------------------------------------------------------------------------


class _FieldError(Exception):
    """Internal: a value failed its check. ``where`` collects the path from the inside out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where: list[str] = []


_Check = Callable[[object], None]


def _brief(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _typename(value: object) -> str:
    return type(value).__name__


def _check_json(value: object, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _FieldError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    if value is None or isinstance(value, str) or type(value) is bool:
        return
    if type(value) is int:
        if not _I64_MIN <= value <= _U64_MAX:
            raise _FieldError("JSON integer out of the 64-bit range")
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise _FieldError(f"JSON has no {value!r}")
        return
    if isinstance(value, list | tuple):  # a tuple encodes as an array, as json.dumps does; decodes as list
        for index, item in enumerate(value):
            try:
                _check_json(item, depth + 1)
            except _FieldError as exc:
                exc.where.append(f"[{index}]")
                raise
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError(f"JSON object key must be str, got {_typename(key)}")
            try:
                _check_json(item, depth + 1)
            except _FieldError as exc:
                exc.where.append(f"[{_brief(key)}]")
                raise
        return
    raise _FieldError(f"must be JSON, got {_typename(value)}")


def _compile(tp: Any) -> _Check:
    """Build a checker for one annotation. Raises TypeError for annotations the schema does not support."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *metas = typing.get_args(tp)
        # an explicit range replaces the default 64-bit one (so its error message is the one reported)
        has_range = any(isinstance(meta, _Range) for meta in metas)
        base_check = _exact(int) if base is int and has_range else _compile(base)
        checks: list[_Check] = []
        for meta in metas:
            if isinstance(meta, _Len):
                checks.append(_len_check(meta))
            elif isinstance(meta, _Range):
                checks.append(_range_check(meta))
            elif isinstance(meta, _JsonMarker):
                checks.append(_check_json)
            else:
                raise TypeError(f"unknown schema marker {meta!r}")

        def check_annotated(value: object) -> None:
            base_check(value)
            for check in checks:
                check(value)

        return check_annotated
    if origin is Literal:
        allowed = typing.get_args(tp)
        text = ", ".join(repr(a) for a in allowed)

        def check_literal(value: object) -> None:
            if not any(type(value) is type(a) and value == a for a in allowed):
                raise _FieldError(f"must be one of {text}, got {_brief(value)}")

        return check_literal
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(tp)
        if len(args) != 2 or type(None) not in args:
            raise TypeError(f"only `X | None` unions are supported, not {tp!r}")
        inner = _compile(next(a for a in args if a is not type(None)))

        def check_optional(value: object) -> None:
            if value is not None:
                inner(value)

        return check_optional
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item_check = None if item_tp is Any else _compile(item_tp)

        def check_list(value: object) -> None:
            if not isinstance(value, list):
                raise _FieldError(f"must be a list, got {_typename(value)}")
            if item_check is not None:
                for index, item in enumerate(value):
                    try:
                        item_check(item)
                    except _FieldError as exc:
                        exc.where.append(f"[{index}]")
                        raise

        return check_list
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if key_tp is not str:
            raise TypeError("only str-keyed dicts are supported")
        value_check = None if value_tp is Any else _compile(value_tp)

        def check_dict(value: object) -> None:
            if not isinstance(value, dict):
                raise _FieldError(f"must be a map, got {_typename(value)}")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _FieldError(f"keys must be str, got {_typename(key)}")
                if value_check is not None:
                    try:
                        value_check(item)
                    except _FieldError as exc:
                        exc.where.append(f"[{_brief(key)}]")
                        raise

        return check_dict
    if tp is bool:
        return _exact(bool)
    if tp is int:
        exact_int = _exact(int)
        default_range = _range_check(_Range(_I64_MIN, _I64_MAX))

        def check_int(value: object) -> None:
            exact_int(value)
            default_range(value)

        return check_int
    if tp is str or tp is bytes:
        return _instance(tp)
    raise TypeError(f"unsupported field annotation {tp!r}")


def _exact(typ: type) -> _Check:
    def check(value: object) -> None:
        if type(value) is not typ:
            raise _FieldError(f"must be {typ.__name__}, got {_typename(value)}")

    return check


def _instance(typ: type) -> _Check:
    def check(value: object) -> None:
        if not isinstance(value, typ):
            raise _FieldError(f"must be {typ.__name__}, got {_typename(value)}")

    return check


def _len_check(bounds: _Len) -> _Check:
    def check(value: object) -> None:
        n = len(value)  # type: ignore[arg-type]  # only attached to sized base types
        if not bounds.lo <= n <= bounds.hi:
            want = f"exactly {bounds.lo}" if bounds.lo == bounds.hi else f"{bounds.lo}..{bounds.hi}"
            raise _FieldError(f"length must be {want}, got {n}")

    return check


def _range_check(bounds: _Range) -> _Check:
    def check(value: object) -> None:
        if not bounds.lo <= value <= bounds.hi:  # type: ignore[operator]  # only attached to int
            raise _FieldError(f"must be in {bounds.lo}..{bounds.hi}, got {_brief(value)}")

    return check


# --- the message base and registry ------------------------------------------------------------------------


class Message:
    """Base class of every wire message. ``TYPE`` is the wire type name (the ``"t"`` key)."""

    __slots__ = ()
    TYPE: ClassVar[str]


_M = TypeVar("_M", bound=type[Message])

#: Wire type name -> message class.
REGISTRY: Final[dict[str, type[Message]]] = {}
_SCHEMAS: Final[dict[type[Message], tuple[tuple[str, _Check], ...]]] = {}


def _message(wire: str) -> Callable[[_M], _M]:
    """Register a dataclass as the message with wire type name ``wire`` and compile its field checks."""

    def register(cls: _M) -> _M:
        if wire in REGISTRY:
            raise TypeError(f"duplicate wire type {wire!r}")
        hints = typing.get_type_hints(cls, include_extras=True)
        schema = tuple((f.name, _compile(hints[f.name])) for f in fields(cls))  # type: ignore[arg-type]
        if any(name == "t" for name, _ in schema):
            raise TypeError(f"{cls.__name__}: field name 't' is reserved for the type")
        cls.TYPE = wire
        REGISTRY[wire] = cls
        _SCHEMAS[cls] = schema
        return cls

    return register


# --- handshake --------------------------------------------------------------------------------------------


@_message("hello")
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message each way. The kernel offers ``versions``; the enclave answers with exactly one."""

    role: Literal["kernel", "enclave"]
    versions: Annotated[list[Annotated[int, _Range(1, 65535)]], _Len(1, MAX_VERSIONS)]
    software: Annotated[str, _Len(0, 256)]


@_message("attest_request")
@dataclass(frozen=True, slots=True)
class AttestRequest(Message):
    """Kernel -> enclave: prove yourself, bound to this fresh ``nonce`` and ``session_id``."""

    nonce: Annotated[bytes, _Len(32, 32)]
    session_id: Annotated[bytes, _Len(16, 16)]


@_message("attest_response")
@dataclass(frozen=True, slots=True)
class AttestResponse(Message):
    """Enclave -> kernel: an encoded evidence envelope (parsed and verified by cc_kernel.attestation)."""

    envelope: Annotated[bytes, _Len(1, MAX_ENVELOPE)]


# --- execution --------------------------------------------------------------------------------------------


@_message("execute_request")
@dataclass(frozen=True, slots=True)
class ExecuteRequest(Message):
    """Jupyter ``execute_request`` content; ``kind`` labels why ("cell", "silent", "comm", ...)."""

    req_id: ReqId
    code: str
    silent: bool
    store_history: bool
    user_expressions: dict[str, str]
    allow_stdin: bool
    execution_count: Count
    cell_id: Name | None
    kind: Annotated[str, _Len(1, MAX_KIND)]
    parent_msg_id: ParentMsgId = ""


@_message("execute_reply")
@dataclass(frozen=True, slots=True)
class ExecuteReply(Message):
    """Jupyter ``execute_reply``; ``ename``/``evalue``/``traceback`` are empty unless status is "error"."""

    req_id: ReqId
    status: Literal["ok", "error", "aborted"]
    execution_count: Count
    user_expressions: JsonDict
    payload: list[JsonDict]
    ename: Name
    evalue: str
    traceback: list[str]


@_message("stream")
@dataclass(frozen=True, slots=True)
class Stream(Message):
    """Output text of the execute ``req_id``."""

    req_id: ReqId
    name: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True, slots=True)
class _DisplayBody(Message):
    """The fields of a mime bundle to display (not a wire type itself)."""

    req_id: ReqId
    data: JsonDict
    metadata: JsonDict
    transient: JsonDict


@_message("display_data")
@dataclass(frozen=True, slots=True)
class DisplayData(_DisplayBody):
    """A mime bundle to display; ``transient`` may carry a ``display_id``."""


@_message("update_display_data")
@dataclass(frozen=True, slots=True)
class UpdateDisplayData(_DisplayBody):
    """Replace the display named by ``transient["display_id"]``."""


@_message("execute_result")
@dataclass(frozen=True, slots=True)
class ExecuteResult(Message):
    """The value of the cell's last expression."""

    req_id: ReqId
    execution_count: Count
    data: JsonDict
    metadata: JsonDict


@_message("error")
@dataclass(frozen=True, slots=True)
class Error(Message):
    """A user's exception in a cell, as data (Jupyter ``error`` output); never a protocol error."""

    req_id: ReqId
    ename: Name
    evalue: str
    traceback: list[str]


@_message("clear_output")
@dataclass(frozen=True, slots=True)
class ClearOutput(Message):
    """Clear the cell's output (``wait``: when the next output arrives)."""

    req_id: ReqId
    wait: bool


# --- introspection ----------------------------------------------------------------------------------------


@_message("complete_request")
@dataclass(frozen=True, slots=True)
class CompleteRequest(Message):
    """Tab completion at ``cursor_pos`` (in unicode code points)."""

    req_id: ReqId
    code: str
    cursor_pos: Count


@_message("complete_reply")
@dataclass(frozen=True, slots=True)
class CompleteReply(Message):
    """Completion candidates replacing ``code[cursor_start:cursor_end]``."""

    req_id: ReqId
    status: ReplyStatus
    matches: list[str]
    cursor_start: Count
    cursor_end: Count
    metadata: JsonDict


@_message("inspect_request")
@dataclass(frozen=True, slots=True)
class InspectRequest(Message):
    """Object introspection (``obj?`` is detail 0, ``obj??`` is detail 1)."""

    req_id: ReqId
    code: str
    cursor_pos: Count
    detail_level: Literal[0, 1]


@_message("inspect_reply")
@dataclass(frozen=True, slots=True)
class InspectReply(Message):
    """Introspection result as a mime bundle."""

    req_id: ReqId
    status: ReplyStatus
    found: bool
    data: JsonDict
    metadata: JsonDict


@_message("is_complete_request")
@dataclass(frozen=True, slots=True)
class IsCompleteRequest(Message):
    """Is ``code`` a complete statement (console frontends)?"""

    req_id: ReqId
    code: str


@_message("is_complete_reply")
@dataclass(frozen=True, slots=True)
class IsCompleteReply(Message):
    """Jupyter ``is_complete_reply``; ``indent`` only matters when "incomplete"."""

    req_id: ReqId
    status: Literal["complete", "incomplete", "invalid", "unknown"]
    indent: Name


@_message("history_request")
@dataclass(frozen=True, slots=True)
class HistoryRequest(Message):
    """Jupyter ``history_request``; session/start/stop may be negative (relative, as in IPython)."""

    req_id: ReqId
    hist_access_type: Literal["range", "tail", "search"]
    output: bool
    raw: bool
    session: SignedInt
    start: SignedInt
    stop: SignedInt | None
    n: Count | None
    pattern: str
    unique: bool


@_message("history_reply")
@dataclass(frozen=True, slots=True)
class HistoryReply(Message):
    """History entries as JSON lists ``[session, line, input]`` or ``[session, line, [input, output]]``."""

    req_id: ReqId
    status: ReplyStatus
    history: JsonList


# --- stdin ------------------------------------------------------------------------------------------------


@_message("input_request")
@dataclass(frozen=True, slots=True)
class InputRequest(Message):
    """The cell ``req_id`` called ``input()``/``getpass()``."""

    req_id: ReqId
    prompt: str
    password: bool


@_message("input_reply")
@dataclass(frozen=True, slots=True)
class InputReply(Message):
    """The user's answer; ``cancelled`` when the frontend gave none (the cell sees KeyboardInterrupt/EOF)."""

    req_id: ReqId
    value: str
    cancelled: bool


# --- comms ------------------------------------------------------------------------------------------------


@_message("comm_open")
@dataclass(frozen=True, slots=True)
class CommOpen(Message):
    """Open a comm (either direction); ``buffers`` are Jupyter's binary buffers."""

    req_id: ReqId
    comm_id: Name
    target_name: Name
    data: JsonDict
    metadata: JsonDict
    buffers: list[bytes]
    parent_msg_id: ParentMsgId = ""


@dataclass(frozen=True, slots=True)
class _CommBody(Message):
    """The fields of a message on an open comm (not a wire type itself)."""

    req_id: ReqId
    comm_id: Name
    data: JsonDict
    metadata: JsonDict
    buffers: list[bytes]
    parent_msg_id: ParentMsgId = ""


@_message("comm_msg")
@dataclass(frozen=True, slots=True)
class CommMsg(_CommBody):
    """A message on an open comm (either direction)."""


@_message("comm_close")
@dataclass(frozen=True, slots=True)
class CommClose(_CommBody):
    """Close a comm (either direction)."""


@_message("comm_info_request")
@dataclass(frozen=True, slots=True)
class CommInfoRequest(Message):
    """List open comms, optionally only those of ``target_name``."""

    req_id: ReqId
    target_name: Name | None


@_message("comm_info_reply")
@dataclass(frozen=True, slots=True)
class CommInfoReply(Message):
    """``comms`` maps comm_id -> ``{"target_name": ...}``."""

    req_id: ReqId
    comms: JsonDict


# --- uploads (data into the enclave) ----------------------------------------------------------------------


@_message("upload_start")
@dataclass(frozen=True, slots=True)
class UploadStart(Message):
    """Start an upload of ``size`` bytes, to be bound to ``name`` in the user namespace as ``fmt``.

    ``code``, ``execution_count`` and ``cell_id`` are those of the notebook cell whose ``%cc_upload`` line
    asked for it: the upload's audit receipt records them, so the cell matches its receipt.
    """

    req_id: ReqId
    name: Annotated[str, _Len(1, MAX_NAME)]
    size: Count
    #: ``ccdata``: a sealed dataset (``%cc_dataset``): the monitor obtains its key from the owner's broker over a
    #: relay (``RelayOpen``...), decrypts it and hands the worker the plaintext as the format its header names.
    fmt: Literal["bytes", "text", "npy", "ccdata"]
    code: str
    execution_count: Count
    cell_id: Name | None


@_message("upload_chunk")
@dataclass(frozen=True, slots=True)
class UploadChunk(Message):
    """The next bytes of upload ``req_id``."""

    req_id: ReqId
    data: bytes


@_message("upload_end")
@dataclass(frozen=True, slots=True)
class UploadEnd(Message):
    """End of upload ``req_id``. From the kernel, ``sha256`` is the SHA-256 of all its chunks (the monitor checks
    it and records it in the upload's receipt); to the worker, the monitor passes that digest on for a plain
    upload and a sealed dataset's header digest (``dataset.format``) for a dataset, never a digest of a dataset's
    plaintext. The worker binds the value without reading it."""

    req_id: ReqId
    sha256: Annotated[bytes, _Len(32, 32)]


@_message("upload_reply")
@dataclass(frozen=True, slots=True)
class UploadReply(Message):
    """The enclave's verdict on upload ``req_id``."""

    req_id: ReqId
    status: ReplyStatus
    message: Annotated[str, _Len(0, MAX_REASON)]


# --- relay: the monitor's own end-to-end TLS connection to a data owner's broker, carried by the kernel -------


@_message("relay_open")
@dataclass(frozen=True, slots=True)
class RelayOpen(Message):
    """Enclave -> kernel: open a TCP connection to ``address`` (``HOST:PORT``) for the sealed dataset of upload
    ``req_id`` and carry its bytes both ways. The bytes are the monitor's TLS with the broker: the kernel sees
    only ciphertext and neither end trusts it."""

    req_id: ReqId
    address: Annotated[str, _Len(1, MAX_NAME)]


@_message("relay_data")
@dataclass(frozen=True, slots=True)
class RelayData(Message):
    """Bytes of relay ``req_id``, in either direction (opaque TLS records)."""

    req_id: ReqId
    data: Annotated[bytes, _Len(1, 1024 * 1024)]


@_message("dataset_keyed")
@dataclass(frozen=True, slots=True)
class DatasetKeyed(Message):
    """Enclave -> kernel: the monitor holds the key of upload ``req_id``'s sealed dataset: send the rest of it
    (the kernel sends a sealed file's first chunk, then waits for this or the upload's reply)."""

    req_id: ReqId


@_message("dataset_info")
@dataclass(frozen=True, slots=True)
class DatasetInfo(Message):
    """Enclave -> kernel, whenever it changes: the data owners' datasets open in this session, each a JSON
    object (name, owner, dataset_id, broker, mode, not_after, session, max_sessions, rules_sha256, size,
    owner_log) as the monitor enforces them; shown on the badge."""

    datasets: JsonList


@_message("relay_end")
@dataclass(frozen=True, slots=True)
class RelayEnd(Message):
    """Relay ``req_id`` is over, in either direction; ``reason`` is empty for a clean end."""

    req_id: ReqId
    reason: Annotated[str, _Len(0, MAX_REASON)] = ""


# --- control, audit, liveness -----------------------------------------------------------------------------


@_message("interrupt")
@dataclass(frozen=True, slots=True)
class Interrupt(Message):
    """Interrupt the running request (SIGINT in the enclave's interpreter) if its ``req_id`` is below ``before``.

    ``before`` is the kernel's next request id when the interrupt arrived: the interrupt travels after requests
    the kernel may already have sent, and must not hit one that started after it (an interrupt while idle does
    nothing, as a SIGINT to an idle stock kernel)."""

    before: ReqId


@_message("shutdown")
@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """Kernel -> enclave: finish, answer ShutdownReply and close.

    ``reason`` is empty for a shutdown or restart the user asked for; otherwise it says why the kernel stops
    the session (e.g. a receipt that did not match its request) and becomes the closing entry's reason."""

    restart: bool
    reason: Annotated[str, _Len(0, MAX_REASON)] = ""


@_message("shutdown_reply")
@dataclass(frozen=True, slots=True)
class ShutdownReply(Message):
    """Enclave -> kernel: the last message of a clean session; ``restart`` echoes the request."""

    restart: bool


@_message("audit_receipt")
@dataclass(frozen=True, slots=True)
class AuditReceipt(Message):
    """An opaque signed receipt for request ``req_id`` (format defined by cc_kernel.audit)."""

    req_id: ReqId
    receipt: Annotated[bytes, _Len(1, MAX_RECEIPT)]


@_message("audit_start")
@dataclass(frozen=True, slots=True)
class AuditStart(Message):
    """Kernel -> enclave, right after attestation: chain receipts to the log's opening entry (its hash).

    ``redact_code``: receipts carry only the code's hash, not the code itself.
    """

    opening_hash: Annotated[bytes, _Len(32, 32)]
    redact_code: bool


@_message("audit_off")
@dataclass(frozen=True, slots=True)
class AuditOff(Message):
    """Kernel -> enclave, right after attestation, instead of AuditStart: this session keeps no log.

    The enclave runs no application request before it has received AuditStart or AuditOff."""


@_message("session_info")
@dataclass(frozen=True, slots=True)
class SessionInfo(Message):
    """Enclave -> kernel, once after AttestResponse: what protects this session inside the TEE.

    ``protections`` maps a protection's name (``uid``, ``no_new_privs``, ``landlock``, ``seccomp``,
    ``monitor_not_dumpable``, ...) to ``{"in_force": bool, "detail": str}``; ``complete`` says whether every
    protection the platform requires is in force (a hardware monitor never serves a session where it is not).
    """

    protections: JsonDict
    complete: bool


@_message("worker_ready")
@dataclass(frozen=True, slots=True)
class WorkerReady(Message):
    """Worker -> monitor (on their private socketpair only), once: the shell is built and the sandbox applied.

    ``protections`` has ``SessionInfo.protections``'s shape; the monitor checks what it can see from outside
    (``/proc/PID/status``) before it believes it. Never valid on the kernel <-> enclave channel."""

    pid: Count
    protections: JsonDict


@_message("request_done")
@dataclass(frozen=True, slots=True)
class RequestDone(Message):
    """Worker -> monitor only: request ``req_id``, which has no Jupyter reply (a comm message), has finished."""

    req_id: ReqId
    status: ReplyStatus


@_message("ping")
@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Heartbeat; the peer answers Pong with the same ``seq``."""

    seq: Count


@_message("pong")
@dataclass(frozen=True, slots=True)
class Pong(Message):
    """Answer to Ping."""

    seq: Count


@_message("credit")
@dataclass(frozen=True, slots=True)
class Credit(Message):
    """Kernel -> enclave: output of ``nbytes`` ``output_cost`` units was handed to Jupyter (``OutputWindow``)."""

    nbytes: Count


@_message("fatal")
@dataclass(frozen=True, slots=True)
class Fatal(Message):
    """Either side: "I am closing because ``reason``". The last message its sender sends."""

    reason: Annotated[str, _Len(0, MAX_REASON)]


# --- encoding ---------------------------------------------------------------------------------------------


def _describe(wire: str, name: str, exc: _FieldError) -> str:
    return f"{wire}.{name}{''.join(reversed(exc.where))}: {exc.reason}"


def encode_message(msg: Message) -> dict[str, Any]:
    """The wire map of ``msg``: ``{"t": msg.TYPE, **fields}`` (values are shared, not copied).

    Raises:
        TypeError: ``msg`` is not an instance of a registered message class.
        LocalProtocolError: a field fails the same check the peer's decoder applies (type, size, JSON).
    """
    schema = _SCHEMAS.get(type(msg))
    if schema is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    out: dict[str, Any] = {"t": msg.TYPE}
    for name, check in schema:
        value = getattr(msg, name)
        try:
            check(value)
        except _FieldError as exc:
            raise LocalProtocolError(f"cannot encode {_describe(msg.TYPE, name, exc)}") from None
        out[name] = value
    return out


def decode_message(obj: object) -> Message:
    """Validate a decoded wire map and build its message.

    Raises:
        RemoteProtocolError: not a map, no or unknown ``"t"``, an unknown or missing field (named), or a
            field of the wrong type, length or range (named, with its path inside JSON content).
    """
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"a message must be a map, got {_typename(obj)}")
    if "t" not in obj:
        raise RemoteProtocolError("message has no type field 't'")
    wire = obj["t"]
    if not isinstance(wire, str):
        raise RemoteProtocolError(f"message type 't' must be str, got {_typename(wire)}")
    cls = REGISTRY.get(wire)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {_brief(wire)}")
    schema = _SCHEMAS[cls]
    declared = {name for name, _ in schema}
    # keys may be str or bytes (msgpack's strict_map_key), so sort by repr rather than by value
    unknown = sorted((k for k in obj if k != "t" and k not in declared), key=repr)
    if unknown:
        raise RemoteProtocolError(f"{wire}: unknown field {_brief(unknown[0])}")
    values: dict[str, Any] = {}
    for name, check in schema:
        if name not in obj:
            raise RemoteProtocolError(f"{wire}: missing field {name!r}")
        value = obj[name]
        try:
            check(value)
        except _FieldError as exc:
            raise RemoteProtocolError(_describe(wire, name, exc)) from None
        values[name] = value
    return cls(**values)


def negotiate(ours: Iterable[int], theirs: Iterable[int]) -> int:
    """The highest protocol version both sides offer.

    Raises:
        RemoteProtocolError: the two sets do not overlap (the peer speaks no version we speak).
    """
    ours_set, theirs_set = set(ours), set(theirs)
    common = ours_set & theirs_set
    if not common:
        raise RemoteProtocolError(
            f"no common protocol version: we speak {sorted(ours_set)}, the peer offers {sorted(theirs_set)}"
        )
    return max(common)
