"""The FramedChannel's receive path (transport.py): bounded buffering with a slow consumer, frames larger than
the buffering bound, messages delivered before a failure, and closing while a task waits.

Both ends are real FramedChannels over TLS 1.3 on a socketpair, in this process; the Connections reach READY
with real frames (no evidence is verified: only the transport is under test).
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime

import pytest

from cc_kernel.channel import transport
from cc_kernel.channel.transport import (
    READ_CHUNK,
    RECEIVE_HIGH_WATER,
    FramedChannel,
    accept_server,
    open_client,
)
from cc_kernel.crypto.keys import make_tls_identity, new_tls_key
from cc_kernel.errors import BrokenChannelError, ClosedChannelError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, Role, State
from cc_kernel.protocol.framing import encode_frame
from cc_kernel.testing.enclaves import raw_tls_server
from cc_kernel.testing.waiting import wait_until_async


async def _ready_pair() -> tuple[FramedChannel, FramedChannel]:
    """A kernel channel and an enclave channel, both READY (the kernel marks the attestation verified
    without checking anything)."""
    kernel_sock, enclave_sock = socket.socketpair()
    identity = make_tls_identity(new_tls_key(), now=datetime.now(UTC))
    server = asyncio.ensure_future(accept_server(enclave_sock, identity, Connection(Role.ENCLAVE), clients=None))
    kernel = await open_client(kernel_sock, Connection(Role.KERNEL))
    enclave = await server
    await kernel.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="test"))
    assert isinstance(await enclave.receive(), m.Hello)
    await enclave.send(m.Hello(role="enclave", versions=[m.PROTOCOL_VERSION], software="test"))
    assert isinstance(await kernel.receive(), m.Hello)
    await kernel.send(m.AttestRequest(nonce=bytes(32), session_id=bytes(16)))
    assert isinstance(await enclave.receive(), m.AttestRequest)
    await enclave.send(m.AttestResponse(envelope=b"not evidence: transport test"))
    assert isinstance(await kernel.receive(), m.AttestResponse)
    kernel.conn.attestation_verified()
    assert kernel.conn.state is State.READY and enclave.conn.state is State.READY
    return kernel, enclave


def test_a_slow_consumer_pauses_reading_and_the_sender_waits() -> None:
    """The receiver buffers at most about RECEIVE_HIGH_WATER of undelivered messages; the sender is held back
    by TLS backpressure; once the consumer reads, everything arrives, in order."""
    chunk = os.urandom(64 * 1024)
    count = 3 * RECEIVE_HIGH_WATER // len(chunk)

    async def main() -> None:
        kernel, enclave = await _ready_pair()
        sent = 0

        async def produce() -> None:
            nonlocal sent
            for i in range(count):
                await kernel.send(m.UploadChunk(req_id=i + 1, data=chunk))
                sent += 1

        producer = asyncio.ensure_future(produce())
        protocol = enclave._protocol
        await wait_until_async(lambda: protocol.reading_paused, timeout=10, what="the receiver pausing")
        stalled_at = sent
        # the sender is held back: only socket and TLS buffers in between
        await wait_until_async(lambda: kernel._protocol._writing_paused, timeout=10, what="the sender pausing")
        for _ in range(10):  # a few loop turns: nothing the receiver does lets the sender go on
            await asyncio.sleep(0)
        assert not producer.done()
        assert sent - stalled_at < 64
        assert protocol.reading_paused
        assert protocol.backlog <= RECEIVE_HIGH_WATER + READ_CHUNK
        assert enclave.conn._decoder.buffered == protocol.backlog
        for i in range(count):
            msg = await enclave.receive()
            assert msg == m.UploadChunk(req_id=i + 1, data=chunk)
        await producer
        assert not protocol.reading_paused and protocol.backlog == 0
        await kernel.aclose()
        await enclave.aclose()

    asyncio.run(main())


def test_a_frame_larger_than_the_buffering_bound_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading is never left paused while the buffered bytes are the start of one unfinished frame."""
    monkeypatch.setattr(transport, "RECEIVE_HIGH_WATER", 256 * 1024)
    monkeypatch.setattr(transport, "RECEIVE_LOW_WATER", 128 * 1024)
    big = os.urandom(3 * 1024 * 1024)

    async def main() -> None:
        kernel, enclave = await _ready_pair()
        small = m.UploadChunk(req_id=1, data=b"small")
        async with asyncio.timeout(30):
            for _ in range(3):
                sender = asyncio.ensure_future(kernel.send(m.UploadChunk(req_id=2, data=big)))
                assert await enclave.receive() == m.UploadChunk(req_id=2, data=big)
                await sender
                await kernel.send(small)
                assert await enclave.receive() == small
        assert not enclave._protocol.reading_paused
        await kernel.aclose()
        await enclave.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_whole_messages_are_delivered_before_the_end_is_reported(how: str) -> None:
    """A peer writes two whole frames and half of a third, then goes away: two messages, then the error."""

    async def main() -> None:
        kernel_sock, peer_sock = socket.socketpair()
        server = asyncio.ensure_future(raw_tls_server(peer_sock))
        channel = await open_client(kernel_sock, Connection(Role.KERNEL))
        _, writer = await server
        await channel.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="test"))
        hello = encode_frame(m.encode_message(m.Hello(role="enclave", versions=[m.PROTOCOL_VERSION], software="t")))
        ping = encode_frame(m.encode_message(m.Ping(seq=1)))
        writer.write(hello + ping + ping[:3])
        await writer.drain()
        await wait_until_async(lambda: channel.bytes_received == len(hello) + len(ping) + 3, timeout=10,
                               what="the frames and a half arriving")
        if how == "abort":
            writer.transport.abort()
        else:
            writer.close()
        async with asyncio.timeout(10):
            assert isinstance(await channel.receive(), m.Hello)
            assert await channel.receive() == m.Ping(seq=1)
            with pytest.raises(BrokenChannelError, match="the peer closed the channel"):
                await channel.receive()
        await channel.aclose()

    asyncio.run(main())


def test_closing_fails_a_waiting_receive_and_a_blocked_send() -> None:
    async def main() -> None:
        kernel, enclave = await _ready_pair()
        waiting = asyncio.ensure_future(kernel.receive())  # the enclave sends nothing
        await wait_until_async(lambda: kernel._protocol._waiter is not None, timeout=10, what="the receive waiting")
        assert not waiting.done()
        with pytest.raises(RuntimeError, match="another task is already waiting"):
            await kernel.receive()

        async def send_forever() -> None:
            data = os.urandom(256 * 1024)
            while True:
                await kernel.send(m.UploadChunk(req_id=1, data=data))

        blocked = asyncio.ensure_future(send_forever())  # the enclave does not read: the sends end up blocked
        await wait_until_async(lambda: kernel._protocol._writing_paused and enclave._protocol.reading_paused,
                               timeout=20, what="the sender blocked")
        await kernel.aclose()
        async with asyncio.timeout(5):
            with pytest.raises(ClosedChannelError, match="the channel was closed"):
                await waiting
            with pytest.raises(ClosedChannelError, match="the channel was closed"):
                await blocked
        with pytest.raises(ClosedChannelError, match="the channel was closed"):
            await kernel.send(m.Ping(seq=1))
        await enclave.aclose()

    asyncio.run(main())
