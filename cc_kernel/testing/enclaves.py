"""Test helpers: real and in-process enclaves, raw TLS clients, pinned policies; the tampering relay
(``cc_kernel.labkit.relay``, shared with the teaching lab) is re-exported here.

Layer: testing (may import any part of cc_kernel; nothing in cc_kernel imports it; it is not measured).
Invariants: every process a helper starts runs in its own session and is stopped by the helper's ``close()``
(never by a broad kill); nothing waits by sleeping for a fixed time — every wait polls against a deadline and
raises ``TimeoutError`` naming what did not happen; the simulated authority lives in the data directory the
caller gives (tests always pass a temporary one), never in the user's Jupyter directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, authority_to_pem
from cc_kernel.attestation.policy import Policy, load_policy, render_policy
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.clients import AuthorizedClients, ClientIdentity
from cc_kernel.channel.ratls import STARTUP_NONCE, STARTUP_SESSION_ID
from cc_kernel.channel.transport import (
    STREAM_LIMIT,
    Address,
    FramedChannel,
    accept_server,
    client_context,
    parse_address,
    server_context,
)
from cc_kernel.clientkey import client_key_dir, load_or_create_client_identity
from cc_kernel.crypto.keys import AuditKey, TlsIdentity, make_tls_identity, new_tls_key, spki_der_of_key
from cc_kernel.enclave.evidence import EvidenceSource
from cc_kernel.errors import RemoteProtocolError
from cc_kernel.labkit.processes import serving_address, stop_process
from cc_kernel.labkit.relay import Direction, Flip, Relay, dialable
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, ConnectionClosed, Role
from cc_kernel.protocol.framing import NEED_DATA
from cc_kernel.simstore import simulation_dir
from cc_kernel.testing.waiting import wait_until

__all__ = [
    "Direction",
    "EnclaveProcess",
    "Flip",
    "InProcessEnclave",
    "Relay",
    "SupervisorProcess",
    "attested_pair",
    "enclave_env",
    "install_authority",
    "raw_exchange_unverified",
    "raw_tls_client",
    "raw_tls_server",
    "read_until_closed",
    "send_eof",
    "simulation_policy_text",
    "start_enclave",
    "start_supervisor",
    "write_simulation_policy",
]

_M = TypeVar("_M", bound=m.Message)


# --- simulated authority and policies -------------------------------------------------------------------------


def install_authority(data_dir: Path, authority: SimulationAuthority) -> Path:
    """Store ``authority`` as the simulated TEE of ``data_dir`` (as ``simstore`` would after creating it).

    Lets a test reuse one pre-generated authority instead of paying for RSA-4096 key generation per
    directory. Returns the simulation directory (``<data_dir>/cc_kernel/simulation``).
    """
    directory = simulation_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    for name, blob in authority_to_pem(authority).items():
        fd = os.open(directory / name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
    return directory


def simulation_policy_text(
    measurements: Sequence[bytes] | None = None, *, allow_debug: bool = False, note: str | None = None
) -> str:
    """A ``policy init --simulation`` policy pinning ``measurements`` (default: this installation's enclave).

    ``allow_debug`` adds the top-level ``unsafe_allow_debug = true`` weakening.
    """
    pinned = list(measurements) if measurements is not None else [enclave_measurement()]
    text = render_policy("simulation", pinned, note=note)
    if allow_debug:
        text = text.replace("\nversion = 1\n", "\nversion = 1\nunsafe_allow_debug = true\n", 1)
        if "unsafe_allow_debug = true\n" not in text:  # pragma: no cover - render_policy changed its layout
            raise RuntimeError("cannot place unsafe_allow_debug in the rendered policy")
    return text


def write_simulation_policy(
    path: Path, measurements: Sequence[bytes] | None = None, *, allow_debug: bool = False
) -> Policy:
    """Write a pinned simulation policy to ``path`` and return it loaded (its ``source`` is ``path``)."""
    text = simulation_policy_text(measurements, allow_debug=allow_debug, note="written by cc_kernel.testing")
    path.write_text(text)
    return load_policy(text, source=str(path))


# --- enclave processes ------------------------------------------------------------------------------------


def enclave_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a cc-kernel process using ``data_dir`` as its Jupyter data directory."""
    env = dict(os.environ, JUPYTER_DATA_DIR=str(data_dir), PYTHONDONTWRITEBYTECODE="1")
    env.pop("JPY_PARENT_PID", None)
    env.update(extra or {})
    return env


class _StartedProcess:
    """A process a helper started: ``log()`` is what it wrote to ``log_path`` so far (an enclave server's log
    includes its enclaves'); as a context manager it is closed on the way out."""

    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self, timeout: float = 5.0) -> int:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class EnclaveProcess(_StartedProcess):
    """``python -m cc_kernel.enclave --fd N`` serving one session on a socketpair; ``sock`` is our end."""

    process: subprocess.Popen[bytes]
    sock: socket.socket
    log_path: Path
    #: The working directory of its cells (the one directory besides their private HOME they may write).
    workdir: Path | None = None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit status.

        Raises:
            TimeoutError: it is still running after ``timeout`` seconds.
        """
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"enclave process {self.process.pid} still running after {timeout} s") from exc

    def close(self, timeout: float = 5.0) -> int:
        """Close our end (the enclave sees EOF and ends its session), then make sure the process is gone."""
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return stop_process(self.process, timeout=timeout)



def start_enclave(
    data_dir: Path,
    *,
    faults: Iterable[str] = (),
    extra_args: Sequence[str] = (),
    log_level: str = "INFO",
    log_path: Path | None = None,
    preamble: str = "",
) -> EnclaveProcess:
    """Start a real enclave process serving one session on a fresh socketpair (the kernel's local mode).

    It signs with the simulated authority of ``data_dir`` (created on first use unless one was installed).
    Its stdout and stderr go to ``log_path`` (default ``<data_dir>/enclave-<n>.log``). ``preamble``: Python
    statements run in the enclave process before its ``main()`` (e.g. to shorten a timeout in a test).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if preamble:
        program = f"{preamble}\nfrom cc_kernel.enclave.process import main\nraise SystemExit(main())"
        argv = [sys.executable, "-c", program]
    else:
        argv = [sys.executable, "-m", "cc_kernel.enclave"]
    argv += ["--fd", str(theirs.fileno()), "--sim-dir", str(simulation_dir(data_dir)), "--log-level", log_level]
    for fault in faults:
        argv += ["--fault", fault]
    argv += list(extra_args)
    data_dir.mkdir(parents=True, exist_ok=True)
    if log_path is None:
        log_path = _fresh_path(data_dir, "enclave", ".log")
    # the cells' working directory, as a notebook's: writable by them, outside the data dir and the checkout
    workdir = log_path.with_suffix(".cwd")
    workdir.mkdir(exist_ok=True)
    with log_path.open("wb") as log_file:
        try:
            process = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, env=enclave_env(data_dir), start_new_session=True, cwd=workdir,
            )
        finally:
            theirs.close()
    return EnclaveProcess(process=process, sock=ours, log_path=log_path, workdir=workdir)


