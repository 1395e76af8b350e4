"""Kernel side: start the local enclave process before the kernel imports ipykernel (stdlib and links only).

A kernel start used to run two interpreter start-ups one after the other: the kernel process imported
ipykernel and cc_kernel (~0.3 s), and only then spawned the enclave, which imported its own stack and built its
keys and start-up evidence (~0.25 s). ``start_early`` spawns the enclave first thing in ``app.main``, so both
start-ups overlap; ``EnclaveLink`` later *adopts* that process if it is exactly the one it would have started
(same command line, no extra environment), and otherwise kills it and starts its own. The early process has the
environment the kernel was started with; variables the kernel process sets on itself later (ipykernel and its
libraries do) are not the user's configuration and do not prevent adoption.

Adoption grants the process nothing: the kernel still sends its fresh nonce and session id inside TLS and
verifies the evidence against its policy before any application byte, exactly as for a process it spawned
itself. The early process is skipped when the kernel will not start a local simulated enclave the default way:
a remote enclave (``CC_KERNEL_ENCLAVE``), any ``--ConfidentialKernel.*`` option on the command line (it could
change what the kernel launches), the hardware mode, or ``CC_KERNEL_EARLY_ENCLAVE=0``. An early process that
is never adopted is killed when the kernel process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

from cc_kernel.links import link_socketpair

__all__ = ["EARLY_ENV", "adopt", "enclave_argv", "enclave_env", "spawn", "start_early"]

#: ``CC_KERNEL_EARLY_ENCLAVE=0`` turns the early start off.
EARLY_ENV = "CC_KERNEL_EARLY_ENCLAVE"


@dataclass
class _Early:
    key: tuple[str, ...]
    process: subprocess.Popen[bytes]
    sock: socket.socket


_early: _Early | None = None


def enclave_argv(fd: int, *, platform: str, sim_dir: str | None, faults: tuple[str, ...]) -> list[str]:
    """The command line of a local enclave process serving the socket ``fd`` (shared with ``EnclaveLink``)."""
    argv = [sys.executable, "-m", "cc_kernel.enclave", "--fd", str(fd), "--platform", platform, "--log-level", "INFO"]
    if sim_dir is not None:
        argv += ["--sim-dir", sim_dir]
    for fault in faults:
        argv += ["--fault", fault]
    return argv


def enclave_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local enclave process (shared with ``EnclaveLink``)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(extra or {}))
    env.pop("JPY_PARENT_PID", None)
    return env


def _key(argv: list[str]) -> tuple[str, ...]:
    """What must match for adoption: the command line without the fd number."""
    i = argv.index("--fd")
    return tuple(argv[:i] + argv[i + 2 :])


def spawn(*, platform: str, sim_dir: str | None, faults: tuple[str, ...],
          extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], socket.socket, list[str]]:
    """Start a local enclave process on a new socketpair; returns (process, our end, its argv)."""
    ours, theirs = link_socketpair()
    argv = enclave_argv(theirs.fileno(), platform=platform, sim_dir=sim_dir, faults=faults)
    # Own session: a signal sent to the kernel's process group never reaches the enclave; interrupts go
    # through the authenticated channel. stdout/stderr go to the kernel's log, never to the notebook.
    try:
        process = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=enclave_env(extra_env), start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours, argv


def start_early(args: list[str], environ: dict[str, str] | None = None) -> bool:
    """Spawn the simulated enclave now if the kernel will start one the default way. Returns whether it did.

    ``args`` are the kernel's command-line arguments (``--mode M`` still in them). Never raises: a failure here
    only means the kernel starts its enclave later, as before.
    """
    global _early
    env = os.environ if environ is None else environ
    if _early is not None or env.get(EARLY_ENV, "1") == "0" or env.get("CC_KERNEL_ENCLAVE"):
        return False
    if any(a.startswith("--ConfidentialKernel") for a in args):
        return False
    mode = args[args.index("--mode") + 1] if "--mode" in args and args.index("--mode") + 1 < len(args) else ""
    if mode not in ("", "simulation"):  # the hardware kernel first checks its policy and this machine's TEE
        return False
    sim_dir = env.get("CC_KERNEL_SIM_DIR") or None
    faults = tuple(f for f in env.get("CC_KERNEL_FAULTS", "").split(",") if f)
    try:
        process, ours, argv = spawn(platform="simulation", sim_dir=sim_dir, faults=faults)
    except OSError:
        return False
    _early = _Early(key=_key(argv), process=process, sock=ours)
    atexit.register(_discard)
    return True


def adopt(argv: list[str], extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """The early enclave process and our socket end, if it was started with exactly ``argv`` (the fd number
    aside) and the kernel wants no ``extra_env``; None otherwise (an early process that does not match is
    killed). Only once."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    if extra_env or early.key != _key(argv) or early.process.poll() is not None:
        _kill(early)
        return None
    return early.process, early.sock


def _discard() -> None:
    global _early
    early, _early = _early, None
    if early is not None:
        _kill(early)


def _kill(early: _Early) -> None:
    with contextlib.suppress(OSError):
        early.sock.close()
    with contextlib.suppress(OSError, ProcessLookupError):
        early.process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        early.process.wait(timeout=2)
    if early.process.stdout is not None:
        early.process.stdout.close()
