"""The worker sandbox, applied for real: each run is a subprocess (tests/sandbox_attacks.py) that sandboxes
itself with a spec built from fresh directories, attacks a fake monitor and the files around it, and prints
what the kernel answered. The fake monitor is a separate, non-dumpable process, as the real one is.

Two modes: ``stay`` (uid None: as root every capability is dropped) and ``uid`` (switch to an unprivileged
uid; needs root). The stand-ins (the authority's key, the read-only directory, the attestation device) are
open to the worker's uid as far as file modes go, so their refusal shows the sandbox at work, not file modes.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cc_kernel.enclave.sandbox_check import check_from_outside, parse_status, status_contradictions
from cc_kernel.errors import SandboxError
from cc_kernel.worker import sandbox
from cc_kernel.worker.sandbox import SandboxSpec, default_read_only

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the worker sandbox is Linux-only")

HELPER = Path(__file__).with_name("sandbox_attacks.py")
PACKAGE_DIR = Path(sandbox.__file__).resolve().parents[1]
ROOT = os.geteuid() == 0
WORKER_UID = 200123  # an unprivileged id no account on the machine uses
MODES = ["stay", "uid"]
NOTSUP = errno.errorcode[errno.EOPNOTSUPP]  # "ENOTSUP" on Linux

# Attack -> the errno the sandboxed worker must get (Python raises PermissionError for both).
REFUSED = {
    # the simulated authority's keys: a directory outside every granted hierarchy, mode 0755, key 0644
    "read_secret": "EACCES",
    "list_secret_dir": "EACCES",
    # installed code: a world-writable stand-in in read_only, the real package and site-packages
    "write_read_only_dir": "EACCES",
    "write_package_dir": "EACCES",
    "write_site_packages": "EACCES",
    "append_installed_module": "EACCES",
    "symlink_then_append": "EACCES",
    # the evidence source: a 0666 file standing for /dev/sev-guest, and configfs-tsm's parent /sys/kernel
    "open_fake_attestation_device": "EACCES",
    "list_sys_kernel": "EACCES",
    "list_tmp": "EACCES",
    # the monitor
    "ptrace_attach_monitor": "EPERM",
    "read_monitor_mem": "EACCES",
    "read_monitor_environ": "EACCES",
    "process_vm_readv_monitor": "EPERM",
    "kill_monitor": "EPERM",
    "kill_monitor_group": "EPERM",
    "kill_everyone": "EPERM",
    "tgkill_monitor": "EPERM",
    "pidfd_open_monitor": "EPERM",
    # namespaces (a user namespace gives capabilities inside it) and personality
    "unshare_user_namespace": "EPERM",
    "clone_user_namespace": "EPERM",
    "set_personality": "EPERM",
    # the private HOME and TMPDIR are read+write, not execute
    "exec_in_private_tmp": "EACCES",
}
# Mode-dependent refusals: staying uid 0, the filter refuses AF_UNIX sockets (uid 0 passes every socket file's
# mode, and Landlock ABI <= 7 does not govern connect); with its own uid the worker meets the socket's 0600 mode.
# An abstract socket outside the worker's Landlock domain is refused by Landlock's scope (ABI >= 6).
# A hard link of an installed module into the workdir: Landlock's refer rule answers EXDEV; with its own uid
# the worker is stopped earlier by protected_hardlinks (EPERM).
BY_MODE = {
    "stay": {"connect_unix_socket": "EPERM", "connect_abstract_socket": "EPERM", "hardlink_installed_module": "EXDEV"},
    "uid": {"connect_unix_socket": "EACCES", "connect_abstract_socket": "EPERM", "hardlink_installed_module": "EPERM"},
}
# What a cell must still be able to do -> the value the helper got.
ALLOWED = {
    "workdir_read_write": "cell data",
    "private_dirs_read_write": repr(["cell data", "cell data"]),
    "tempfile_in_private_tmp": None,
    "import_numpy": 45,
    "import_stdlib": "3.3",
    "subprocess_ls": repr(["planted.py", "sub", "true-copy"]),  # the symlink was made; appending through it failed
    "exec_in_workdir": 0,
    "loopback_tcp": "ping",
    "socketpair": "pair",
    "signal_own_child": -15,
    "query_personality": 0,
    "write_dev_null": 1,
    "read_proc_self": True,
}


@dataclass
class Run:
    mode: str
    out: dict[str, Any]
    worker: subprocess.Popen[str]
    monitor: subprocess.Popen[str]
    dirs: dict[str, Path]


@contextmanager
def _fake_monitor() -> Iterator[subprocess.Popen[str]]:
    """A process that makes itself non-dumpable (PR_SET_DUMPABLE 0) and waits, in its own session."""
    code = ("import ctypes, sys; assert ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) == 0; "
            "print('ready', flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, start_new_session=True) as monitor:
        assert monitor.stdout is not None
        assert monitor.stdout.readline() == "ready\n"
        yield monitor  # leaving the with-block closes its stdin (it then exits) and waits for it


@contextmanager
def _directories(uid: int | None) -> Iterator[dict[str, Path]]:
    """work/home/tmp owned by the worker; a read-only stand-in (0777), a secret (0644), a fake device (0666)."""
    dirs = {name: Path(tempfile.mkdtemp(prefix=f"cc-sandbox-{name}-")) for name in
            ("work", "home", "tmp", "readonly", "secret", "device")}
    try:
        (dirs["secret"] / "ark-key.pem").write_text("-----BEGIN PRIVATE KEY----- simulated authority")
        (dirs["device"] / "sev-guest").write_text("")
        for name, mode in (("readonly", 0o777), ("secret", 0o755), ("device", 0o755)):
            dirs[name].chmod(mode)
        (dirs["secret"] / "ark-key.pem").chmod(0o644)
        (dirs["device"] / "sev-guest").chmod(0o666)
        for name in ("work", "home", "tmp"):
            if uid is not None:
                os.chown(dirs[name], uid, uid)
        yield dirs
    finally:
        for path in dirs.values():
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _listening_sockets(directory: Path) -> Iterator[dict[str, str]]:
    """A root-owned pathname socket (mode 0600) and an abstract socket, both listening in this process."""
    path, name = directory / "daemon.sock", f"cc-sandbox-test-{os.getpid()}-{directory.name}"
    with socket.socket(socket.AF_UNIX) as on_path, socket.socket(socket.AF_UNIX) as abstract:
        on_path.bind(str(path))
        path.chmod(0o600)
        on_path.listen(1)
        abstract.bind("\0" + name)
        abstract.listen(1)
        yield {"unix_socket": str(path), "abstract_socket": name}


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


@contextmanager
def sandboxed(mode: str, **config: Any) -> Iterator[Run]:
    """Start the helper in ``mode`` with extra config keys; yields once it printed its outcomes (still alive)."""
    uid = WORKER_UID if mode == "uid" else None
    with _fake_monitor() as monitor, _directories(uid) as dirs, _listening_sockets(dirs["secret"]) as sockets:
        cfg: dict[str, Any] = {
            "monitor_pid": monitor.pid, "workdir": str(dirs["work"]),
            "private_dirs": [str(dirs["home"]), str(dirs["tmp"])], "read_only_extra": [str(dirs["readonly"])],
            "uid": uid, "gid": uid, "required": ROOT, "secret_file": str(dirs["secret"] / "ark-key.pem"),
            "fake_device": str(dirs["device"] / "sev-guest"), **sockets,
            # A uid that cannot read the interpreter's installation imports what it needs before the sandbox
            # (single-threaded: OpenBLAS must not start threads); with a world-readable install it does not.
            "preimport": uid is not None and not all(_world_traversable(Path(p).resolve())
                                                     for p in (sys.base_prefix, sys.prefix, HELPER.parent)),
        }
        cfg.update(config)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        with subprocess.Popen([sys.executable, str(HELPER), json.dumps(cfg)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=dirs["work"], start_new_session=True) as worker:
            assert worker.stdout is not None and worker.stderr is not None
            line = worker.stdout.readline()
            if not line:
                worker.wait(timeout=30)
                pytest.fail(f"helper printed nothing (exit {worker.returncode}): {worker.stderr.read()}")
            yield Run(mode, json.loads(line), worker, monitor, dirs)  # leaving the block lets the helper exit


@pytest.fixture(scope="module", params=MODES)
def attacked(request: pytest.FixtureRequest) -> Iterator[Run]:
    if request.param == "uid" and not ROOT:
        pytest.skip("switching to an unprivileged uid needs root; this run is not root")
    with sandboxed(request.param) as run:
        assert "error" not in run.out, run.out
        yield run


# --- the attack matrix, in both modes ------------------------------------------------------------------------


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_attack_refused(attacked: Run, attack: str) -> None:
    result = attacked.out["results"][attack]
    assert result["ok"] is False, f"{attack} succeeded inside the sandbox: {result}"
    assert (result["exc"], result["errno"]) == ("PermissionError", REFUSED[attack]), result


@pytest.mark.parametrize("attack", sorted(BY_MODE["stay"]))
def test_mode_dependent_refusal(attacked: Run, attack: str) -> None:
    result = attacked.out["results"][attack]
    if attack == "connect_unix_socket" and not ROOT:
        pytest.skip("the pathname socket belongs to this (unprivileged) user; only file modes could refuse it")
    expected = BY_MODE[attacked.mode][attack]
    if attack == "hardlink_installed_module" and attacked.mode == "uid" and not _world_traversable(PACKAGE_DIR):
        expected = "EACCES"  # the checkout itself is closed to other users: path lookup fails first
    exc = "OSError" if expected == "EXDEV" else "PermissionError"
    assert (result["ok"], result["exc"], result["errno"]) == (False, exc, expected)


def test_monitor_survived_the_signals(attacked: Run) -> None:
    assert attacked.monitor.poll() is None


def test_real_attestation_interfaces_refused(attacked: Run) -> None:
    real = {name: result for name, result in attacked.out["results"].items() if name.startswith("real:")}
    if not real:
        pytest.skip("no attestation device or configfs-tsm on this machine (/sys/kernel is refused above)")
    for name, result in real.items():
        assert (result["ok"], result["errno"]) == (False, "EACCES"), (name, result)


@pytest.mark.parametrize("name", ["io_uring_setup", "perf_event_open", "bpf", "keyctl", "userfaultfd", "kcmp",
                                  "open_by_handle_at", "setns", "init_module", "process_vm_writev"])
def test_filtered_syscall_answers_eperm(attacked: Run, name: str) -> None:
    """Called with invalid arguments: unfiltered the kernel rejects the arguments; filtered, seccomp answers."""
    before, after = attacked.out["baseline"][name], attacked.out["battery"][name]
    assert before["ok"] is False and before["errno"] != "EPERM", before
    assert (after["ok"], after["errno"]) == (False, "EPERM"), after


@pytest.mark.parametrize("action", sorted(ALLOWED))
def test_cells_keep_working(attacked: Run, action: str) -> None:
    result = attacked.out["results"][action]
    assert result == {"ok": True, "value": ALLOWED[action]}, result


def test_report_says_everything_is_in_force(attacked: Run) -> None:
    report = attacked.out["report"]
    ids_part = "uid" if attacked.out["report"].get("uid") else "capabilities"
    assert list(report) == [ids_part, "no_new_privs", "landlock", "seccomp"]
    if ROOT:
        assert all(entry["in_force"] for entry in report.values()), report
    assert "ABI" in report["landlock"]["detail"] and "TCP not restricted" in report["landlock"]["detail"]
    if ids_part == "uid":
        assert (report["uid"]["uid"], report["uid"]["gid"]) == (WORKER_UID, WORKER_UID)


def test_monitor_confirms_the_report_from_outside(attacked: Run) -> None:
    assert check_from_outside(attacked.out["pid"], attacked.out["report"]) == []


def test_monitor_catches_a_report_that_lies(attacked: Run) -> None:
    """The same report checked against an unsandboxed process (the fake monitor): every kernel-visible claim
    is contradicted."""
    findings = check_from_outside(attacked.monitor.pid, attacked.out["report"])
    parts = {finding.split(":")[0] for finding in findings}
    assert {"no_new_privs", "seccomp", next(iter(attacked.out["report"]))} <= parts, findings


def test_unprivileged_uid_loses_roots_reach(attacked: Run) -> None:
    """With a uid of its own the worker can neither read root-only files inside granted hierarchies
    (/etc/shadow) nor change the mode of a root-owned file outside them (Landlock has no chmod right)."""
    if "uid" not in attacked.out["report"]:
        pytest.skip("staying root: root-only files in granted hierarchies stay readable and chmod stays open "
                    "(docs/sandbox.md)")
    results = attacked.out["results"]
    assert (results["read_etc_shadow"]["errno"], results["chmod_secret"]["errno"]) == ("EACCES", "EPERM")


# --- when a part is missing ----------------------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="required=True needs root (capabilities cannot be dropped otherwise)")
def test_required_without_landlock_raises_before_changing_anything() -> None:
    with sandboxed("stay", landlock_abi=0, required=True) as run:
        assert run.out["error_type"] == "SandboxError"
        assert run.out["error"].startswith("landlock: not available: the kernel reports no Landlock ABI")
        status = parse_status(run.out["status"])
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("0", "0")
        assert int(status["CapEff"], 16) != 0


@pytest.mark.skipif(not ROOT, reason="required=True needs root")
def test_required_without_landlock_scopes_raises() -> None:
    with sandboxed("stay", landlock_abi=5, required=True) as run:
        assert run.out["error"] == "landlock: ABI 5 has no signal/abstract-socket scoping (needs ABI 6, Linux 6.12)"


@pytest.mark.skipif(not ROOT, reason="required=True needs root")
def test_required_landlock_failing_at_enforcement_raises_its_reason() -> None:
    """Without no_new_privs (and with capabilities dropped) landlock_restrict_self fails: the SandboxError
    carries the kernel's reason, and the prepared ruleset is closed exactly once."""
    with sandboxed("stay", skip_silently=["no_new_privs"], required=True) as run:
        assert (run.out["error_type"], run.out["error"]) == (
            "SandboxError", "landlock: landlock_restrict_self: Operation not permitted [EPERM]")
        assert parse_status(run.out["status"])["Seccomp"] == "0"  # nothing after the failing part ran