def _fresh_path(directory: Path, stem: str, suffix: str) -> Path:
    for n in range(1, 100_000):
        path = directory / f"{stem}-{n}{suffix}"
        if not path.exists():
            return path
    raise RuntimeError(f"no free {stem}-N{suffix} name in {directory}")  # pragma: no cover


@dataclass
class SupervisorProcess(_StartedProcess):
    """``cc-kernel enclave serve``: one fresh enclave process (a warm spare) per accepted connection."""

    process: subprocess.Popen[bytes]
    address: Address
    log_path: Path
    stdout_path: Path
    #: The client key it authorised (the data directory's, which its kernels and ``cc-kernel attest`` present);
    #: None when it serves any client or was given another file.
    client_identity: ClientIdentity | None = None

    def stdout(self) -> str:
        """What the supervisor printed (its address line)."""
        return self.stdout_path.read_text(errors="replace")

    def enclave_pids(self) -> list[int]:
        """Live (not zombie) enclave processes of this supervisor: sessions and the warm spare (Linux /proc)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                pids.append(int(entry.name))
        return sorted(pids)

    def close(self, timeout: float = 10.0) -> int:
        """Stop the supervisor (SIGTERM: it stops every enclave process it started) and wait for it.

        SIGTERM rather than SIGINT: a process started from a background job inherits SIGINT ignored.
        """
        return stop_process(self.process, timeout=timeout)



def start_supervisor(
    data_dir: Path,
    *,
    listen: str = "127.0.0.1:0",
    faults: Iterable[str] = (),
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    clients: Path | Literal["data-dir", "any"] = "data-dir",
) -> SupervisorProcess:
    """Run ``python -m cc_kernel enclave serve --listen LISTEN`` and return once it printed its address.

    ``clients``: ``"data-dir"`` authorises the client key of ``data_dir`` (created on first use; what kernels
    and ``cc-kernel attest`` run with that data directory present, see ``client_identity``), a path is passed
    as ``--authorized-clients``, ``"any"`` passes ``--unsafe-serve-any-client``.

    Raises:
        TimeoutError: it printed no address within ``timeout`` seconds (it is stopped first).
        RuntimeError: it exited before listening (its log is in the message).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "cc_kernel", "enclave", "serve", "--listen", listen,
            "--sim-dir", str(simulation_dir(data_dir)), "--log-level", "WARNING"]
    for fault in faults:
        argv += ["--fault", fault]
    identity = None
    if clients == "any":
        argv += ["--unsafe-serve-any-client"]
    elif clients == "data-dir":
        identity = load_or_create_client_identity(client_key_dir(data_dir))
        listed = _fresh_path(data_dir, "authorized_clients", "")
        listed.write_text(f"# the test data directory's client key\n{identity.line}\n")
        argv += ["--authorized-clients", str(listed)]
    else:
        argv += ["--authorized-clients", str(clients)]
    argv += list(extra_args)
    stdout_path = _fresh_path(data_dir, "supervisor", ".out")
    log_path = stdout_path.with_suffix(".log")
    with stdout_path.open("wb") as out, log_path.open("wb") as err:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=enclave_env(data_dir),
            start_new_session=True,
        )
    found: list[str] = []

    def listening() -> bool:
        address = serving_address(stdout_path.read_text(errors="replace"))
        if address is not None:
            found.append(address)
            return True
        if process.poll() is not None:
            raise RuntimeError(
                f"cc-kernel enclave serve exited with {process.returncode} before listening:\n"
                f"{log_path.read_text(errors='replace')}"
            )
        return False

    try:
        wait_until(listening, timeout=timeout, what="cc-kernel enclave serve printing its address")
    except BaseException:
        stop_process(process, timeout=5.0)
        raise
    return SupervisorProcess(
        process=process, address=parse_address(found[0]), log_path=log_path, stdout_path=stdout_path,
        client_identity=identity,
    )


