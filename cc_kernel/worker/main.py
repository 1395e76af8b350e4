"""Worker: the process entry point (``python -m cc_kernel.worker``), started by the monitor, one per session.

Order of events, all before any user code exists: no core files and no ``.pyc``; a private ``/dev/shm`` (a
worker started as root); the sandbox (uid, capabilities, ``no_new_privs``, Landlock, seccomp:
:mod:`cc_kernel.worker.sandbox`) applied to this process;
the check that nothing the worker must never read (``--forbid``: the simulated authority's keys) lies inside
what the sandbox grants; the parent-death signal, so the worker never outlives its monitor; then IPython is
imported (inside the sandbox) and the shell built; ``WorkerReady`` reports what is in force. With
``--required`` (hardware) any part that cannot be applied ends the worker (status 3) after reporting it.
The monitor passes the environment: nothing of the host's configuration reaches the shell.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from cc_kernel.errors import CCKernelError
from cc_kernel.logsetup import log_to_saved_stderr
from cc_kernel.memory import tune_allocator
from cc_kernel.protocol import messages as m

log = logging.getLogger("cc_kernel.worker")

_PR_SET_PDEATHSIG = 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cc_kernel.worker", description=__doc__)
    p.add_argument("--fd", type=int, required=True, help="the socketpair to the monitor")
    p.add_argument("--monitor-pid", type=int, required=True)
    p.add_argument("--private-dir", type=Path, required=True, help="private HOME and TMPDIR (read-write)")
    p.add_argument("--uid", type=int, default=None, help="run as this uid (the monitor is root)")
    p.add_argument("--gid", type=int, default=None)
    p.add_argument("--required", action="store_true", help="refuse to run unless every protection applies")
    p.add_argument("--forbid", type=Path, action="append", default=[],
                   help="a path cells must never read (checked against what the sandbox grants)")
    p.add_argument("--no-capture-fds", action="store_true", help="do not capture OS fds 1/2 (debugging)")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def _no_core_files() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.dont_write_bytecode = True


def _die_with_monitor(monitor_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != monitor_pid:  # the monitor died before the signal was armed
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    log_to_saved_stderr("cc-worker", args.log_level)
    _no_core_files()
    tune_allocator()  # uploads arrive in 1 MiB chunks (cc_kernel.memory)
    sock = socket.socket(fileno=args.fd)
    from cc_kernel.worker.sandbox import (
        SandboxSpec,
        apply_sandbox,
        default_read_only,
        exposed,
        private_shared_memory,
    )
    from cc_kernel.worker.serve import LinkClosed, MonitorLink, WorkerServer

    link = MonitorLink(sock)
    workdir = Path.cwd()
    shared_memory, shared_detail = private_shared_memory()  # before the sandbox: mounting needs the capability
    log.info("shared memory: %s", shared_detail)
    spec = SandboxSpec(
        workdir=workdir, private_dirs=(args.private_dir,), read_only=default_read_only(exclude=args.forbid),
        uid=args.uid, gid=args.gid, monitor_pid=args.monitor_pid, required=args.required,
        shared_memory=shared_memory,
    )
    protections: dict[str, Any]
    try:
        protections = dict(apply_sandbox(spec))
    except CCKernelError as exc:  # required and not applicable: say which part, then end
        with contextlib.suppress(LinkClosed):
            link.send(m.WorkerReady(pid=os.getpid(), protections={"sandbox": {"in_force": False,
                                                                              "detail": str(exc)}}))
        return 3
    leaks = [f"{secret} lies under {grant}, which cells may read"
             for secret, grant in exposed(spec, args.forbid).items()]
    # Landlock cannot carve the installed code out of a writable working directory that contains it
    installed = [p for p in spec.read_only if p != workdir and (workdir in p.parents)]
    protections["installed_code_read_only"] = {
        "in_force": not installed,
        "detail": (f"the working directory {workdir} contains installed code ({', '.join(map(str, installed[:3]))}),"
                   " which cells could therefore change" if installed else
                   "the interpreter, the standard library, site-packages and this package are read-only"),
    }
    if args.forbid:
        protections["secrets_unreachable"] = {
            "in_force": not leaks,
            "detail": "; ".join(leaks) if leaks else (
                "the simulated authority's keys, client keys and session logs lie outside every granted path"),
        }
    _die_with_monitor(args.monitor_pid)
    sys.path.insert(0, "")  # the working directory, as with the stock kernel: `import helper` works (after -P)
    signal.signal(signal.SIGINT, lambda *_: None)  # the shell installs its own; between cells: ignored
    server = WorkerServer(link)
    from cc_kernel.worker.shell import EnclaveShell

    class _Sink:
        emit = staticmethod(server.emit)

    server.shell = EnclaveShell(_Sink(), server.read_input, capture_fds=not args.no_capture_fds)
    try:
        link.send(m.WorkerReady(pid=os.getpid(), protections=protections))
        return server.serve()
    except LinkClosed:  # the monitor ended the session while this worker was starting: nothing to report
        log.info("the monitor closed the link")
        return 0
    finally:
        server.shell.close()