def test_not_required_reports_landlock_missing_and_goes_on() -> None:
    with sandboxed("stay", landlock_abi=0, required=False) as run:
        report = run.out["report"]
        assert report["landlock"] == {"in_force": False, "detail": f"the kernel reports no Landlock ABI [{NOTSUP}]"}
        assert report["no_new_privs"]["in_force"] and report["seccomp"]["in_force"]
        # The report is honest: without Landlock the secret is readable, while seccomp still holds.
        assert run.out["results"]["read_secret"]["ok"] is True
        assert run.out["results"]["ptrace_attach_monitor"]["errno"] == "EPERM"


def test_landlock_alone_guards_the_monitor() -> None:
    """With the seccomp layer taken away, Landlock's ptrace rule and signal scope still refuse."""
    with sandboxed("stay", disable=["seccomp"], required=False) as run:
        assert run.out["report"]["seccomp"] == {"in_force": False, "detail": f"seccomp disabled by the test [{NOTSUP}]"}
        results = run.out["results"]
        for attack in ("ptrace_attach_monitor", "kill_monitor", "tgkill_monitor"):
            assert (results[attack]["ok"], results[attack]["errno"]) == (False, "EPERM"), (attack, results[attack])
        assert results["read_monitor_mem"]["errno"] == "EACCES"
        assert results["connect_abstract_socket"]["errno"] == "EPERM"  # the scope, not the filter
        assert run.monitor.poll() is None