# --- an in-process simulated enclave -------------------------------------------------------------------------


@dataclass
class InProcessEnclave:
    """The enclave's side of the attestation handshake, in this process (no shell): for fast channel tests
    and benchmarks. It answers Hello and AttestRequest exactly as ``enclave.monitor.Monitor`` does, with
    evidence from ``source``, then SessionInfo (no worker: nothing in force), and returns the channel in READY;
    what happens next is up to the caller."""

    source: EvidenceSource
    audit_key: AuditKey = field(default_factory=AuditKey)
    #: The authorised client keys (None: any client, as over the kernel's own socketpair).
    clients: AuthorizedClients | None = None
    identity: TlsIdentity = field(init=False)
    _spki: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        key = new_tls_key()
        self._spki = spki_der_of_key(key)
        startup = self.source.collect(
            expected_report_data(
                tls_spki=self._spki, audit_pub=self.audit_key.public_bytes, nonce=STARTUP_NONCE,
                session_id=STARTUP_SESSION_ID,
            ),
            audit_pub=self.audit_key.public_bytes, session_id=STARTUP_SESSION_ID, nonce=STARTUP_NONCE,
        )
        self.identity = make_tls_identity(key, now=datetime.now(UTC), evidence_extension=encode_envelope(startup))

    async def accept(self, sock: socket.socket, *, timeout: float = 10.0) -> FramedChannel:
        """TLS 1.3 server handshake on ``sock``, then Hello and the attestation answer; the channel in READY.

        Raises:
            ConnectError / BrokenChannelError / RemoteProtocolError: as the worker would see them.
        """
        channel = await accept_server(
            sock, self.identity, Connection(Role.ENCLAVE), clients=self.clients, timeout=timeout)
        try:
            hello = await channel.receive()
            if not isinstance(hello, m.Hello):
                raise RemoteProtocolError(f"expected Hello, got {type(hello).__name__}")
            version = m.negotiate([m.PROTOCOL_VERSION], hello.versions)
            await channel.send(m.Hello(role="enclave", versions=[version], software="cc_kernel.testing"))
            challenge = await channel.receive()
            if not isinstance(challenge, m.AttestRequest):
                raise RemoteProtocolError(f"expected AttestRequest, got {type(challenge).__name__}")
            env = self.source.collect(
                expected_report_data(
                    tls_spki=self._spki, audit_pub=self.audit_key.public_bytes, nonce=challenge.nonce,
                    session_id=challenge.session_id,
                ),
                audit_pub=self.audit_key.public_bytes, session_id=challenge.session_id, nonce=challenge.nonce,
            )
            await channel.send(m.AttestResponse(envelope=encode_envelope(env)))
            await channel.send(m.SessionInfo(protections={"worker": {
                "in_force": False, "detail": "in-process test enclave: there is no worker"}}, complete=False))
        except BaseException:
            await channel.aclose()
            raise
        return channel


async def attested_pair(
    enclave: InProcessEnclave,
    *,
    policy: Policy,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None,
    timeout: float = 10.0,
) -> tuple[AttestedChannel, FramedChannel]:
    """A kernel channel that really attested ``enclave`` over a socketpair, and the enclave's channel.

    Raises whatever ``connect_attested`` raises (the enclave's side is closed first).
    """
    kernel_sock, enclave_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = asyncio.ensure_future(enclave.accept(enclave_sock, timeout=timeout))
    try:
        attested = await connect_attested(
            kernel_sock, policy=policy, anchors=anchors, simulation_anchors=simulation_anchors, timeout=timeout
        )
    except BaseException:
        if not server.done():
            server.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await (await server).aclose()
        raise
    return attested, await server


