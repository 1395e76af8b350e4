"""Kernel side: the link to one enclave — launch (local) or dial (remote), attest, then route messages.

Runs on the kernel's asyncio loop. One reader task owns the receiving half of the channel: output messages are
handed at once to an ``on_output`` callback (which publishes them on IOPub with the parent of their request),
replies and input requests go to the waiting request's queue, and the end of the channel (the enclave died,
or the network broke) fails every pending request with an EnclaveError. Credits are returned as output is
handed to Jupyter, so the enclave's output window keeps both processes' memory bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.policy import Policy
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.transport import Address
from cc_kernel.errors import (
    CCKernelError,
    ChannelError,
    ConnectError,
    EnclaveError,
    MessageTooLarge,
    ProtocolError,
)
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import OUTPUT_MESSAGES
from cc_kernel.protocol.flow import output_cost

if TYPE_CHECKING:  # Intel collateral code loads only when a DCAP quote is verified
    from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral

log = logging.getLogger("cc_kernel.kernel")

#: Return credit to the enclave once this many output bytes were handed to Jupyter.
CREDIT_BATCH = 256 * 1024
REPLY_TYPES = (
    m.ExecuteReply, m.CompleteReply, m.InspectReply, m.IsCompleteReply, m.HistoryReply, m.CommInfoReply,
    m.UploadReply, m.InputRequest,
)


@dataclass
class LaunchSpec:
    """How to get an enclave: start a local process (``address`` None) or dial a remote one."""

    address: Address | None = None
    platform: str = "simulation"
    sim_dir: Path | None = None
    faults: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    #: The session id the evidence must bind (the one the badge and kernel_info show); random if None.
    session_id: bytes | None = None


class EnclaveLink:
    """One attested enclave session, from launch to shutdown."""

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        policy: Policy,
        simulation_anchors: TrustAnchors | None,
        on_output: Callable[[m.Message], None],
        on_closed: Callable[[str], None],
        on_receipt: Callable[[m.AuditReceipt], None] | None = None,
        collateral: DcapCollateral | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.simulation_anchors = simulation_anchors
        self.collateral = collateral
        #: Whether the local enclave process is the one ``app.main`` started early (kernel/early.py).
        self.started_early = False
        self._on_output = on_output
        self._on_closed = on_closed
        self._on_receipt = on_receipt
        self.process: subprocess.Popen[bytes] | None = None
        self.attested: AttestedChannel | None = None
        self._pending: dict[int, asyncio.Queue[m.Message | BaseException]] = {}
        self._next_req = 1
        self._reader: asyncio.Task[None] | None = None
        self._uncredited = 0
        self.closed_reason: str | None = None
        self._log_lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._receipts: list[m.AuditReceipt] = []
        self._receipt_check_due = False
        self._receipt_failure: str | None = None

    # -- start ----------------------------------------------------------------------------------------------

    async def start(self, *, timeout: float = 60.0) -> AttestedChannel:
        """Launch or dial the enclave and verify it. No application byte is sent before verification.

        Raises:
            ConnectError / EnclaveError: the enclave could not be started or reached.
            VerificationError (subclasses): its attestation was refused.
        """
        self._loop = asyncio.get_running_loop()
        target: Address | socket.socket = self._launch() if self.spec.address is None else self.spec.address
        try:
            self.attested = await connect_attested(
                target, policy=self.policy, anchors=hardware_anchors(),
                simulation_anchors=self.simulation_anchors, collateral=self.collateral,
                session_id=self.spec.session_id, timeout=timeout,
            )
        except (ChannelError, ProtocolError) as exc:
            raise EnclaveError(self._explain_start_failure(exc)) from exc
        except BaseException:
            await self.kill()
            raise
        self._reader = asyncio.ensure_future(self._read_loop())
        return self.attested

    def _launch(self) -> socket.socket:
        from cc_kernel.kernel import early

        spec = self.spec
        sim_dir = str(spec.sim_dir) if spec.sim_dir is not None else None
        # The process app.main started before ipykernel was imported, if it is exactly the one we would start.
        wanted = early.enclave_argv(-1, platform=spec.platform, sim_dir=sim_dir, faults=spec.faults)
        adopted = early.adopt(wanted, spec.extra_env)
        self.started_early = adopted is not None
        if adopted is not None:
            self.process, ours = adopted
        else:
            self.process, ours, _argv = early.spawn(
                platform=spec.platform, sim_dir=sim_dir, faults=spec.faults, extra_env=spec.extra_env
            )
        threading.Thread(target=self._pump_log, args=(self.process,), daemon=True, name="cc-enclave-log").start()
        return ours

    def _pump_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._log_lines = [*self._log_lines[-19:], line]
            log.info("enclave: %s", line)

    def _explain_start_failure(self, exc: BaseException) -> str:
        proc = self.process
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            if proc.returncode is not None:
                tail = "\n".join(self._log_lines[-5:]) or "(no output)"
                return f"the enclave process exited with status {proc.returncode} before attestation:\n{tail}"
        if isinstance(exc, ConnectError):
            return f"cannot reach the enclave: {exc}"
        return (f"the connection to the enclave failed during attestation: {exc}. Traffic altered on its way (by "
                "the host or a relay) ends a TLS 1.3 connection like this, as does an enclave that stopped.")

    # -- requests ---------------------------------------------------------------------------------------------

    def new_request(self) -> tuple[int, asyncio.Queue[m.Message | BaseException]]:
        """Allocate a request id and the queue its reply (and input requests) will arrive on."""
        req_id = self._next_req
        self._next_req += 1
        q: asyncio.Queue[m.Message | BaseException] = asyncio.Queue()
        self._pending[req_id] = q
        if self.closed_reason is not None:
            q.put_nowait(EnclaveError(self.closed_reason))
        return req_id, q

    def finish_request(self, req_id: int) -> None:
        self._pending.pop(req_id, None)

    async def send(self, msg: m.Message) -> None:
        """Send a message; a broken channel becomes EnclaveError (the reader reports why). A message too large
        for one frame raises MessageTooLarge: nothing was sent and the session goes on.

        Receipts read but not checked yet (normally none: see ``_flush_receipts``) are checked first, so a bad
        receipt stops the session before anything more is sent, whatever task sends."""
        if self._receipts:
            self._flush_receipts()
        if self.attested is None or self.closed_reason is not None or self._receipt_failure is not None:
            raise EnclaveError(self.closed_reason or self._receipt_failure or "the enclave is not connected")
        try:
            await self.attested.channel.send(msg)
        except MessageTooLarge:
            raise  # nothing was sent and the connection is intact: only this request fails
        except CCKernelError as exc:
            raise EnclaveError(f"the enclave connection failed: {exc}") from exc

    @property
    def next_request_id(self) -> int:
        """The id the next request will get (read from any thread: ids only grow)."""
        return self._next_req

    def send_soon(self, msg: m.Message) -> None:
        """Thread-safe fire-and-forget send (interrupts from the control thread)."""
        loop = self._loop
        if loop is None or self.attested is None or self.closed_reason is not None:
            return

        def _go() -> None:
            task = loop.create_task(self.send(msg))
            task.add_done_callback(lambda t: t.exception())

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_go)

    async def _read_loop(self) -> None:
        assert self.attested is not None
        channel = self.attested.channel
        reason = "the enclave closed the connection"
        try:
            while True:
                msg = await channel.receive()
                if type(msg) in OUTPUT_MESSAGES:
                    try:
                        self._on_output(msg)
                    finally:
                        self._uncredited += output_cost(msg)
                        if self._uncredited >= CREDIT_BATCH:
                            credit, self._uncredited = self._uncredited, 0
                            await channel.send(m.Credit(nbytes=credit))
                elif isinstance(msg, REPLY_TYPES):
                    q = self._pending.get(msg.req_id)
                    if q is not None:
                        q.put_nowait(msg)
                    else:
                        log.warning("dropping %s for unknown request %s", type(msg).__name__, msg.req_id)
                elif isinstance(msg, m.ShutdownReply):
                    reason = "the enclave shut down"
                    break
                elif isinstance(msg, m.AuditReceipt):
                    if self._on_receipt is not None:
                        self._receipts.append(msg)
                        if not self._receipt_check_due:
                            self._receipt_check_due = True
                            asyncio.get_running_loop().call_soon(self._flush_receipts)
                elif isinstance(msg, m.Pong):
                    continue
                else:
                    log.warning("unexpected %s from the enclave", type(msg).__name__)
        except CCKernelError as exc:
            reason = f"the connection to the enclave broke: {exc}"
        except asyncio.CancelledError:
            reason = self._receipt_failure or "the kernel closed the connection"
        finally:
            self._flush_receipts(stopping=True)
            await self._closed(self._receipt_failure or reason)

    def _flush_receipts(self, *, stopping: bool = False) -> None:
        """Check and log the receipts received so far, in order.

        The enclave sends each receipt right after its reply. The read loop schedules this check with
        ``call_soon`` rather than running it in place: a reply read in the same chunk has already woken its
        request, whose task then runs first, so the check (msgpack decode, Ed25519 verify, one ``write``) never
        holds up a reply. A receipt is thus in the log file within a loop iteration of being read. Whatever is
        still queued is also checked before anything is sent and before the link closes. A receipt that does
        not verify stops the session: no further request is sent.
        """
        self._receipt_check_due = False
        receipts, self._receipts = self._receipts, []
        if self._on_receipt is None or self._receipt_failure is not None:
            return
        for msg in receipts:
            try:
                self._on_receipt(msg)
            except CCKernelError as exc:  # a receipt that does not verify: stop trusting the session
                self._receipt_failure = f"the enclave sent an invalid audit receipt ({exc}); session stopped"
                if not stopping and self._reader is not None and not self._reader.done():
                    self._reader.cancel()
                return

    async def _closed(self, reason: str) -> None:
        proc = self.process
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 1.0)
            if proc.returncode is not None and proc.returncode != 0:
                how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
                reason = f"the enclave process died ({how})"
        if self.closed_reason is None:
            self.closed_reason = reason
        for q in self._pending.values():
            q.put_nowait(EnclaveError(reason))
        if self.attested is not None:
            await self.attested.channel.aclose()
        self._on_closed(reason)

    # -- stop -------------------------------------------------------------------------------------------------

    async def shutdown(self, *, restart: bool = False, timeout: float = 3.0) -> None:
        """Ask the enclave to shut down cleanly, then make sure its process is gone."""
        if self.attested is not None and self.closed_reason is None:
            with contextlib.suppress(CCKernelError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.send(m.Shutdown(restart=restart))
                    if self._reader is not None:
                        await asyncio.shield(self._reader)
        await self.kill()

    async def kill(self) -> None:
        """Terminate the local enclave process (and its whole session), at once."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        if self.attested is not None:
            await self.attested.channel.aclose()

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): no enclave process may outlive the kernel."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "local" if self.spec.address is None else f"remote {self.spec.address}",
            "pid": self.process.pid if self.process else None,
        }
