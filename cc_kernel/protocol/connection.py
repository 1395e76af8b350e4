"""Pure protocol layer: the kernel <-> enclave state machine (a transition table) and output credit.

Invariants: no I/O, no clock. Every message sent or received must match an entry of ``TRANSITIONS[role]``
for the current state, else LocalProtocolError (our send) or RemoteProtocolError (their message) and the
connection enters ERROR, which is terminal: every later call raises, except sending one ``Fatal`` to tell the
peer why. One exception: a message too large to send (``MessageTooLarge``) is refused without changing the
state, since nothing was sent. The kernel side cannot encode any application message (code, completions,
uploads, input, comms, interrupts, credit) before ``attestation_verified()``, which is itself legal only after
an AttestResponse was received. The enclave accepts application messages only after it has sent its AttestResponse.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from cc_kernel.errors import LocalProtocolError, MessageTooLarge, ProtocolError, RemoteProtocolError
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    NEED_DATA,
    FrameDecoder,
    NeedData,
    check_max_frame_size,
    encode_frame,
)


class Role(enum.Enum):
    """Which end of the connection we are; the value is the ``Hello.role`` string."""

    KERNEL = "kernel"
    ENCLAVE = "enclave"


class State(enum.Enum):
    """Connection states. Some are used by one role only (noted)."""

    HELLO = "HELLO"  # nothing exchanged yet
    HELLO_SENT = "HELLO_SENT"  # kernel: our Hello sent, waiting for the enclave's
    HELLO_RECEIVED = "HELLO_RECEIVED"  # enclave: the kernel's Hello received, ours is owed
    ATTESTING = "ATTESTING"  # hellos exchanged, version fixed; the kernel may send AttestRequest
    EVIDENCE_PENDING = "EVIDENCE_PENDING"  # AttestRequest sent/received, AttestResponse outstanding
    AWAITING_VERIFICATION = "AWAITING_VERIFICATION"  # kernel: evidence received, caller not done verifying
    READY = "READY"  # application messages both ways
    SHUTTING_DOWN = "SHUTTING_DOWN"  # Shutdown sent/received: the enclave drains output, then ShutdownReply
    CLOSED = "CLOSED"  # orderly end (Fatal, ShutdownReply, or EOF at a frame boundary)
    ERROR = "ERROR"  # a protocol violation; terminal


class Direction(enum.Enum):
    """Whether a table entry is about a message we send, one we receive, or a local event."""

    SEND = "send"
    RECEIVE = "receive"
    LOCAL = "local"


class AttestationVerified:
    """Table key for the local event ``Connection.attestation_verified()``; never on the wire."""


#: Kernel -> enclave application messages: only in READY, i.e. only after the kernel verified the evidence.
KERNEL_APP_MESSAGES: Final[frozenset[type[m.Message]]] = frozenset(
    {
        m.AuditStart,
        m.AuditOff,
        m.ExecuteRequest,
        m.CompleteRequest,
        m.InspectRequest,
        m.IsCompleteRequest,
        m.HistoryRequest,
        m.InputReply,
        m.CommOpen,
        m.CommMsg,
        m.CommClose,
        m.CommInfoRequest,
        m.UploadStart,
        m.UploadChunk,
        m.UploadEnd,
        m.RelayData,
        m.RelayEnd,
        m.Interrupt,
        m.Credit,
    }
)

#: Enclave -> kernel application messages: only once the enclave sent its evidence (READY/SHUTTING_DOWN).
ENCLAVE_APP_MESSAGES: Final[frozenset[type[m.Message]]] = frozenset(
    {
        m.ExecuteReply,
        m.Stream,
        m.DisplayData,
        m.UpdateDisplayData,
        m.ExecuteResult,
        m.Error,
        m.ClearOutput,
        m.CompleteReply,
        m.InspectReply,
        m.IsCompleteReply,
        m.HistoryReply,
        m.InputRequest,
        m.CommOpen,
        m.CommMsg,
        m.CommClose,
        m.CommInfoReply,
        m.UploadReply,
        m.RelayOpen,
        m.RelayData,
        m.RelayEnd,
        m.DatasetKeyed,
        m.DatasetInfo,
        m.AuditReceipt,
        m.SessionInfo,
    }
)

#: Enclave -> kernel messages a cell can emit without bound; their ``output_cost`` counts against ``OutputWindow``.
OUTPUT_MESSAGES: Final[frozenset[type[m.Message]]] = frozenset(
    {m.Stream, m.DisplayData, m.UpdateDisplayData, m.ExecuteResult, m.Error, m.ClearOutput}
    | {m.CommOpen, m.CommMsg, m.CommClose}
)
#: The wire type names of ``OUTPUT_MESSAGES``: the Jupyter IOPub message types a cell's output travels as.
OUTPUT_TYPES: Final[frozenset[str]] = frozenset(msg.TYPE for msg in OUTPUT_MESSAGES)

#: Largest frame the enclave accepts before READY. Everything a client may send before then (Hello,
#: AttestRequest, Ping, Fatal) is a few hundred bytes, so a client that has not even been attested cannot make
#: the enclave buffer a large frame; the full ``max_frame_size`` applies from READY on (once the frames that
#: arrived before it were taken). The kernel keeps its full limit: the enclave's evidence can be large.
PRE_READY_MAX_FRAME_SIZE: Final = 64 * 1024

#: The output window, in ``output_cost`` units (``protocol/flow.py``): output the worker may have sent that the
#: kernel has not credited yet. The worker waits on it; the monitor enforces it; the kernel credits against it.
DEFAULT_OUTPUT_WINDOW: Final = 8 * 1024 * 1024

_Key = tuple[State, Direction, type]
_S, _R, _L = Direction.SEND, Direction.RECEIVE, Direction.LOCAL
# Heartbeats flow both ways once both hellos are through (so the version is fixed).
_LIVE_KERNEL = (State.ATTESTING, State.EVIDENCE_PENDING, State.AWAITING_VERIFICATION, State.READY)
_LIVE_ENCLAVE = (State.ATTESTING, State.EVIDENCE_PENDING, State.READY)
_OPEN = tuple(s for s in State if s not in (State.CLOSED, State.ERROR))
_BEFORE_READY = (
    State.HELLO,
    State.HELLO_SENT,
    State.HELLO_RECEIVED,
    State.ATTESTING,
    State.EVIDENCE_PENDING,
    State.AWAITING_VERIFICATION,
)


def _common(live: tuple[State, ...], states: tuple[State, ...]) -> dict[_Key, State]:
    table: dict[_Key, State] = {}
    for state in (*live, State.SHUTTING_DOWN):
        for direction in (_S, _R):
            table[(state, direction, m.Ping)] = state
            table[(state, direction, m.Pong)] = state
    for state in states:
        table[(state, _S, m.Fatal)] = State.CLOSED
        table[(state, _R, m.Fatal)] = State.CLOSED
    return table


def _table(role: Role) -> dict[_Key, State]:
    """One role's transitions. Both roles walk the same conversation; ``k2e``/``e2k`` is the direction the
    kernel's / the enclave's messages have from this role's side (send or receive)."""
    kernel = role is Role.KERNEL
    k2e, e2k = (_S, _R) if kernel else (_R, _S)
    peer_hello = State.HELLO_SENT if kernel else State.HELLO_RECEIVED  # the one state where only the peer's is owed
    not_ours = (State.HELLO_RECEIVED,) if kernel else (State.HELLO_SENT, State.AWAITING_VERIFICATION)
    t = _common(_LIVE_KERNEL if kernel else _LIVE_ENCLAVE, tuple(s for s in _OPEN if s not in not_ours))
    t[(State.HELLO, k2e, m.Hello)] = peer_hello
    t[(peer_hello, e2k, m.Hello)] = State.ATTESTING
    t[(State.ATTESTING, k2e, m.AttestRequest)] = State.EVIDENCE_PENDING
    if kernel:  # the kernel must verify the evidence before anything else
        t[(State.EVIDENCE_PENDING, e2k, m.AttestResponse)] = State.AWAITING_VERIFICATION
        t[(State.AWAITING_VERIFICATION, _L, AttestationVerified)] = State.READY
    else:
        t[(State.EVIDENCE_PENDING, e2k, m.AttestResponse)] = State.READY
    for kernel_msg in KERNEL_APP_MESSAGES:
        t[(State.READY, k2e, kernel_msg)] = State.READY
    for enclave_msg in ENCLAVE_APP_MESSAGES:
        t[(State.READY, e2k, enclave_msg)] = State.READY
        t[(State.SHUTTING_DOWN, e2k, enclave_msg)] = State.SHUTTING_DOWN  # the enclave drains output before its reply
    t[(State.READY, k2e, m.Shutdown)] = State.SHUTTING_DOWN
    for during in (m.Credit, m.RelayData, m.RelayEnd):  # the owner's log's closing entry travels during the shutdown
        t[(State.SHUTTING_DOWN, k2e, during)] = State.SHUTTING_DOWN
    t[(State.SHUTTING_DOWN, e2k, m.ShutdownReply)] = State.CLOSED
    return t


