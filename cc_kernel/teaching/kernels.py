"""Teaching: real Jupyter kernels started by the teaching lab — ``LabKernel`` stays up for several requests, as a
frontend keeps a kernel; ``TeachingLab.run_cell`` runs one cell in a fresh one.

Layer: I/O (kernel processes driven with jupyter_client on the lab's loop), part of ``cc_kernel.teaching``.
Invariants: a kernel's output goes to its log file, never to the caller's stdout/stderr; a wiretapped kernel is
reached only through the lab's relays (one per ZMQ socket); ``shutdown`` is idempotent and asks the kernel to
stop as a frontend does (a Confidential Python kernel's enclave then signs the closing entry of its log).
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from cc_kernel.teaching.loop import LoopThread
from cc_kernel.teaching.outcomes import CellRun, latest_badge
from cc_kernel.teaching.recording import Relay, Wiretap

__all__ = ["ZMQ_CHANNELS", "LabKernel"]

#: The sockets of a Jupyter kernel, each relayed on its own when the kernel is wiretapped.
ZMQ_CHANNELS: Final = ("shell", "iopub", "stdin", "control", "hb")
_ZMQ_LABELS: Final = ("frontend → kernel", "kernel → frontend")
#: Bytes of a kernel's log quoted when it died before it was ready.
LOG_TAIL: Final = 4000


class LabKernel:
    """A real Jupyter kernel started by ``TeachingLab.start_kernel`` that stays up for several requests: cells
    (also silent ones, as a variable viewer sends), completions and inspections — then a clean shutdown, as a
    frontend does it. A Confidential Python kernel's badge names its session log (``audit_log``).

    Use it as a context manager or call ``shutdown()``; the lab shuts it down at the latest in ``close()``.
    """

    def __init__(self, loop: LoopThread, kernel: str, log_path: Path) -> None:
        self.kernel = kernel
        #: Every cell run so far, in order (``CellRun``; ``connection_info`` and ``kernel_log`` left empty).
        self.cells: list[CellRun] = []
        #: The kernel's connection file contents (ports, key), once started.
        self.connection_info: dict[str, Any] = {}
        #: The frontend <-> kernel traffic on its five sockets, if it was started wiretapped.
        self.wiretap: Wiretap | None = None
        self._loop = loop
        self._log_path = log_path
        self._log: Any = None
        self._km: Any = None
        self._kc: Any = None
        self._badge: Mapping[str, Any] | None = None
        self._badge_text = ""
        self.closed = False

    async def _start(
        self,
        kernels: Path,
        env: dict[str, str],
        connection_file: Path,
        timeout: float,
        keep_relay: Callable[[Relay], None] | None = None,
    ) -> None:
        """Start the kernel; with ``keep_relay``, reach it through one relay per socket (each handed to
        ``keep_relay``, which closes it with the lab), recorded in ``wiretap``."""
        from jupyter_client.asynchronous.client import AsyncKernelClient
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager

        km = AsyncKernelManager(kernel_name=self.kernel,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
        km.connection_file = str(connection_file)
        self._km = km
        self._log = self._log_path.open("wb")
        await km.start_kernel(env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        info: dict[str, Any] = dict(km.get_connection_info())
        if keep_relay is None:
            self._kc = km.client()
        else:
            # the relays listen only once the kernel is ready: a relay listening on a free port while the kernel
            # starts could be given one of the five ports the kernel was told to bind, and the kernel would die
            direct = km.client()
            direct.start_channels()
            try:
                await self._ready(direct, timeout)
            finally:
                direct.stop_channels()
            relays = {}
            for name in ZMQ_CHANNELS:
                relay = Relay(f"tcp://{info['ip']}:{info[f'{name}_port']}", channel=name, labels=_ZMQ_LABELS)
                keep_relay(relay)
                await relay.start()
                relays[name] = relay
            self.wiretap = Wiretap(relays, labels=_ZMQ_LABELS)
            self._kc = AsyncKernelClient()
            self._kc.load_connection_info({**info, **{f"{k}_port": r.port for k, r in relays.items()}})
        info["key"] = info["key"].decode() if isinstance(info.get("key"), bytes) else info.get("key")
        self.connection_info = info
        self._kc.start_channels()
        await self._ready(self._kc, timeout)

    async def _ready(self, client: Any, timeout: float) -> None:
        try:
            await client.wait_for_ready(timeout=timeout)
        except RuntimeError as exc:  # "Kernel died before replying to kernel_info": say what the kernel said
            self._log.flush()
            tail = self._log_path.read_bytes()[-LOG_TAIL:].decode("utf-8", "replace").strip()
            raise RuntimeError(f"{exc}; the {self.kernel} kernel's log ({self._log_path}) ends:\n{tail}") from exc

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"this {self.kernel} kernel has been shut down")

    def run(self, code: str, *, silent: bool = False, timeout: float = 30.0) -> CellRun:
        """Execute ``code`` (``silent=True``: as a variable viewer would — no history, no execution count) and
        return what came back.

        Raises:
            TimeoutError: no reply within ``timeout`` seconds.
        """
        self._check_open()
        outputs: list[dict[str, Any]] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] not in ("status", "execute_input"):
                outputs.append({"msg_type": msg["msg_type"], "content": msg["content"]})

        async def execute() -> tuple[dict[str, Any], float]:
            t0 = time.monotonic()
            reply = await self._kc.execute_interactive(code, silent=silent, timeout=timeout, output_hook=hook,
                                                       allow_stdin=False)
            return reply, time.monotonic() - t0

        reply, seconds = self._loop.run(execute(), timeout + 5.0)
        badge, badge_text = latest_badge(outputs)
        if badge is not None:  # the badge is shown once, then updated in place: keep its latest version
            self._badge, self._badge_text = badge, badge_text
        run = CellRun(kernel=self.kernel, code=code, status=str(reply["content"]["status"]), outputs=tuple(outputs),
                      seconds=seconds, connection_info={}, kernel_log="")
        self.cells.append(run)
        return run
    def _request(self, method: str, *args: Any, timeout: float) -> dict[str, Any]:
        self._check_open()

        async def ask() -> dict[str, Any]:
            msg_id = getattr(self._kc, method)(*args)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = await self._kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"no {method}_reply within {timeout} s") from None
                if reply["parent_header"].get("msg_id") == msg_id:
                    return dict(reply["content"])

        return self._loop.run(ask(), timeout + 5.0)

    def complete(self, code: str, cursor_pos: int | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """A ``complete_request`` (what Tab sends); returns the reply content (``matches``, ...)."""
        return self._request("complete", code, len(code) if cursor_pos is None else cursor_pos, timeout=timeout)

    def inspect(self, code: str, cursor_pos: int | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """An ``inspect_request`` (what Shift+Tab sends); returns the reply content (``found``, ``data``)."""
        return self._request("inspect", code, len(code) if cursor_pos is None else cursor_pos, timeout=timeout)

    @property
    def badge(self) -> Mapping[str, Any] | None:
        """The latest machine-readable attestation badge this kernel showed (None before its first cell)."""
        return self._badge

    @property
    def badge_text(self) -> str:
        return self._badge_text

    @property
    def audit_log(self) -> Path | None:
        """The session log this kernel writes, as its badge names it (None: no log, or no cell run yet)."""
        path = self._badge.get("audit_log") if self._badge is not None else None
        return Path(path) if path else None

    @property
    def kernel_log(self) -> str:
        """What the kernel process printed (its log)."""
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def shutdown(self, *, timeout: float = 15.0) -> None:
        """Shut the kernel down as a frontend does (a shutdown_request); idempotent. A Confidential Python
        kernel's enclave signs the closing entry of its session log on the way out."""
        if self.closed:
            return
        self.closed = True

        async def stop() -> None:
            if self._kc is not None:
                self._kc.stop_channels()
            if self._km is not None:
                with contextlib.suppress(Exception):
                    await self._km.shutdown_kernel(now=False)
                if self._km.has_kernel:
                    await self._km.shutdown_kernel(now=True)

        try:
            self._loop.run(stop(), timeout)
        finally:
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> LabKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "shut down" if self.closed else "running"
        return f"<LabKernel {self.kernel}: {state}, {len(self.cells)} cells run, audit log {self.audit_log}>"

