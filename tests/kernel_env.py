"""Helpers for tests that start real kernels: an isolated Jupyter environment and a client that runs requests
with deadlines.

``jupyter_env`` (session-scoped fixture, re-exported by conftest.py) points every Jupyter and IPython
directory at a temporary tree, installs both cc kernelspecs and the stock ``python3`` spec there (found first
through ``JUPYTER_PATH``), pins the simulation kernel's policy and creates the simulated authority once. Kernels
inherit that environment, so nothing touches the user's directories.

:class:`LiveKernel` wraps a KernelManager and its BlockingKernelClient. Every request waits with a deadline by
polling the client's sockets (never by sleeping); every message the client sends is recorded, and every IOPub
message received is kept, so a test can check that nothing arrived without a parent we sent.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import select
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

SIM = "confidential-python-sim"
HW = "confidential-python"
STOCK = "python3"

#: The enclave's badge: its MIME type and display-id prefix (cc_kernel.kernel.badge).
BADGE_MIME = "application/vnd.cc-kernel.attestation.v1+json"
BADGE_ID_PREFIX = "cc-kernel-attestation"

#: Variables a test session must not inherit from the developer's shell.
_CLEARED = (
    "CC_KERNEL_POLICY", "CC_KERNEL_ENCLAVE", "CC_KERNEL_SIM_DIR", "CC_KERNEL_FAULTS", "MPLBACKEND",
    "PYTHONSTARTUP", "JPY_PARENT_PID",
)


@dataclass(frozen=True)
class JupyterEnv:
    """The isolated Jupyter tree of this test session."""

    root: Path
    prefix: Path
    data_dir: Path

    def kernel_env(self, **extra: str) -> dict[str, str]:
        """The environment for ``KernelManager.start_kernel(env=...)``: the current one plus ``extra``."""
        return {**os.environ, **extra}


@pytest.fixture(scope="session")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterEnv]:
    root = tmp_path_factory.mktemp("jupyter")
    prefix, data_dir = root / "prefix", root / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        mp.setenv("JUPYTER_DATA_DIR", str(data_dir))
        mp.setenv("JUPYTER_CONFIG_DIR", str(root / "config"))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silence the path-migration warning; paths are all set above
        mp.setenv("IPYTHONDIR", str(root / "ipython"))  # the stock kernel's profile and history
        mp.setenv("MPLCONFIGDIR", str(root / "matplotlib"))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel imports debugpy; keep its banner quiet
        for name in _CLEARED:
            mp.delenv(name, raising=False)

        import ipykernel.kernelspec

        from cc_kernel.kernel.install import install, pin_simulation_policy
        from cc_kernel.simstore import load_or_create_authority, simulation_dir

        install(prefix=str(prefix))
        ipykernel.kernelspec.install(prefix=str(prefix))  # python3, with argv[0] = this interpreter
        pin_simulation_policy(note="pinned by the test session")
        load_or_create_authority(simulation_dir())  # once, before kernels start in parallel
        yield JupyterEnv(root=root, prefix=prefix, data_dir=data_dir)


# -- running requests -------------------------------------------------------------------------------------------


class KernelTimeoutError(AssertionError):
    """A request did not finish before its deadline (an assertion failure, not a harness error)."""


@dataclass
class Cell:
    """One execute request: its reply, its IOPub outputs (no status/execute_input) and when each arrived.

    Times are seconds after the request was sent (``time.monotonic``).
    """

    code: str
    msg_id: str
    started: float  # time.monotonic() when the request was sent
    reply: dict[str, Any] | None = None
    reply_at: float = -1.0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    output_at: list[float] = field(default_factory=list)
    input_requests: list[dict[str, Any]] = field(default_factory=list)
    idle_at: float = -1.0

    @property
    def content(self) -> dict[str, Any]:
        assert self.reply is not None, f"no reply for {self.code!r}"
        return dict(self.reply["content"])

    @property
    def status(self) -> str:
        return str(self.content["status"])

    def of_type(self, *msg_types: str) -> list[dict[str, Any]]:
        return [o for o in self.outputs if o["msg_type"] in msg_types]

    def stream(self, name: str = "stdout") -> str:
        return "".join(o["content"]["text"] for o in self.of_type("stream") if o["content"]["name"] == name)

    def without_badge(self) -> list[dict[str, Any]]:
        return [o for o in self.outputs if not is_badge(o)]

    @property
    def traceback_text(self) -> str:
        return "\n".join(self.content.get("traceback", []))

    def summary(self) -> str:
        kinds = [o["msg_type"] for o in self.outputs]
        reply = None if self.reply is None else self.reply["content"].get("status")
        return f"{self.code!r}: reply={reply} outputs={kinds} stdout={self.stream()[:200]!r}"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def is_badge(msg: dict[str, Any]) -> bool:
    """Is this IOPub message the kernel's attestation badge (or an update of it)?"""
    content = msg.get("content", {})
    did = (content.get("transient") or {}).get("display_id", "")
    return BADGE_MIME in content.get("data", {}) or str(did).startswith(BADGE_ID_PREFIX)


