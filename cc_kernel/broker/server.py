"""I/O (key broker): ``cc-kernel broker serve`` — a TLS 1.3 server that runs the release exchange for each connection.

Invariants: every request, verdict and release is in the broker log before the answer is sent; a release is
counted (durably) before the wrapped key leaves; all decisions are ``dataset.release.appraise_release``'s; one
exchange at a time per dataset decides and counts (a lock), so ``max_sessions`` cannot be raced. After a release
the connection stays open for the owner's log of that session (``<id>-<n>.cclog`` in the store, written with
``audit.receipts.LogWriter``, which checks every entry's signature and chain before appending it and fsyncs it
before the acknowledgement); whether that log was opened, closed or broken off is in the broker log. No
connection holds a broker task forever: every connection has TCP keepalive (a peer whose host or network vanished
is detected within ``KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT`` seconds), and an owner's log on
which nothing arrives for ``OWNER_LOG_IDLE_S`` is ended (the broker log says so; the session, on its next
request, finds its owner's log lost and stops using the dataset).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cc_kernel import __version__
from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.audit.receipts import LogWriter
from cc_kernel.broker.store import BrokerStore
from cc_kernel.broker.wire import receive, send
from cc_kernel.channel.transport import listen, parse_address, server_context
from cc_kernel.dataset.release import (
    DatasetRecord,
    LogAck,
    LogEntry,
    LogOpen,
    LogOpened,
    ReleaseAttestation,
    ReleaseGrant,
    ReleaseRequest,
    appraise_release,
    new_challenge,
    open_owner_log,
    refusal_of,
    release_response,
)
from cc_kernel.errors import CCKernelError, ReleaseRefused, RemoteProtocolError

log = logging.getLogger("cc_kernel.broker")

#: How long the owner's log of a session may stay silent (no entry from its monitor) before the broker ends it.
OWNER_LOG_IDLE_S = 12 * 3600.0
#: TCP keepalive of every connection: first probe after this many idle seconds, then every
#: ``KEEPALIVE_INTERVAL_S``; the connection is dropped after ``KEEPALIVE_COUNT`` unanswered probes.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 15
KEEPALIVE_COUNT = 4


def keep_alive(sock: socket.socket) -> None:
    """Switch on TCP keepalive for ``sock`` with the broker's timings (where the platform has the options)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Broker:
    """The release service over one store. ``simulation_anchors``: the simulated TEE's roots, used only for
    datasets whose owner's policy allows simulation."""

    def __init__(self, store: BrokerStore, *, simulation_anchors: TrustAnchors | None = None,
                 owner_log_idle_s: float | None = None) -> None:
        self.store = store
        self.owner_log_idle_s = OWNER_LOG_IDLE_S if owner_log_idle_s is None else owner_log_idle_s
        self.anchors = hardware_anchors()
        self.simulation_anchors = simulation_anchors
        self._lock = asyncio.Lock()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run one exchange on a connection, then close it."""
        peer = str(writer.get_extra_info("peername"))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            keep_alive(sock)
        try:
            await self._exchange(reader, writer, peer)
        except CCKernelError as exc:
            log.info("release connection from %s ended: %s", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        request = await receive(reader)
        if not isinstance(request, ReleaseRequest):
            return
        self.store.log("request", {"dataset": request.dataset_id.hex(), "peer": peer,
                                   "requester_spki_sha256": request.requester_spki_sha256.hex()})
        record = self.store.get(request.dataset_id)
        try:
            challenge = new_challenge(request, record, nonce=os.urandom(32))
        except ReleaseRefused as exc:
            self._log_refusal(request, exc)
            await send(writer, refusal_of(exc))
            return
        await send(writer, challenge)
        attestation = await receive(reader)
        if not isinstance(attestation, ReleaseAttestation) or record is None:
            return
        async with self._lock:
            try:
                grant = appraise_release(
                    record, request, challenge, attestation, anchors=self.anchors,
                    simulation_anchors=self.simulation_anchors, now=datetime.now(UTC),
                    sessions_used=self.store.sessions_used(request.dataset_id),
                )
            except ReleaseRefused as exc:
                self._log_refusal(request, exc)
                await send(writer, refusal_of(exc))
                return
            self.store.count_release(request.dataset_id)
            result = grant.result
            self.store.log("verdict", {
                "dataset": request.dataset_id.hex(), "verdict": "released", "status": result.status,
                "platform": result.platform, "measurement": result.measurement.hex(),
                "policy_sha256": result.policy_sha256.hex(), "evidence_sha256": result.evidence_sha256.hex(),
            })
            self.store.log("release", {
                "dataset": request.dataset_id.hex(), "session": grant.session,
                "release_pub_sha256": hashlib.sha256(grant.release_pub).hexdigest(), "nonce": grant.nonce.hex(),
            })
        await send(writer, release_response(grant, record))
        await self._owner_log(reader, writer, record, request, grant)

    async def _owner_log(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: DatasetRecord,
                         request: ReleaseRequest, grant: ReleaseGrant) -> None:
        """After a release, on the same connection: the owner's log of the session (docs/dataset.md)."""
        dataset, session = request.dataset_id.hex(), grant.session
        try:
            first = await receive(reader)
        except CCKernelError as exc:
            self.store.log("owner-log", {"dataset": dataset, "session": session, "state": "never opened",
                                         "reason": str(exc)})
            raise
        if not isinstance(first, LogOpen):
            raise RemoteProtocolError(f"expected the owner's log to open, got {type(first).__name__}")
        try:
            opening = open_owner_log(
                record, grant, request, first, anchors=self.anchors, simulation_anchors=self.simulation_anchors,
                now=datetime.now(UTC), opened_ms=int(time.time() * 1000), versions={"cc_kernel": __version__})
        except ReleaseRefused as exc:
            self._log_refusal(request, exc)
            await send(writer, refusal_of(exc))
            return
        path, sink = self.store.owner_log(request.dataset_id, session)
        owner_log = LogWriter(sink)
        opening_hash = owner_log.open(opening)
        self.store.log("owner-log", {"dataset": dataset, "session": session, "state": "opened", "file": path.name})
        await send(writer, LogOpened(opening_hash=opening_hash))
        reason = "closed by the enclave"
        try:
            while not owner_log.closed:
                entry = await receive(reader, timeout=self.owner_log_idle_s)  # while the session keeps it open
                if not isinstance(entry, LogEntry):
                    raise RemoteProtocolError(f"expected a log entry, got {type(entry).__name__}")
                owner_log.append(entry.receipt)
                await send(writer, LogAck(count=owner_log.count))
        except CCKernelError as exc:
            reason = f"ended without its closing entry: {exc}"
            raise
        finally:
            self.store.log("owner-log", {"dataset": dataset, "session": session, "state": reason,
                                         "entries": owner_log.count})

    def _log_refusal(self, request: ReleaseRequest, exc: ReleaseRefused) -> None:
        log.warning("refused dataset %s: %s", request.dataset_id.hex(), exc)
        self.store.log("verdict", {"dataset": request.dataset_id.hex(), "verdict": "refused",
                                   "check": exc.check, "message": exc.message})


async def serve(
    store: BrokerStore,
    listen_address: str,
    *,
    simulation_anchors: TrustAnchors | None = None,
    on_ready: Callable[[str], None] | None = None,
    owner_log_idle_s: float | None = None,
) -> None:
    """Serve until cancelled. ``on_ready`` gets the bound address (``HOST:PORT``) once listening;
    ``owner_log_idle_s``: how long an owner's log may stay silent (default ``OWNER_LOG_IDLE_S``)."""
    broker = Broker(store, simulation_anchors=simulation_anchors, owner_log_idle_s=owner_log_idle_s)
    sock = listen(parse_address(listen_address))
    ctx = server_context(store.tls_identity())
    server = await asyncio.start_server(broker.handle, sock=sock, ssl=ctx)
    host, port = sock.getsockname()[:2]
    store.log("start", {"listen": f"{host}:{port}", "spki_sha256": store.spki_sha256.hex()})
    if on_ready is not None:
        on_ready(f"{host}:{port}")
    async with server:
        await server.serve_forever()