def test_seccomp_alone_guards_the_monitor() -> None:
    """With Landlock taken away (same uid as the monitor), the filter alone refuses every way to reach it."""
    with sandboxed("stay", disable=["landlock"], required=False) as run:
        assert run.out["report"]["landlock"] == {"in_force": False,
                                                 "detail": f"landlock disabled by the test [{NOTSUP}]"}
        results = run.out["results"]
        for attack in ("ptrace_attach_monitor", "process_vm_readv_monitor", "kill_monitor", "kill_monitor_group",
                       "kill_everyone", "tgkill_monitor", "pidfd_open_monitor", "unshare_user_namespace"):
            assert (results[attack]["ok"], results[attack]["errno"]) == (False, "EPERM"), (attack, results[attack])
        assert results["read_secret"]["ok"] is True  # files are Landlock's part
        assert results["read_monitor_mem"]["errno"] == "EACCES"  # non-dumpable monitor, no CAP_SYS_PTRACE
        assert run.monitor.poll() is None


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x32 syscall ABI exists on x86_64 only")
def test_a_syscall_of_another_abi_kills_the_worker(tmp_path: Path) -> None:
    """x32 numbers (bit 30 set) bypass rules written for x86_64 numbers unless the filter guards them."""
    code = ("import ctypes, os; from pathlib import Path; from cc_kernel.worker import sandbox as s\n"
            f"s.apply_sandbox(s.SandboxSpec(Path({str(tmp_path)!r}), (), s.default_read_only(), None, None, "
            "os.getppid(), False))\n"
            "print('sandboxed', flush=True)\n"
            "ctypes.CDLL(None).syscall(ctypes.c_long(0x40000000 | 39))  # x32 getpid\n"
            "print('survived', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (-signal.SIGSYS, "sandboxed\n"), done


def test_elsewhere_than_linux_every_part_is_unavailable() -> None:
    """Simulated by flipping the module's platform flag (in a child, in case the refusal ever regressed)."""
    code = ("import os; from pathlib import Path; from cc_kernel.worker import sandbox as s\n"
            "s.LINUX = False\n"
            "spec = s.SandboxSpec(Path('/w'), (), (), None, None, os.getppid(), True)\n"
            "try:\n    s.apply_sandbox(spec)\nexcept s.SandboxError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    why = f"not Linux ({sys.platform})"
    assert done.stdout == f"capabilities: {why}; no_new_privs: {why}; landlock: {why}; seccomp: {why}\n"


def test_second_thread_is_refused_before_anything_changes() -> None:
    code = ("import threading, os; from cc_kernel.worker import sandbox; from pathlib import Path\n"
            "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
            "spec = sandbox.SandboxSpec(Path('/nonexistent'), (), (), None, None, os.getppid(), False)\n"
            "try:\n    sandbox.apply_sandbox(spec)\nexcept Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n"
            "print(open('/proc/self/status').read().count('NoNewPrivs:\\t0'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.splitlines() == [
        "SandboxError threads: 2 threads; the sandbox binds only the calling thread, apply it before any thread "
        "starts", "1"]


# --- the spec and the default grants (pure, in this process) -------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"workdir": Path("relative")}, "must be absolute"),
    ({"read_only": (Path("/"),)}, "granting /"),
    ({"uid": 1000}, "both uid and gid"),
    ({"gid": 1000}, "both uid and gid"),
    ({"monitor_pid": 0}, "monitor_pid"),
])
def test_spec_rejects_misuse(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"workdir": Path("/w"), "private_dirs": (), "read_only": (), "uid": None, "gid": None,
                            "monitor_pid": 1, "required": True}
    with pytest.raises(ValueError, match=message):
        SandboxSpec(**{**base, **kwargs})


