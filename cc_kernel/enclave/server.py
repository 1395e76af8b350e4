"""Monitor (supervisor): ``cc-kernel enclave serve`` — accept kernel connections, one fresh enclave process per session.

A warm spare process (interpreter built, keys generated, start-up evidence in its certificate) waits on a
control socket; each accepted connection is passed to it with SCM_RIGHTS and a new spare is started. Every
session thus gets a fresh interpreter, fresh TLS and audit keys, and fresh evidence, and connect + attest
costs a TLS handshake and one signature, not an interpreter start.

Client keys: every enclave process reads the authorised-clients file itself at start (``--authorized-clients``),
before any connection, so a session is always checked against the list as it was when its process started;
the supervisor never looks at what a client sends. Without a file it passes ``--unsafe-serve-any-client``,
which the command line allows only when asked for by name.

A full server (``max_sessions`` sessions alive) answers a new client with one plaintext line,
``CC-KERNEL-BUSY active=N max=M``, then closes; clients show it as a hint (``ServerBusy``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cc_kernel.channel import PRE_ATTESTATION_TIMEOUT
from cc_kernel.channel.transport import Address, busy_line, listen

log = logging.getLogger("cc_kernel.enclave")


@dataclass
class _Spare:
    process: subprocess.Popen[bytes]
    control: socket.socket


@dataclass
class Supervisor:
    """Accept connections on ``address`` and hand each to a fresh enclave process."""

    address: Address
    sim_dir: Path | None = None
    faults: Sequence[str] = ()
    max_sessions: int = 8
    extra_args: Sequence[str] = ()
    #: The authorised-clients file every enclave process reads at start. Without one, ``unsafe_serve_any_client``
    #: must be set (``--unsafe-serve-any-client``): nothing serves anyone by default.
    authorized_clients: Path | None = None
    unsafe_serve_any_client: bool = False
    pre_attestation_timeout: float = PRE_ATTESTATION_TIMEOUT
    #: Log level of the enclave processes (they log to the supervisor's stderr).
    log_level: str = "WARNING"
    _active: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _spare: _Spare | None = None
    _listener: socket.socket | None = None

    def worker_argv(self, control_fd: int) -> list[str]:
        """The command line of a spare enclave process.

        Raises:
            ValueError: neither ``authorized_clients`` nor ``unsafe_serve_any_client`` is set.
        """
        argv = [sys.executable, "-m", "cc_kernel.enclave", "--control-fd", str(control_fd)]
        if self.sim_dir is not None:
            argv += ["--sim-dir", str(self.sim_dir)]
        for fault in self.faults:
            argv += ["--fault", fault]
        if self.authorized_clients is not None:
            argv += ["--authorized-clients", str(self.authorized_clients)]
        elif self.unsafe_serve_any_client:
            argv += ["--unsafe-serve-any-client"]
        else:
            raise ValueError("a Supervisor needs authorized_clients, or unsafe_serve_any_client=True")
        argv += ["--pre-attestation-timeout", str(self.pre_attestation_timeout), "--log-level", self.log_level]
        return argv + list(self.extra_args)

    def _spawn_spare(self) -> _Spare:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.Popen(
            self.worker_argv(theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        theirs.close()
        return _Spare(proc, ours)

    def bind(self) -> Address:
        """Listen; return the bound address (with the real port when port 0 was asked)."""
        self._listener = listen(self.address)
        if self.address.kind == "tcp":
            host, port = self._listener.getsockname()[:2]
            return Address("tcp", host=host, port=port)
        return self.address

    def serve_forever(self) -> None:
        """Accept and dispatch until interrupted; then stop every enclave process."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        self._spare = self._spawn_spare()
        try:
            while True:
                conn, peer = self._listener.accept()
                self._reap()
                if len(self._active) >= self.max_sessions:
                    log.warning("refusing %s: %d sessions active (--max-sessions)", peer, len(self._active))
                    _say_busy(conn, len(self._active), self.max_sessions)
                    continue
                spare = self._spare
                if spare.process.poll() is not None:  # the spare died: start another and use it
                    log.error("spare enclave exited with %s; starting another", spare.process.returncode)
                    spare = self._spawn_spare()
                try:
                    socket.send_fds(spare.control, [b"c"], [conn.fileno()])
                except OSError as exc:
                    log.error("cannot hand the connection to the enclave: %s", exc)
                finally:
                    conn.close()
                    spare.control.close()
                self._active.append(spare.process)
                self._spare = self._spawn_spare()
        finally:
            self.close()

    def _reap(self) -> None:
        """Forget enclave processes that have exited."""
        self._active = [p for p in self._active if p.poll() is None]

    def close(self) -> None:
        """Stop listening and terminate every enclave process of this supervisor."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        procs = list(self._active)
        if self._spare is not None:
            self._spare.control.close()
            procs.append(self._spare.process)
            self._spare = None
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._active.clear()


def _say_busy(conn: socket.socket, active: int, maximum: int) -> None:
    """Send the busy line, end our side (FIN after the line), drop what already arrived, close. Never blocks:
    the line fits any socket buffer, and a client that reads nothing cannot hold the accept loop."""
    try:
        conn.setblocking(False)
        conn.send(busy_line(active, maximum))
        conn.shutdown(socket.SHUT_WR)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            for _ in range(4):  # the ClientHello, if here: unread bytes would make close() a reset
                if not conn.recv(65536):
                    break
    except OSError as exc:
        log.info("could not tell a client the server is busy: %s", exc)
    finally:
        conn.close()
