"""The trust boundary inside the TEE, attacked from a cell: the worker holds nothing to steal, reaches no
attestation interface, key file, installed code or monitor, and cannot forge or smuggle frames to the monitor.

Each test runs a real SIMULATION kernel (monitor + sandboxed worker) and runs the attack as a cell, the way a
hostile package imported by a notebook would. These hold whether the tests run as root (CI) or not: as root
the local worker keeps uid 0 without any capability; Landlock, seccomp and ``no_new_privs`` apply either way.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_env import SIM, JupyterEnv, KernelPool, LiveKernel, live_kernel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(jupyter_env: JupyterEnv) -> Iterator[KernelPool]:
    kernels = KernelPool()
    try:
        yield kernels
    finally:
        kernels.close()


@pytest.fixture
def sim(pool: KernelPool) -> LiveKernel:
    return pool.get(SIM)


def _outcome(k: LiveKernel, attempt: str) -> str:
    """Run ``attempt`` (an expression or statement) in a cell; return "ok" or the exception it raised."""
    code = (
        "def _try():\n"
        + "".join(f"    {line}\n" for line in attempt.splitlines())
        + "try:\n    _try()\n    print('ok')\nexcept BaseException as e:\n    print(type(e).__name__, e)\n"
    )
    return k.ok(code, timeout=30).stream().strip()


def test_no_key_signer_or_evidence_source_in_the_worker(sim: LiveKernel) -> None:
    found = sim.value(
        "import gc, sys, json as _j; _j.dumps(["
        "sorted({type(o).__name__ for o in gc.get_objects() if any(w in type(o).__name__ for w in "
        "('PrivateKey', 'AuditKey', 'ReceiptSigner', 'TlsIdentity', 'SimulatedSource', 'SimulationAuthority', "
        "'Provider', 'SSLContext', 'SSLObject'))}), "
        "sorted(m for m in sys.modules if m.split('.')[:2] in (['cc_kernel', 'crypto'], ['cc_kernel', 'attestation'], "
        "['cc_kernel', 'audit'], ['cc_kernel', 'channel'], ['cc_kernel', 'enclave']))])"
    )
    objects, modules = json.loads(found.strip("'"))
    assert objects == [] and modules == []


def test_worker_reports_its_sandbox_to_the_kernel(sim: LiveKernel) -> None:
    (shown,) = sim.ok("%attestation", timeout=30).of_type("display_data")
    protections = shown["content"]["data"]["application/json"]["protections"]
    for part in ("no_new_privs", "landlock", "seccomp", "monitor_not_dumpable", "secrets_unreachable"):
        assert protections[part]["in_force"] is True, (part, protections[part])
    assert "cell sandbox: " in shown["content"]["data"]["text/plain"]


def test_a_cell_cannot_read_the_simulated_authority_keys(sim: LiveKernel, jupyter_env: JupyterEnv) -> None:
    sim_dir = jupyter_env.data_dir / "cc_kernel" / "simulation"
    keys = sorted(p.name for p in sim_dir.iterdir())
    assert keys, "the simulated authority exists on the kernel's side"
    for name in keys:
        assert _outcome(sim, f"open({str(sim_dir / name)!r}, 'rb').read()").startswith("PermissionError")
    assert _outcome(sim, f"import os; os.listdir({str(sim_dir)!r})").startswith("PermissionError")
    # nor anything else of this user's cc_kernel data: client keys, session logs, pinned policies
    ours = jupyter_env.data_dir / "cc_kernel"
    assert _outcome(sim, f"import os; os.listdir({str(ours)!r})").startswith("PermissionError")
    assert _outcome(sim, f"open({str(ours / 'policy-simulation.toml')!r}).read()").startswith("PermissionError")


def test_a_cell_cannot_mint_evidence(sim: LiveKernel, jupyter_env: JupyterEnv) -> None:
    sim_dir = jupyter_env.data_dir / "cc_kernel" / "simulation"
    attempt = (f"from cc_kernel.simstore import load_or_create_authority\n"
               f"from pathlib import Path\nload_or_create_authority(Path({str(sim_dir)!r}))")
    outcome = _outcome(sim, attempt)
    assert outcome.startswith("ConfigError") and "Permission denied" in outcome, outcome


@pytest.mark.parametrize("where", ["package", "site-packages", "stdlib"])
def test_a_cell_cannot_write_installed_code(sim: LiveKernel, where: str) -> None:
    target = {
        "package": "import cc_kernel, pathlib; p = pathlib.Path(cc_kernel.__file__).parent / 'planted.py'",
        "site-packages": "import sysconfig, pathlib; p = pathlib.Path(sysconfig.get_paths()['purelib']) / "
                         "'sitecustomize.py'",
        "stdlib": "import os, pathlib; p = pathlib.Path(os.__file__).parent / 'planted.py'",
    }[where]
    assert _outcome(sim, f"{target}\np.write_text('print(1)')").startswith("PermissionError")


def test_a_cell_cannot_signal_read_or_trace_the_monitor(sim: LiveKernel) -> None:
    assert _outcome(sim, "import os, signal; os.kill(os.getppid(), signal.SIGTERM)").startswith("PermissionError")
    assert _outcome(sim, "import os; open(f'/proc/{os.getppid()}/mem', 'rb').read(1)").startswith("PermissionError")
    assert _outcome(sim, "import os; open(f'/proc/{os.getppid()}/environ', 'rb').read()").startswith(
        "PermissionError")
    ptrace = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "if libc.ptrace(16, os.getppid(), 0, 0) != 0:\n"
              "    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))")
    assert _outcome(sim, ptrace).startswith("PermissionError")
    assert sim.value("1 + 1") == "2", "the monitor is alive and serving"


def _smuggle(k: LiveKernel, frame_expr: str) -> tuple[str, str]:
    """A cell writes ``frame_expr`` (bytes) straight into the worker's socket to the monitor."""
    cell = k.execute(
        "import os, socket\n"
        "from cc_kernel.protocol import messages as m\nfrom cc_kernel.protocol.privsep import encode\n"
        "argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
        "link = socket.socket(fileno=os.dup(int(argv[argv.index(b'--fd') + 1])))\n"
        f"link.sendall({frame_expr})\nimport time; time.sleep(5)\n",
        timeout=30,
    )
    return cell.status, cell.traceback_text + json.dumps(cell.content)