def test_default_read_only_grants_what_python_needs_and_nothing_broad(tmp_path: Path) -> None:
    granted = default_read_only()
    assert Path(os.path.realpath(sys.base_prefix)) in granted
    assert Path(os.path.realpath(sys.prefix)) in granted
    assert Path("/usr") in granted and Path("/proc") in granted and Path("/dev/null") in granted
    for broad in ("/", "/dev", "/tmp", "/sys", "/sys/kernel", "/home", "/root", "/run"):
        assert Path(broad) not in granted, broad
    assert Path(os.path.realpath(Path.home())) not in granted
    for path in granted:  # no grant contains a forbidden place
        for forbidden in sandbox.NEVER_GRANTED:
            assert not (path == forbidden or path in forbidden.parents), (path, forbidden)


def test_default_read_only_drops_excluded_paths_and_their_ancestors(tmp_path: Path, monkeypatch: Any) -> None:
    data_dir = tmp_path / "share" / "jupyter"
    (data_dir / "inside").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "share"), str(data_dir / "inside")])
    granted = default_read_only()
    assert Path(os.path.realpath(tmp_path / "share")) in granted  # without exclude it would be granted
    granted = default_read_only(exclude=[data_dir])
    assert Path(os.path.realpath(tmp_path / "share")) not in granted
    assert Path(os.path.realpath(data_dir / "inside")) not in granted