StdinAnswer = Callable[[str, bool], str]


class LiveKernel:
    """A started kernel and its client. Not thread-safe: one test drives it at a time."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc
        self.sent: set[str] = set()
        self.iopub: list[dict[str, Any]] = []  # everything received on IOPub, in order
        self.cells: list[Cell] = []
        self.keep_streams = True  # False: the IOPub log leaves out stream messages
        self._shell_backlog: list[dict[str, Any]] = []
        # Record the id of every message sent: the client's channels use kc.session, the manager's control
        # requests (interrupt, shutdown) km.session; two objects with the same session id.
        for session in {id(s): s for s in (km.session, kc.session)}.values():
            session.send = self._recording(session.send)

    def _recording(self, send: Callable[..., Any]) -> Callable[..., Any]:
        def recording_send(*args: Any, **kwargs: Any) -> Any:
            msg = send(*args, **kwargs)
            if isinstance(msg, dict) and "header" in msg:
                self.sent.add(msg["header"]["msg_id"])
            return msg

        return recording_send

    @classmethod
    def start(cls, name: str, *, env: dict[str, str] | None = None, timeout: float = 60.0,
              unbounded_receive: bool = False) -> LiveKernel:
        """Start ``name`` and wait until it is ready.

        ``unbounded_receive``: the client's sockets queue incoming messages without limit (ZMQ RCVHWM 0), so
        the kernel's IOPub PUB socket never reaches its high-water mark because this test process is slow to
        parse messages (PUB drops messages for a subscriber whose queue is full).
        """
        km = KernelManager(kernel_name=name)
        # a working directory of its own, as a notebook's: the checkout (holding the editable package and
        # .venv) must not be the cells' writable working directory
        kwargs: dict[str, Any] = {"cwd": tempfile.mkdtemp(prefix="cc-kernel-cwd-")}
        if env is not None:
            kwargs["env"] = env
        km.start_kernel(**kwargs)
        kc = km.client()
        if unbounded_receive:
            kc.context.setsockopt(zmq.RCVHWM, 0)  # the default for every socket the client creates from now on
        live = cls(km, kc)
        kc.start_channels()
        live.wait_ready(timeout)
        return live

    # -- low level ------------------------------------------------------------------------------------------

    def _channels(self) -> list[Any]:
        return [self.kc.iopub_channel, self.kc.shell_channel, self.kc.stdin_channel]

    def _poll(self, deadline: float, on_msg: Callable[[str, dict[str, Any]], bool], what: str) -> None:
        """Deliver messages to ``on_msg(channel, msg)`` until it returns True; KernelTimeoutError at ``deadline``."""
        names = ("iopub", "shell", "stdin")
        poller = zmq.Poller()
        for ch in self._channels():
            poller.register(ch.socket, zmq.POLLIN)
        while True:
            if self._shell_backlog:
                backlog, self._shell_backlog = self._shell_backlog, []
                for msg in backlog:
                    if on_msg("shell", msg):
                        return
            for name, ch in zip(names, self._channels(), strict=True):
                while ch.msg_ready():
                    msg = ch.get_msg(timeout=0)
                    if name == "iopub" and (self.keep_streams or msg["msg_type"] != "stream"):
                        self.iopub.append(msg)
                    if on_msg(name, msg):
                        return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelTimeoutError(f"timed out waiting for {what}")
            poller.poll(min(remaining, 0.25) * 1000)

    def drain_iopub(self, quiet: float = 0.2) -> list[dict[str, Any]]:
        """Read IOPub until it has been quiet for ``quiet`` seconds; return what arrived (also kept in iopub)."""
        got: list[dict[str, Any]] = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=quiet)
            except queue.Empty:
                return got
            self.iopub.append(msg)
            got.append(msg)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Send kernel_info until it is answered on shell AND its status arrives on IOPub.

        IOPub is a PUB socket: until the subscription has reached the kernel, its messages are lost. A test
        that started executing earlier would miss its first outputs (jupyter_client's wait_for_ready has the
        same check, but does not record the requests it sends).
        """
        deadline = time.monotonic() + timeout
        asked: set[str] = set()
        while True:
            if not self.km.is_alive():
                raise KernelTimeoutError("the kernel died before it answered kernel_info")
            try:
                reply = self.request("kernel_info", timeout=1.0)
            except KernelTimeoutError:
                reply = None
            if reply is not None:
                asked.add(reply["parent_header"]["msg_id"])
                seen = self.wait_iopub(lambda msg: msg["parent_header"].get("msg_id") in asked, 0.5)
                if seen:
                    return reply
            if time.monotonic() > deadline:
                raise KernelTimeoutError(f"the kernel was not ready within {timeout} s")

    def wait_iopub(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Read IOPub (keeping everything in ``iopub``) until ``predicate(msg)``; False at the deadline."""

        def on_msg(channel: str, msg: dict[str, Any]) -> bool:
            if channel == "shell":
                self._shell_backlog.append(msg)  # a reply someone else will ask for
            return channel == "iopub" and predicate(msg)

        try:
            self._poll(time.monotonic() + timeout, on_msg, "IOPub")
        except KernelTimeoutError:
            return False
        return True

    def request(self, method: str, *args: Any, timeout: float = 15.0, **kwargs: Any) -> dict[str, Any]:
        """Send a shell request with ``kc.<method>(*args, **kwargs)``; return its reply message."""
        msg_id = getattr(self.kc, method)(*args, **kwargs)
        found: list[dict[str, Any]] = []

        def on_msg(channel: str, msg: dict[str, Any]) -> bool:
            if channel == "shell":
                if msg["parent_header"].get("msg_id") == msg_id:
                    found.append(msg)
                    return True
                self._shell_backlog.append(msg)
            return False

        self._poll(time.monotonic() + timeout, on_msg, f"the reply to {method}")
        return found[0]

    # -- execute -------------------------------------------------------------------------------------------

    def execute(
        self,
        code: str,
        *,
        timeout: float = 30.0,
        stdin: StdinAnswer | None = None,
        allow_stdin: bool | None = None,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
        on_output: Callable[[dict[str, Any], float], None] | None = None,
        keep_streams: bool = True,
    ) -> Cell:
        """Run ``code``; return when its reply and its ``idle`` status have both arrived.

        ``stdin(prompt, password)`` answers input requests (and turns allow_stdin on). ``on_output(msg, t)``
        sees each output as it arrives (for sampling while a long cell runs). ``keep_streams=False`` does not
        keep stdout messages (a flood would otherwise be held in the test process twice: cell and IOPub log).
        """
        allow = stdin is not None if allow_stdin is None else allow_stdin
        self.keep_streams = keep_streams
        start = time.monotonic()
        msg_id = self.kc.execute(code, silent=silent, store_history=store_history, allow_stdin=allow,
                                 stop_on_error=stop_on_error)
        cell = Cell(code=code, msg_id=msg_id, started=start)
        self.cells.append(cell)

        def on_msg(channel: str, msg: dict[str, Any]) -> bool:
            now = time.monotonic() - start
            mine = msg["parent_header"].get("msg_id") == msg_id
            if channel == "shell":
                if not mine:
                    self._shell_backlog.append(msg)
                    return False
                cell.reply, cell.reply_at = msg, now
            elif channel == "stdin" and mine:
                cell.input_requests.append(msg["content"])
                assert stdin is not None, f"unexpected input request {msg['content']}"
                self.kc.input(stdin(msg["content"]["prompt"], bool(msg["content"]["password"])))
            elif channel == "iopub" and mine:
                kind = msg["msg_type"]
                if kind == "status":
                    if msg["content"]["execution_state"] == "idle":
                        cell.idle_at = now
                elif kind != "execute_input":
                    if keep_streams or kind != "stream" or msg["content"]["name"] != "stdout":
                        cell.outputs.append(msg)
                        cell.output_at.append(now)
                    if on_output is not None:
                        on_output(msg, now)
            return cell.reply is not None and cell.idle_at >= 0

        try:
            self._poll(start + timeout, on_msg, f"cell {code[:60]!r}")
        except KernelTimeoutError as exc:
            raise KernelTimeoutError(f"{exc}; so far {cell.summary()}") from None
        finally:
            self.keep_streams = True
        return cell

    def ok(self, code: str, **kwargs: Any) -> Cell:
        """Execute and assert the reply is ``ok``."""
        cell = self.execute(code, **kwargs)
        assert cell.status == "ok", f"{cell.summary()}\n{cell.traceback_text}"
        return cell

    def value(self, expr: str) -> str:
        """``text/plain`` of ``expr``'s execute_result."""
        cell = self.ok(expr)
        results = cell.of_type("execute_result")
        assert results, cell.summary()
        return str(results[-1]["content"]["data"]["text/plain"])

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        pid = self.km.provisioner.pid if self.km.provisioner is not None else None  # type: ignore[attr-defined]
        assert pid is not None, "the kernel is not running"
        return int(pid)

    def shut_down_by_request(self, grace: float = 120.0) -> None:
        """Shut down as a frontend does (``shutdown_request``) and check that the kernel process exited by itself,
        with status 0. jupyter_client sends SIGTERM, then SIGKILL, once half of its grace time has passed; the
        grace is long here, so a loaded machine cannot make the kernel look as if it needed them."""
        process = self.km.provisioner.process  # type: ignore[union-attr]
        assert process is not None, "the kernel is not running"
        self.km.shutdown_wait_time = grace
        self.km.shutdown_kernel(now=False)
        assert process.returncode == 0, f"the kernel did not exit by itself: status {process.returncode}"

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=False)
        self.drain_iopub(quiet=0.05)
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)

    def unparented(self) -> list[dict[str, Any]]:
        """IOPub messages whose parent is not a request we sent (the kernel's welcome/starting excepted)."""
        bad = []
        for msg in self.iopub:
            parent = msg["parent_header"].get("msg_id")
            if parent in self.sent:
                continue
            if not parent and msg["msg_type"] == "iopub_welcome":
                continue
            if not parent and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "starting":
                continue
            bad.append(msg)
        return bad


