"""I/O: the enclave side of a session's start — TLS handshake (with client keys), Hello, the attestation request.

Invariant: everything an unauthenticated, unattested client can make the enclave do is bounded here, in time and
in memory. ``accept_session`` returns only after the client completed the TLS 1.3 handshake (presenting an
authorised client key, unless the server serves anyone), both Hellos were exchanged and the client's
AttestRequest arrived, all within one deadline (``PRE_ATTESTATION_TIMEOUT`` by default); until then the
Connection accepts frames of at most ``PRE_READY_MAX_FRAME_SIZE`` bytes and the transport buffers at most two
of them. Each failure raises with a reason fit for the session's log.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from cc_kernel import __version__
from cc_kernel.channel import PRE_ATTESTATION_TIMEOUT
from cc_kernel.channel.clients import AuthorizedClients
from cc_kernel.channel.transport import FramedChannel, accept_server
from cc_kernel.crypto.keys import TlsIdentity
from cc_kernel.errors import ConnectError, RemoteProtocolError
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, Role


@dataclass
class PendingSession:
    """A client that completed the handshake and asked for evidence. The caller answers ``request`` with an
    AttestResponse on ``channel`` (the enclave's Connection is then READY)."""

    channel: FramedChannel
    request: m.AttestRequest
    #: SPKI SHA-256 of the client's authorised key; None when the server serves any client.
    client_key_sha256: bytes | None


async def accept_session(
    sock: socket.socket,
    identity: TlsIdentity,
    *,
    clients: AuthorizedClients | None,
    timeout: float = PRE_ATTESTATION_TIMEOUT,
    software: str = f"cc-kernel {__version__}",
) -> PendingSession:
    """Run a session's start on an accepted socket, within ``timeout`` seconds in all.

    ``clients`` as for ``accept_server`` (None: any client; local mode or the explicit unsafe option).

    Raises:
        ClientNotAuthorized: the client's key is not authorised (no, unknown or expired certificate).
        ConnectError: the TLS handshake failed, or the client did not get to its AttestRequest in time.
        RemoteProtocolError / BrokenChannelError: the client sent something else than Hello then AttestRequest
            (e.g. a frame over the pre-READY limit), or broke the connection.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    channel = await accept_server(sock, identity, Connection(Role.ENCLAVE), clients=clients, timeout=timeout)
    try:
        async with asyncio.timeout_at(deadline):
            hello = await channel.receive()
            if not isinstance(hello, m.Hello):
                raise RemoteProtocolError(f"expected Hello, got {type(hello).__name__}")
            version = m.negotiate([m.PROTOCOL_VERSION], hello.versions)
            await channel.send(m.Hello(role="enclave", versions=[version], software=software))
            request = await channel.receive()
            if not isinstance(request, m.AttestRequest):
                raise RemoteProtocolError(f"expected AttestRequest, got {type(request).__name__}")
    except TimeoutError:
        await channel.aclose()
        raise ConnectError(f"the client sent no attestation request within {timeout} s of connecting") from None
    except BaseException:
        await channel.aclose()
        raise
    return PendingSession(channel=channel, request=request, client_key_sha256=channel.client_key_sha256)
