"""Enclave: the process entry point (``python -m cc_kernel.enclave``) — one session per process.

Modes: ``--fd N`` serves the already connected socket N (local mode: the kernel made a socketpair);
``--control-fd N`` is a pre-started spare of ``cc-kernel enclave serve``: it builds its interpreter, then waits
for the supervisor to pass it an accepted connection over the control socket (SCM_RIGHTS); ``--listen ADDR``
listens itself, serves the first connection and exits (for TEEs where one process is the whole enclave, e.g.
Gramine-SGX, whose manifest fixes the command line; the service manager starts a fresh enclave per session).

Evidence: ``--platform simulation`` (default) signs with the simulated TEE; ``--platform hardware`` uses the
first working TEE interface, or the one ``--evidence-provider`` names, and never falls back to the simulation.
If no evidence can be produced the process exits with status 3 before accepting anything.

Before anything else the process is hardened (not dumpable, no core files, no .pyc writes) and its own
logging is bound to a duplicate of the original stderr, so nothing it logs can reach the notebook.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cc_kernel.channel.accept import PRE_ATTESTATION_TIMEOUT
from cc_kernel.channel.clients import AuthorizedClients
from cc_kernel.enclave.evidence import FAULTS, EvidenceSource, SimulatedSource, detect_hardware_source
from cc_kernel.enclave.providers import PROVIDER_ENV, PROVIDER_NAMES
from cc_kernel.enclave.worker import Session
from cc_kernel.errors import CCKernelError

log = logging.getLogger("cc_kernel.enclave")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cc_kernel.enclave", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fd", type=int, help="serve this connected socket")
    src.add_argument("--control-fd", type=int, help="receive the connection from a supervisor")
    src.add_argument("--listen", default=None, metavar="ADDR",
                     help="listen on ADDR (tcp://HOST:PORT, unix:/path, vsock://any:PORT), serve one session, exit")
    p.add_argument("--platform", default="simulation", choices=["simulation", "hardware"],
                   help="simulation: the simulated TEE; hardware: the first working TEE evidence provider")
    p.add_argument("--evidence-provider", default=None, choices=[*PROVIDER_NAMES, "auto"],
                   help="with --platform hardware: use this provider only (default: auto, or the environment "
                        f"variable {PROVIDER_ENV})")
    p.add_argument("--sim-dir", type=Path, default=None, help="simulated TEE authority directory")
    p.add_argument("--fault", action="append", default=[], choices=FAULTS,
                   help="teaching fault for the simulated TEE (repeatable)")
    # --- client keys and the pre-attestation deadline (channel.clients, channel.accept) ---
    p.add_argument("--authorized-clients", type=Path, default=None, metavar="FILE",
                   help="serve only clients presenting a key listed in FILE (read once, at start)")
    p.add_argument("--unsafe-serve-any-client", action="store_true",
                   help="with --control-fd or --listen and no --authorized-clients: serve any client")
    p.add_argument("--pre-attestation-timeout", type=float, default=PRE_ATTESTATION_TIMEOUT, metavar="SECONDS",
                   help="seconds a client has for the TLS handshake, Hello and its attestation request")
    # --- end of the client-key options ---
    p.add_argument("--no-capture-fds", action="store_true", help="do not capture OS fds 1/2 (debugging)")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def _setup_logging(level: str) -> None:
    # A private duplicate of the original stderr: fds 1/2 are captured into the notebook later.
    log_stream = os.fdopen(os.dup(2), "w", buffering=1, closefd=True)
    handler = logging.StreamHandler(log_stream)
    handler.setFormatter(logging.Formatter("[cc-enclave %(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("cc_kernel")
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def _private_environment() -> str:
    """Point HOME, caches and tool configuration at a private, empty directory: nothing of the session is
    written to the host's files, and no host-side configuration is loaded into the measured interpreter.
    Returns the directory; the caller removes it when the session ends."""
    private = tempfile.mkdtemp(prefix="cc-enclave-home-")
    for var in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"):
        os.environ[var] = private
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.pop("PYTHONSTARTUP", None)
    return private


def _receive_fd(control: socket.socket) -> socket.socket:
    _msg, fds, _flags, _addr = socket.recv_fds(control, 16, 1)
    if not fds:
        raise CCKernelError("the supervisor closed the control socket without passing a connection")
    return socket.socket(fileno=fds[0])


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.platform == "hardware" and (args.fault or args.sim_dir is not None):
        print("python -m cc_kernel.enclave: --fault and --sim-dir are for the simulated TEE, not --platform "
              "hardware", file=sys.stderr)
        return 2
    if args.evidence_provider is not None and args.platform != "hardware":
        print("python -m cc_kernel.enclave: --evidence-provider needs --platform hardware", file=sys.stderr)
        return 2
    # --- client keys: read before any connection exists; a bad file stops the process (exit 2) ---
    clients = None
    if args.fd is not None and (args.authorized_clients is not None or args.unsafe_serve_any_client):
        print("python -m cc_kernel.enclave: --fd serves the kernel's own socket; client keys do not apply",
              file=sys.stderr)
        return 2
    if args.fd is None and args.authorized_clients is None and not args.unsafe_serve_any_client:
        print("python -m cc_kernel.enclave: --control-fd and --listen need --authorized-clients FILE (or "
              "--unsafe-serve-any-client)", file=sys.stderr)
        return 2
    if args.authorized_clients is not None:
        try:
            clients = AuthorizedClients.load(args.authorized_clients)
        except CCKernelError as exc:
            print(f"python -m cc_kernel.enclave: {exc}", file=sys.stderr)
            return 2
        if not len(clients):
            print(f"python -m cc_kernel.enclave: {args.authorized_clients} lists no client key", file=sys.stderr)
            return 2
    # --- end of the client-key set-up ---
    _setup_logging(args.log_level)
    if args.unsafe_serve_any_client:
        log.warning("UNSAFE: serving any client (--unsafe-serve-any-client): no client key is checked")
    # Import the shell (and IPython) only now: the hardening below applies before user code exists.
    from cc_kernel.enclave.shell import EnclaveShell, harden_process

    report = harden_process()
    log.info("hardening: %s", report)
    try:
        source = _evidence_source(args)
    except CCKernelError as exc:
        log.error("cannot produce evidence: %s", exc)
        return 3
    private_home = _private_environment()

    def _terminate(signum: int, _frame: object) -> None:  # SIGTERM from the kernel or supervisor
        shutil.rmtree(private_home, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)

    class _Sink:
        def __init__(self, emit: Callable[[str, dict[str, Any]], None]) -> None:
            self.emit = emit

    capture = not args.no_capture_fds

    def shell_factory(emit: Callable[[str, dict[str, Any]], None], input_fn: Callable[[str, bool], str]) -> Any:
        return EnclaveShell(_Sink(emit), input_fn, capture_fds=capture)

    try:
        session = Session(source=source, shell_factory=shell_factory, clients=clients,
                          pre_attestation_timeout=args.pre_attestation_timeout)
        if args.fd is not None:
            sock = socket.socket(fileno=args.fd)
            return session.run(sock)
        if args.listen is not None:
            return session.run(sock_provider=_accept_one(args.listen))
        control = socket.socket(fileno=args.control_fd)
        return session.run(sock_provider=lambda: _receive_fd(control))
    finally:  # what the session wrote under HOME (caches, the user's files) does not outlive it
        shutil.rmtree(private_home, ignore_errors=True)


def _accept_one(address_text: str) -> Callable[[], socket.socket]:
    """Listen on ``address_text`` now (so a bad address fails before the interpreter is built); the returned
    function accepts the first connection and closes the listener: one process, one session."""
    from cc_kernel.channel.transport import listen, parse_address

    listener = listen(parse_address(address_text), backlog=1)
    log.info("listening on %s for one session", address_text)

    def accept() -> socket.socket:
        try:
            conn, peer = listener.accept()
        finally:
            listener.close()
        log.info("session from %s", peer or "a local peer")
        return conn

    return accept


def _evidence_source(args: argparse.Namespace) -> EvidenceSource:
    if args.platform == "hardware":
        return detect_hardware_source(args.evidence_provider)
    from cc_kernel.measure import enclave_measurement
    from cc_kernel.simstore import load_or_create_authority, simulation_dir

    authority = load_or_create_authority(args.sim_dir or simulation_dir())
    if "old-tcb" in args.fault:
        from cc_kernel.attestation.platforms.simulation import OLD_TCB, issue_vcek

        authority = issue_vcek(authority, tcb=OLD_TCB)
    return SimulatedSource(authority=authority, measurement=enclave_measurement(), faults=frozenset(args.fault))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
