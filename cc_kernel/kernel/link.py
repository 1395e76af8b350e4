"""Kernel side: the link to one enclave — launch (local) or dial (remote), attest, then route messages.

Runs on the kernel's asyncio loop. One reader task owns the receiving half of the channel: output messages are
handed at once to an ``on_output`` callback (which publishes them on IOPub with the parent of their request),
replies and input requests go to the waiting request's queue, and the end of the channel (the enclave died,
or the network broke) fails every pending request with an EnclaveError. Credits are returned as output is
handed to Jupyter, so the enclave's output window keeps both processes' memory bounded.

Audit fails closed. When the session keeps a log (``start_audit``), every receipted request ``send`` passes
on (``audit.receipts.expected_receipt``) must get exactly one receipt, in the order the requests were sent. The
read loop pairs each arriving receipt with the oldest expectation at once; the pair is checked (signature and
chain by the ``LogWriter``, then request id, kind and code hash) in the next loop turn, before anything more is
sent. A missing, extra, mismatched or invalid receipt stops the session: nothing more is sent but ``Shutdown``
and credit, every request fails with the reason, ``on_closed`` is told at once, and the enclave has
``STOP_GRACE`` seconds to sign its closing entry. What counts as each, which entries are still appended, and
what a valid log then proves: docs/audit-log.md §1.1.
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
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.policy import Policy
from cc_kernel.audit.format import ClosingEntry, ReceiptEntry, code_hash
from cc_kernel.audit.receipts import LogWriter, expected_receipt
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.clients import ClientIdentity
from cc_kernel.channel.transport import Address
from cc_kernel.errors import (
    AuditError,
    CCKernelError,
    ChannelError,
    ClientNotAuthorized,
    ConnectError,
    EnclaveError,
    MessageTooLarge,
    ProtocolError,
    ServerBusy,
)
from cc_kernel.kernel.relay import Relays
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import OUTPUT_MESSAGES
from cc_kernel.protocol.flow import output_cost

if TYPE_CHECKING:  # Intel collateral code loads only when a DCAP quote is verified
    from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral

log = logging.getLogger("cc_kernel.kernel")

#: Return credit to the enclave once this many output bytes were handed to Jupyter.
CREDIT_BATCH = 256 * 1024
#: Waits between attempts while a remote enclave server says it is busy: doubling from the first to the last,
#: within the start timeout.
BUSY_RETRY_FIRST = 0.5
BUSY_RETRY_MAX = 8.0
REPLY_TYPES = (
    m.ExecuteReply, m.CompleteReply, m.InspectReply, m.IsCompleteReply, m.HistoryReply, m.CommInfoReply,
    m.UploadReply, m.InputRequest,
)
#: Seconds the enclave has, once the kernel stopped the session, to sign its closing entry and reply.
STOP_GRACE = 3.0


@dataclass(frozen=True)
class Expectation:
    """The receipt one request must get: its request id, its kind and the hash of the code sent."""

    req_id: int
    kind: str
    code_sha256: bytes

    def describe(self) -> str:
        return f"request {self.req_id} ({self.kind})"


@dataclass(frozen=True)
class _Arrival:
    """A receipt as it arrived, paired with the expectation it must meet (None: nothing was expected) and, for
    a claimed closing entry (request id 0), the expectations outstanding when it arrived."""

    msg: m.AuditReceipt
    expected: Expectation | None
    outstanding: tuple[Expectation, ...] = ()


def _hex(digest: bytes) -> str:
    return digest.hex()[:16] + "…"


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
    #: Remote mode: where the user's client key lives (default ``clientkey.client_key_dir()``); created on
    #: first use and presented to the enclave server. Local mode presents none (the socketpair is private).
    client_key_dir: Path | None = None


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
        collateral: DcapCollateral | None = None,
        brokers: Iterable[str] = (),
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.simulation_anchors = simulation_anchors
        self.collateral = collateral
        #: Whether the local enclave process is the one ``app.main`` started early (kernel/early.py).
        self.started_early = False
        self._on_output = on_output
        self._on_closed = on_closed
        self._closed_told = False
        self.process: subprocess.Popen[bytes] | None = None
        self.attested: AttestedChannel | None = None
        self._pending: dict[int, asyncio.Queue[m.Message | BaseException]] = {}
        self._next_req = 1
        self._reader: asyncio.Task[None] | None = None
        self._uncredited = 0
        self.closed_reason: str | None = None
        self._log_lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # audit: None before start_audit/audit_off; the writer while the session keeps a log
        self._audit: LogWriter | None = None
        self._audit_decided = False
        self._expected: deque[Expectation] = deque()
        self._last_receipted = 0
        self._receipts: list[_Arrival] = []
        self._receipt_check_due = False
        # the request id of the last receipt that arrived, and whether a "background" receipt for it is due
        self._last_arrived = 0
        self._background_due = False
        #: Why the kernel stopped the session (a receipt check failed); sent as ``Shutdown.reason``.
        self.stop_reason: str | None = None
        self._stop_sent = False
        self._deadline: asyncio.Timeout | None = None
        self._clean_end = False
        #: Connections to data owners' brokers the monitor asked the kernel to carry (``%cc_dataset``).
        self.relays = Relays(self.send, brokers)
        #: Called with ``DatasetInfo.datasets`` whenever the enclave reports the open datasets (the badge).
        self.on_datasets: Callable[[list[Any]], None] = lambda datasets: None

    # -- start ----------------------------------------------------------------------------------------------

    async def start(self, *, timeout: float = 60.0) -> AttestedChannel:
        """Launch or dial the enclave and verify it. No application byte is sent before verification.

        Raises:
            ConnectError / EnclaveError: the enclave could not be started or reached.
            VerificationError (subclasses): its attestation was refused.
        """
        self._loop = asyncio.get_running_loop()
        client_identity = None
        if self.spec.address is not None:
            from cc_kernel.clientkey import load_or_create_client_identity

            client_identity = await asyncio.to_thread(load_or_create_client_identity, self.spec.client_key_dir)
        target: Address | socket.socket = self._launch() if self.spec.address is None else self.spec.address
        try:
            self.attested = await self._connect(target, timeout, client_identity)
        except (ChannelError, ProtocolError) as exc:
            raise EnclaveError(self._explain_start_failure(exc)) from exc
        except BaseException:
            await self.kill()
            raise
        self._reader = asyncio.ensure_future(self._read_loop())
        return self.attested

    async def _connect(
        self, target: Address | socket.socket, timeout: float, client_identity: ClientIdentity | None
    ) -> AttestedChannel:
        """``connect_attested``; while a remote server says it is busy, try again with exponential backoff until
        ``timeout`` seconds have passed since the first attempt (then its ServerBusy is raised)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = BUSY_RETRY_FIRST
        while True:
            try:
                return await connect_attested(
                    target, policy=self.policy, anchors=hardware_anchors(),
                    simulation_anchors=self.simulation_anchors, collateral=self.collateral,
                    session_id=self.spec.session_id, timeout=max(deadline - loop.time(), 0.001),
                    client_identity=client_identity,
                )
            except ServerBusy as exc:
                if isinstance(target, socket.socket) or loop.time() + delay >= deadline:
                    raise
                log.warning("%s; trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)  # backoff, not synchronisation: the server is full
                delay = min(2 * delay, BUSY_RETRY_MAX)

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
        if isinstance(exc, ServerBusy):
            return f"{exc} (still busy after retrying for the kernel's start timeout)"
        if isinstance(exc, ClientNotAuthorized):
            return str(exc)
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
        if self.closed_reason is not None or self.stop_reason is not None:
            q.put_nowait(EnclaveError(self._why_closed()))
        return req_id, q

    def finish_request(self, req_id: int) -> None:
        self._pending.pop(req_id, None)

    def _why_closed(self) -> str:
        if self.stop_reason is not None:
            return stopped_text(self.stop_reason)
        return self.closed_reason or "the enclave is not connected"

    async def send(self, msg: m.Message) -> None:
        """Send a message; a broken channel becomes EnclaveError (the reader reports why). A message too large
        for one frame raises MessageTooLarge: nothing was sent and the session goes on.

        Receipts read but not checked yet (normally none: see ``_flush_receipts``) are checked first, so a bad
        receipt stops the session before anything more is sent, whatever task sends. While the session keeps a
        log, a receipted request registers the receipt it must get (``Expectation``) before it goes out.

        Raises:
            EnclaveError: the session is stopped or closed (the message says why), or the channel broke.
            ValueError: ``AuditStart``/``AuditOff`` (use ``start_audit``/``audit_off``), a receipted request before
                either, or one whose id is not above the previous one's (requests go out in the order of their ids).
        """
        if isinstance(msg, m.AuditStart | m.AuditOff):
            raise ValueError("use start_audit() or audit_off() to decide the session's log")
        if self._receipts:
            self._flush_receipts()
        if self.attested is None or self.closed_reason is not None or self.stop_reason is not None:
            raise EnclaveError(self._why_closed())
        subject = expected_receipt(msg)
        if subject is not None and not self._audit_decided:
            raise ValueError("start_audit() or audit_off() must come before the first request")
        writer = self._audit
        if writer is not None and subject is not None:
            req_id = getattr(msg, "req_id", 0)
            if req_id <= self._last_receipted:
                raise ValueError(f"request {req_id} sent after request {self._last_receipted}: requests go "
                                 "out in the order of their ids")
            if writer.closed:
                raise EnclaveError("the enclave closed this session's log: no further request can be "
                                   "receipted, so none is sent. Restart the kernel for a fresh session.")
            kind, code = subject
            expectation, previous = Expectation(req_id, kind, code_hash(code)), self._last_receipted
            self._expected.append(expectation)
            self._last_receipted = req_id
            try:
                await self._send_raw(msg)
            except MessageTooLarge:  # never sent: it owes no receipt
                self._expected.remove(expectation)
                self._last_receipted = previous
                raise
            return
        await self._send_raw(msg)

    async def _send_raw(self, msg: m.Message) -> None:
        assert self.attested is not None
        try:
            await self.attested.channel.send(msg)
        except MessageTooLarge:
            raise  # nothing was sent and the connection is intact: only this request fails
        except CCKernelError as exc:
            raise EnclaveError(f"the enclave connection failed: {exc}") from exc

    async def start_audit(self, writer: LogWriter, *, redact_code: bool) -> None:
        """Keep a log: ``writer`` has just written the opening entry; tell the enclave to chain its receipts to
        it (``AuditStart``). From now on every receipted request must get its receipt (module docstring).

        Raises:
            ValueError: the log was already decided, or ``writer`` is not freshly opened.
            EnclaveError: as ``send``.
        """
        if self._audit_decided:
            raise ValueError("the session's log was already started or turned off")
        opening_hash = writer.last_hash
        if opening_hash is None or writer.count != 1:
            raise ValueError("start_audit needs a writer that has written its opening entry and nothing else")
        if self.attested is None or self.closed_reason is not None or self.stop_reason is not None:
            raise EnclaveError(self._why_closed())
        self._audit_decided = True
        self._audit = writer
        await self._send_raw(m.AuditStart(opening_hash=opening_hash, redact_code=redact_code))

    async def audit_off(self) -> None:
        """Keep no log (``AuditOff``): any receipt the enclave sends is then an extra one and stops the session.

        Raises:
            ValueError: the log was already decided.  EnclaveError: as ``send``.
        """
        if self._audit_decided:
            raise ValueError("the session's log was already started or turned off")
        if self.attested is None or self.closed_reason is not None or self.stop_reason is not None:
            raise EnclaveError(self._why_closed())
        self._audit_decided = True
        await self._send_raw(m.AuditOff())

    @property
    def expected_receipts(self) -> tuple[Expectation, ...]:
        """The receipts still awaited, oldest first."""
        return tuple(self._expected)

    @property
    def next_request_id(self) -> int:
        """The id the next request will get (read from any thread: ids only grow)."""
        return self._next_req

    def send_soon(self, msg: m.Message) -> None:
        """Thread-safe fire-and-forget send (interrupts from the control thread)."""
        loop = self._loop
        if loop is None or self.attested is None or self.closed_reason is not None or self.stop_reason is not None:
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
            async with asyncio.timeout(None) as deadline:
                self._deadline = deadline
                if self.stop_reason is not None:  # stopped before the reader ran
                    deadline.reschedule(asyncio.get_running_loop().time() + STOP_GRACE)
                while True:
                    msg = await channel.receive()
                    if type(msg) in OUTPUT_MESSAGES:
                        self._check_order(getattr(msg, "req_id", 0), "an output")
                        self._check_background(getattr(msg, "req_id", 0))
                        try:
                            if self.stop_reason is None:
                                self._on_output(msg)
                        finally:
                            self._uncredited += output_cost(msg)
                            if self._uncredited >= CREDIT_BATCH:
                                credit, self._uncredited = self._uncredited, 0
                                await channel.send(m.Credit(nbytes=credit))
                    elif isinstance(msg, REPLY_TYPES):
                        what = "an input request" if isinstance(msg, m.InputRequest) else "the reply"
                        self._check_order(msg.req_id, what)
                        q = self._pending.get(msg.req_id)
                        if self.stop_reason is not None:
                            continue  # the waiting request already has the reason
                        if isinstance(msg, m.UploadReply):
                            self.relays.answered(msg.req_id)
                        if q is not None:
                            q.put_nowait(msg)
                        else:
                            log.warning("dropping %s for unknown request %s", type(msg).__name__, msg.req_id)
                    elif isinstance(msg, m.ShutdownReply):
                        reason = "the enclave shut down"
                        self._clean_end = True
                        break
                    elif isinstance(msg, m.AuditReceipt):
                        self._arrive(msg)
                    elif isinstance(msg, m.DatasetInfo):
                        if self.stop_reason is None:
                            self.on_datasets(list(msg.datasets))
                    elif isinstance(msg, m.RelayOpen | m.RelayData | m.RelayEnd | m.DatasetKeyed):
                        if self.stop_reason is None:
                            self.relays.handle(msg)
                    elif isinstance(msg, m.Pong):
                        continue
                    elif isinstance(msg, m.Fatal):
                        reason = f"the enclave stopped the session: {msg.reason}"
                        break
                    else:
                        log.warning("unexpected %s from the enclave", type(msg).__name__)
        except TimeoutError:
            reason = "the enclave did not end the session in time after the kernel stopped it"
            log.warning("%s: its log stays unterminated", reason)
        except CCKernelError as exc:
            reason = f"the connection to the enclave broke: {exc}"
        except asyncio.CancelledError:
            reason = "the kernel closed the connection"
        finally:
            self._deadline = None
            self.relays.close()
            self._flush_receipts()
            if self._clean_end and self._expected and self.stop_reason is None:
                self._stop(self._missing(self._expected[0], "the end of the session"), can_send=False)
            await self._closed(stopped_text(self.stop_reason) if self.stop_reason is not None else reason)

    # -- receipts -------------------------------------------------------------------------------------------

    @staticmethod
    def _missing(expected: Expectation, before: str) -> str:
        return f"missing audit receipt: {expected.describe()} got no receipt before {before}"

    def _check_order(self, req_id: int, what: str) -> None:
        """A message of request ``req_id`` arrived: every request sent before it must have had its receipt."""
        if self.stop_reason is not None or not self._expected or req_id <= self._expected[0].req_id:
            return
        self._flush_receipts()  # a receipt that arrived earlier and fails its check is the first fault
        if self.stop_reason is None and self._expected:
            self._stop(self._missing(self._expected[0], f"{what} of request {req_id}"))

    def _check_background(self, req_id: int) -> None:
        """An output of a request whose receipt already arrived was forwarded while no request was in hand (a
        thread the request started): the enclave owes a ``background`` receipt for it, before any later
        request's receipt. An output of a request older than the last receipt is in no receipt at all."""
        if self._audit is None or self.stop_reason is not None or not self._last_arrived:
            return
        if req_id < self._last_arrived:
            self._stop(f"unreceipted output: an output of request {req_id} arrived after the receipt of request "
                       f"{self._last_arrived}")
        elif req_id == self._last_arrived and not self._background_due:
            self._expected.appendleft(Expectation(req_id, "background", code_hash("")))
            self._background_due = True

    def _arrive(self, msg: m.AuditReceipt) -> None:
        """Pair an arriving receipt with the oldest expectation (in arrival order); check it next loop turn."""
        if self.stop_reason is not None:
            self._receipts.append(_Arrival(msg, None))  # appended if valid: keeps the chain the closing extends
        elif self._audit is None:
            why = "this session keeps no log" if self._audit_decided else "the log was not started yet"
            self._stop(f"extra audit receipt: the enclave sent a receipt for request {msg.req_id}, but {why}")
            return
        elif msg.req_id == 0:  # a closing entry (the enclave's own, not a request's)
            self._receipts.append(_Arrival(msg, None, tuple(self._expected)))
            self._expected.clear()
        else:
            expected = self._expected.popleft() if self._expected else None
            if expected is not None and expected.kind == "background":
                self._background_due = False
            self._last_arrived = msg.req_id
            self._receipts.append(_Arrival(msg, expected))
        if not self._receipt_check_due:
            self._receipt_check_due = True
            asyncio.get_running_loop().call_soon(self._flush_receipts)

    def _flush_receipts(self) -> None:
        """Check and log the receipts received so far, in order.

        The enclave sends each receipt right after its reply. The read loop schedules this check with
        ``call_soon`` rather than running it in place: a reply read in the same chunk has already woken its
        request, whose task then runs first, so the check (msgpack decode, Ed25519 verify, one ``write``) never
        holds up a reply. A receipt is thus in the log file within a loop iteration of being read. Whatever is
        still queued is also checked before anything is sent, before a missing receipt is declared and before
        the link closes. Any failed check stops the session (``_stop``).
        """
        self._receipt_check_due = False
        arrivals, self._receipts = self._receipts, []
        for arrival in arrivals:
            self._check_receipt(arrival)

    def _check_receipt(self, arrival: _Arrival) -> None:
        """Verify and append one receipt (``LogWriter.append``), then compare it with its expectation."""
        writer = self._audit
        if writer is None or writer.failed:
            return  # the log already ended (the session was stopped for that)
        msg, expected = arrival.msg, arrival.expected
        stopping = self.stop_reason is not None
        if writer.closed:
            if not stopping:
                self._stop(f"extra audit receipt: the enclave sent a receipt for request {msg.req_id} after its "
                           "closing entry")
            return
        extra = not stopping and expected is None and msg.req_id != 0
        refused: list[str] = []

        def admit(entry: ReceiptEntry | ClosingEntry) -> None:
            """A valid receipt is appended even if it does not match (the enclave chains its next entry to it);
            a closing entry only if it cannot hide a missing receipt."""
            if not isinstance(entry, ClosingEntry):
                return
            if self.stop_reason is not None:
                if entry.reason != self.stop_reason:
                    refused.append(f"the enclave's closing entry gives the reason {entry.reason!r}, not the "
                                   "kernel's; it was left out of the log")
            elif expected is not None:
                refused.append(self._missing(expected, "the closing entry"))
            elif arrival.outstanding:
                refused.append(self._missing(arrival.outstanding[0], "the closing entry"))
            if refused:
                raise AuditError(refused[0])

        try:
            appended = writer.append(msg.receipt, admit=admit)
        except CCKernelError as exc:
            if stopping:
                log.warning("audit log after the session stopped: %s", exc)
            elif refused:
                self._stop(refused[0])
            elif extra:
                self._stop(f"extra audit receipt: the enclave sent a receipt for request {msg.req_id}, but no "
                           f"request awaits one (nor does it verify: {exc})")
            else:
                self._stop(f"invalid audit receipt for request {msg.req_id}: {exc}")
            return
        entry = appended.entry
        if stopping or isinstance(entry, ClosingEntry):
            return  # appended for the chain; or a closing entry with nothing outstanding
        if expected is None:
            self._stop(f"extra audit receipt: the enclave sent a {entry.kind!r} receipt for request {msg.req_id}, "
                       "but no request awaits one")
            return
        wrong = []
        if msg.req_id != expected.req_id:
            wrong.append(f"it is for request {msg.req_id}")
        if entry.kind != expected.kind:
            wrong.append(f"its kind is {entry.kind!r}")
        if entry.code_sha256 != expected.code_sha256:
            wrong.append(f"it covers other code (code hash {_hex(entry.code_sha256)}, the kernel sent code "
                         f"hashing to {_hex(expected.code_sha256)})")
        if wrong:
            self._stop(f"mismatched audit receipt: the receipt due next is that of {expected.describe()}, but "
                       + "; ".join(wrong))

    def _stop(self, reason: str, *, can_send: bool = True) -> None:
        """Stop the session for ``reason`` (a failed receipt check): see the module docstring."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        text = stopped_text(reason)
        log.error("%s", text)
        for q in self._pending.values():
            q.put_nowait(EnclaveError(text))
        self._tell_closed(text)
        loop = self._loop
        if self._deadline is not None and loop is not None:
            self._deadline.reschedule(loop.time() + STOP_GRACE)
        if can_send and not self._stop_sent and self.attested is not None and self.closed_reason is None \
                and loop is not None:
            self._stop_sent = True
            task = loop.create_task(self._send_stop(reason))
            task.add_done_callback(lambda t: t.exception())

    async def _send_stop(self, reason: str) -> None:
        try:
            await self._send_raw(m.Shutdown(restart=False, reason=reason[:m.MAX_REASON]))
        except (EnclaveError, ProtocolError) as exc:  # e.g. a shutdown the user asked for went out first
            log.warning("could not tell the enclave why the session stopped: %s", exc)

    def _tell_closed(self, reason: str) -> None:
        if not self._closed_told:
            self._closed_told = True
            self._on_closed(reason)

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
        self._tell_closed(reason)

    # -- stop -------------------------------------------------------------------------------------------------

    async def shutdown(self, *, restart: bool = False, timeout: float = 3.0) -> None:
        """Ask the enclave to shut down cleanly, then make sure its process is gone. After a stop the kernel has
        already sent its Shutdown; this waits (up to ``timeout``) for the enclave's closing entry."""
        if self.attested is not None and self.closed_reason is None:
            with contextlib.suppress(CCKernelError, TimeoutError):
                async with asyncio.timeout(timeout):
                    if self._receipts:
                        self._flush_receipts()  # a failed check sends its own Shutdown, with the reason
                    if self.stop_reason is None:
                        self._stop_sent = True
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


def stopped_text(reason: str) -> str:
    """What the notebook and the badge say once the kernel stopped a session for ``reason``."""
    return (f"the kernel stopped the session because its audit check failed: {reason}. No further code is sent "
            "to this enclave; restart the kernel for a fresh, re-attested enclave and a new log")
