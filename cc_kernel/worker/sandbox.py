"""Worker (I/O, Linux only): the kernel-enforced sandbox the worker applies to itself before any user code.

The worker is a fresh ``python -m cc_kernel.worker`` that the monitor starts in a new session with only its
socketpair inherited. Before it builds the IPython shell it calls :func:`apply_sandbox`, which applies, in order:

``uid`` / ``capabilities``
    As root with ``SandboxSpec.uid`` set: empty the capability bounding set, ``setgroups([])``, then
    ``setresgid``/``setresuid`` to the given ids (the kernel then clears every capability set). Staying root
    (``uid`` None) the part is called ``capabilities``: securebits ``NOROOT`` and ``NO_SETUID_FIXUP`` (and
    ``KEEP_CAPS`` off, ``NO_CAP_AMBIENT_RAISE``), all locked, so uid 0 never means capabilities again; every
    capability dropped from the bounding set; ambient set cleared; ``capset`` to zero. Checked afterwards with
    ``getresuid``/``capget``/``PR_CAPBSET_READ``.
``no_new_privs``
    ``prctl(PR_SET_NO_NEW_PRIVS, 1)``: no set-uid bit or file capability grants anything to the worker or its
    children. Required by the two parts below.
``landlock``
    A ruleset that handles every filesystem access right of the running ABI (rights known here up to ABI 7; ABI 6
    and 7 added none), then grants: read+execute beneath each ``read_only`` hierarchy, every right beneath
    ``workdir``, every right but execute beneath each of ``private_dirs``, and read (plus write for ``/dev/null``,
    ``/dev/full``, ``/dev/tty``) on the device files in ``read_only``. Anything else is refused with EACCES: the
    simulated authority's key files, the Jupyter data directory, the attestation interfaces (``/dev/sev-guest``,
    ``/dev/tdx_guest``, ``/sys/kernel/config/tsm``, ``/dev/attestation``, ``/dev/nsm``), writing into the installed
    packages or any ``sys.path`` entry. From ABI 6 the domain is also *scoped*: the worker can neither signal nor
    connect to an abstract unix socket of a process outside its domain (the monitor, other sessions); Landlock
    always refuses ptrace and ``/proc/PID/mem``-style access to processes outside the domain. TCP is deliberately
    not handled: cells may use the network. Landlock rules only *grant* access to hierarchies; they cannot carve an
    exception out of one, so a secret must lie outside every granted path.
``seccomp``
    A libseccomp filter, default allow, that refuses with EPERM the syscalls that reach other processes or the
    kernel's privileged interfaces (:data:`DENIED_SYSCALLS`), ``clone`` with any namespace flag, ``personality``
    other than the query, and ``kill``/``tkill``/``tgkill``/``rt_sigqueueinfo``/``rt_tgsigqueueinfo``/
    ``pidfd_open`` aimed at the monitor (also ``kill(-monitor)`` and ``kill(-1)``); for a worker that stays
    uid 0, ``socket(AF_UNIX, ...)`` (``socketpair`` stays allowed; see the seccomp step); ``clone3`` answers ENOSYS
    (its flags sit behind a pointer the filter cannot read; libc then falls back to ``clone``). A syscall of
    another architecture (i386, x32) kills the process.

:func:`exposed` tells the monitor, before it starts a worker, which secrets a spec's grants would contain.
:func:`private_shared_memory`, called before :func:`apply_sandbox`, gives a worker started as root a private
tmpfs on ``/dev/shm`` in a mount namespace of its own (a user's own kernel keeps the host's).

Invariants: the sandbox is applied by a single-threaded process (Landlock and no_new_privs bind the calling
thread only; a second thread is refused as :class:`SandboxError` whatever ``required`` says); with
``required=True`` every part is probed before anything changes, and any part that cannot be applied raises
:class:`SandboxError` naming the part and the OS's reason; with ``required=False`` the report says which parts
are not in force and why. The report is a claim: the monitor checks what it can see from outside
(``cc_kernel.enclave.sandbox_check``) before believing it. Every step is irreversible for the process.

Bindings: seccomp through libseccomp (``pyseccomp``), Landlock through its three syscalls called here with
ctypes; why, and what each mechanism blocks and cannot: docs/sandbox.md.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_kernel.errors import SandboxError

_seccomp: Any
_SECCOMP_MISSING: str | None
try:
    import pyseccomp
except (ImportError, RuntimeError, OSError) as _exc:  # pyseccomp raises RuntimeError when libseccomp is missing
    _seccomp, _SECCOMP_MISSING = None, f"libseccomp binding unavailable: {_exc}"
else:
    _seccomp, _SECCOMP_MISSING = pyseccomp, None

Report = dict[str, dict[str, object]]
"""Protection name -> ``{"in_force": bool, "detail": str}`` (the ``uid`` entry also carries ``uid``/``gid``)."""

SUPPORTED_MACHINES = frozenset({"x86_64", "aarch64"})
"""Architectures whose syscall numbers and ``clone`` argument order this module knows."""

# Never granted by default_read_only, nor any ancestor of them: "/" itself, devices, shared temporary space,
# configfs-tsm (under /sys/kernel), users' homes.
NEVER_GRANTED = (Path("/dev"), Path("/tmp"), Path("/var/tmp"),  # noqa: S108 - named to be kept out, never used
                 Path("/run"), Path("/sys/kernel"), Path("/home"), Path("/root"))
_SYSTEM_READ_ONLY = (Path("/usr"), Path("/lib"), Path("/lib64"), Path("/bin"), Path("/sbin"), Path("/etc"),
                     Path("/opt"), Path("/proc"), Path("/sys/devices/system/cpu"))
DEVICE_FILES = (Path("/dev/null"), Path("/dev/zero"), Path("/dev/full"), Path("/dev/random"), Path("/dev/urandom"),
                Path("/dev/tty"), Path("/dev/ptmx"), Path("/dev/pts"))
"""Device files the worker may open when they exist (read; see :data:`WRITABLE_DEVICES`)."""
WRITABLE_DEVICES = frozenset({Path("/dev/null"), Path("/dev/full"), Path("/dev/tty"), Path("/dev/ptmx")})
#: Terminals: ``/dev/ptmx`` and the ``/dev/pts`` directory of pseudo-terminals it creates, read, write and terminal
#: ioctls (IPython's ``!command`` and ``%%bash`` run children on a pty). A pty of another uid stays protected by
#: its file mode; one of the worker's own uid is the worker's own.
TERMINALS = frozenset({Path("/dev/tty"), Path("/dev/ptmx"), Path("/dev/pts")})
#: POSIX shared memory and semaphores (``multiprocessing``'s locks, pools and ``shared_memory``): granted every
#: right but execute. As root the worker first mounts a tmpfs of its own there (:func:`private_shared_memory`).
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - granted on purpose; private as root (see below)

DENIED_SYSCALLS = (
    # other processes' memory and state
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "pidfd_send_signal",
    # kernel attack surface and introspection
    "perf_event_open", "bpf", "userfaultfd", "keyctl", "add_key", "request_key", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr", "setns", "unshare",
    # the machine
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "swapoff", "iopl", "ioperm", "acct", "quotactl", "quotactl_fd",
    # file handles bypass path-based checks
    "open_by_handle_at", "name_to_handle_at",
)
"""Refused outright with EPERM. ``pidfd_send_signal`` is among them because its target (a pidfd, or an fd of a
``/proc/PID`` directory) cannot be inspected by a filter; cells signal their children with ``kill``."""
SIGNAL_SYSCALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open")
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_PERSONALITY_QUERY = 0xFFFFFFFF
_LOW32 = 0xFFFFFFFF

# prctl(2)
_PR_CAPBSET_READ, _PR_CAPBSET_DROP = 23, 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS, _PR_GET_NO_NEW_PRIVS = 38, 39
_PR_GET_SECCOMP = 21
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 1, 4
# securebits: NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE set and locked; KEEP_CAPS clear and locked.
_SECUREBITS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Landlock (include/uapi/linux/landlock.h)
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_KNOWN_ABI = 7
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_FS_RIGHTS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_REFER = 1 << 13
_READ_EXEC = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


LINUX = sys.platform == "linux"
_libc = ctypes.CDLL(None, use_errno=True)
if LINUX:  # elsewhere the module imports, and apply_sandbox reports every part as unavailable
    _libc.syscall.restype = ctypes.c_long
    _libc.prctl.restype = ctypes.c_int
    _libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


@dataclass(frozen=True)
class SandboxSpec:
    """What the worker may touch, and who it becomes.

    ``workdir`` gets every filesystem right (the notebook's working directory), ``private_dirs`` every right but
    execute (the worker's private HOME and TMPDIR), ``read_only`` read+execute (see :func:`default_read_only`).
    ``uid`` and ``gid`` (both or neither) are the ids a root worker switches to; None keeps the current ids and, as
    root, drops every capability instead. ``monitor_pid`` is the process the worker must never signal or trace.
    ``required`` (hardware): any part that cannot be applied raises :class:`SandboxError`.
    Raises ValueError for a relative path, a grant of ``/``, a uid without a gid (or the reverse), a pid < 1.
    """

    workdir: Path
    private_dirs: tuple[Path, ...]
    read_only: tuple[Path, ...]
    uid: int | None
    gid: int | None
    monitor_pid: int
    required: bool
    #: granted every right but execute when given (:data:`SHARED_MEMORY`); None: not granted
    shared_memory: Path | None = None

    def __post_init__(self) -> None:
        for path in (self.workdir, *self.private_dirs, *self.read_only):
            if not path.is_absolute():
                raise ValueError(f"sandbox paths must be absolute, got {path}")
            if path == Path("/"):
                raise ValueError("granting / would make the filesystem sandbox meaningless")
        if (self.uid is None) != (self.gid is None):
            raise ValueError("give both uid and gid, or neither")
        if (self.uid is not None and self.uid < 0) or (self.gid is not None and self.gid < 0):
            raise ValueError("uid and gid must be >= 0")
        if self.monitor_pid < 1:
            raise ValueError(f"monitor_pid must be a process id, got {self.monitor_pid}")


def _within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def default_read_only(exclude: Iterable[Path] = ()) -> tuple[Path, ...]:
    """The hierarchies (and device files) the interpreter, its packages and ordinary tools need, read-only.

    ``sys.prefix``, ``sys.base_prefix``, ``sys.exec_prefix``, every existing absolute ``sys.path`` directory
    (stdlib, site-packages, this package's parent), the real directory of ``sys.executable``, ``/usr``,
    ``/lib``, ``/lib64``, ``/bin``, ``/sbin``, ``/etc``, ``/opt``, ``/proc`` (cells and numpy read
    ``/proc/self``; other processes' memory is guarded by the kernel's ptrace checks, which Landlock and a
    non-dumpable monitor make fail), ``/sys/devices/system/cpu``, and the device files of :data:`DEVICE_FILES`
    that exist. Never ``/``, ``/dev``, ``/tmp``, ``/run``, ``/sys/kernel`` (configfs-tsm), ``/home``, ``/root``,
    the user's home or anything in ``exclude`` (the monitor passes the Jupyter data directory): a candidate that
    equals or contains one of those is dropped, as is one inside an ``exclude`` entry. The empty ``sys.path``
    entry (the current directory) is not a hierarchy and is skipped. Returns real paths, deduplicated, sorted.
    """
    excluded = [Path(os.path.realpath(p)) for p in exclude]
    never = [*NEVER_GRANTED, Path(os.path.realpath(Path.home())), *excluded]
    package_parent = Path(__file__).resolve().parents[2]
    candidates: list[Path] = [Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)]
    candidates += [Path(p) for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]
    candidates += [package_parent, Path(os.path.realpath(sys.executable)).parent, *_SYSTEM_READ_ONLY]
    chosen: set[Path] = set()
    for candidate in candidates:
        if not candidate.exists():
            continue
        real = Path(os.path.realpath(candidate))
        if any(_within(bad, real) for bad in never) or any(_within(real, bad) for bad in excluded):
            continue
        chosen.add(real)
    chosen.update(device for device in DEVICE_FILES if device.exists())
    return tuple(sorted(chosen))


def exposed(spec: SandboxSpec, secrets: Iterable[Path]) -> dict[Path, Path]:
    """Which of ``secrets`` the spec would expose: ``{secret: the granted path that contains it}``.

    Landlock grants whole hierarchies and cannot carve an exception out of one, so a secret (the Jupyter data
    directory, the simulated authority's key directory, a client key) inside a grant is readable by the
    worker whatever else is done. The monitor calls this before starting a worker: hardware refuses such a
    spec, simulation says it on the badge. Compares real paths. Pure apart from resolving symlinks.
    """
    shared = (spec.shared_memory,) if spec.shared_memory is not None else ()
    grants = [Path(os.path.realpath(p)) for p in (spec.workdir, *spec.private_dirs, *shared, *spec.read_only)]
    found: dict[Path, Path] = {}
    for secret in secrets:
        real = Path(os.path.realpath(secret))
        for grant in grants:
            if _within(real, grant):
                found[secret] = grant
                break
    return found


# --- small syscall helpers -----------------------------------------------------------------------------------


_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000


def private_shared_memory() -> tuple[Path | None, str]:
    """Give this process a ``/dev/shm`` to grant, before the sandbox is applied; returns (path or None, detail).

    With ``CAP_SYS_ADMIN`` (a worker started as root, before it drops its capabilities): a mount namespace of
    its own, every mount made private (nothing propagates back to the host), and a fresh tmpfs
    (``nosuid,nodev,noexec``, mode 1777) mounted on :data:`SHARED_MEMORY`, so no session sees another's
    semaphores or segments and nothing is left behind: the tmpfs goes with the namespace's last process.
    Without it (a user's own kernel): the host's ``/dev/shm``, as with the stock kernel; the kernel's file
    modes separate users. None when there is no ``/dev/shm``.
    """
    if not SHARED_MEMORY.is_dir():
        return None, f"{SHARED_MEMORY} does not exist: POSIX shared memory and semaphores are unavailable"
    if os.geteuid() != 0:
        return SHARED_MEMORY, f"the host's {SHARED_MEMORY} (this user's, as with the stock kernel)"
    mount = _libc.mount
    mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    if _libc.unshare(ctypes.c_int(_CLONE_NEWNS)) != 0:
        return None, f"{SHARED_MEMORY} not granted: {_errno_error('unshare(CLONE_NEWNS)')}"
    if mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return None, f"{SHARED_MEMORY} not granted: {_errno_error('mount(MS_PRIVATE)')}"
    if mount(b"tmpfs", bytes(SHARED_MEMORY), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=1777") != 0:
        return None, f"{SHARED_MEMORY} not granted: {_errno_error('mount(tmpfs)')}"
    return SHARED_MEMORY, f"a private tmpfs on {SHARED_MEMORY} (a mount namespace of the worker's own)"


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    ret = int(_libc.prctl(option, arg2, arg3, 0, 0))
    if ret < 0:
        raise _errno_error(what)
    return ret


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise _errno_error("capget")
    low, high = data[0], data[1]
    return (low.effective | high.effective << 32, low.permitted | high.permitted << 32,
            low.inheritable | high.inheritable << 32)


def _capset_zero() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _errno_error("capset")


def _known_caps() -> list[int]:
    caps: list[int] = []
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) < 0:
            break  # EINVAL past the kernel's last capability
        caps.append(cap)
    return caps


def _bounding_set() -> list[int]:
    return [cap for cap in _known_caps() if _libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1]


def _ambient_set() -> list[int]:
    return [cap for cap in _known_caps() if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1]


def _drop_bounding_set() -> None:
    for cap in _known_caps():
        _prctl(_PR_CAPBSET_DROP, cap, what=f"PR_CAPBSET_DROP({cap})")


def _landlock_abi() -> int:
    """The running kernel's Landlock ABI version, 0 when there is none (the probe tests replace)."""
    if not LINUX or platform.machine() not in SUPPORTED_MACHINES:
        return 0
    ret = int(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    return max(ret, 0)


def _landlock_fs_rights(abi: int) -> int:
    rights = _FS_RIGHTS_ABI1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


# --- the parts -----------------------------------------------------------------------------------------------


def _ids_part(spec: SandboxSpec) -> str:
    return "capabilities" if spec.uid is None else "uid"


def _preflight(spec: SandboxSpec) -> dict[str, str]:
    """Reasons, by part, why a part cannot be applied here; empty when every part looks applicable."""
    problems: dict[str, str] = {}
    if not LINUX:
        return dict.fromkeys((_ids_part(spec), "no_new_privs", "landlock", "seccomp"), f"not Linux ({sys.platform})")
    if spec.uid is not None and os.geteuid() != 0:
        problems["uid"] = f"cannot switch to uid {spec.uid}: not running as root (euid {os.geteuid()})"
    if spec.uid is None and os.geteuid() != 0 and _bounding_set():
        problems["capabilities"] = "not root: the capability bounding set cannot be emptied without CAP_SETPCAP"
    if platform.machine() not in SUPPORTED_MACHINES:
        reason = f"unsupported architecture {platform.machine()} (supported: {sorted(SUPPORTED_MACHINES)})"
        problems["landlock"] = problems["seccomp"] = reason
        return problems
    abi = _landlock_abi()
    if abi < 1:
        problems["landlock"] = ("not available: the kernel reports no Landlock ABI (not built in, not in lsm=, "
                                "or refused by a container's seccomp profile)")
    elif abi < 6:
        problems["landlock"] = f"ABI {abi} has no signal/abstract-socket scoping (needs ABI 6, Linux 6.12)"
    if _SECCOMP_MISSING is not None:
        problems["seccomp"] = _SECCOMP_MISSING
    return problems


def _apply_ids(spec: SandboxSpec) -> dict[str, object]:
    if spec.uid is None:
        if os.geteuid() == 0:
            _prctl(_PR_SET_SECUREBITS, _SECUREBITS, what="PR_SET_SECUREBITS")
        if _bounding_set():
            _drop_bounding_set()
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")
        _capset_zero()
        held, bounding, ambient = _capget(), _bounding_set(), _ambient_set()
        if any(held) or bounding or ambient:
            raise OSError(errno.EPERM, f"capabilities remain: sets {held}, bounding {bounding}, ambient {ambient}")
        root = os.geteuid() == 0
        detail = ("uid 0 without capabilities: bounding, effective, permitted, inheritable and ambient sets "
                  "empty; securebits NOROOT|NO_SETUID_FIXUP locked") if root else (
                  f"uid {os.geteuid()} holding no capabilities (all sets empty)")
        return {"detail": detail}
    assert spec.gid is not None  # __post_init__: both or neither
    if os.geteuid() != 0:
        raise OSError(errno.EPERM, f"cannot switch to uid {spec.uid}: not running as root")
    _drop_bounding_set()
    os.setgroups([])
    os.setresgid(spec.gid, spec.gid, spec.gid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    ids = (os.getresuid(), os.getresgid(), os.getgroups())
    if ids != ((spec.uid,) * 3, (spec.gid,) * 3, []) or any(_capget()) or _ambient_set() or _bounding_set():
        raise OSError(errno.EPERM, f"ids or capabilities not as asked: {ids}, capabilities {_capget()}, "
                                   f"bounding {_bounding_set()}")
    return {"detail": f"uid {spec.uid} gid {spec.gid}, no supplementary groups, no capabilities",
            "uid": spec.uid, "gid": spec.gid}


def _apply_no_new_privs(spec: SandboxSpec) -> dict[str, object]:
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    if _prctl(_PR_GET_NO_NEW_PRIVS, what="PR_GET_NO_NEW_PRIVS") != 1:
        raise OSError(errno.EPERM, "no_new_privs did not stick")
    return {"detail": "set: execve grants no set-uid or file capabilities"}


def _landlock_add(ruleset_fd: int, path: Path, access: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        attr = _PathBeneathAttr(access, fd)
        ret = _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset_fd),
                            ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(attr), ctypes.c_uint32(0))
        if ret < 0:
            raise _errno_error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


@dataclass
class _Ruleset:
    """A built, not yet enforced Landlock ruleset (its fd is closed by :func:`_enforce_landlock`)."""

    fd: int
    abi: int
    scoped: int
    grants: int
    read_write: int
    skipped: list[str]

    def close(self) -> None:
        """Close the ruleset's fd once; later calls do nothing."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _build_landlock(spec: SandboxSpec) -> _Ruleset:
    """Create the ruleset and add every rule. Runs before the uid switch: opening a granted path (O_PATH) needs
    search permission on its ancestors, which the new uid may lack; Landlock only ever narrows, so rules built
    with root's reach grant nothing that the worker's own permissions would refuse."""
    abi = _landlock_abi()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "the kernel reports no Landlock ABI")
    handled = _landlock_fs_rights(abi)
    scoped = _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0
    attr = _RulesetAttr(handled, 0, scoped)
    ruleset_fd = int(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                                   ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0)))
    if ruleset_fd < 0:
        raise _errno_error("landlock_create_ruleset")
    skipped: list[str] = []
    try:
        for path in spec.read_only:
            try:
                mode = os.stat(path).st_mode
            except (FileNotFoundError, PermissionError):  # nothing to grant: the worker could not use it either
                skipped.append(str(path))
                continue
            if path in TERMINALS:
                access = (_FS_READ_FILE | _FS_WRITE_FILE | _FS_READ_DIR * stat.S_ISDIR(mode)
                          | (_FS_IOCTL_DEV if abi >= 5 else 0))
            elif stat.S_ISDIR(mode):
                access = _READ_EXEC
            elif stat.S_ISCHR(mode):
                access = _FS_READ_FILE | (_FS_WRITE_FILE if path in WRITABLE_DEVICES else 0)
            else:
                access = _FS_READ_FILE | _FS_EXECUTE
            _landlock_add(ruleset_fd, path, access)
        shared = (spec.shared_memory,) if spec.shared_memory is not None else ()
        for path, access in ((spec.workdir, handled),
                             *((p, handled & ~_FS_EXECUTE) for p in (*spec.private_dirs, *shared))):
            if not path.is_dir():
                raise OSError(errno.ENOTDIR, f"granted directory {path} does not exist")
            _landlock_add(ruleset_fd, path, access)
    except BaseException:
        os.close(ruleset_fd)
        raise
    return _Ruleset(ruleset_fd, abi, scoped, len(spec.read_only) - len(skipped),
                    1 + len(spec.private_dirs) + len(shared), skipped)


def _enforce_landlock(ruleset: _Ruleset) -> dict[str, object]:
    try:
        if _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset.fd),
                         ctypes.c_uint32(0)) < 0:
            raise _errno_error("landlock_restrict_self")
    finally:
        ruleset.close()
    try:  # self-check: "/" is never granted, so listing it must now be refused
        os.close(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
    except PermissionError:
        pass
    else:
        raise OSError(errno.EPERM, "restrict_self returned but / is still readable")
    abi = ruleset.abi
    scopes = "signals and abstract unix sockets scoped to the domain" if ruleset.scoped else "no scoping (ABI < 6)"
    known = "" if abi <= LANDLOCK_KNOWN_ABI else f" (rights known here up to ABI {LANDLOCK_KNOWN_ABI})"
    note = f"; absent, not granted: {', '.join(ruleset.skipped)}" if ruleset.skipped else ""
    return {"detail": f"ABI {abi}{known}: {ruleset.grants} read-only grants, {ruleset.read_write} read-write; "
                      f"{scopes}; ptrace outside the domain refused; TCP not restricted{note}"}


def _syscall_number(name: str) -> int:
    number = int(_seccomp.resolve_syscall(_seccomp.Arch.NATIVE, name))
    if number == -1:  # libseccomp's __NR_SCMP_ERROR; other negatives are "not on this architecture"
        raise OSError(errno.EINVAL, f"libseccomp does not know the syscall {name!r}")
    return number


def _apply_seccomp(spec: SandboxSpec) -> dict[str, object]:
    if _seccomp is None:
        raise OSError(errno.ENOSYS, _SECCOMP_MISSING)
    sc = _seccomp
    eperm = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    flt.set_attr(sc.Attr.CTL_TSYNC, 1)
    for name in DENIED_SYSCALLS:
        flt.add_rule(eperm, _syscall_number(name))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), _syscall_number("clone3"))
    for flag in _CLONE_NAMESPACE_FLAGS:
        flt.add_rule(eperm, _syscall_number("clone"), sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(eperm, _syscall_number("personality"), sc.Arg(0, sc.NE, _PERSONALITY_QUERY))
    # pid_t is 32 bits: compare only the low half, so high garbage in the register cannot slip past.
    monitor = spec.monitor_pid & _LOW32
    for name in SIGNAL_SYSCALLS:
        flt.add_rule(eperm, _syscall_number(name), sc.Arg(0, sc.MASKED_EQ, _LOW32, monitor))
    for target in {(-spec.monitor_pid) & _LOW32, (-1) & _LOW32}:
        flt.add_rule(eperm, _syscall_number("kill"), sc.Arg(0, sc.MASKED_EQ, _LOW32, target))
    unix_note = ""
    if os.geteuid() == 0:
        # Landlock (ABI <= 7) does not govern connect() to a pathname unix socket, and uid 0 passes every
        # socket file's mode: a root worker could drive any daemon (a container runtime's socket is a host
        # root shell). socketpair() stays allowed; a worker with a uid of its own is held by file modes.
        flt.add_rule(eperm, _syscall_number("socket"), sc.Arg(0, sc.MASKED_EQ, _LOW32, socket.AF_UNIX))
        unix_note = ", AF_UNIX sockets refused (uid 0)"
    flt.load()
    if _prctl(_PR_GET_SECCOMP, what="PR_GET_SECCOMP") != 2:
        raise OSError(errno.EPERM, "seccomp filter not in force after load")
    return {"detail": f"filter mode: {len(DENIED_SYSCALLS)} syscalls refused, namespace clone flags refused, "
                      f"clone3 ENOSYS, personality query only, signals to monitor {spec.monitor_pid} "
                      f"(and its group, and kill(-1)) refused{unix_note}; foreign-architecture syscalls kill"}


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where} [{errno.errorcode.get(exc.errno, exc.errno)}]"
    return str(exc)


_Step = Callable[[SandboxSpec], dict[str, object]]


def apply_sandbox(spec: SandboxSpec) -> Report:
    """Apply the sandbox to this process (irreversibly) and return what is in force.

    Order: ``uid`` (or ``capabilities``), ``no_new_privs``, ``landlock``, ``seccomp``. Returns
    ``{part: {"in_force": bool, "detail": str}}`` (``uid`` also has ``uid`` and ``gid``). Raises
    :class:`SandboxError` when the process has more than one thread, and, with ``spec.required``, when any part
    cannot be applied (probed first, so nothing has changed yet when a probe fails); the message names the
    part and the operating system's reason.
    """
    threads = _thread_count()
    if threads != 1:
        raise SandboxError(f"threads: {threads} threads; the sandbox binds only the calling thread, apply it "
                           "before any thread starts")
    problems = _preflight(spec)
    if spec.required and problems:
        raise SandboxError("; ".join(f"{part}: {reason}" for part, reason in problems.items()))
    ruleset: _Ruleset | None = None
    build_error: Exception | None = None
    try:
        ruleset = _build_landlock(spec)
    except OSError as exc:
        if spec.required:
            raise SandboxError(f"landlock: {_reason(exc)}") from exc
        build_error = exc

    def landlock_step(_: SandboxSpec) -> dict[str, object]:
        if ruleset is None:
            raise build_error or OSError(errno.EOPNOTSUPP, "no ruleset")
        return _enforce_landlock(ruleset)

    steps: list[tuple[str, _Step]] = [(_ids_part(spec), _apply_ids), ("no_new_privs", _apply_no_new_privs),
                                      ("landlock", landlock_step), ("seccomp", _apply_seccomp)]
    report: Report = {}
    try:
        for part, step in steps:
            try:
                if part in problems and part != "landlock":
                    raise OSError(errno.EOPNOTSUPP, problems[part])
                entry = step(spec)
            except (OSError, ValueError) as exc:
                if spec.required:
                    raise SandboxError(f"{part}: {_reason(exc)}") from exc
                report[part] = {"in_force": False, "detail": _reason(exc)}
                continue
            if part == "landlock" and part in problems:  # applied, but without scoping
                entry["detail"] = f"{entry['detail']}; {problems[part]}"
            report[part] = {"in_force": True, **entry}
    finally:
        if ruleset is not None:  # a part failed before enforcement, or enforcement closed it already
            ruleset.close()
    return report