@contextlib.contextmanager
def live_kernel(name: str, *, env: dict[str, str] | None = None) -> Iterator[LiveKernel]:
    """A fresh kernel for one test, shut down afterwards."""
    kernel = LiveKernel.start(name, env=env)
    try:
        yield kernel
    finally:
        kernel.shutdown()


class KernelPool:
    """Kernels started on first use and shared by the tests of one module (shut down at module end)."""

    def __init__(self) -> None:
        self._kernels: dict[str, LiveKernel] = {}

    def get(self, name: str, *, warm_up: str = "print('warm-up')") -> LiveKernel:
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = LiveKernel.start(name)
            kernel.ok(warm_up, timeout=60)  # a real session's first cell: the badge appears here
            self._kernels[name] = kernel
        return kernel

    def close(self) -> None:
        for kernel in self._kernels.values():
            kernel.shutdown()
        self._kernels.clear()


# -- processes ---------------------------------------------------------------------------------------------


def proc_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is gone (or a zombie); False at the deadline."""
    deadline = time.monotonic() + timeout
    while proc_alive(pid):
        if time.monotonic() > deadline:
            return False
        with contextlib.suppress(OSError):  # not our child: wait on its pidfd (readable once it has exited)
            fd = os.pidfd_open(pid)
            try:
                select.select([fd], [], [], min(0.1, max(0.0, deadline - time.monotonic())))
            finally:
                os.close(fd)
    return True


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def children_running(module: str, ppid: int) -> list[int]:
    """Pids of live processes whose parent is ``ppid`` and whose command line runs ``python -m <module>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" or int(fields[1]) != ppid:
            continue
        if module.encode() in cmdline:
            found.append(int(entry.name))
    return found


def processes_running(module: str) -> list[int]:
    """Pids of every live process whose command line runs ``python -m <module>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if module.encode() in cmdline and proc_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