# --- raw TLS clients (no protocol library between the test and the enclave) ----------------------------------


def raw_tls_client(
    target: Address | str | socket.socket, *, timeout: float = 10.0, client_identity: ClientIdentity | None = None
) -> ssl.SSLSocket:
    """A blocking TLS 1.3 client connection (certificate not checked: the caller does no attestation),
    presenting ``client_identity`` if given.

    Raises:
        ConfigError: ``target`` is text that is not an address.
        ValueError: ``target`` is a vsock address (not supported here).
        OSError: the connection or the handshake failed.
    """
    target = dialable(target, "raw_tls_client")
    if isinstance(target, socket.socket):
        sock = target
    elif target.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(target.path)
    elif target.kind == "tcp":
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    else:  # pragma: no cover - refused by dialable
        raise AssertionError(f"unreachable: raw_tls_client target kind {target.kind!r}")
    sock.settimeout(timeout)
    return client_context(client_identity).wrap_socket(sock, server_hostname=None)


async def raw_tls_server(
    sock: socket.socket, *, identity: TlsIdentity | None = None, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The server side of a TLS 1.3 handshake on ``sock`` (default: a throwaway certificate, no evidence):
    a fake enclave that can write any plaintext into the channel, to test the kernel side.

    Raises:
        ssl.SSLError / OSError / TimeoutError: the handshake failed.
    """
    identity = identity or make_tls_identity(new_tls_key(), now=datetime.now(UTC))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=server_context(identity), ssl_handshake_timeout=timeout
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def send_eof(tls: ssl.SSLSocket) -> None:
    """Half-close the TCP stream under ``tls`` (no TLS close_notify), keeping the TLS object for reading."""
    socket.socket.shutdown(tls, socket.SHUT_WR)


def read_until_closed(tls: ssl.SSLSocket, *, timeout: float = 10.0) -> tuple[bytes, str]:
    """Read plaintext until the peer closes; return it and how it ended: ``"eof"``, ``"reset"`` or
    ``"tls-error: REASON"``.

    Raises:
        TimeoutError: the peer kept the connection open for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    out = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the peer did not close the connection within {timeout} s")
        tls.settimeout(remaining)
        try:
            data = tls.recv(64 * 1024)
        except TimeoutError as exc:
            raise TimeoutError(f"the peer did not close the connection within {timeout} s") from exc
        except ssl.SSLError as exc:
            return bytes(out), f"tls-error: {exc.reason or exc}"
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out), "reset"
        if not data:
            return bytes(out), "eof"
        out += data


def raw_exchange_unverified(
    tls: ssl.SSLSocket, *, session_id: bytes = bytes(16), nonce: bytes | None = None
) -> tuple[Connection, m.AttestResponse]:
    """Hello and AttestRequest over a raw TLS client, reading the enclave's answers. NOTHING is verified:
    this drives an enclave into READY for robustness tests; the returned kernel Connection is left in
    AWAITING_VERIFICATION.

    Raises:
        RemoteProtocolError / ConnectionError: the enclave did not answer as the protocol says.
    """
    conn = Connection(Role.KERNEL)
    tls.sendall(conn.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="cc_kernel.testing")))
    _next_message(tls, conn, m.Hello)
    tls.sendall(conn.send(m.AttestRequest(nonce=nonce or os.urandom(32), session_id=session_id)))
    response = _next_message(tls, conn, m.AttestResponse)
    return conn, response


def _next_message(tls: ssl.SSLSocket, conn: Connection, kind: type[_M]) -> _M:
    while True:
        event = conn.next_event()
        if isinstance(event, kind):
            return event
        if isinstance(event, ConnectionClosed):
            raise ConnectionError(f"the enclave closed the connection: {event.reason}")
        if event is not NEED_DATA:
            raise RemoteProtocolError(f"expected {kind.__name__}, got {type(event).__name__}")
        conn.receive_data(tls.recv(64 * 1024))


@contextlib.contextmanager
def running_broker(datasets: Path, *, sim_dir: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``cc-kernel broker serve`` on a free port over the store ``datasets``; yields its ``HOST:PORT`` once it
    printed that it listens, and stops it (SIGINT) afterwards. Raises AssertionError if it fails to start or
    ends with a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cc_kernel", "broker", "serve", "--listen", "127.0.0.1:0", "--datasets",
         str(datasets), "--sim-dir", str(sim_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the broker listens (or exits: then the assert says why)
        if not line.startswith("cc-kernel broker listening on "):
            raise AssertionError(f"the broker did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        yield line.split()[4].rstrip(",")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if "Traceback" in err:
            raise AssertionError(f"the broker ended with a traceback: {err}")
