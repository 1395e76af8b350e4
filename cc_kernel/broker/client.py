"""I/O (key broker): the requester's side of the release exchange over TLS (the monitor runs it, via a relay).

Invariants: the broker is authenticated by the TLS key digest the sealed header pins (``check_broker``) before
any release message is sent; the data key is recovered only by ``ReleaseClient.open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Awaitable, Callable

from cc_kernel.broker.wire import receive, send
from cc_kernel.channel.transport import client_context, parse_address
from cc_kernel.crypto.keys import peer_certificate_info
from cc_kernel.dataset.format import DatasetHeader
from cc_kernel.dataset.release import (
    ReleaseChallenge,
    ReleaseClient,
    ReleasedKey,
    ReleaseRefusal,
    ReleaseResponse,
    check_broker,
)
from cc_kernel.errors import ConnectError, ReleaseRefused, RemoteProtocolError

#: ``collect(report_data, release_pub, dataset_id, nonce)`` -> an encoded evidence envelope binding report_data.
Collect = Callable[[bytes, bytes, bytes, bytes], Awaitable[bytes]]


async def connect_broker(
    address: str, header: DatasetHeader, *, timeout: float = 30.0, sock: socket.socket | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the broker the sealed ``header`` names, checked against the key it pins.

    ``sock``: an already connected stream socket to run the TLS connection over instead of dialling
    ``address`` (the monitor's end of a relay the kernel carries); ``address`` then only names the broker.

    Raises:
        ConnectError: nothing answers or TLS fails. WrongBroker: the broker's key is not the pinned one.
    """
    try:
        if sock is not None:
            opening = asyncio.open_connection(sock=sock, ssl=client_context(), server_hostname="")
        else:
            addr = parse_address(address)
            opening = asyncio.open_connection(addr.host, addr.port, ssl=client_context(), server_hostname=None)
        reader, writer = await asyncio.wait_for(opening, timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot reach the broker at {address}: {exc}") from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not cert:
            raise ConnectError(f"the broker at {address} presented no certificate")
        spki, _ = peer_certificate_info(cert)
        check_broker(header, spki_sha256=hashlib.sha256(spki).digest())
    except BaseException:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        raise
    return reader, writer


async def release_exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    header: DatasetHeader,
    header_sha256: bytes,
    *,
    collect: Collect,
    requester_spki_sha256: bytes,
    timeout: float = 30.0,
) -> ReleasedKey:
    """Run one release exchange on a connection from ``connect_broker`` (left open for the caller).

    Raises:
        ReleaseRefused / DatasetExpired / TamperedDataset: from ``ReleaseClient.open``.
        BrokenChannelError, RemoteProtocolError: the connection broke or the broker broke the protocol.
    """
    client = ReleaseClient(header, header_sha256, requester_spki_sha256=requester_spki_sha256)
    await send(writer, client.request())
    challenge = await receive(reader, timeout=timeout)
    if isinstance(challenge, ReleaseRefusal):
        return client.open(challenge)  # raises the broker's refusal
    if not isinstance(challenge, ReleaseChallenge):
        raise RemoteProtocolError(f"the broker answered a request with {type(challenge).__name__}")
    report_data = client.report_data(challenge)
    evidence = await collect(report_data, client.release_key.public_bytes, header.dataset_id, challenge.nonce)
    await send(writer, client.attestation(evidence))
    reply = await receive(reader, timeout=timeout)
    if not isinstance(reply, ReleaseResponse | ReleaseRefusal):
        raise RemoteProtocolError(f"the broker answered an attestation with {type(reply).__name__}")
    return client.open(reply)


async def request_key(
    address: str,
    header: DatasetHeader,
    header_sha256: bytes,
    *,
    collect: Collect,
    requester_spki_sha256: bytes,
    timeout: float = 30.0,
    sock: socket.socket | None = None,
) -> ReleasedKey:
    """Run one release exchange with the broker at ``address`` (``HOST:PORT``; a relay may stand in for it),
    then close the connection (``sock`` as in ``connect_broker``).

    Raises:
        ConnectError, WrongBroker: as ``connect_broker``.
        ReleaseRefused / DatasetExpired / TamperedDataset, BrokenChannelError, RemoteProtocolError: as
            ``release_exchange``.
    """
    reader, writer = await connect_broker(address, header, timeout=timeout, sock=sock)
    try:
        return await release_exchange(reader, writer, header, header_sha256, collect=collect,
                                      requester_spki_sha256=requester_spki_sha256, timeout=timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


__all__ = ["Collect", "ReleaseRefused", "connect_broker", "release_exchange", "request_key"]
