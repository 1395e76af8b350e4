"""I/O (key broker): release messages on a TLS stream, each as ``u32be(length) ‖ encode_release(msg)``."""

from __future__ import annotations

import asyncio

from cc_kernel.dataset.release import MAX_MESSAGE_SIZE, ReleaseMessage, decode_release, encode_release
from cc_kernel.errors import BrokenChannelError, RemoteProtocolError

#: Seconds a peer has to send each message.
MESSAGE_TIMEOUT = 30.0


async def send(writer: asyncio.StreamWriter, msg: ReleaseMessage) -> None:
    """Write one message and drain."""
    data = encode_release(msg)
    writer.write(len(data).to_bytes(4, "big") + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader, *, timeout: float | None = MESSAGE_TIMEOUT) -> ReleaseMessage:
    """Read one message (``timeout`` None: wait as long as the connection lasts).

    Raises:
        BrokenChannelError: EOF, reset or timeout. RemoteProtocolError: oversized or malformed.
    """
    try:
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        n = int.from_bytes(head, "big")
        if not 1 <= n <= MAX_MESSAGE_SIZE:
            raise RemoteProtocolError(f"a release message of {n} bytes is outside 1..{MAX_MESSAGE_SIZE}")
        data = await asyncio.wait_for(reader.readexactly(n), timeout)
    except TimeoutError as exc:
        raise BrokenChannelError(f"the release connection broke: nothing arrived for {timeout:g} s") from exc
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise BrokenChannelError(f"the release connection broke: {type(exc).__name__}") from exc
    return decode_release(data)