def test_exposed_names_secrets_inside_a_grant(tmp_path: Path) -> None:
    """A notebook directory that contains the Jupyter data directory exposes it: Landlock cannot exclude it."""
    home = tmp_path / "home"
    data_dir = home / ".local" / "share" / "jupyter"
    data_dir.mkdir(parents=True)
    elsewhere = tmp_path / "authority"
    elsewhere.mkdir()
    spec = SandboxSpec(workdir=home, private_dirs=(), read_only=(Path("/usr"),), uid=None, gid=None,
                       monitor_pid=1, required=True)
    assert sandbox.exposed(spec, [data_dir, elsewhere]) == {data_dir: Path(os.path.realpath(home))}
    notebooks = home / "notebooks"
    notebooks.mkdir()
    assert sandbox.exposed(SandboxSpec(notebooks, (), (Path("/usr"),), None, None, 1, True), [data_dir]) == {}


def test_sandbox_error_is_a_cc_kernel_error() -> None:
    from cc_kernel.errors import CCKernelError

    assert issubclass(SandboxError, CCKernelError)


# --- check_from_outside's parsing (crafted status texts) -----------------------------------------------------

SANDBOXED_STATUS = """Name:\tpython
Uid:\t200123\t200123\t200123\t200123
Gid:\t200123\t200123\t200123\t200123
Groups:\t
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000000000
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
"""
UID_REPORT: dict[str, Any] = {
    "uid": {"in_force": True, "detail": "uid 200123", "uid": 200123, "gid": 200123},
    "no_new_privs": {"in_force": True, "detail": "set"},
    "landlock": {"in_force": True, "detail": "ABI 7"},
    "seccomp": {"in_force": True, "detail": "filter"},
}


