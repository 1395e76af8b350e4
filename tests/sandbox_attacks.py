"""Run as a subprocess by tests/test_sandbox.py: apply the worker sandbox to this process, attack, print outcomes.

Usage: ``python sandbox_attacks.py CONFIG_JSON``. Prints one JSON line ``{"report", "ms", "results",
"baseline"}`` (or ``{"error": ...}`` when apply_sandbox raised SandboxError), then waits until stdin closes so
the test can look at this process from outside. Every attack is really attempted; an outcome is
``{"ok": true, ...}`` when the operation succeeded, else ``{"ok": false, "errno": "EACCES", "exc": ...}``.
Everything this script needs is imported before the sandbox is applied (a switched uid may not be able to read
the interpreter's own files afterwards).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyseccomp

import cc_kernel
from cc_kernel.errors import SandboxError
from cc_kernel.worker import sandbox

true_binary = Path("/bin/true").read_bytes()
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PTRACE_ATTACH = 16
CLONE_NEWUSER = 0x10000000
PER_LINUX32 = 0x0008


def outcome(action: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = action()
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return {"ok": False, "errno": name, "exc": type(exc).__name__, "msg": str(exc)}
    except Exception as exc:  # recorded, so one broken probe does not hide the others
        return {"ok": False, "errno": None, "exc": type(exc).__name__, "msg": str(exc)}
    return {"ok": True, "value": value if isinstance(value, str | int | float | bool | None) else repr(value)}


def c_call(result: int) -> int:
    """Turn a libc-style -1/errno result into OSError."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def sysnum(name: str) -> int:
    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))


def raw(name: str, *args: int) -> Callable[[], int]:
    return lambda: c_call(libc.syscall(ctypes.c_long(sysnum(name)), *(ctypes.c_long(a) for a in args)))


# Syscalls called with arguments that are invalid but harmless: unfiltered they fail with EINVAL, EFAULT,
# EBADF or EOPNOTSUPP; under the filter with EPERM. Run before and after the sandbox.
BATTERY: dict[str, Callable[[], int]] = {
    "io_uring_setup": raw("io_uring_setup", 0, 0),
    "perf_event_open": raw("perf_event_open", 0, 0, -1, -1, 0),
    "bpf": raw("bpf", 0x7FFFFFFF, 0, 0),
    "keyctl": raw("keyctl", 0x7FFFFFFF, 0, 0, 0, 0),
    "userfaultfd": raw("userfaultfd", 0x7FFFFFFF),
    "kcmp": raw("kcmp", os.getpid(), os.getpid(), 0x7FFFFFFF, 0, 0),
    "open_by_handle_at": raw("open_by_handle_at", -1, 0, 0),
    "setns": raw("setns", -1, 0),
    "init_module": raw("init_module", 0, 0, 0),
    "process_vm_writev": raw("process_vm_writev", os.getpid(), 0, 0, 0, 0, 0xFF),
}


def create_file(directory: str) -> str:
    path = Path(directory) / f"cc-sandbox-probe-{os.getpid()}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # creating is the refused step
    path.unlink()
    return str(path)


def symlink_then_append(target: Path, directory: str) -> str:
    """Open an installed module for appending through a symlink in the workdir. Opening is the step the
    sandbox must refuse; nothing is written, so a run without Landlock leaves the module as it was."""
    link = Path(directory) / "planted.py"
    link.symlink_to(target)
    open(link, "a").close()
    return str(link)


def read_write(directory: str) -> str:
    path = Path(directory) / "note.txt"
    path.write_text("cell data")
    Path(directory, "sub").mkdir(exist_ok=True)
    os.replace(path, Path(directory, "sub", "note.txt"))
    return Path(directory, "sub", "note.txt").read_text()


def process_vm_readv(pid: int) -> int:
    class IoVec(ctypes.Structure):
        _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))

    buf = ctypes.create_string_buffer(16)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 16)
    remote = IoVec(ctypes.cast(buf, ctypes.c_void_p), 16)
    return c_call(libc.syscall(ctypes.c_long(sysnum("process_vm_readv")), ctypes.c_long(pid), ctypes.byref(local),
                               ctypes.c_ulong(1), ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0)))