@pytest.mark.parametrize(
    ("frame", "expect"),
    [
        ("b'\\x00\\x00\\x00\\x05hello'", "trailing bytes"),
        ("encode(m.AuditReceipt(req_id=1, receipt=b'forged'))", "audit_receipt is not allowed"),
        ("encode(m.AttestResponse(envelope=b'evidence of my choice'))", "attest_response is not allowed"),
        ("encode(m.CompleteReply(req_id=999, status='ok', matches=[], cursor_start=0, cursor_end=0, metadata={}))",
         "does not answer the request in hand"),
        ("b'\\xff\\xff\\xff\\xff'", "exceeds"),
    ],
)
def test_a_smuggled_frame_ends_the_session(jupyter_env: JupyterEnv, frame: str, expect: str) -> None:
    with live_kernel(SIM) as k:
        k.ok("x = 1", timeout=60)
        status, text = _smuggle(k, frame)
        assert status == "error"
        assert "broke the monitor's protocol" in text and expect in text
        later = k.execute("1 + 1", timeout=10)
        assert later.status == "error" and "stopped" in later.traceback_text.lower()


def test_a_smuggled_frame_is_named_in_the_closing_entry(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    env = jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(tmp_path))
    with live_kernel(SIM, env=env) as k:
        k.ok("x = 1", timeout=60)
        _smuggle(k, "encode(m.AuditReceipt(req_id=1, receipt=b'forged'))")
    from cc_kernel.audit.format import ClosingEntry
    from cc_kernel.audit.verify import read_log_unverified

    (log,) = tmp_path.glob("*.cclog")
    closing = read_log_unverified(log.read_bytes()).entries[-1].entry
    assert isinstance(closing, ClosingEntry)
    assert closing.reason.startswith("worker died: ") and "audit_receipt is not allowed" in closing.reason


