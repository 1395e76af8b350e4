"""Testing helpers: real and in-process enclaves, a tampering relay, raw TLS clients, pinned policies.

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
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

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
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, ConnectionClosed, Role
from cc_kernel.protocol.framing import NEED_DATA
from cc_kernel.simstore import simulation_dir

__all__ = [
    "Direction",
    "EnclaveProcess",
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
    "wait_until",
    "write_simulation_policy",
]

#: Byte streams of a relayed connection: kernel (client) -> enclave (server), and back.
Direction = Literal["c2s", "s2c"]
_TLS_HEADER = 5  # TLS record header: content type (1), legacy version (2), length (2)
_M = TypeVar("_M", bound=m.Message)


# --- waiting --------------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true; raise ``TimeoutError(what)`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


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


def _stop_process(process: subprocess.Popen[bytes], *, sig: int, timeout: float) -> int:
    """Send ``sig`` to ``process`` (if running), wait; SIGKILL its process group after ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: pgid == pid
    return process.wait()


@dataclass
class EnclaveProcess:
    """``python -m cc_kernel.enclave --fd N`` serving one session on a socketpair; ``sock`` is our end."""

    process: subprocess.Popen[bytes]
    sock: socket.socket
    log_path: Path
    #: The working directory of its cells (the one directory besides their private HOME they may write).
    workdir: Path | None = None

    def log(self) -> str:
        """Everything the enclave wrote to its stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

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
            return _stop_process(self.process, sig=signal.SIGTERM, timeout=timeout)

    def __enter__(self) -> EnclaveProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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


_SERVING = re.compile(rb"serving on (\S+)")


@dataclass
class SupervisorProcess:
    """``cc-kernel enclave serve``: one fresh enclave process (a warm spare) per accepted connection."""

    process: subprocess.Popen[bytes]
    address: Address
    log_path: Path
    stdout_path: Path
    #: The client key it authorised (the data directory's, which its kernels and ``cc-kernel attest`` present);
    #: None when it serves any client or was given another file.
    client_identity: ClientIdentity | None = None

    def log(self) -> str:
        """The supervisor's stderr (and its enclaves' logs) so far."""
        return self.log_path.read_text(errors="replace")

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
        return _stop_process(self.process, sig=signal.SIGTERM, timeout=timeout)

    def __enter__(self) -> SupervisorProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
    found: list[bytes] = []

    def listening() -> bool:
        match = _SERVING.search(stdout_path.read_bytes())
        if match:
            found.append(match.group(1))
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
        _stop_process(process, sig=signal.SIGTERM, timeout=5.0)
        raise
    return SupervisorProcess(
        process=process, address=parse_address(found[0].decode()), log_path=log_path, stdout_path=stdout_path,
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


# --- a relay on the untrusted path ---------------------------------------------------------------------------


class _Records:
    """Follows TLS record boundaries in one direction: which bytes of a chunk are record payload."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._left = 0  # payload bytes of the current record still to come
        self.count = 0  # records seen (headers complete)

    def payload_ranges(self, data: bytes | bytearray) -> list[tuple[int, int]]:
        """Half-open index ranges of ``data`` (the next bytes of the stream) that are record payload."""
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(data):
            if self._left == 0:
                take = min(_TLS_HEADER - len(self._header), len(data) - i)
                self._header += data[i : i + take]
                i += take
                if len(self._header) == _TLS_HEADER:
                    self._left = int.from_bytes(self._header[3:5], "big")
                    self._header.clear()
                    self.count += 1
            else:
                take = min(self._left, len(data) - i)
                out.append((i, i + take))
                i += take
                self._left -= take
        return out


@dataclass
class _Flip:
    direction: Direction
    at: int  # stream offset at or after which the first record-payload byte is flipped
    done_at: int | None = None


#: Address kinds the relay and the raw TLS client can dial (vsock is tested with its own sockets: test_vsock.py).
_DIALABLE_KINDS = ("unix", "tcp")


def _dialable(target: Address | str | socket.socket, who: str) -> Address | socket.socket:
    """``target`` as an Address (text is parsed by ``channel.transport.parse_address``) or the socket itself.

    Raises:
        ConfigError: ``target`` is text that is not an address.
        ValueError: an address of a kind ``who`` cannot dial (vsock).
        TypeError: ``target`` is neither an Address, text nor a socket.
    """
    if isinstance(target, socket.socket):
        return target
    if isinstance(target, str):
        target = parse_address(target)
    if not isinstance(target, Address):
        raise TypeError(f"{who} target must be an Address, an address string or a socket, not {type(target).__name__}")
    if target.kind not in _DIALABLE_KINDS:
        raise ValueError(
            f"{who} cannot dial {target}: only {' and '.join(_DIALABLE_KINDS)} addresses are supported, "
            f"not {target.kind}"
        )
    return target