def clone_new_user() -> int:
    pid = c_call(libc.syscall(ctypes.c_long(sysnum("clone")), ctypes.c_long(CLONE_NEWUSER | signal.SIGCHLD),
                              ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0)))
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def loopback_echo() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=10) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                return conn.recv(4).decode()


def connect_unix(address: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(address)
        return "connected"


def socketpair_echo() -> str:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"pair")
        return right.recv(4).decode()


def run_copy_of_true(directory: str) -> int:
    """Copy /bin/true's bytes into ``directory``, make it executable and run it."""
    target = Path(directory) / "true-copy"
    target.write_bytes(true_binary)
    target.chmod(0o755)
    return subprocess.run([str(target)], check=True).returncode


def kill_own_child() -> int:
    child = subprocess.Popen(["sleep", "60"])
    child.send_signal(signal.SIGTERM)
    return child.wait()


def import_numpy() -> int:
    import numpy

    return int(numpy.arange(10).sum())


def import_stdlib() -> str:
    import decimal

    return str(decimal.Decimal("1.1") + decimal.Decimal("2.2"))


def main() -> None:
    config = json.loads(sys.argv[1])
    monitor = int(config["monitor_pid"])
    workdir, private_dirs = config["workdir"], config["private_dirs"]
    if config.get("preimport"):  # the new uid cannot read an interpreter installed under /root (mode 0700)
        import encodings.idna  # noqa: F401 - socket.create_connection needs it

        import_numpy()
        import_stdlib()
    site_packages = sysconfig.get_paths()["purelib"]
    package_dir = Path(cc_kernel.__file__).parent
    baseline = {name: outcome(call) for name, call in BATTERY.items()}
    if config.get("landlock_abi") is not None:
        abi = int(config["landlock_abi"])
        sandbox._landlock_abi = lambda: abi  # type: ignore[attr-defined]
    for part in config.get("disable", ()):  # show what the remaining layers refuse on their own
        def unavailable(*_: object, _part: str = part) -> dict[str, object]:
            raise OSError(errno.EOPNOTSUPP, f"{_part} disabled by the test")

        setattr(sandbox, {"seccomp": "_apply_seccomp", "landlock": "_build_landlock"}[part], unavailable)
    for part in config.get("skip_silently", ()):  # a part that claims success without doing anything
        setattr(sandbox, f"_apply_{part}", lambda *_: {"detail": "skipped by the test"})
    spec = sandbox.SandboxSpec(
        workdir=Path(workdir),
        private_dirs=tuple(Path(p) for p in private_dirs),
        read_only=sandbox.default_read_only() + tuple(Path(p) for p in config["read_only_extra"]),
        uid=config["uid"],
        gid=config["gid"],
        monitor_pid=monitor,
        required=bool(config["required"]),
    )
    started = time.perf_counter()
    try:
        report = sandbox.apply_sandbox(spec)
    except SandboxError as exc:
        status = Path("/proc/self/status").read_text()
        print(json.dumps({"error": str(exc), "error_type": type(exc).__name__, "status": status}), flush=True)
        return
    elapsed_ms = (time.perf_counter() - started) * 1000

    results: dict[str, dict[str, Any]] = {
        # files outside every granted hierarchy, and installed code
        "read_secret": outcome(lambda: Path(config["secret_file"]).read_text()),
        "list_secret_dir": outcome(lambda: os.listdir(Path(config["secret_file"]).parent)),
        "write_read_only_dir": outcome(lambda: create_file(config["read_only_extra"][0])),
        "write_package_dir": outcome(lambda: create_file(str(package_dir))),
        "write_site_packages": outcome(lambda: create_file(site_packages)),
        "append_installed_module": outcome(lambda: open(package_dir / "errors.py", "a").close()),
        "hardlink_installed_module": outcome(lambda: os.link(package_dir / "errors.py", Path(workdir) / "e.py")),
        "symlink_then_append": outcome(lambda: symlink_then_append(package_dir / "errors.py", workdir)),
        "chmod_secret": outcome(lambda: os.chmod(config["secret_file"], 0o666)),
        "open_fake_attestation_device": outcome(lambda: os.close(os.open(config["fake_device"], os.O_RDWR))),
        "list_sys_kernel": outcome(lambda: os.listdir("/sys/kernel")),
        "list_tmp": outcome(lambda: os.listdir("/tmp")),
        "read_etc_shadow": outcome(lambda: Path("/etc/shadow").read_bytes()[:0].decode()),
        # daemons' sockets outside the grants: a root-owned 0600 pathname socket, an abstract socket
        "connect_unix_socket": outcome(lambda: connect_unix(config["unix_socket"])),
        "connect_abstract_socket": outcome(lambda: connect_unix("\0" + config["abstract_socket"])),
        # the monitor process
        "ptrace_attach_monitor": outcome(lambda: c_call(libc.ptrace(ctypes.c_long(PTRACE_ATTACH),
                                                                    ctypes.c_long(monitor), None, None))),
        "read_monitor_mem": outcome(lambda: open(f"/proc/{monitor}/mem", "rb").close()),
        "read_monitor_environ": outcome(lambda: Path(f"/proc/{monitor}/environ").read_bytes()[:0].decode()),
        "process_vm_readv_monitor": outcome(lambda: process_vm_readv(monitor)),
        "kill_monitor": outcome(lambda: os.kill(monitor, signal.SIGTERM)),
        "kill_monitor_group": outcome(lambda: os.kill(-monitor, signal.SIGTERM)),
        "kill_everyone": outcome(lambda: os.kill(-1, 0)),
        "tgkill_monitor": outcome(raw("tgkill", monitor, monitor, 0)),
        "pidfd_open_monitor": outcome(lambda: os.close(os.pidfd_open(monitor))),
        # namespaces and kernel interfaces
        "unshare_user_namespace": outcome(lambda: c_call(libc.unshare(CLONE_NEWUSER))),
        "clone_user_namespace": outcome(clone_new_user),
        "exec_in_private_tmp": outcome(lambda: run_copy_of_true(private_dirs[-1])),
        "set_personality": outcome(lambda: c_call(libc.personality(ctypes.c_ulong(PER_LINUX32)))),
        # what a cell must still be able to do
        "workdir_read_write": outcome(lambda: read_write(workdir)),
        "private_dirs_read_write": outcome(lambda: [read_write(p) for p in private_dirs]),
        "tempfile_in_private_tmp": outcome(lambda: tempfile.TemporaryFile(dir=private_dirs[-1]).close()),
        "import_numpy": outcome(import_numpy),
        "import_stdlib": outcome(import_stdlib),
        "exec_in_workdir": outcome(lambda: run_copy_of_true(workdir)),
        "subprocess_ls": outcome(lambda: subprocess.run(["ls", workdir], capture_output=True, text=True,
                                                        check=True).stdout.split()),
        "loopback_tcp": outcome(loopback_echo),
        "socketpair": outcome(socketpair_echo),
        "signal_own_child": outcome(kill_own_child),
        "query_personality": outcome(lambda: c_call(libc.personality(ctypes.c_ulong(0xFFFFFFFF)))),
        "write_dev_null": outcome(lambda: Path("/dev/null").write_text("x")),
        "read_proc_self": outcome(lambda: Path("/proc/self/status").read_text().count("\n") > 10),
    }
    for path in ("/dev/sev-guest", "/dev/tdx_guest", "/dev/attestation", "/dev/nsm", "/sys/kernel/config/tsm/report"):
        if os.path.lexists(path):
            results[f"real:{path}"] = outcome(lambda p=path: os.close(os.open(p, os.O_RDONLY)))  # type: ignore[misc]
    after = {name: outcome(call) for name, call in BATTERY.items()}
    print(json.dumps({"report": report, "ms": elapsed_ms, "results": results, "baseline": baseline,
                      "battery": after, "pid": os.getpid()}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