#: The whole state machine: role -> (state, direction, message type) -> next state. Absent key = violation.
TRANSITIONS: Final[dict[Role, dict[_Key, State]]] = {
    Role.KERNEL: _table(Role.KERNEL),
    Role.ENCLAVE: _table(Role.ENCLAVE),
}


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Returned by ``next_event`` once the connection is CLOSED (every time it is asked again).

    ``clean`` is True only after a Shutdown/ShutdownReply exchange; ``reason`` says why it closed (for a
    peer's Fatal it is the peer's own, untrusted, text).
    """

    reason: str
    clean: bool


class Connection:
    """One end of the kernel <-> enclave protocol: bytes in, events out; messages in, bytes out."""

    def __init__(self, role: Role, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        """Raises TypeError for a bad role, TypeError/ValueError for a bad ``max_frame_size``."""
        if not isinstance(role, Role):
            raise TypeError(f"role must be a Role, got {role!r}")
        self.role: Final = role
        self.max_frame_size: Final = check_max_frame_size(max_frame_size)
        self._table = TRANSITIONS[role]
        self._peer_role = Role.ENCLAVE if role is Role.KERNEL else Role.KERNEL
        self._state = State.HELLO
        # the enclave starts with the pre-READY limit and raises it once READY and nothing older is buffered
        limit = min(PRE_READY_MAX_FRAME_SIZE, max_frame_size) if role is Role.ENCLAVE else max_frame_size
        self._decoder = FrameDecoder(limit)
        self._raise_limit_when_idle = False
        self._offered: tuple[int, ...] = ()
        self._their_version: int | None = None
        self._shutdown_restart: bool | None = None
        self._closed: ConnectionClosed | None = None
        self._error: ProtocolError | None = None
        self._last_frame_size = 0
        self._eof = False

    # --- read-only views ---------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def their_version(self) -> int | None:
        """The negotiated protocol version, once the peer's Hello was accepted (None before)."""
        return self._their_version

    @property
    def closed_reason(self) -> str | None:
        """Why the connection closed (None unless it did). For a peer's Fatal: the peer's text."""
        return self._closed.reason if self._closed else None

    @property
    def receive_frame_limit(self) -> int:
        """The largest frame body accepted from the peer now: ``PRE_READY_MAX_FRAME_SIZE`` on the enclave side
        until READY (and until the frames that arrived before READY were taken), else ``max_frame_size``."""
        return self._decoder.max_frame_size

    def _maybe_raise_limit(self) -> None:
        """From READY on, once no byte received before it is buffered, accept frames up to ``max_frame_size``."""
        if self._raise_limit_when_idle and self._decoder.buffered == 0 and not self._decoder.at_eof:
            self._decoder = FrameDecoder(self.max_frame_size)
            self._raise_limit_when_idle = False

    @property
    def last_frame_size(self) -> int:
        """Bytes (header included) of the frame that carried the last message ``next_event`` returned.

        The kernel credits this amount for output messages (see ``OutputWindow``).
        """
        return self._last_frame_size

    # --- transitions -------------------------------------------------------------------------------------

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._state = State.ERROR
        self._error = error
        return error

    def _raise_if_error(self) -> None:
        if self._error is not None:
            raise type(self._error)(f"connection is in ERROR after: {self._error}")

    def _close(self, reason: str, *, clean: bool) -> ConnectionClosed:
        self._state = State.CLOSED
        self._closed = ConnectionClosed(reason=reason, clean=clean)
        return self._closed

    def _enter(self, new_state: State, msg: m.Message) -> None:
        """Move to ``new_state`` after ``msg`` went out or came in; a message that closes says how."""
        self._state = new_state
        if new_state is State.CLOSED:
            if isinstance(msg, m.Fatal):
                self._close(msg.reason, clean=False)
            else:
                self._close("shutdown complete", clean=True)

    def send(self, msg: m.Message) -> bytes:
        """Check ``msg`` against the state machine and return the frame bytes to write.

        In ERROR, only a ``Fatal`` may still be sent (the state stays ERROR); everything else raises.

        Raises:
            TypeError: ``msg`` is not a protocol message (the state does not change).
            LocalProtocolError: this message is not allowed now (e.g. an application message before
                ``attestation_verified()``) or a field is invalid. Moves to ERROR.
            MessageTooLarge: the message is allowed now but encodes to more than ``max_frame_size`` bytes.
                Nothing is sent or recorded: the state does not change (a LocalProtocolError subclass).
        """
        if not isinstance(msg, m.Message) or m.REGISTRY.get(msg.TYPE) is not type(msg):
            raise TypeError(f"not a protocol message: {type(msg).__name__}")
        if self._state is State.ERROR:
            if isinstance(msg, m.Fatal):
                return encode_frame(m.encode_message(msg), self.max_frame_size)
            raise LocalProtocolError(f"cannot send {type(msg).__name__}: connection is in ERROR ({self._error})")
        key = (self._state, Direction.SEND, type(msg))
        try:
            new_state = self._table.get(key)
            if new_state is None:
                raise LocalProtocolError(self._refusal(msg))
            self._check_send(msg)
            frame = encode_frame(m.encode_message(msg), self.max_frame_size)
        except MessageTooLarge as exc:
            # A property of this one message, not of the conversation: nothing was sent or recorded, so the
            # connection stays as it was and the caller can fail just this request.
            raise MessageTooLarge(
                f"{type(msg).__name__} encodes to {exc.size} bytes, over the limit of {exc.limit} bytes for one "
                "message; it was not sent (the connection is unchanged)",
                size=exc.size,
                limit=exc.limit,
            ) from None
        except LocalProtocolError as exc:
            raise self._fail(exc) from None
        self._commit_send(msg, new_state)
        return frame

    def _refusal(self, msg: m.Message) -> str:
        name = type(msg).__name__
        if self.role is Role.KERNEL and type(msg) in KERNEL_APP_MESSAGES and self._state in _BEFORE_READY:
            return f"cannot send {name} in state {self._state.value}: attestation_verified() was not called"
        return f"{self.role.value} cannot send {name} in state {self._state.value}"

    def _check_send(self, msg: m.Message) -> None:
        if isinstance(msg, m.Hello):
            if msg.role != self.role.value:
                raise LocalProtocolError(f"our Hello must say role {self.role.value!r}, not {msg.role!r}")
            if len(set(msg.versions)) != len(msg.versions):
                raise LocalProtocolError(f"Hello versions must be distinct, got {msg.versions}")
            if self.role is Role.KERNEL:
                unsupported = set(msg.versions) - set(m.SUPPORTED_VERSIONS)
                if unsupported:
                    raise LocalProtocolError(f"cannot offer versions we do not speak: {sorted(unsupported)}")
            elif msg.versions != [self._their_version]:
                raise LocalProtocolError(
                    f"the enclave's Hello must carry exactly the negotiated version [{self._their_version}],"
                    f" not {msg.versions}"
                )
        elif isinstance(msg, m.ShutdownReply) and msg.restart != self._shutdown_restart:
            raise LocalProtocolError(f"ShutdownReply.restart must echo the request ({self._shutdown_restart})")

    def _commit_send(self, msg: m.Message, new_state: State) -> None:
        if isinstance(msg, m.Hello) and self.role is Role.KERNEL:
            self._offered = tuple(msg.versions)
        elif isinstance(msg, m.Shutdown):
            self._shutdown_restart = msg.restart
        if new_state is State.READY and self._decoder.max_frame_size < self.max_frame_size:
            self._raise_limit_when_idle = True
            self._maybe_raise_limit()
        self._enter(new_state, msg)

    def attestation_verified(self) -> None:
        """Kernel only: the caller verified the AttestResponse's evidence; unlock application messages.

        Raises:
            LocalProtocolError: not the kernel, or not in AWAITING_VERIFICATION (no AttestResponse received
                yet, or called twice). Moves to ERROR.
        """
        self._raise_if_error()
        new_state = self._table.get((self._state, Direction.LOCAL, AttestationVerified))
        if new_state is None:
            raise self._fail(
                LocalProtocolError(
                    f"attestation_verified() is not allowed for the {self.role.value} in state "
                    f"{self._state.value} (only after an AttestResponse was received)"
                )
            )
        self._state = new_state

    # --- receiving ---------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its side (EOF). Messages are parsed by
        ``next_event``; whole frames that arrived before EOF are still delivered. Once CLOSED, incoming bytes
        are discarded (nothing the peer says matters any more).

        Raises:
            TypeError: ``data`` is not bytes-like.
            ValueError: non-empty data after EOF.
            RemoteProtocolError: EOF while the buffer ends inside a frame ("peer closed mid-frame"), or a
                buffered header is invalid. Moves to ERROR.
            LocalProtocolError/RemoteProtocolError: the connection is already in ERROR (same class as the
                cause).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        self._raise_if_error()
        if self._state is State.CLOSED:
            return
        if self._eof:
            if data:
                raise ValueError("receive_data() after EOF")
            return
        if data:
            self._maybe_raise_limit()
            self._decoder.feed(data)
            return
        self._eof = True
        try:
            self._decoder.eof()
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None

    def next_event(self) -> m.Message | NeedData | ConnectionClosed:
        """The next message from the peer, ``NEED_DATA``, or ``ConnectionClosed`` (repeatedly) once CLOSED.

        Messages already buffered when the peer closed are still returned; EOF at a frame boundary then
        closes the connection (``clean=False``).

        Raises:
            RemoteProtocolError: the peer broke the protocol (bad frame, bad message, wrong state, no common
                version, EOF mid-frame). Moves to ERROR.
            LocalProtocolError: the connection is already in ERROR because of our own violation.
        """
        self._raise_if_error()
        if self._closed is not None:
            return self._closed
        try:
            frame = self._decoder.next_frame()
            if frame is NEED_DATA:
                if not self._eof:
                    return NEED_DATA
                # receive_data(b"") already checked that the peer did not stop inside a frame
                return self._close("peer closed the connection without Fatal or ShutdownReply", clean=False)
            msg = m.decode_message(codec.unpackb(frame, max_size=self.max_frame_size))
            new_state = self._table.get((self._state, Direction.RECEIVE, type(msg)))
            if new_state is None:
                raise RemoteProtocolError(
                    f"{self._peer_role.value} sent {type(msg).__name__} in state {self._state.value}"
                )
            self._check_receive(msg)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        self._last_frame_size = HEADER_SIZE + len(frame)
        self._maybe_raise_limit()
        self._enter(new_state, msg)
        return msg

    def _check_receive(self, msg: m.Message) -> None:
        if isinstance(msg, m.Hello):
            if msg.role != self._peer_role.value:
                raise RemoteProtocolError(f"peer Hello says role {msg.role!r}, expected {self._peer_role.value!r}")
            if len(set(msg.versions)) != len(msg.versions):
                raise RemoteProtocolError(f"peer Hello versions are not distinct: {msg.versions}")
            if self.role is Role.ENCLAVE:
                self._their_version = m.negotiate(m.SUPPORTED_VERSIONS, msg.versions)
            else:
                if len(msg.versions) != 1 or msg.versions[0] not in self._offered:
                    raise RemoteProtocolError(
                        f"the enclave must choose exactly one of our versions {list(self._offered)}, "
                        f"it answered {msg.versions}"
                    )
                self._their_version = msg.versions[0]
        elif isinstance(msg, m.Shutdown):
            self._shutdown_restart = msg.restart
        elif isinstance(msg, m.ShutdownReply) and msg.restart != self._shutdown_restart:
            raise RemoteProtocolError(
                f"ShutdownReply.restart={msg.restart} does not echo Shutdown.restart={self._shutdown_restart}"
            )


