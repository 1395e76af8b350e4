"""Pure protocol layer: the monitor <-> worker link inside the TEE (message sets, frame codec; no I/O).

The two processes of a session talk over a private socketpair with the same frames and messages as the
kernel <-> enclave channel, without TLS and without the attestation states. Invariants: the monitor accepts
from the worker only ``WORKER_TO_MONITOR`` messages, each decoded under the frame cap and the strict message
schema (``RemoteProtocolError`` otherwise); the worker accepts only ``MONITOR_TO_WORKER``. Which reply answers
which request is ``REPLY_FOR``; a comm message, which has no Jupyter reply, is finished by ``RequestDone``.
"""

from __future__ import annotations

from typing import Final

from cc_kernel.errors import RemoteProtocolError
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import OUTPUT_MESSAGES
from cc_kernel.protocol.framing import DEFAULT_MAX_FRAME_SIZE, NEED_DATA, FrameDecoder, encode_frame

#: Requests the monitor hands to the worker, one at a time, and the reply that finishes each.
REPLY_FOR: Final[dict[type[m.Message], type[m.Message]]] = {
    m.ExecuteRequest: m.ExecuteReply,
    m.CompleteRequest: m.CompleteReply,
    m.InspectRequest: m.InspectReply,
    m.IsCompleteRequest: m.IsCompleteReply,
    m.HistoryRequest: m.HistoryReply,
    m.CommInfoRequest: m.CommInfoReply,
    m.CommOpen: m.RequestDone,
    m.CommMsg: m.RequestDone,
    m.CommClose: m.RequestDone,
    m.UploadStart: m.UploadReply,
}

#: Everything the monitor may send the worker.
MONITOR_TO_WORKER: Final[frozenset[type[m.Message]]] = frozenset(
    {*REPLY_FOR, m.UploadChunk, m.UploadEnd, m.InputReply, m.Credit, m.Shutdown}
)

#: Everything the worker may send the monitor: outputs, replies, input prompts, its start report, its goodbye.
WORKER_TO_MONITOR: Final[frozenset[type[m.Message]]] = frozenset(
    {*OUTPUT_MESSAGES, *REPLY_FOR.values(), m.InputRequest, m.WorkerReady, m.ShutdownReply}
)


def encode(msg: m.Message) -> bytes:
    """One frame carrying ``msg``. Raises LocalProtocolError if it cannot be encoded or exceeds the cap."""
    return encode_frame(m.encode_message(msg))


class LinkDecoder:
    """Incremental decoder for one direction of the link: ``feed(bytes)``, then ``next_message()`` until None.

    Raises RemoteProtocolError for an oversized or malformed frame, an invalid message, or a message type
    this direction does not carry (named). After an error the decoder is unusable: the caller ends the link.
    """

    def __init__(self, allowed: frozenset[type[m.Message]], *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._allowed = allowed
        self._frames = FrameDecoder(max_frame_size)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._frames.feed(data)

    def eof(self) -> None:
        """The peer closed; raises RemoteProtocolError if it closed in the middle of a frame."""
        self._frames.eof()

    def next_message(self) -> m.Message | None:
        frame = self._frames.next_frame()
        if frame is NEED_DATA:
            return None
        msg = m.decode_message(codec.unpackb(frame))
        if type(msg) not in self._allowed:
            raise RemoteProtocolError(f"{msg.TYPE} is not allowed in this direction of the monitor <-> worker link")
        return msg
