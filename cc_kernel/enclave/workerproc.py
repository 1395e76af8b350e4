"""Monitor: start, watch and end the worker process (stdlib and links only: the enclave starts it first thing).

Layer: runs inside the TEE, in the measured monitor process; it imports nothing but the standard library (and
``cc_kernel.links``, itself stdlib only), so ``python -m cc_kernel.enclave`` can start the worker before it
imports its own TLS, receipt and protocol stack, and the two interpreter start-ups overlap (the evidence source
is opened before, see :mod:`cc_kernel.enclave.process`). Invariants:

* The worker is exec'd fresh (``python -P -m cc_kernel.worker``): it inherits only its end of a new socketpair,
  a scrubbed environment and its own session (``start_new_session``), never a key, a handle on the evidence
  source or the monitor's memory.
* Its private directory (HOME, TMPDIR) is new, mode 0700 and owned by the worker's uid; in server mode its
  working directory is a fresh per-session directory too. :meth:`WorkerProcess.cleanup` kills the worker's
  process group and removes both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cc_kernel.links import link_socketpair


@dataclass
class WorkerSpec:
    """How to start the worker: its uid (None = the monitor's), working directory, what it must not read."""

    uid: int | None = None
    gid: int | None = None
    workdir: Path | None = None  # None: the monitor's own working directory (local mode)
    private_workdir: bool = False  # a fresh per-session directory, removed at the end (server mode)
    forbid: tuple[Path, ...] = ()
    required: bool = False
    capture_fds: bool = True
    log_level: str = "WARNING"
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkerProcess:
    """A started worker: its process, the monitor's end of the socketpair and the directories made for it."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    private: Path
    workdir: Path | None  # the per-session working directory (removed at the end), or None (local mode)

    def status(self) -> str:
        """"still running", "exit status N" or "killed by signal NAME" (waits up to 0.5 s for an exit)."""
        code = self.proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(0.5)
        if code is None:
            return "still running"
        return f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"

    def kill(self) -> None:
        """SIGKILL the worker's process group (its children too) and reap the worker."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)

    def cleanup(self) -> None:
        """Kill the worker and remove its private directories (idempotent)."""
        self.kill()
        for path in (self.private, self.workdir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


def spawn_worker(spec: WorkerSpec) -> WorkerProcess:
    """Start the worker described by ``spec`` on a new socketpair (the monitor's end is non-blocking)."""
    private = Path(tempfile.mkdtemp(prefix="cc-worker-"))
    session_dir = Path(tempfile.mkdtemp(prefix="cc-session-")) if spec.private_workdir else None
    workdir = session_dir or spec.workdir or Path.cwd()
    for path in (private, session_dir):
        if path is not None and spec.uid is not None:
            os.chown(path, spec.uid, spec.gid if spec.gid is not None else spec.uid)
        if path is not None:
            os.chmod(path, 0o700)
    ours, theirs = link_socketpair()
    # -P: nothing from the working directory (writable by cells) is imported before the sandbox is applied
    argv = [sys.executable, "-P", "-m", "cc_kernel.worker", "--fd", str(theirs.fileno()),
            "--monitor-pid", str(os.getpid()), "--private-dir", str(private), "--log-level", spec.log_level]
    if spec.uid is not None:
        argv += ["--uid", str(spec.uid), "--gid", str(spec.gid if spec.gid is not None else spec.uid)]
    if spec.required:
        argv.append("--required")
    for path in spec.forbid:
        argv += ["--forbid", str(path)]
    if not spec.capture_fds:
        argv.append("--no-capture-fds")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": str(private), "TMPDIR": str(private), "XDG_CACHE_HOME": str(private),
        "XDG_CONFIG_HOME": str(private), "XDG_DATA_HOME": str(private), "MPLCONFIGDIR": str(private),
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
    }
    if "PYTHONPATH" in os.environ:  # the monitor's own import path (a source checkout), nothing more
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(spec.extra_env)
    try:
        proc = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd=workdir, env=env,
            start_new_session=True,
        )
    except BaseException:
        ours.close()
        for path in (private, session_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return WorkerProcess(proc=proc, sock=ours, private=private, workdir=session_dir)