class Relay:
    """A TCP relay on 127.0.0.1 in front of ``target`` (a unix or TCP address, as an ``Address`` or as text for
    ``parse_address``, or one already connected socket): the untrusted host or network between kernel and enclave.

    It records every byte it forwards in each direction (``recorded("c2s")``: kernel -> enclave,
    ``recorded("s2c")``: enclave -> kernel) and can flip one byte (XOR 0xFF) of one direction: the first byte
    at stream offset ``>= at`` that lies inside a TLS record's payload (headers are left alone, so the damage
    is always to authenticated data, never to the record framing). Runs on the caller's event loop.

    Raises:
        ConfigError: ``target`` is text that is not an address.
        ValueError: ``target`` is a vsock address (the relay dials unix and TCP addresses only).
    """

    def __init__(self, target: Address | str | socket.socket, *, flip: tuple[Direction, int] | None = None) -> None:
        self.target = _dialable(target, "the relay")
        self._flip = _Flip(flip[0], flip[1]) if flip else None
        self._recorded: dict[Direction, bytearray] = {"c2s": bytearray(), "s2c": bytearray()}
        self._records: dict[Direction, _Records] = {"c2s": _Records(), "s2c": _Records()}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._used_socket = False
        self.connections = 0
        self.address: Address | None = None

    async def start(self) -> Address:
        """Listen on 127.0.0.1 (a free port); return the address kernels should dial."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=STREAM_LIMIT)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = Address("tcp", host=host, port=port)
        return self.address

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def recorded(self, direction: Direction) -> bytes:
        """Every byte forwarded so far in ``direction`` (after any flip), over all connections."""
        return bytes(self._recorded[direction])

    def forwarded(self, direction: Direction) -> int:
        """How many bytes were forwarded so far in ``direction``."""
        return len(self._recorded[direction])

    def records(self, direction: Direction) -> int:
        """TLS records seen so far in ``direction``."""
        return self._records[direction].count

    def arm_flip(self, direction: Direction, *, after: int = 0) -> None:
        """Flip the first record-payload byte at least ``after`` bytes beyond what ``direction`` forwarded."""
        self._flip = _Flip(direction, self.forwarded(direction) + after)

    @property
    def flipped_at(self) -> tuple[Direction, int] | None:
        """(direction, stream offset) of the byte that was flipped, or None (not armed, or not reached)."""
        if self._flip is None or self._flip.done_at is None:
            return None
        return self._flip.direction, self._flip.done_at

    async def aclose(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(c_writer)
        try:
            if isinstance(self.target, socket.socket):
                if self._used_socket:
                    raise ConnectionRefusedError("the relay's target socket was already used")
                self._used_socket = True
                s_reader, s_writer = await asyncio.open_connection(sock=self.target, limit=STREAM_LIMIT)
            elif self.target.kind == "unix":
                s_reader, s_writer = await asyncio.open_unix_connection(self.target.path, limit=STREAM_LIMIT)
            elif self.target.kind == "tcp":
                s_reader, s_writer = await asyncio.open_connection(
                    self.target.host, self.target.port, limit=STREAM_LIMIT
                )
            else:  # pragma: no cover - refused by _dialable in __init__
                raise AssertionError(f"unreachable: relay target kind {self.target.kind!r}")
        except OSError:
            c_writer.close()
            return
        self._writers.append(s_writer)
        up = asyncio.ensure_future(self._pump(c_reader, s_writer, "c2s"))
        down = asyncio.ensure_future(self._pump(s_reader, c_writer, "s2c"))
        self._tasks.update((up, down))
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._tasks.difference_update((up, down))
            for writer in (c_writer, s_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction) -> None:
        try:
            while True:
                data = await reader.read(64 * 1024)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()  # half-close, as TCP would carry it
                    return
                data = self._tamper(direction, data)
                self._recorded[direction] += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.close()

    def _tamper(self, direction: Direction, data: bytes) -> bytes:
        start = len(self._recorded[direction])
        ranges = self._records[direction].payload_ranges(data)  # always track, to know record boundaries
        flip = self._flip
        if flip is None or flip.direction != direction or flip.done_at is not None:
            return data
        for lo, hi in ranges:
            index = max(lo, flip.at - start)
            if index < hi:
                out = bytearray(data)
                out[index] ^= 0xFF
                flip.done_at = start + index
                return bytes(out)
        return data


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
    target = _dialable(target, "raw_tls_client")
    if isinstance(target, socket.socket):
        sock = target
    elif target.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(target.path)
    elif target.kind == "tcp":
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    else:  # pragma: no cover - refused by _dialable
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
