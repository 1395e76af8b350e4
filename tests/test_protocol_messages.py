"""Wire messages: every type round-trips; strict decoding names the offending field; version negotiation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_kernel.errors import LocalProtocolError, RemoteProtocolError
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.framing import NEED_DATA, FrameDecoder, encode_frame

FAST = settings(deadline=None, database=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])

# --- strategies (written from the spec, independently of the schema in messages.py) -------------------------

I64 = 2**63 - 1
req_ids = st.integers(0, I64)
counts = st.integers(0, I64)
signed = st.integers(-(2**63), I64)
texts = st.text(max_size=40)
names = st.text(max_size=24)
bools = st.booleans()
status2 = st.sampled_from(["ok", "error"])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
json_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
blobs = st.binary(max_size=40)


def _comm(cls: type[m.Message], **extra: Any) -> st.SearchStrategy[m.Message]:
    return st.builds(
        cls,
        req_id=req_ids,
        comm_id=names,
        data=json_dicts,
        metadata=json_dicts,
        buffers=st.lists(blobs, max_size=3),
        **extra,
    )


STRATEGIES: dict[type[m.Message], st.SearchStrategy[m.Message]] = {
    m.Hello: st.builds(
        m.Hello,
        role=st.sampled_from(["kernel", "enclave"]),
        versions=st.lists(st.integers(1, 65535), min_size=1, max_size=32),
        software=st.text(max_size=256),
    ),
    m.AttestRequest: st.builds(
        m.AttestRequest, nonce=st.binary(min_size=32, max_size=32), session_id=st.binary(min_size=16, max_size=16)
    ),
    m.AttestResponse: st.builds(m.AttestResponse, envelope=st.binary(min_size=1, max_size=200)),
    m.ExecuteRequest: st.builds(
        m.ExecuteRequest,
        req_id=req_ids,
        code=texts,
        silent=bools,
        store_history=bools,
        user_expressions=st.dictionaries(names, texts, max_size=3),
        allow_stdin=bools,
        execution_count=counts,
        cell_id=st.none() | names,
        kind=st.sampled_from(["cell", "silent", "comm"]) | st.text(min_size=1, max_size=64),
    ),
    m.ExecuteReply: st.builds(
        m.ExecuteReply,
        req_id=req_ids,
        status=st.sampled_from(["ok", "error", "aborted"]),
        execution_count=counts,
        user_expressions=json_dicts,
        payload=st.lists(json_dicts, max_size=2),
        ename=names,
        evalue=texts,
        traceback=st.lists(texts, max_size=3),
    ),
    m.Stream: st.builds(m.Stream, req_id=req_ids, name=st.sampled_from(["stdout", "stderr"]), text=texts),
    m.DisplayData: st.builds(m.DisplayData, req_id=req_ids, data=json_dicts, metadata=json_dicts, transient=json_dicts),
    m.UpdateDisplayData: st.builds(
        m.UpdateDisplayData, req_id=req_ids, data=json_dicts, metadata=json_dicts, transient=json_dicts
    ),
    m.ExecuteResult: st.builds(
        m.ExecuteResult, req_id=req_ids, execution_count=counts, data=json_dicts, metadata=json_dicts
    ),
    m.Error: st.builds(m.Error, req_id=req_ids, ename=names, evalue=texts, traceback=st.lists(texts, max_size=3)),
    m.ClearOutput: st.builds(m.ClearOutput, req_id=req_ids, wait=bools),
    m.CompleteRequest: st.builds(m.CompleteRequest, req_id=req_ids, code=texts, cursor_pos=counts),
    m.CompleteReply: st.builds(
        m.CompleteReply,
        req_id=req_ids,
        status=status2,
        matches=st.lists(texts, max_size=4),
        cursor_start=counts,
        cursor_end=counts,
        metadata=json_dicts,
    ),
    m.InspectRequest: st.builds(
        m.InspectRequest, req_id=req_ids, code=texts, cursor_pos=counts, detail_level=st.sampled_from([0, 1])
    ),
    m.InspectReply: st.builds(
        m.InspectReply, req_id=req_ids, status=status2, found=bools, data=json_dicts, metadata=json_dicts
    ),
    m.IsCompleteRequest: st.builds(m.IsCompleteRequest, req_id=req_ids, code=texts),
    m.IsCompleteReply: st.builds(
        m.IsCompleteReply,
        req_id=req_ids,
        status=st.sampled_from(["complete", "incomplete", "invalid", "unknown"]),
        indent=st.text(" \t", max_size=8),
    ),
    m.HistoryRequest: st.builds(
        m.HistoryRequest,
        req_id=req_ids,
        hist_access_type=st.sampled_from(["range", "tail", "search"]),
        output=bools,
        raw=bools,
        session=signed,
        start=signed,
        stop=st.none() | signed,
        n=st.none() | counts,
        pattern=texts,
        unique=bools,
    ),
    m.HistoryReply: st.builds(
        m.HistoryReply,
        req_id=req_ids,
        status=status2,
        history=st.lists(st.tuples(counts, counts, texts).map(list), max_size=3),
    ),
    m.InputRequest: st.builds(m.InputRequest, req_id=req_ids, prompt=texts, password=bools),
    m.InputReply: st.builds(m.InputReply, req_id=req_ids, value=texts, cancelled=bools),
    m.CommOpen: _comm(m.CommOpen, target_name=names),
    m.CommMsg: _comm(m.CommMsg),
    m.CommClose: _comm(m.CommClose),
    m.CommInfoRequest: st.builds(m.CommInfoRequest, req_id=req_ids, target_name=st.none() | names),
    m.CommInfoReply: st.builds(
        m.CommInfoReply,
        req_id=req_ids,
        comms=st.dictionaries(names, st.builds(lambda t: {"target_name": t}, names), max_size=3),
    ),
    m.UploadStart: st.builds(
        m.UploadStart,
        req_id=req_ids,
        name=st.text(min_size=1, max_size=24),
        size=counts,
        fmt=st.sampled_from(["bytes", "text", "npy", "ccdata"]),
        code=texts,
        execution_count=counts,
        cell_id=st.none() | names,
    ),
    m.UploadChunk: st.builds(m.UploadChunk, req_id=req_ids, data=blobs),
    m.UploadEnd: st.builds(m.UploadEnd, req_id=req_ids, sha256=st.binary(min_size=32, max_size=32)),
    m.UploadReply: st.builds(m.UploadReply, req_id=req_ids, status=status2, message=texts),
    m.RelayOpen: st.builds(m.RelayOpen, req_id=req_ids, address=st.text(min_size=1, max_size=24)),
    m.RelayData: st.builds(m.RelayData, req_id=req_ids, data=st.binary(min_size=1, max_size=64)),
    m.RelayEnd: st.builds(m.RelayEnd, req_id=req_ids, reason=texts),
    m.DatasetKeyed: st.builds(m.DatasetKeyed, req_id=req_ids),
    m.DatasetInfo: st.builds(m.DatasetInfo, datasets=st.lists(st.fixed_dictionaries({"name": names}), max_size=3)),
    m.Interrupt: st.builds(m.Interrupt, before=req_ids),
    m.Shutdown: st.builds(m.Shutdown, restart=bools, reason=texts),
    m.ShutdownReply: st.builds(m.ShutdownReply, restart=bools),
    m.AuditReceipt: st.builds(m.AuditReceipt, req_id=req_ids, receipt=st.binary(min_size=1, max_size=64)),
    m.AuditStart: st.builds(m.AuditStart, opening_hash=st.binary(min_size=32, max_size=32), redact_code=st.booleans()),
    m.AuditOff: st.just(m.AuditOff()),
    m.RequestDone: st.builds(m.RequestDone, req_id=req_ids, status=status2),
    m.SessionInfo: st.builds(m.SessionInfo, protections=st.dictionaries(names, st.fixed_dictionaries(
        {"in_force": bools, "detail": texts}), max_size=4), complete=bools),
    m.WorkerReady: st.builds(m.WorkerReady, pid=counts, protections=st.dictionaries(names, texts, max_size=3)),
    m.Ping: st.builds(m.Ping, seq=counts),
    m.Pong: st.builds(m.Pong, seq=counts),
    m.Credit: st.builds(m.Credit, nbytes=counts),
    m.Fatal: st.builds(m.Fatal, reason=texts),
}

any_message = st.one_of(*STRATEGIES.values())

SPEC_WIRE_NAMES = {
    "hello", "attest_request", "attest_response", "execute_request", "execute_reply", "stream", "display_data",
    "update_display_data", "execute_result", "error", "clear_output", "complete_request", "complete_reply",
    "inspect_request", "inspect_reply", "is_complete_request", "is_complete_reply", "history_request",
    "history_reply", "input_request", "input_reply", "comm_open", "comm_msg", "comm_close", "comm_info_request",
    "comm_info_reply", "upload_start", "upload_chunk", "upload_end", "upload_reply", "interrupt", "shutdown",
    "relay_open", "relay_data", "relay_end", "dataset_keyed", "dataset_info",
    "shutdown_reply", "audit_receipt", "audit_start", "audit_off", "session_info",
    "worker_ready", "request_done", "ping", "pong", "credit", "fatal",
}  # fmt: skip


def _field_names(cls: type[m.Message]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _wire(msg: m.Message) -> bytes:
    return codec.packb(m.encode_message(msg))


# --- registry and round trips -------------------------------------------------------------------------------


def test_registry_is_exactly_the_specified_message_set() -> None:
    assert set(m.REGISTRY) == SPEC_WIRE_NAMES
    assert set(STRATEGIES) == set(m.REGISTRY.values())
    for name, cls in m.REGISTRY.items():
        assert name == cls.TYPE


def test_messages_are_frozen_and_slotted() -> None:
    msg = m.Ping(seq=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.seq = 2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")


@pytest.mark.parametrize("cls", sorted(STRATEGIES, key=lambda c: c.TYPE), ids=lambda c: c.TYPE)
@FAST
@given(data=st.data())
def test_every_message_round_trips(cls: type[m.Message], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    wire = m.encode_message(msg)
    assert wire["t"] == cls.TYPE
    assert set(wire) == {"t"} | _field_names(cls)
    decoded = m.decode_message(codec.unpackb(codec.packb(wire)))
    assert type(decoded) is cls
    assert decoded == msg
    # canonical encoding: equal messages encode to equal bytes
    assert codec.packb(m.encode_message(decoded)) == codec.packb(wire)


@FAST
@given(msgs=st.lists(any_message, max_size=6))
def test_frames_decode_the_same_whole_and_one_byte_at_a_time(msgs: list[m.Message]) -> None:
    stream = b"".join(encode_frame(m.encode_message(msg)) for msg in msgs)

    def decode(chunks: list[bytes]) -> list[m.Message]:
        decoder, out = FrameDecoder(), []
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not NEED_DATA:
                out.append(m.decode_message(codec.unpackb(frame)))
        decoder.eof()
        return out

    whole = decode([stream])
    assert whole == msgs
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == whole


# --- strict validation: negatives ---------------------------------------------------------------------------


def _execute_wire(**changes: Any) -> dict[str, Any]:
    wire = m.encode_message(
        m.ExecuteRequest(
            req_id=7,
            code="1+1",
            silent=False,
            store_history=True,
            user_expressions={"x": "x"},
            allow_stdin=True,
            execution_count=3,
            cell_id=None,
            kind="cell",
        )
    )
    wire.update(changes)
    return wire


def test_valid_wire_map_decodes() -> None:
    msg = m.decode_message(_execute_wire())
    assert isinstance(msg, m.ExecuteRequest)
    assert msg.code == "1+1"
    assert msg.cell_id is None


def test_unknown_field_is_named() -> None:
    with pytest.raises(RemoteProtocolError, match=r"execute_request: unknown field 'extra'"):
        m.decode_message(_execute_wire(extra=1))


def test_bytes_key_is_an_unknown_field_not_a_crash() -> None:
    with pytest.raises(RemoteProtocolError, match=r"unknown field b'code'"):
        m.decode_message(_execute_wire(**{}) | {b"code": "x"})


def test_missing_field_is_named() -> None:
    wire = _execute_wire()
    del wire["allow_stdin"]
    with pytest.raises(RemoteProtocolError, match=r"execute_request: missing field 'allow_stdin'"):
        m.decode_message(wire)


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("req_id", True, r"execute_request\.req_id: must be int, got bool"),
        ("req_id", 1.0, r"req_id: must be int, got float"),
        ("req_id", -1, r"req_id: must be in 0\.\."),
        ("req_id", 2**63, r"req_id: must be in 0\.\."),
        ("silent", 1, r"silent: must be bool, got int"),
        ("silent", None, r"silent: must be bool, got NoneType"),
        ("code", b"1+1", r"code: must be str, got bytes"),
        ("user_expressions", {"x": 1}, r"user_expressions\['x'\]: must be str, got int"),
        ("user_expressions", [], r"user_expressions: must be a map, got list"),
        ("cell_id", 5, r"cell_id: must be str, got int"),
        ("cell_id", "c" * (m.MAX_NAME + 1), r"cell_id: length must be 0\.\.1024"),
        ("kind", "", r"kind: length must be 1\.\.64"),
        ("kind", "k" * 65, r"kind: length must be 1\.\.64"),
    ],
)
def test_wrong_field_type_or_size_is_named(field: str, value: object, expect: str) -> None:
    with pytest.raises(RemoteProtocolError, match=expect):
        m.decode_message(_execute_wire(**{field: value}))


@pytest.mark.parametrize(
    "wire",
    [
        {"t": "attest_request", "nonce": b"\0" * 31, "session_id": b"\0" * 16},
        {"t": "attest_request", "nonce": b"\0" * 33, "session_id": b"\0" * 16},
        {"t": "attest_request", "nonce": "\0" * 32, "session_id": b"\0" * 16},
        {"t": "attest_request", "nonce": b"\0" * 32, "session_id": b"\0" * 15},
        {"t": "upload_end", "req_id": 1, "sha256": b"\0" * 31},
        {"t": "stream", "req_id": 1, "name": "stdin", "text": "x"},
        {"t": "inspect_request", "req_id": 1, "code": "x", "cursor_pos": 0, "detail_level": True},
        {"t": "inspect_request", "req_id": 1, "code": "x", "cursor_pos": 0, "detail_level": 2},
        {"t": "hello", "role": "kernel", "versions": [], "software": ""},
        {"t": "hello", "role": "kernel", "versions": [0], "software": ""},
        {"t": "hello", "role": "kernel", "versions": [True], "software": ""},
        {"t": "hello", "role": "host", "versions": [1], "software": ""},
        {"t": "hello", "role": "kernel", "versions": 1, "software": ""},
        {"t": "comm_info_request", "req_id": 1, "target_name": 3},
        {"t": "comm_msg", "req_id": 1, "comm_id": "c", "data": {}, "metadata": {}, "buffers": ["text"]},
        {"t": "history_request", "req_id": 1, "hist_access_type": "tail", "output": False, "raw": True,
         "session": 0, "start": 0, "stop": None, "n": -1, "pattern": "", "unique": False},
        {"t": "fatal", "reason": "r" * (m.MAX_REASON + 1)},
        {"t": "attest_response", "envelope": b""},
        {"t": "attest_response", "envelope": b"e" * (m.MAX_ENVELOPE + 1)},
        {"t": "credit", "nbytes": -5},
        {"t": "interrupt", "x": None},
        {"t": "interrupt"},
        {"t": "interrupt", "before": -1},
        {"t": "ping"},
    ],
)  # fmt: skip
def test_strict_field_checks(wire: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError, match=rf"^{wire['t']}"):
        m.decode_message(wire)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ({"a": float("nan")}, r"data\['a'\]: JSON has no nan"),
        ({"a": [1, float("inf")]}, r"data\['a'\]\[1\]: JSON has no inf"),
        ({"a": b"raw"}, r"data\['a'\]: must be JSON, got bytes"),
        ({"a": {1: "x"}}, r"data\['a'\]: JSON object key must be str, got int"),
        ({"a": 2**64}, r"data\['a'\]: JSON integer out of the 64-bit range"),
        ({1: "x"}, r"data: keys must be str, got int"),
    ],
)
def test_json_content_is_checked_with_its_path(content: dict[Any, Any], expect: str) -> None:
    wire = {"t": "display_data", "req_id": 1, "data": content, "metadata": {}, "transient": {}}
    with pytest.raises(RemoteProtocolError, match=rf"display_data\.{expect}"):
        m.decode_message(wire)


def test_json_nesting_depth_is_capped() -> None:
    def nested(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    # the field's own dict is the first level
    ok = {
        "t": "display_data",
        "req_id": 1,
        "data": {"a": nested(m.MAX_JSON_DEPTH - 1)},
        "metadata": {},
        "transient": {},
    }
    assert isinstance(m.decode_message(ok), m.DisplayData)
    deep = ok | {"data": {"a": nested(m.MAX_JSON_DEPTH)}}
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        m.decode_message(deep)


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        ([], r"a message must be a map, got list"),
        ({"req_id": 1}, r"message has no type field 't'"),
        ({"t": 1}, r"message type 't' must be str, got int"),
        ({"t": b"ping", "seq": 1}, r"message type 't' must be str, got bytes"),
        ({"t": "pingg", "seq": 1}, r"unknown message type 'pingg'"),
        ({"t": "x" * 10_000}, r"unknown message type 'x+\.\.\.$"),
    ],
)
def test_unknown_or_missing_type(obj: object, expect: str) -> None:
    with pytest.raises(RemoteProtocolError, match=expect):
        m.decode_message(obj)


# --- encoding our own messages ------------------------------------------------------------------------------


def test_encode_checks_our_fields_as_local_errors() -> None:
    with pytest.raises(LocalProtocolError, match=r"attest_request\.nonce: length must be exactly 32, got 3"):
        m.encode_message(m.AttestRequest(nonce=b"abc", session_id=b"\0" * 16))
    with pytest.raises(LocalProtocolError, match=r"stream\.req_id: must be int, got bool"):
        m.encode_message(m.Stream(req_id=True, name="stdout", text="x"))
    with pytest.raises(LocalProtocolError, match=r"execute_result\.data\['x'\]: JSON has no nan"):
        m.encode_message(m.ExecuteResult(req_id=1, execution_count=1, data={"x": math.nan}, metadata={}))
    with pytest.raises(LocalProtocolError, match=r"error\.traceback: must be a list, got tuple"):
        m.encode_message(m.Error(req_id=1, ename="E", evalue="", traceback=("a",)))  # type: ignore[arg-type]


def test_encode_accepts_tuples_inside_json_as_arrays() -> None:
    msg = m.DisplayData(req_id=1, data={"application/json": {"xy": (1, 2)}}, metadata={}, transient={})
    decoded = m.decode_message(codec.unpackb(_wire(msg)))
    assert decoded == m.DisplayData(req_id=1, data={"application/json": {"xy": [1, 2]}}, metadata={}, transient={})


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError, match="not a protocol message"):
        m.encode_message({"t": "ping", "seq": 1})  # type: ignore[arg-type]

    @dataclasses.dataclass(frozen=True, slots=True)
    class Sneaky(m.Ping):
        pass

    with pytest.raises(TypeError, match="not a protocol message: Sneaky"):
        m.encode_message(Sneaky(seq=1))


# --- fuzz: anything decoded from the wire is a message or a RemoteProtocolError -----------------------------

wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner),
    max_leaves=10,
)


@FAST
@given(msg=any_message, data=st.data())
def test_mutated_fields_decode_or_raise_remote_protocol_error(msg: m.Message, data: st.DataObject) -> None:
    wire = codec.unpackb(_wire(msg))
    key = data.draw(st.sampled_from(sorted(wire)), label="key")
    wire[key] = data.draw(wire_values, label="value")
    try:
        decoded = m.decode_message(wire)
    except RemoteProtocolError:
        return
    assert codec.unpackb(_wire(decoded)) == wire


@FAST
@given(obj=wire_values)
def test_arbitrary_values_decode_or_raise_remote_protocol_error(obj: object) -> None:
    try:
        msg = m.decode_message(obj)
    except RemoteProtocolError:
        return
    assert m.encode_message(msg) == obj


# --- version negotiation ------------------------------------------------------------------------------------


def test_negotiate_picks_the_highest_common_version() -> None:
    assert m.negotiate([1], [1]) == 1
    assert m.negotiate([1, 2, 3], [2, 3, 9]) == 3
    assert m.negotiate((4, 1), [1]) == 1


def test_negotiate_without_overlap_is_a_remote_error() -> None:
    with pytest.raises(
        RemoteProtocolError, match=r"no common protocol version: we speak \[1\], the peer offers \[2, 3\]"
    ):
        m.negotiate([1], [3, 2])


def test_protocol_version_is_supported() -> None:
    assert m.PROTOCOL_VERSION == 2
    assert m.PROTOCOL_VERSION in m.SUPPORTED_VERSIONS
