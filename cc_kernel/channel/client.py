"""I/O (the kernel's end of the attested channel): connect, handshake, challenge, verify — then unlock.

Invariant: ``connect_attested`` returns a channel whose protocol state allows application messages only after
``verify_peer`` passed for a nonce chosen here for this connection; on any failure the channel is closed and
nothing but Hello / AttestRequest / Fatal was ever sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cc_kernel import __version__
from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.binding import NONCE_SIZE, SESSION_ID_SIZE
from cc_kernel.attestation.policy import Policy
from cc_kernel.channel.clients import ClientIdentity
from cc_kernel.channel.ratls import AttestedPeer, verify_peer
from cc_kernel.channel.transport import Address, FramedChannel, client_refusal, open_client
from cc_kernel.errors import BrokenChannelError, CCKernelError, RemoteProtocolError
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.protocol.messages import (
    PROTOCOL_VERSION,
    AttestRequest,
    AttestResponse,
    Fatal,
    Hello,
    SessionInfo,
)

if TYPE_CHECKING:  # Intel collateral code loads only when a DCAP quote is verified
    from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class AttestedChannel:
    """A verified channel to an enclave, with what was verified."""

    channel: FramedChannel
    peer: AttestedPeer
    session_id: bytes
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: What the enclave's monitor says protects the session inside the TEE (its worker's sandbox).
    session_info: SessionInfo | None = None
    #: SPKI SHA-256 of the client key this side presented (None: none, as in local mode).
    client_key_sha256: bytes | None = None


async def connect_attested(
    target: Address | socket.socket,
    *,
    policy: Policy,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None = None,
    collateral: DcapCollateral | None = None,
    session_id: bytes | None = None,
    timeout: float = 15.0,
    now: Callable[[], datetime] = _utcnow,
    client_identity: ClientIdentity | None = None,
) -> AttestedChannel:
    """Connect to an enclave and verify it; return the channel ready for application messages.

    ``collateral``: this side's own Intel collateral for a TDX/SGX enclave (see ``verify_evidence``).
    ``client_identity``: the client key presented to a server that requires one (remote mode); None for the
    kernel's own enclave process (local mode).

    Raises:
        ServerBusy: the enclave server runs as many sessions as it may (its unauthenticated busy line).
        ClientNotAuthorized: the server refused our client key (or our lack of one) at the TLS handshake; the
            message carries the line its owner must add.
        ConnectError: cannot connect or complete the TLS 1.3 handshake.
        BrokenChannelError / RemoteProtocolError: the enclave broke the protocol or the connection.
        VerificationError (subclasses): the evidence was refused; the error names the failed check.
    """
    t0 = time.perf_counter()
    conn = Connection(Role.KERNEL)
    channel = await open_client(target, conn, timeout=timeout, client_identity=client_identity)
    timings = {"tls_handshake": (time.perf_counter() - t0) * 1000}
    session_id = session_id if session_id is not None else os.urandom(SESSION_ID_SIZE)
    nonce = os.urandom(NONCE_SIZE)
    try:
        async with asyncio.timeout(timeout):
            await channel.send(Hello(role="kernel", versions=[PROTOCOL_VERSION], software=f"cc-kernel {__version__}"))
            hello = await channel.receive()
            if isinstance(hello, Fatal):  # the server ended the session before it began (its reason: a hint)
                raise BrokenChannelError(f"the enclave server closed the connection: {hello.reason}")
            if not isinstance(hello, Hello):
                raise RemoteProtocolError(f"expected Hello from the enclave, got {type(hello).__name__}")
            await channel.send(AttestRequest(nonce=nonce, session_id=session_id))
            t1 = time.perf_counter()
            response = await channel.receive()
            if not isinstance(response, AttestResponse):
                raise RemoteProtocolError(f"expected AttestResponse, got {type(response).__name__}")
            timings["evidence"] = (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        peer = verify_peer(
            peer_cert_der=channel.peer_cert_der,
            envelope_bytes=response.envelope,
            nonce=nonce,
            session_id=session_id,
            policy=policy,
            anchors=anchors,
            simulation_anchors=simulation_anchors,
            collateral=collateral,
            now=now(),
        )
        timings["verify"] = (time.perf_counter() - t2) * 1000
        conn.attestation_verified()
    except TimeoutError as exc:
        await channel.aclose()
        raise RemoteProtocolError(f"the enclave did not answer the attestation challenge within {timeout} s") from exc
    except CCKernelError as exc:
        # In TLS 1.3 a server refuses a client certificate after the client's handshake: it shows here.
        refused = client_refusal(exc, client_identity)
        if refused is not None:
            await channel.aclose()
            raise refused from exc
        # Tell the enclave why (no user data is involved), then close. Best effort.
        with contextlib.suppress(CCKernelError, TimeoutError):
            await asyncio.wait_for(channel.send(Fatal(reason=f"attestation refused: {type(exc).__name__}")), 1.0)
        await channel.aclose()
        raise
    except BaseException:  # cancelled (e.g. an outer timeout) or a programming error: still close the channel
        await channel.aclose()
        raise
    try:  # the monitor says what protects the session, or refuses to serve it (Fatal, with its reason)
        async with asyncio.timeout(timeout):
            info = await channel.receive()
        if isinstance(info, Fatal):
            raise BrokenChannelError(f"the enclave verified but refused to start the session: {info.reason}")
        if not isinstance(info, SessionInfo):
            raise RemoteProtocolError(f"expected SessionInfo after attestation, got {type(info).__name__}")
    except TimeoutError as exc:
        await channel.aclose()
        raise RemoteProtocolError(f"the enclave did not start its session within {timeout} s") from exc
    except BaseException:
        await channel.aclose()
        raise
    timings["total"] = (time.perf_counter() - t0) * 1000
    return AttestedChannel(
        channel=channel, peer=peer, session_id=session_id, timings_ms=timings, session_info=info,
        client_key_sha256=client_identity.spki_sha256 if client_identity is not None else None,
    )