def _status(**changes: str) -> str:
    fields = parse_status(SANDBOXED_STATUS)
    fields.update(changes)
    return "".join(f"{name}:\t{value}\n" for name, value in fields.items() if value != "<drop>")


def test_parse_status() -> None:
    fields = parse_status(SANDBOXED_STATUS)
    assert fields["Uid"] == "200123\t200123\t200123\t200123" and fields["Groups"] == "" and fields["Seccomp"] == "2"


def test_consistent_status_has_no_contradiction() -> None:
    assert status_contradictions(SANDBOXED_STATUS, UID_REPORT) == []


@pytest.mark.parametrize(("changes", "finding"), [
    ({"NoNewPrivs": "0"}, "no_new_privs: claimed in force, but NoNewPrivs is 0 (expected 1)"),
    ({"Seccomp": "0"}, "seccomp: claimed in force, but Seccomp is 0 (expected 2, filter mode)"),
    ({"Seccomp": "1"}, "seccomp: claimed in force, but Seccomp is 1 (expected 2, filter mode)"),
    ({"Uid": "200123\t0\t200123\t200123"}, "uid: claimed uid 200123, but Uid is 200123 0 200123 200123"),
    ({"Gid": "0\t0\t0\t0"}, "uid: claimed gid 200123, but Gid is 0 0 0 0"),
    ({"Groups": "0 27"}, "uid: claimed no supplementary groups, but Groups is 0 27"),
    ({"CapEff": "0000000000200000"}, "uid: claimed in force, but CapEff is 0000000000200000 (expected 0)"),
    ({"CapBnd": "000001ffffffffff"}, "uid: claimed in force, but CapBnd is 000001ffffffffff (expected 0)"),
    ({"Seccomp": "<drop>"}, "seccomp: claimed in force, but the status has no Seccomp line"),
])
def test_each_contradiction_is_found(changes: dict[str, str], finding: str) -> None:
    assert status_contradictions(_status(**changes), UID_REPORT) == [finding]


def test_claims_not_in_force_are_not_checked() -> None:
    report = {name: {**entry, "in_force": False} for name, entry in UID_REPORT.items()}
    assert status_contradictions(_status(NoNewPrivs="0", Seccomp="0", Uid="0\t0\t0\t0"), report) == []


def test_staying_root_needs_an_empty_bounding_set() -> None:
    report = {"capabilities": {"in_force": True, "detail": "uid 0 without capabilities"}}
    root = _status(Uid="0\t0\t0\t0", Gid="0\t0\t0\t0", CapBnd="000001ffffffffff")
    assert status_contradictions(root, report) == [
        "capabilities: claimed in force, but CapBnd is 000001ffffffffff (expected 0)"]
    # An unprivileged worker that stays itself cannot empty its bounding set; only the other sets count.
    user = _status(Uid="1000\t1000\t1000\t1000", CapBnd="000001ffffffffff")
    assert status_contradictions(user, report) == []
    assert status_contradictions(_status(Uid="1000\t1000\t1000\t1000", CapAmb="0000000000000400"), report) == [
        "capabilities: claimed in force, but CapAmb is 0000000000000400 (expected 0)"]


@pytest.mark.parametrize("entry", [{"in_force": "yes"}, "in force", {"detail": "no in_force"}])
def test_malformed_report_entry_is_a_contradiction(entry: object) -> None:
    assert status_contradictions(SANDBOXED_STATUS, {"seccomp": entry}) == [
        f"seccomp: malformed report entry {entry!r}"]


def test_uid_claim_without_ids_is_a_contradiction() -> None:
    report = {"uid": {"in_force": True, "detail": "trust me"}}
    assert status_contradictions(SANDBOXED_STATUS, report) == [
        "uid: claimed in force without integer uid/gid (got None, None)"]


def test_unreadable_status_contradicts_everything() -> None:
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have this pid
    assert check_from_outside(gone, UID_REPORT) == [
        f"cannot read /proc/{gone}/status (No such file or directory); no claim of the report can be confirmed"]