def test_two_sessions_on_one_server_cannot_reach_each_other(jupyter_env: JupyterEnv) -> None:
    """Two kernels on one ``cc-kernel enclave serve``: each session's worker has a private working directory
    and its own sandbox domain; the other session can neither read its files nor trace, read or signal it,
    and the directory is gone when the session ends."""
    from cc_kernel.testing.enclaves import start_supervisor
    from cc_kernel.testing.waiting import wait_until

    with start_supervisor(jupyter_env.data_dir) as sup:
        env = jupyter_env.kernel_env(CC_KERNEL_ENCLAVE=f"tcp://{sup.address.host}:{sup.address.port}")
        with live_kernel(SIM, env=env) as a, live_kernel(SIM, env=env) as b:
            cwd_a, pid_a = json.loads(a.value(
                "import os, json; open('secret.txt', 'w').write('A-secret'); json.dumps([os.getcwd(), os.getpid()])"
            ).strip("'"))
            cwd_b = json.loads(b.value("import os, json; json.dumps(os.getcwd())").strip("'"))
            assert cwd_a != cwd_b and cwd_a.startswith(tempfile_root()) and cwd_b.startswith(tempfile_root())
            for attempt in (
                f"open({cwd_a + '/secret.txt'!r}).read()",
                f"import os; os.listdir({cwd_a!r})",
                f"open('/proc/{pid_a}/mem', 'rb').read(1)",
                f"open('/proc/{pid_a}/environ', 'rb').read()",
                f"import os, signal; os.kill({pid_a}, signal.SIGTERM)",
            ):
                assert _outcome(b, attempt).startswith("PermissionError"), attempt
            assert a.value("open('secret.txt').read()") == "'A-secret'"
            (shown,) = a.ok("%attestation", timeout=30).of_type("display_data")
            session_uid = shown["content"]["data"]["application/json"]["protections"]["session_uid"]
            uid_a, uid_b = int(a.value("os.getuid()")), int(b.value("import os; os.getuid()"))
            if session_uid["in_force"]:  # a uid of its own per session
                assert uid_a != uid_b and 0 not in (uid_a, uid_b), session_uid
            else:  # this Python cannot run as another uid: said so, and the sandbox alone separates them
                assert uid_a == uid_b == 0 and "is not searchable by other users" in session_uid["detail"]
        wait_until(lambda: not Path(cwd_a).exists(), timeout=15, what="the ended session's directory is removed")


def tempfile_root() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_the_sandbox_keeps_the_ipython_experience(sim: LiveKernel) -> None:
    """What a notebook does every day still works inside the sandbox: shell escapes (a pty), %%bash,
    subprocesses, files and modules in the working directory, numpy, a temporary file."""
    assert sim.ok("!echo from-a-pty", timeout=30).stream().strip() == "from-a-pty"
    assert sim.ok("%%bash\necho from-bash", timeout=30).stream().strip() == "from-bash"
    assert sim.value("import subprocess; subprocess.run(['ls', '.'], capture_output=True).returncode") == "0"
    sim.ok("open('helper_mod_06.py', 'w').write('VALUE = 42\\n')")
    assert sim.value("import helper_mod_06; helper_mod_06.VALUE") == "42"
    sim.ok("import os; os.remove('helper_mod_06.py')")
    assert sim.value("import numpy as np; int(np.arange(10).sum())") == "45"
    assert sim.value("import tempfile; f = tempfile.NamedTemporaryFile(); f.write(b'x'); f.flush(); 1") == "1"


def test_multiprocessing_works_inside_the_sandbox(sim: LiveKernel) -> None:
    """Pools and locks need POSIX semaphores in /dev/shm: granted (as root, a private tmpfs)."""
    assert sim.value("import multiprocessing as mp\nwith mp.Pool(2) as p: r = p.map(abs, [-1, -2])\nr") == "[1, 2]"
    code = ("import concurrent.futures as cf\n"
            "with cf.ProcessPoolExecutor(2) as ex: r = sorted(ex.map(abs, [-3, 4]))\nr")
    assert sim.value(code) == "[3, 4]"
    assert sim.value("from multiprocessing import shared_memory as sm\n"
                     "s = sm.SharedMemory(create=True, size=16); s.buf[0] = 7; v = s.buf[0]; s.close(); s.unlink()\n"
                     "v") == "7"


@pytest.mark.skipif(os.geteuid() != 0, reason="a private /dev/shm needs the worker to start as root")
def test_a_root_workers_dev_shm_is_its_own(pool: KernelPool) -> None:
    """What a cell leaves in /dev/shm reaches neither the host nor another session; it goes with the worker."""
    name = f"cc-probe-{uuid.uuid4().hex}"
    first = pool.get(SIM)
    first.ok(f"open('/dev/shm/{name}', 'w').write('secret')")
    assert first.value(f"import os; os.path.exists('/dev/shm/{name}')") == "True"
    assert not (Path("/dev/shm") / name).exists()
    with live_kernel(SIM) as second:
        assert second.value(f"import os; os.path.exists('/dev/shm/{name}')") == "False"