class OutputWindow:
    """Credit-based output backpressure: the one window of the whole path (pure; no waiting inside).

    Units are ``output_cost(msg)`` (``protocol/flow.py``), which depends only on a message's fields, so every
    hop computes the same number. The worker may have at most ``window_bytes`` units of output
    (``OUTPUT_MESSAGES``) that the kernel has not yet acknowledged with ``Credit``. Worker::

        while not window.charge(output_cost(msg)):
            ...wait until a Credit arrives (the monitor forwards the kernel's), then window.credit(n)...
        send(msg)

    The monitor charges the same window as it forwards each output and credits it when the kernel's Credit
    passes through; since it credits before and charges after the worker does, a failed ``charge`` there can
    only mean a worker that bypassed its own window, and ends the session. The kernel returns ``Credit`` with
    the summed ``output_cost`` of what it handed to Jupyter.
    A frame larger than the whole window is admitted when nothing is outstanding, so progress is always
    possible: ``outstanding`` never exceeds ``max(window_bytes, largest frame)``.
    """

    def __init__(self, window_bytes: int = DEFAULT_OUTPUT_WINDOW) -> None:
        """Raises TypeError/ValueError unless ``window_bytes`` is a positive int."""
        if type(window_bytes) is not int:
            raise TypeError(f"window_bytes must be int, got {type(window_bytes).__name__}")
        if window_bytes < 1:
            raise ValueError(f"window_bytes must be positive, got {window_bytes}")
        self.window_bytes: Final = window_bytes
        self._outstanding = 0

    @property
    def outstanding(self) -> int:
        """Output bytes charged and not yet credited."""
        return self._outstanding

    def charge(self, nbytes: int) -> bool:
        """Charge one output frame of ``nbytes`` if it fits; return whether it was charged.

        It fits if ``outstanding + nbytes <= window_bytes``, or if nothing is outstanding. A refused charge
        changes nothing.

        Raises:
            ValueError: ``nbytes`` is not a positive int.
        """
        if type(nbytes) is not int or nbytes < 1:
            raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
        if self._outstanding and self._outstanding + nbytes > self.window_bytes:
            return False
        self._outstanding += nbytes
        return True

    def credit(self, nbytes: int) -> None:
        """Release ``nbytes`` that the kernel acknowledged (a ``Credit`` message).

        Raises:
            ValueError: ``nbytes`` is not a non-negative int.
            RemoteProtocolError: more credit than is outstanding (the peer acknowledged bytes never sent).
        """
        if type(nbytes) is not int or nbytes < 0:
            raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
        if nbytes > self._outstanding:
            raise RemoteProtocolError(f"credit of {nbytes} bytes exceeds the {self._outstanding} outstanding")
        self._outstanding -= nbytes
