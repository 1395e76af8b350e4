"""Connection state machine: handshake, the attestation gate, ERROR is terminal, closing, output credit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_kernel.errors import LocalProtocolError, MessageTooLarge, RemoteProtocolError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import (
    DEFAULT_OUTPUT_WINDOW,
    ENCLAVE_APP_MESSAGES,
    KERNEL_APP_MESSAGES,
    OUTPUT_MESSAGES,
    TRANSITIONS,
    AttestationVerified,
    Connection,
    ConnectionClosed,
    Direction,
    OutputWindow,
    Role,
    State,
)
from cc_kernel.protocol.framing import NEED_DATA, encode_frame

FAST = settings(deadline=None, database=None, max_examples=60)

NONCE, SID = bytes(range(32)), bytes(range(16))

# One valid instance of every message type.
SAMPLES: dict[type[m.Message], m.Message] = {
    m.Hello: m.Hello(role="kernel", versions=[2], software="test"),
    m.AttestRequest: m.AttestRequest(nonce=NONCE, session_id=SID),
    m.AttestResponse: m.AttestResponse(envelope=b"envelope"),
    m.ExecuteRequest: m.ExecuteRequest(
        req_id=1,
        code="print(1)",
        silent=False,
        store_history=True,
        user_expressions={},
        allow_stdin=True,
        execution_count=1,
        cell_id="c1",
        kind="cell",
    ),
    m.ExecuteReply: m.ExecuteReply(
        req_id=1,
        status="ok",
        execution_count=1,
        user_expressions={},
        payload=[],
        ename="",
        evalue="",
        traceback=[],
    ),
    m.Stream: m.Stream(req_id=1, name="stdout", text="1\n"),
    m.DisplayData: m.DisplayData(req_id=1, data={"text/plain": "x"}, metadata={}, transient={"display_id": "d"}),
    m.UpdateDisplayData: m.UpdateDisplayData(
        req_id=1, data={"text/plain": "y"}, metadata={}, transient={"display_id": "d"}
    ),
    m.ExecuteResult: m.ExecuteResult(req_id=1, execution_count=1, data={"text/plain": "2"}, metadata={}),
    m.Error: m.Error(req_id=1, ename="ZeroDivisionError", evalue="division by zero", traceback=["tb"]),
    m.ClearOutput: m.ClearOutput(req_id=1, wait=True),
    m.CompleteRequest: m.CompleteRequest(req_id=2, code="pri", cursor_pos=3),
    m.CompleteReply: m.CompleteReply(
        req_id=2, status="ok", matches=["print"], cursor_start=0, cursor_end=3, metadata={}
    ),
    m.InspectRequest: m.InspectRequest(req_id=3, code="len", cursor_pos=3, detail_level=0),
    m.InspectReply: m.InspectReply(req_id=3, status="ok", found=True, data={"text/plain": "len"}, metadata={}),
    m.IsCompleteRequest: m.IsCompleteRequest(req_id=4, code="for i in x:"),
    m.IsCompleteReply: m.IsCompleteReply(req_id=4, status="incomplete", indent="    "),
    m.HistoryRequest: m.HistoryRequest(
        req_id=5,
        hist_access_type="tail",
        output=False,
        raw=True,
        session=0,
        start=0,
        stop=None,
        n=10,
        pattern="",
        unique=False,
    ),
    m.HistoryReply: m.HistoryReply(req_id=5, status="ok", history=[[1, 1, "x = 1"]]),
    m.InputRequest: m.InputRequest(req_id=1, prompt="name? ", password=False),
    m.InputReply: m.InputReply(req_id=1, value="ada", cancelled=False),
    m.CommOpen: m.CommOpen(req_id=1, comm_id="c", target_name="t", data={}, metadata={}, buffers=[b"\0"]),
    m.CommMsg: m.CommMsg(req_id=1, comm_id="c", data={"x": 1}, metadata={}, buffers=[]),
    m.CommClose: m.CommClose(req_id=1, comm_id="c", data={}, metadata={}, buffers=[]),
    m.CommInfoRequest: m.CommInfoRequest(req_id=6, target_name=None),
    m.CommInfoReply: m.CommInfoReply(req_id=6, comms={"c": {"target_name": "t"}}),
    m.UploadStart: m.UploadStart(
        req_id=7, name="df", size=3, fmt="bytes", code="%cc_upload df.bin df", execution_count=3, cell_id=None
    ),
    m.UploadChunk: m.UploadChunk(req_id=7, data=b"abc"),
    m.UploadEnd: m.UploadEnd(req_id=7, sha256=b"\1" * 32),
    m.UploadReply: m.UploadReply(req_id=7, status="ok", message="stored"),
    m.RelayOpen: m.RelayOpen(req_id=7, address="127.0.0.1:7900"),
    m.RelayData: m.RelayData(req_id=7, data=b"tls"),
    m.RelayEnd: m.RelayEnd(req_id=7, reason=""),
    m.DatasetKeyed: m.DatasetKeyed(req_id=7),
    m.DatasetInfo: m.DatasetInfo(datasets=[{"name": "records", "mode": "inspect"}]),
    m.Interrupt: m.Interrupt(before=1),
    m.Shutdown: m.Shutdown(restart=False),
    m.ShutdownReply: m.ShutdownReply(restart=False),
    m.AuditReceipt: m.AuditReceipt(req_id=1, receipt=b"receipt"),
    m.AuditStart: m.AuditStart(opening_hash=b"h" * 32, redact_code=False),
    m.AuditOff: m.AuditOff(),
    m.SessionInfo: m.SessionInfo(protections={"landlock": {"in_force": True, "detail": "ABI 7"}}, complete=True),
    m.WorkerReady: m.WorkerReady(pid=42, protections={}),
    m.RequestDone: m.RequestDone(req_id=1, status="ok"),
    m.Ping: m.Ping(seq=1),
    m.Pong: m.Pong(seq=1),
    m.Credit: m.Credit(nbytes=10),
    m.Fatal: m.Fatal(reason="bye"),
}

KERNEL_HELLO = m.Hello(role="kernel", versions=[2], software="kernel-test")
ENCLAVE_HELLO = m.Hello(role="enclave", versions=[2], software="enclave-test")


def frame(msg: m.Message) -> bytes:
    """Encode a message as a peer would, bypassing any state machine."""
    return encode_frame(m.encode_message(msg))


def deliver(conn: Connection, data: bytes) -> list[m.Message | ConnectionClosed]:
    """Feed ``data`` and drain every event."""
    conn.receive_data(data)
    events: list[m.Message | ConnectionClosed] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def kernel_in(state: State) -> Connection:
    """A kernel connection driven (by a scripted enclave) into ``state``."""
    k = Connection(Role.KERNEL)
    steps = [
        (State.HELLO_SENT, lambda: k.send(KERNEL_HELLO)),
        (State.ATTESTING, lambda: deliver(k, frame(ENCLAVE_HELLO))),
        (State.EVIDENCE_PENDING, lambda: k.send(m.AttestRequest(nonce=NONCE, session_id=SID))),
        (State.AWAITING_VERIFICATION, lambda: deliver(k, frame(m.AttestResponse(envelope=b"env")))),
        (State.READY, k.attestation_verified),
        (State.SHUTTING_DOWN, lambda: k.send(m.Shutdown(restart=False))),
    ]
    for reached, step in steps:
        if k.state is state:
            break
        step()
        assert k.state is reached
    assert k.state is state
    return k


def enclave_in(state: State) -> Connection:
    """An enclave connection driven (by a scripted kernel) into ``state``."""
    e = Connection(Role.ENCLAVE)
    steps = [
        (State.HELLO_RECEIVED, lambda: deliver(e, frame(KERNEL_HELLO))),
        (State.ATTESTING, lambda: e.send(ENCLAVE_HELLO)),
        (State.EVIDENCE_PENDING, lambda: deliver(e, frame(m.AttestRequest(nonce=NONCE, session_id=SID)))),
        (State.READY, lambda: e.send(m.AttestResponse(envelope=b"env"))),
        (State.SHUTTING_DOWN, lambda: deliver(e, frame(m.Shutdown(restart=True)))),
    ]
    for reached, step in steps:
        if e.state is state:
            break
        step()
        assert e.state is reached
    assert e.state is state
    return e


KERNEL_PRE_READY = [State.HELLO, State.HELLO_SENT, State.ATTESTING, State.EVIDENCE_PENDING, State.AWAITING_VERIFICATION]
ENCLAVE_PRE_READY = [State.HELLO, State.HELLO_RECEIVED, State.ATTESTING, State.EVIDENCE_PENDING]


def _name(cls: type[m.Message]) -> str:
    return cls.__name__


# --- the whole life of a session ----------------------------------------------------------------------------


def test_full_session_between_two_connections() -> None:
    k, e = Connection(Role.KERNEL), Connection(Role.ENCLAVE)
    assert (k.state, e.state) == (State.HELLO, State.HELLO)

    assert deliver(e, k.send(KERNEL_HELLO)) == [KERNEL_HELLO]
    assert (k.state, e.state) == (State.HELLO_SENT, State.HELLO_RECEIVED)
    assert e.their_version == 2
    assert deliver(k, e.send(ENCLAVE_HELLO)) == [ENCLAVE_HELLO]
    assert (k.state, e.state, k.their_version) == (State.ATTESTING, State.ATTESTING, 2)

    request = m.AttestRequest(nonce=NONCE, session_id=SID)
    assert deliver(e, k.send(request)) == [request]
    assert (k.state, e.state) == (State.EVIDENCE_PENDING, State.EVIDENCE_PENDING)
    response = m.AttestResponse(envelope=b"evidence")
    assert deliver(k, e.send(response)) == [response]
    assert (k.state, e.state) == (State.AWAITING_VERIFICATION, State.READY)

    k.attestation_verified()
    assert k.state is State.READY

    execute = SAMPLES[m.ExecuteRequest]
    assert deliver(e, k.send(execute)) == [execute]
    outputs = [SAMPLES[m.Stream], SAMPLES[m.DisplayData], SAMPLES[m.ExecuteReply], SAMPLES[m.AuditReceipt]]
    data = b"".join(e.send(o) for o in outputs)
    assert deliver(k, data) == outputs
    assert deliver(e, k.send(m.Credit(nbytes=50))) == [m.Credit(nbytes=50)]

    assert deliver(e, k.send(m.Shutdown(restart=True))) == [m.Shutdown(restart=True)]
    assert (k.state, e.state) == (State.SHUTTING_DOWN, State.SHUTTING_DOWN)
    # output still in flight is drained before the reply
    late = m.Stream(req_id=1, name="stderr", text="late")
    reply = m.ShutdownReply(restart=True)
    closed = ConnectionClosed(reason="shutdown complete", clean=True)
    assert deliver(k, e.send(late) + e.send(reply)) == [late, reply, closed]
    assert (k.state, e.state) == (State.CLOSED, State.CLOSED)
    assert k.closed_reason == e.closed_reason == "shutdown complete"
    assert k.next_event() == closed
    assert e.next_event() == closed


def test_last_frame_size_is_the_size_of_the_frame_read() -> None:
    k = kernel_in(State.READY)
    data = frame(SAMPLES[m.Stream])
    deliver(k, data)
    assert k.last_frame_size == len(data)


# --- the attestation gate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", KERNEL_PRE_READY, ids=lambda s: s.value)
@pytest.mark.parametrize("cls", sorted(KERNEL_APP_MESSAGES, key=_name), ids=_name)
def test_kernel_cannot_encode_application_messages_before_attestation_verified(
    cls: type[m.Message], state: State
) -> None:
    k = kernel_in(state)
    with pytest.raises(LocalProtocolError, match=r"attestation_verified\(\) was not called"):
        k.send(SAMPLES[cls])
    assert k.state is State.ERROR


def test_kernel_application_set_covers_every_kernel_sent_message() -> None:
    # everything the kernel may ever send in READY is gated; nothing the gate misses
    ready_sends = {c for (s, d, c), _ in TRANSITIONS[Role.KERNEL].items() if s is State.READY and d is Direction.SEND}
    assert ready_sends - KERNEL_APP_MESSAGES == {m.Shutdown, m.Ping, m.Pong, m.Fatal}
    gated = ready_sends & KERNEL_APP_MESSAGES
    assert gated == KERNEL_APP_MESSAGES
    assert m.ExecuteRequest in gated and m.UploadChunk in gated and m.InputReply in gated


def test_the_table_allows_no_kernel_application_send_before_ready() -> None:
    for (state, direction, cls), _ in TRANSITIONS[Role.KERNEL].items():
        if direction is Direction.SEND and state in KERNEL_PRE_READY:
            assert cls in {m.Hello, m.AttestRequest, m.Ping, m.Pong, m.Fatal}, (state, cls)
    entry = (State.AWAITING_VERIFICATION, Direction.LOCAL, AttestationVerified)
    assert TRANSITIONS[Role.KERNEL][entry] is State.READY
    assert [key for key in TRANSITIONS[Role.KERNEL] if key[1] is Direction.LOCAL] == [entry]
    assert not any(key[1] is Direction.LOCAL for key in TRANSITIONS[Role.ENCLAVE])


@pytest.mark.parametrize("state", [State.HELLO, State.HELLO_SENT, State.ATTESTING, State.EVIDENCE_PENDING])
def test_attestation_verified_needs_an_attest_response(state: State) -> None:
    k = kernel_in(state)
    with pytest.raises(LocalProtocolError, match=r"only after an AttestResponse"):
        k.attestation_verified()
    assert k.state is State.ERROR


def test_attestation_verified_twice_is_an_error() -> None:
    k = kernel_in(State.READY)
    with pytest.raises(LocalProtocolError, match="state READY"):
        k.attestation_verified()
    assert k.state is State.ERROR


def test_enclave_cannot_call_attestation_verified() -> None:
    e = enclave_in(State.READY)
    with pytest.raises(LocalProtocolError, match="enclave"):
        e.attestation_verified()


@pytest.mark.parametrize("state", ENCLAVE_PRE_READY, ids=lambda s: s.value)
@pytest.mark.parametrize("cls", [m.ExecuteRequest, m.UploadChunk, m.InputReply, m.CommMsg, m.Interrupt], ids=_name)
def test_enclave_rejects_application_messages_before_sending_evidence(cls: type[m.Message], state: State) -> None:
    e = enclave_in(state)
    with pytest.raises(RemoteProtocolError, match=rf"kernel sent {cls.__name__} in state {state.value}"):
        deliver(e, frame(SAMPLES[cls]))
    assert e.state is State.ERROR


@pytest.mark.parametrize("cls", sorted(ENCLAVE_APP_MESSAGES, key=_name), ids=_name)
def test_kernel_rejects_enclave_output_before_verification(cls: type[m.Message]) -> None:
    k = kernel_in(State.AWAITING_VERIFICATION)
    with pytest.raises(RemoteProtocolError, match="in state AWAITING_VERIFICATION"):
        deliver(k, frame(SAMPLES[cls]))
    assert k.state is State.ERROR


def test_messages_in_the_wrong_direction_are_rejected() -> None:
    k = kernel_in(State.READY)
    with pytest.raises(RemoteProtocolError, match="enclave sent ExecuteRequest"):
        deliver(k, frame(SAMPLES[m.ExecuteRequest]))
    e = enclave_in(State.READY)
    with pytest.raises(LocalProtocolError, match="enclave cannot send Credit"):
        e.send(m.Credit(nbytes=1))


def test_heartbeats_flow_both_ways_once_hellos_are_through() -> None:
    k = kernel_in(State.EVIDENCE_PENDING)
    assert deliver(k, frame(m.Ping(seq=4))) == [m.Ping(seq=4)]
    assert k.send(m.Pong(seq=4)) == frame(m.Pong(seq=4))
    assert k.state is State.EVIDENCE_PENDING
    early = kernel_in(State.HELLO_SENT)
    with pytest.raises(RemoteProtocolError, match="Ping in state HELLO_SENT"):
        deliver(early, frame(m.Ping(seq=1)))


# --- ERROR is terminal --------------------------------------------------------------------------------------


def test_error_after_a_remote_violation_is_terminal() -> None:
    k = kernel_in(State.READY)
    with pytest.raises(RemoteProtocolError):
        deliver(k, b"\0\0\0\0")
    assert k.state is State.ERROR
    with pytest.raises(RemoteProtocolError, match="connection is in ERROR after: zero-length frame"):
        k.next_event()
    with pytest.raises(RemoteProtocolError, match="connection is in ERROR"):
        k.receive_data(frame(SAMPLES[m.Stream]))
    with pytest.raises(LocalProtocolError, match="connection is in ERROR"):
        k.send(SAMPLES[m.ExecuteRequest])
    with pytest.raises(RemoteProtocolError, match="connection is in ERROR"):
        k.attestation_verified()
    # the one thing still allowed: tell the peer why we are closing
    assert k.send(m.Fatal(reason="you broke the protocol")) == frame(m.Fatal(reason="you broke the protocol"))
    assert k.state is State.ERROR


def test_error_after_a_local_violation_keeps_blaming_us() -> None:
    k = kernel_in(State.ATTESTING)
    with pytest.raises(LocalProtocolError):
        k.send(SAMPLES[m.ExecuteRequest])
    with pytest.raises(LocalProtocolError, match="connection is in ERROR"):
        k.next_event()
    with pytest.raises(LocalProtocolError, match="connection is in ERROR"):
        k.receive_data(b"")


def test_invalid_field_on_send_is_local_and_moves_to_error() -> None:
    k = kernel_in(State.ATTESTING)
    with pytest.raises(LocalProtocolError, match=r"attest_request\.nonce: length must be exactly 32"):
        k.send(m.AttestRequest(nonce=b"short", session_id=SID))
    assert k.state is State.ERROR


def test_oversized_send_fails_that_message_only_and_leaves_the_state_alone() -> None:
    e = Connection(Role.ENCLAVE, max_frame_size=64)
    deliver(e, frame(KERNEL_HELLO))
    with pytest.raises(MessageTooLarge, match="over the limit of 64 bytes for one message; it was not sent") as info:
        e.send(m.Hello(role="enclave", versions=[2], software="s" * 100))
    assert isinstance(info.value, LocalProtocolError)
    assert info.value.limit == 64 and info.value.size > 64
    assert e.state is State.HELLO_RECEIVED  # nothing was recorded: the next, smaller message goes out
    assert e.send(m.Hello(role="enclave", versions=[2], software="s")) and e.state is State.ATTESTING


def test_an_oversized_cell_fails_and_the_next_cell_is_sent() -> None:
    k = kernel_in(State.READY)
    big = m.ExecuteRequest(req_id=1, code="x" * (k.max_frame_size + 1), silent=False, store_history=True,
                           user_expressions={}, allow_stdin=False, execution_count=1, cell_id=None, kind="cell")
    with pytest.raises(MessageTooLarge, match=r"ExecuteRequest encodes to \d+ bytes, over the limit of 67108864"):
        k.send(big)
    assert k.state is State.READY
    small = m.ExecuteRequest(req_id=2, code="1 + 1", silent=False, store_history=True, user_expressions={},
                             allow_stdin=False, execution_count=1, cell_id=None, kind="cell")
    assert k.send(small) and k.state is State.READY


def test_an_oversized_message_in_the_wrong_state_is_still_a_violation() -> None:
    k = Connection(Role.KERNEL, max_frame_size=64)
    with pytest.raises(LocalProtocolError, match="cannot send ExecuteRequest in state HELLO") as info:
        k.send(m.ExecuteRequest(req_id=1, code="x" * 100, silent=False, store_history=True, user_expressions={},
                                allow_stdin=False, execution_count=1, cell_id=None, kind="cell"))
    assert not isinstance(info.value, MessageTooLarge)
    assert k.state is State.ERROR


def test_non_messages_are_type_errors_without_state_change() -> None:
    k = Connection(Role.KERNEL)
    with pytest.raises(TypeError):
        k.send({"t": "hello"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        k.receive_data("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Connection("kernel")  # type: ignore[arg-type]
    assert k.state is State.HELLO


def test_oversized_incoming_frame_is_remote_error() -> None:
    k = Connection(Role.KERNEL, max_frame_size=64)
    k.send(KERNEL_HELLO)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 64"):
        deliver(k, (2**31).to_bytes(4, "big"))
    assert k.state is State.ERROR


# --- version negotiation and hello checks -------------------------------------------------------------------


def test_enclave_refuses_a_kernel_without_a_common_version() -> None:
    e = Connection(Role.ENCLAVE)
    with pytest.raises(
        RemoteProtocolError, match=r"no common protocol version: we speak \[2\], the peer offers \[3, 4\]"
    ):
        deliver(e, frame(m.Hello(role="kernel", versions=[3, 4], software="future")))
    assert e.state is State.ERROR
    assert e.their_version is None


def test_enclave_picks_the_common_version_and_must_answer_it() -> None:
    e = Connection(Role.ENCLAVE)
    deliver(e, frame(m.Hello(role="kernel", versions=[2, 7], software="newer")))
    assert e.their_version == 2
    with pytest.raises(LocalProtocolError, match=r"exactly the negotiated version \[2\]"):
        e.send(m.Hello(role="enclave", versions=[2, 7], software="x"))


@pytest.mark.parametrize(
    ("hello", "expect"),
    [
        (m.Hello(role="enclave", versions=[3], software="x"), r"choose exactly one of our versions \[2\]"),
        (m.Hello(role="enclave", versions=[2, 3], software="x"), r"choose exactly one"),
        (m.Hello(role="kernel", versions=[2], software="x"), r"role 'kernel', expected 'enclave'"),
        (m.Hello(role="enclave", versions=[2, 2], software="x"), r"not distinct"),
    ],
)
def test_kernel_checks_the_enclave_hello(hello: m.Hello, expect: str) -> None:
    k = kernel_in(State.HELLO_SENT)
    with pytest.raises(RemoteProtocolError, match=expect):
        deliver(k, frame(hello))
    assert k.state is State.ERROR


@pytest.mark.parametrize(
    ("hello", "expect"),
    [
        (m.Hello(role="kernel", versions=[3], software="x"), r"versions we do not speak: \[3\]"),
        (m.Hello(role="enclave", versions=[2], software="x"), r"must say role 'kernel'"),
        (m.Hello(role="kernel", versions=[2, 2], software="x"), r"distinct"),
    ],
)
def test_kernel_checks_its_own_hello(hello: m.Hello, expect: str) -> None:
    k = Connection(Role.KERNEL)
    with pytest.raises(LocalProtocolError, match=expect):
        k.send(hello)


def test_enclave_refuses_a_hello_claiming_to_be_an_enclave() -> None:
    e = Connection(Role.ENCLAVE)
    with pytest.raises(RemoteProtocolError, match="role 'enclave', expected 'kernel'"):
        deliver(e, frame(m.Hello(role="enclave", versions=[2], software="x")))


# --- closing ------------------------------------------------------------------------------------------------


def test_peer_fatal_closes_with_its_reason_and_later_bytes_are_ignored() -> None:
    k = kernel_in(State.EVIDENCE_PENDING)
    events = deliver(k, frame(m.Fatal(reason="no evidence provider")) + b"\xff garbage after fatal")
    assert events == [m.Fatal(reason="no evidence provider"), ConnectionClosed("no evidence provider", clean=False)]
    assert k.state is State.CLOSED
    assert k.closed_reason == "no evidence provider"
    k.receive_data(b"more garbage")  # discarded
    assert k.next_event() == ConnectionClosed("no evidence provider", clean=False)
    with pytest.raises(LocalProtocolError, match="cannot send"):
        k.send(SAMPLES[m.Ping])
    assert k.state is State.ERROR


@pytest.mark.parametrize("state", [State.HELLO, State.ATTESTING, State.READY])
def test_our_fatal_closes(state: State) -> None:
    e = enclave_in(state)
    assert e.send(m.Fatal(reason="enclave stopping")) == frame(m.Fatal(reason="enclave stopping"))
    assert e.state is State.CLOSED
    assert e.closed_reason == "enclave stopping"
    assert e.next_event() == ConnectionClosed("enclave stopping", clean=False)


def test_enclave_discards_kernel_messages_crossing_its_shutdown_reply() -> None:
    e = enclave_in(State.SHUTTING_DOWN)
    e.send(m.ShutdownReply(restart=True))
    assert e.state is State.CLOSED
    assert deliver(e, frame(m.Credit(nbytes=5)) + frame(m.Ping(seq=2))) == [
        ConnectionClosed("shutdown complete", clean=True)
    ]


def test_shutdown_reply_must_echo_restart() -> None:
    e = enclave_in(State.SHUTTING_DOWN)  # the scripted kernel asked for restart=True
    with pytest.raises(LocalProtocolError, match="must echo the request"):
        e.send(m.ShutdownReply(restart=False))
    k = kernel_in(State.SHUTTING_DOWN)  # asked for restart=False
    with pytest.raises(RemoteProtocolError, match="does not echo"):
        deliver(k, frame(m.ShutdownReply(restart=True)))


def test_shutdown_only_when_ready() -> None:
    k = kernel_in(State.AWAITING_VERIFICATION)
    with pytest.raises(LocalProtocolError, match="kernel cannot send Shutdown in state AWAITING_VERIFICATION"):
        k.send(m.Shutdown(restart=False))
    k = kernel_in(State.SHUTTING_DOWN)
    with pytest.raises(LocalProtocolError, match="cannot send ExecuteRequest in state SHUTTING_DOWN"):
        k.send(SAMPLES[m.ExecuteRequest])


def test_a_relay_still_carries_bytes_during_the_shutdown() -> None:
    # the owner's log's closing entry travels through the kernel's relay after Shutdown
    k = kernel_in(State.SHUTTING_DOWN)
    k.send(SAMPLES[m.RelayData])
    k.send(SAMPLES[m.RelayEnd])
    assert k.state is State.SHUTTING_DOWN
    e = enclave_in(State.SHUTTING_DOWN)
    assert deliver(e, frame(SAMPLES[m.RelayData])) == [SAMPLES[m.RelayData]]
    with pytest.raises(LocalProtocolError, match="cannot send RelayOpen in state SHUTTING_DOWN"):
        k.send(SAMPLES[m.RelayOpen])


def test_eof_at_a_frame_boundary_closes_after_buffered_messages() -> None:
    k = kernel_in(State.READY)
    k.receive_data(frame(SAMPLES[m.Stream]))
    k.receive_data(b"")
    assert k.next_event() == SAMPLES[m.Stream]
    closed = k.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert not closed.clean
    assert "without Fatal or ShutdownReply" in closed.reason
    assert k.state is State.CLOSED


def test_eof_mid_frame_is_a_remote_error() -> None:
    k = kernel_in(State.READY)
    data = frame(SAMPLES[m.Stream])
    k.receive_data(data[:-1])
    with pytest.raises(RemoteProtocolError, match="peer closed mid-frame"):
        k.receive_data(b"")
    assert k.state is State.ERROR


def test_data_after_eof_is_a_programmer_error() -> None:
    k = kernel_in(State.READY)
    k.receive_data(b"")
    k.receive_data(b"")  # repeated EOF is harmless
    with pytest.raises(ValueError, match="after EOF"):
        k.receive_data(b"x")


# --- incremental decoding and fuzzing -----------------------------------------------------------------------

ENCLAVE_SCRIPT = [
    ENCLAVE_HELLO,
    m.Ping(seq=9),
    m.AttestResponse(envelope=b"evidence" * 10),
]
ENCLAVE_OUTPUT = [
    SAMPLES[m.Stream],
    SAMPLES[m.DisplayData],
    SAMPLES[m.InputRequest],
    SAMPLES[m.ExecuteResult],
    SAMPLES[m.ExecuteReply],
    SAMPLES[m.AuditReceipt],
    m.Fatal(reason="done"),
]


def _kernel_events(chunks: list[bytes]) -> tuple[list[object], list[State]]:
    k = Connection(Role.KERNEL)
    k.send(KERNEL_HELLO)
    events: list[object] = []
    states: list[State] = []
    for chunk in chunks:
        k.receive_data(chunk)
        while (event := k.next_event()) is not NEED_DATA:
            events.append(event)
            states.append(k.state)
            if isinstance(event, ConnectionClosed):
                break
            if isinstance(event, m.Hello):
                k.send(m.AttestRequest(nonce=NONCE, session_id=SID))
            elif isinstance(event, m.AttestResponse):
                k.attestation_verified()
    return events, states


def test_connection_events_are_the_same_whole_and_one_byte_at_a_time() -> None:
    stream = b"".join(frame(msg) for msg in ENCLAVE_SCRIPT + ENCLAVE_OUTPUT)
    whole = _kernel_events([stream])
    assert whole[0] == [*ENCLAVE_SCRIPT, *ENCLAVE_OUTPUT, ConnectionClosed("done", clean=False)]
    assert whole[1][-1] is State.CLOSED
    assert _kernel_events([stream[i : i + 1] for i in range(len(stream))]) == whole


def _drive_with_garbage(conn: Connection, chunks: list[bytes], eof: bool) -> None:
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while not isinstance(conn.next_event(), ConnectionClosed | type(NEED_DATA)):
                pass
        if eof:
            conn.receive_data(b"")
            conn.next_event()
    except RemoteProtocolError:
        assert conn.state is State.ERROR


@FAST
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=48), max_size=6),
    role=st.sampled_from(list(Role)),
    eof=st.booleans(),
)
def test_arbitrary_bytes_into_a_fresh_connection_only_raise_remote_protocol_error(
    chunks: list[bytes], role: Role, eof: bool
) -> None:
    _drive_with_garbage(Connection(role), chunks, eof)


@FAST
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=48), max_size=6),
    prefix=st.lists(st.sampled_from(sorted(SAMPLES, key=_name)), max_size=4),
    side=st.sampled_from(["kernel", "enclave"]),
    eof=st.booleans(),
)
def test_valid_frames_in_any_order_then_garbage_only_raise_remote_protocol_error(
    chunks: list[bytes], prefix: list[type[m.Message]], side: str, eof: bool
) -> None:
    conn = kernel_in(State.READY) if side == "kernel" else enclave_in(State.READY)
    data = b"".join(frame(SAMPLES[cls]) for cls in prefix)
    _drive_with_garbage(conn, [data, *chunks] if data else chunks, eof)


# --- output credit ------------------------------------------------------------------------------------------


def test_output_window_charges_until_full_and_credit_frees() -> None:
    window = OutputWindow(window_bytes=100)
    assert window.window_bytes == 100
    assert window.charge(60)
    assert window.charge(40)
    assert window.outstanding == 100
    assert not window.charge(1)
    assert window.outstanding == 100  # a refused charge changes nothing
    window.credit(30)
    assert window.outstanding == 70
    assert not window.charge(31)
    assert window.charge(30)
    window.credit(100)
    assert window.outstanding == 0


def test_output_window_admits_one_oversized_frame_when_idle() -> None:
    window = OutputWindow(window_bytes=10)
    assert window.charge(1000)  # nothing outstanding: progress is always possible
    assert not window.charge(1)
    window.credit(1000)
    assert window.charge(5)
    assert not window.charge(1000)


def test_output_window_refuses_over_credit_and_bad_amounts() -> None:
    window = OutputWindow()
    assert window.window_bytes == DEFAULT_OUTPUT_WINDOW == 8 * 1024 * 1024
    window.charge(10)
    with pytest.raises(RemoteProtocolError, match="exceeds the 10 outstanding"):
        window.credit(11)
    with pytest.raises(ValueError):
        window.charge(0)
    with pytest.raises(ValueError):
        window.credit(-1)
    with pytest.raises(ValueError):
        OutputWindow(0)
    with pytest.raises(TypeError):
        OutputWindow(1.5)  # type: ignore[arg-type]


def test_output_window_with_real_frames_and_credits() -> None:
    k, e = kernel_in(State.READY), enclave_in(State.READY)
    window = OutputWindow(window_bytes=200)
    sent: list[bytes] = []
    for i in range(20):
        msg = m.Stream(req_id=1, name="stdout", text=f"line {i}\n" * 3)
        assert type(msg) in OUTPUT_MESSAGES
        data = e.send(msg)
        if not window.charge(len(data)):
            break
        sent.append(data)
    assert 0 < len(sent) < 20  # the window stopped the enclave
    credited = 0
    for data in sent:
        (event,) = deliver(k, data)
        assert type(event) in OUTPUT_MESSAGES
        credited += k.last_frame_size
    assert credited == window.outstanding
    assert deliver(e, k.send(m.Credit(nbytes=credited))) == [m.Credit(nbytes=credited)]
    window.credit(credited)
    assert window.outstanding == 0


def test_output_message_set() -> None:
    assert OUTPUT_MESSAGES <= ENCLAVE_APP_MESSAGES
    assert m.ExecuteReply not in OUTPUT_MESSAGES
    assert {m.Stream, m.DisplayData, m.UpdateDisplayData, m.ExecuteResult, m.Error, m.ClearOutput} <= OUTPUT_MESSAGES
