"""Monitor: the process entry point (``python -m cc_kernel.enclave``) — one session per process.

The process is the session's monitor (:mod:`cc_kernel.enclave.monitor`): keys, evidence, TLS, receipts; the
user's cells run in a sandboxed worker child (:mod:`cc_kernel.worker`) that it starts on a private socketpair.

Modes: ``--fd N`` serves the already connected socket N (local mode: the kernel made a socketpair; the worker
starts at once, as the kernel's own user, capabilities dropped, in the notebook's directory);
``--control-fd N`` is a pre-started spare of ``cc-kernel enclave serve``: keys and start-up evidence made, it
waits for the supervisor to pass it an accepted connection over the control socket (SCM_RIGHTS), then starts
its worker in a private per-session directory (as a uid of its own when running as root); ``--listen ADDR``
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
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from cc_kernel.channel import PRE_ATTESTATION_TIMEOUT
from cc_kernel.enclave.evidence import FAULTS, EvidenceSource, SimulatedSource, detect_hardware_source
from cc_kernel.enclave.hardening import harden_process
from cc_kernel.enclave.providers import PROVIDER_ENV, PROVIDER_NAMES
from cc_kernel.enclave.workerproc import WorkerSpec, spawn_worker
from cc_kernel.errors import CCKernelError
from cc_kernel.logsetup import log_to_saved_stderr
from cc_kernel.memory import tune_allocator

log = logging.getLogger("cc_kernel.enclave")


#: Seconds the kernel's own enclave (``--fd``, local mode) waits for the kernel's attestation request: it may
#: be started before ipykernel is imported (``kernel/early.py``), so a loaded machine must not end it.
LOCAL_START_TIMEOUT = 120.0

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
    p.add_argument("--pre-attestation-timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds a client has for the TLS handshake, Hello and its attestation request (default "
                        f"{PRE_ATTESTATION_TIMEOUT:g}; {LOCAL_START_TIMEOUT:g} for the kernel's own socket, --fd)")
    # --- end of the client-key options ---
    p.add_argument("--worker-uid", type=int, default=None,
                   help="run the worker as this uid (root only; default in server modes: a uid of its own)")
    p.add_argument("--no-capture-fds", action="store_true", help="do not capture OS fds 1/2 (debugging)")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def _receive_fd(control: socket.socket) -> socket.socket:
    _msg, fds, _flags, _addr = socket.recv_fds(control, 16, 1)
    if not fds:
        raise CCKernelError("the supervisor closed the control socket without passing a connection")
    return socket.socket(fileno=fds[0])


#: Server modes running as root give each session's worker its own uid: this base plus the monitor's pid
#: (unique among live sessions; a session's files are removed when it ends, so a reused uid inherits nothing).
WORKER_UID_BASE = 1_000_000_000


def python_readable_by_others() -> str:
    """Empty if any uid can run this interpreter and read its libraries; else the directory that stops it."""
    for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}:
        path = Path(prefix).resolve()
        for directory in (path, *path.parents):
            if not os.stat(directory).st_mode & 0o001:
                return str(directory)
    return ""


def _worker_spec(args: argparse.Namespace, protections: dict[str, dict[str, object]]) -> WorkerSpec:
    """How to start this session's worker; adds to ``protections`` what the choice of uid means."""
    server_mode = args.fd is None
    uid = args.worker_uid
    if uid is None and server_mode and os.geteuid() == 0:
        blocked = python_readable_by_others()
        if blocked:  # a uid of its own could not run Python: stay uid 0 without capabilities, and say so
            log.warning("worker keeps uid 0 (no capabilities): %s is not searchable by other users", blocked)
            protections["session_uid"] = {"in_force": False, "detail": (
                f"the worker keeps uid 0 without capabilities: {blocked} is not searchable by other users, so a "
                "uid of its own could not run this Python (install it where every uid can read it)")}
        else:
            uid = WORKER_UID_BASE + os.getpid()
            protections["session_uid"] = {"in_force": True, "detail": f"the worker runs as uid {uid}, its own"}
    from cc_kernel.simstore import default_data_dir, simulation_dir

    # what cells must never read: this user's cc_kernel data (client keys, session logs, the default simulated
    # authority) and the simulated authority this enclave signs with
    forbid: tuple[Path, ...] = (default_data_dir() / "cc_kernel",)
    if args.platform == "simulation":
        forbid += (args.sim_dir or simulation_dir(),)
    return WorkerSpec(
        uid=uid, gid=uid, private_workdir=server_mode, forbid=forbid, required=args.platform == "hardware",
        capture_fds=not args.no_capture_fds, log_level=args.log_level,
    )


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
        from cc_kernel.channel.clients import AuthorizedClients

        try:
            clients = AuthorizedClients.load(args.authorized_clients)
        except CCKernelError as exc:
            print(f"python -m cc_kernel.enclave: {exc}", file=sys.stderr)
            return 2
        if not len(clients):
            print(f"python -m cc_kernel.enclave: {args.authorized_clients} lists no client key", file=sys.stderr)
            return 2
    # --- end of the client-key set-up ---
    log_to_saved_stderr("cc-enclave", args.log_level)
    if args.unsafe_serve_any_client:
        log.warning("UNSAFE: serving any client (--unsafe-serve-any-client): no client key is checked")
    report = harden_process()
    log.info("hardening: %s", report)
    tune_allocator()  # the data path relays 1 MiB chunks (cc_kernel.memory)
    try:
        source = _evidence_source(args)
    except CCKernelError as exc:
        log.error("cannot produce evidence: %s", exc)
        return 3
    protections: dict[str, dict[str, object]] = {"monitor_not_dumpable": {
        "in_force": report.not_dumpable,
        "detail": "prctl(PR_SET_DUMPABLE, 0): no ptrace attach or /proc/PID/mem by same-uid processes"
        if report.not_dumpable else "prctl(PR_SET_DUMPABLE) failed",
    }}
    worker = _worker_spec(args, protections)
    # Local mode: the worker starts now, once the evidence source is open, so that its interpreter start-up
    # (IPython) overlaps this process's import of its TLS, receipt and protocol stack below. It gets nothing
    # from the early start: no request reaches it before the kernel verified this monitor's evidence.
    started = spawn_worker(worker) if args.fd is not None else None
    cleanup: list[Callable[[], None]] = [started.cleanup] if started is not None else []

    def _terminate(signum: int, _frame: object) -> None:  # SIGTERM from the kernel or supervisor
        for step in cleanup:
            step()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    from cc_kernel.enclave.monitor import Monitor

    # The kernel's own socketpair (--fd) is not a stranger: it gets the start-up deadline the kernel itself has.
    timeout = args.pre_attestation_timeout
    if timeout is None:
        timeout = LOCAL_START_TIMEOUT if args.fd is not None else PRE_ATTESTATION_TIMEOUT
    try:
        monitor = Monitor(source=source, worker=worker, monitor_protections=protections, clients=clients,
                          pre_attestation_timeout=timeout, worker_process=started)
    except BaseException:
        if started is not None:
            started.cleanup()
        raise
    cleanup[:] = [monitor.cleanup]
    if args.fd is not None:
        return monitor.run(socket.socket(fileno=args.fd))
    try:
        if args.listen is not None:
            return monitor.run(sock_provider=_accept_one(args.listen))
        control = socket.socket(fileno=args.control_fd)
        return monitor.run(sock_provider=lambda: _receive_fd(control))
    except CCKernelError as exc:  # a spare the supervisor stopped before any client came: no session, no fault
        log.info("no session: %s", exc)
        return 0


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
