"""Kernel side: ConfidentialKernel, a thin ipykernel ``Kernel`` that forwards to an attested enclave.

It answers ``kernel_info`` at once, starts and attests the enclave in the background, and translates between
Jupyter messages and the enclave protocol. If attestation fails no code is ever sent: every execution returns
an error naming each failed check and how to fix it. ``%attestation`` and ``%cc_upload`` are handled here, on
the trusted side. Nothing this process prints reaches the notebook outside a cell (it logs through
``self.log``; the enclave's stdout/stderr are piped to that log).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal, cast

import zmq
from ipykernel.kernelbase import Kernel
from IPython.core.error import StdinNotImplementedError

from cc_kernel import __version__
from cc_kernel.attestation.platforms import HARDWARE_INTERFACES
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.channel.transport import parse_address
from cc_kernel.errors import (
    AuditError,
    CCKernelError,
    EnclaveError,
    MessageTooLarge,
    PolicyError,
    UploadError,
)
from cc_kernel.kernel import advice, badge, upload
from cc_kernel.kernel.auditlog import AuditFile, default_audit_dir
from cc_kernel.kernel.config import KernelSettings
from cc_kernel.kernel.install import pin_simulation_policy, simulation_policy_path
from cc_kernel.kernel.link import EnclaveLink, LaunchSpec
from cc_kernel.protocol import messages as m

#: A comm target no comm has: the comm_info request that follows a forwarded comm message asks for it, so the
#: reply is small (it only marks that the enclave has run the comm handler).
_NO_TARGET = "cc_kernel.barrier"
LANGUAGE_INFO: dict[str, object] = {
    "name": "python",
    "version": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
    "mimetype": "text/x-python",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "pygments_lexer": "ipython3",
    "nbconvert_exporter": "python",
    "file_extension": ".py",
}


class ConfidentialKernel(KernelSettings, Kernel):
    """Runs every cell in an attested enclave. Configure with traitlets or CC_KERNEL_* environment variables
    (``kernel/config.py``)."""

    implementation = "cc_kernel"
    implementation_version = __version__
    language_info = LANGUAGE_INFO

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The base Kernel routes no frontend comm messages (IPythonKernel adds its own): ours go to the enclave.
        for msg_type in ("comm_open", "comm_msg", "comm_close"):
            self.shell_handlers[msg_type] = getattr(self, msg_type)
        self.session_hex = os.urandom(16).hex()
        self._link: EnclaveLink | None = None
        self._ready: asyncio.Task[AttestationResult] | None = None
        self._failure: BaseException | None = None
        self._result: AttestationResult | None = None
        self._parents: dict[int, dict[str, Any]] = {}
        self._badge_shown = False
        self._state_parent: dict[str, Any] | None = None  # the latest kernel_info_request (see _set_badge)
        self._badge_state = badge.BadgeState(state="pending", session_id=self.session_hex, mode=self._mode_text())
        self._current_req: int | None = None
        self._policy: Policy | None = None
        self._stdin_cancel = threading.Event()
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._audit: Any = None
        self._audit_file: AuditFile | None = None
        self._upload_task: asyncio.Future[upload.UploadOutcome] | None = None  # a %cc_upload streaming now
        atexit.register(self._atexit)

    @property
    def _session(self) -> Any:
        assert self.session is not None
        return self.session

    # -- identity --------------------------------------------------------------------------------------------

    def _mode_text(self) -> str:
        where = f"remote {self.enclave}" if self.enclave else "local process"
        return f"{self.mode} ({where})"

    @property
    def banner(self) -> str:  # type: ignore[override]
        head = f"Confidential Python {__version__} — every cell runs in an attested enclave ({self._mode_text()})."
        if self._result is not None:
            lines = self._result.summary_lines()
            return head + "\n" + "\n".join(lines)
        if self._failure is not None:
            refused = f"ATTESTATION REFUSED — no code will be sent: {advice.refusal_text(self._failure)}"
            return "\n".join([head, refused, advice.advice_for(self._failure, self.mode)])
        return head + "\nAttestation in progress (run a cell to see the verdict)."

    @property
    def kernel_info(self) -> dict[str, Any]:
        info = dict(super().kernel_info)
        info["supported_features"] = []  # no debugger, no subshells: we do not provide them
        info["help_links"] = [
            {"text": "Confidential Python: attestation", "url": "https://github.com/cc-kernel/cc-kernel#readme"},
        ]
        info["cc_kernel"] = {"mode": self.mode, "session_id": self.session_hex, "state": self._badge_state.state,
                             "badge": badge.machine(self._badge_state)}
        return info

    @property
    def _supports_kernel_subshells(self) -> bool:
        return False

    # -- start-up ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        # Nothing this process writes may reach the notebook outside a cell: IPKernelApp routed sys.stdout and
        # sys.stderr to IOPub (unparented, since this kernel never sets a parent for them); send them back to
        # the process's own streams, which end up in the Jupyter server's log. Enclave output never passes here.
        if sys.__stdout__ is not None and sys.__stderr__ is not None:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        super().start()
        self._main_loop = asyncio.get_event_loop()
        self._ready = asyncio.ensure_future(self._connect())

    def _load_policy(self) -> Policy:
        if self.policy_file:
            path = Path(self.policy_file).expanduser()
            try:
                policy = load_policy(path.read_bytes(), source=str(path))
            except OSError as exc:
                raise PolicyError(f"cannot read the policy file {path}: {exc.strerror}") from exc
            if self.mode == "hardware" and policy.unsafe_allow_simulation:
                # Checked before any enclave is started or contacted: a simulated enclave must never run under
                # the hardware kernel's name, whatever CC_KERNEL_ENCLAVE points at.
                raise PolicyError(
                    f"{path} sets unsafe_allow_simulation = true: this policy belongs to the SIMULATION kernel "
                    "('Confidential Python (SIMULATION)'). The hardware kernel 'Confidential Python' refuses it; "
                    "give it a policy pinning your hardware enclave (`cc-kernel policy init --platform P "
                    "--measurement HEX --output FILE`), or pick the SIMULATION kernel"
                )
            return policy
        if self.mode == "hardware":
            needs = ("the hardware kernel needs a policy pinning your enclave's measurement: set CC_KERNEL_POLICY "
                     "(or ConfidentialKernel.policy_file) to a file made with `cc-kernel policy init --platform P "
                     "--measurement HEX --output FILE`")
            if not self.enclave and not any(os.path.exists(path) for _name, path in HARDWARE_INTERFACES):
                # A machine without a TEE: say that first (the policy would not help), as the enclave would.
                looked = "; ".join(f"{name} at {path}" for name, path in HARDWARE_INTERFACES)
                raise EnclaveError(f"no TEE hardware found on this machine (looked for: {looked}); also, {needs}")
            raise PolicyError(needs)
        return self._simulation_policy()

    def _load_collateral(self) -> Any:
        """This side's Intel collateral (``collateral_dir``); every item is signature-checked at verification."""
        from cc_kernel.kernel.collateral import load_collateral_dir

        try:
            return load_collateral_dir(Path(self.collateral_dir))
        except ValueError as exc:
            raise PolicyError(str(exc)) from exc

    def _simulation_policy(self) -> Policy:
        """The simulation kernel's policy: pinned at install time, or on first use (recorded in the log)."""
        path = simulation_policy_path()
        if not path.exists():
            when = time.strftime("%Y-%m-%d %H:%M")
            pin_simulation_policy(note=f"pinned on first use by the simulation kernel, {when}")
            self.log.warning("pinned the simulated enclave's measurement on first use in %s", path)
        return load_policy(path.read_bytes(), source=str(path))

    async def _connect(self) -> AttestationResult:
        try:
            policy = self._load_policy()
            self._policy = policy
            sim = None
            if policy.unsafe_allow_simulation:
                from cc_kernel.simstore import load_simulation_anchors, simulation_dir

                sim_path = Path(self.sim_dir) if self.sim_dir else simulation_dir()
                sim = await asyncio.to_thread(load_simulation_anchors, sim_path)
            spec = LaunchSpec(
                address=parse_address(self.enclave) if self.enclave else None,
                platform="simulation" if self.mode == "simulation" else "hardware",
                sim_dir=Path(self.sim_dir) if self.sim_dir else None,
                faults=tuple(self.faults),
                session_id=bytes.fromhex(self.session_hex),  # the badge's session id is the one attested
            )
            collateral = await asyncio.to_thread(self._load_collateral) if self.collateral_dir else None
            self._link = EnclaveLink(spec, policy=policy, simulation_anchors=sim, on_output=self._forward_output,
                                     on_closed=self._enclave_closed, collateral=collateral,
                                     brokers=self.brokers)
            self._link.on_datasets = lambda datasets: self._set_badge(datasets=datasets)
            attested = await self._link.start(timeout=self.attest_timeout)
            if self.audit:
                await self._open_audit_log(attested.peer, policy, client_key_sha256=attested.client_key_sha256)
            else:  # the enclave runs no request before it knows: this session keeps no log
                await self._link.audit_off()
        except BaseException as exc:
            self._failure = exc
            self._set_badge(state="refused", failures=advice.failure_lines(exc),
                            detail=advice.advice_for(exc, self.mode))
            self.log.error("attestation failed: %s", exc)
            raise
        self._result = attested.peer.result
        info = attested.session_info
        self._set_badge(state=self._result.status, result=self._result,
                        protections=dict(info.protections) if info else {})
        self.log.info("enclave attested: %s%s", self._result.status,
                      " (the enclave process started early was adopted)" if self._link and self._link.started_early
                      else "")
        return self._result

    # -- audit log ------------------------------------------------------------------------------------------------

    async def _open_audit_log(self, peer: Any, policy: Policy, *, client_key_sha256: bytes | None = None) -> None:
        """Create this session's log (opening entry: evidence, policy, result) and tell the enclave to chain
        its receipts to it. Fails closed: without a log, when one is asked for, no code runs. From then on the
        link requires one matching receipt per receipted request and stops the session otherwise."""
        from cc_kernel.audit.receipts import LogWriter, make_opening

        directory = Path(self.audit_dir).expanduser() if self.audit_dir else default_audit_dir()
        self._audit_file = await asyncio.to_thread(AuditFile, directory, self.session_hex)
        self._audit = LogWriter(self._audit_file.write)
        opening = make_opening(
            result=peer.result, envelope_bytes=peer.envelope_bytes, tls_spki=peer.tls_spki, policy=policy,
            opened_ms=int(time.time() * 1000),
            versions={"cc_kernel": __version__, "python": LANGUAGE_INFO["version"]},  # type: ignore[dict-item]
            settings={"redact_code": self.redact_code}, client_key_sha256=client_key_sha256,
        )
        self._audit.open(opening)
        assert self._link is not None
        await self._link.start_audit(self._audit, redact_code=self.redact_code)
        self._badge_state.audit_log = str(self._audit_file.path)
        self.log.info("audit log: %s", self._audit_file.path)

    # -- badge ---------------------------------------------------------------------------------------------------

    def _set_badge(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self._badge_state, key, value)
        self._badge_state.at = badge.BadgeState(state="pending", session_id="", mode="").at
        if self.session is None:
            return
        if self._badge_shown:
            self._publish_badge(update=True, parent=self._parents.get(-1))
        elif self._state_parent is not None:  # no badge in a cell yet: tell the frontend's status indicator
            self._publish_badge(update=True, parent=self._state_parent)

    async def kernel_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Reply, then publish the attestation state on IOPub (an ``update_display_data`` of the badge) with this
        request as parent. Frontends ask on connecting and after every restart, so a status indicator learns the
        state of this kernel process even when no cell has shown the badge, or its output was cleared."""
        await super().kernel_info_request(stream, ident, parent)
        self._state_parent = parent
        if self.session is not None:
            self._publish_badge(update=True, parent=parent)

    def _publish_badge(self, *, update: bool, parent: dict[str, Any] | None = None) -> None:
        content = {
            "data": badge.render(self._badge_state), "metadata": {},
            "transient": {"display_id": badge.display_id(self.session_hex)},
        }
        msg_type = "update_display_data" if update else "display_data"
        if parent is None:
            self.send_response(self.iopub_socket, msg_type, content)
        else:
            self._session.send(self.iopub_socket, msg_type, content, parent, ident=self._topic(msg_type))

    async def _wait_ready(self) -> AttestationResult:
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    # -- output from the enclave -------------------------------------------------------------------------------

    def _forward_output(self, msg: m.Message) -> None:
        parent = self._parents.get(getattr(msg, "req_id", -1))
        if parent is None:
            parent = self._parents.get(self._current_req or -1) or {}
        content: dict[str, Any]
        if isinstance(msg, m.Stream):
            msg_type, content = "stream", {"name": msg.name, "text": msg.text}
        elif isinstance(msg, m.DisplayData | m.UpdateDisplayData):
            if badge.is_reserved(msg.data, msg.transient):
                self.log.warning("dropped enclave output that used the attestation badge's id or MIME type")
                return
            msg_type = "display_data" if isinstance(msg, m.DisplayData) else "update_display_data"
            content = {"data": msg.data, "metadata": msg.metadata, "transient": msg.transient}
        elif isinstance(msg, m.ExecuteResult):
            if badge.is_reserved(msg.data, None):
                self.log.warning("dropped enclave output that used the attestation badge's MIME type")
                return
            msg_type = "execute_result"
            content = {"execution_count": msg.execution_count, "data": msg.data, "metadata": msg.metadata}
        elif isinstance(msg, m.Error):
            msg_type, content = "error", {"ename": msg.ename, "evalue": msg.evalue, "traceback": msg.traceback}
        elif isinstance(msg, m.ClearOutput):
            msg_type, content = "clear_output", {"wait": msg.wait}
        elif isinstance(msg, m.CommOpen | m.CommMsg | m.CommClose):
            if badge.carries_badge(msg.data) or badge.carries_badge(msg.metadata):
                self.log.warning("dropped an enclave comm message that carried the attestation badge's id or MIME type")
                return
            msg_type = {m.CommOpen: "comm_open", m.CommMsg: "comm_msg", m.CommClose: "comm_close"}[type(msg)]
            content = {"comm_id": msg.comm_id, "data": msg.data}
            if isinstance(msg, m.CommOpen):
                content["target_name"] = msg.target_name
            if self.session is not None:
                self._session.send(self.iopub_socket, msg_type, content, parent, ident=self._topic(msg_type),
                                  metadata=msg.metadata, buffers=list(msg.buffers) or None)
            return
        else:
            return
        if self.session is not None:
            self._session.send(self.iopub_socket, msg_type, content, parent, ident=self._topic(msg_type))

    def _enclave_closed(self, reason: str) -> None:
        stop_reason = self._link.stop_reason if self._link is not None else None
        if stop_reason is not None:  # the kernel stopped the session: a receipt check failed
            self._set_badge(state="stopped", failures=[f"audit: {stop_reason}"], detail=(
                "The kernel stopped this session because its audit check failed: no further code is sent to "
                "this enclave. Restart the kernel for a fresh, re-attested enclave and a new log."))
        elif self._result is not None or self._failure is None:
            self._set_badge(state="stopped", detail=f"{reason}. Restart the kernel for a fresh, re-attested enclave.")

    # -- execute -------------------------------------------------------------------------------------------------

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        parent = self.get_parent("shell")
        if not self._badge_shown and self.show_badge and not silent:
            self._badge_shown = True
            self._parents[-1] = parent
            self._publish_badge(update=False)
        try:
            await self._wait_ready()
        except BaseException as exc:  # attestation refused or enclave unreachable: fail closed
            return self._error_reply(
                "AttestationError", f"no code was sent: {advice.refusal_text(exc)}",
                ["ATTESTATION REFUSED — the cell was NOT run and no code was sent to the enclave.",
                 *(advice.failure_lines(exc) or [str(exc)]), advice.advice_for(exc, self.mode)], silent=silent,
            )
        stripped = code.lstrip()
        if stripped.startswith("%attestation"):
            return self._attestation_magic(silent)
        if stripped.startswith("%cc_upload"):
            return await self._upload_magic(stripped, silent, code=code, cell_id=cell_id)
        if stripped.startswith("%cc_dataset"):
            return await self._upload_magic(stripped, silent, code=code, cell_id=cell_id, sealed=True)
        return await self._forward_execute(code, silent, store_history, user_expressions or {}, allow_stdin,
                                           cell_id, kind="silent" if silent else "cell")

    async def _forward_execute(self, code: str, silent: bool, store_history: bool, user_expressions: dict[str, str],
                               allow_stdin: bool, cell_id: str | None, *, kind: str) -> dict[str, Any]:
        link = self._link
        assert link is not None
        req_id, q = link.new_request()
        self._parents[req_id] = self.get_parent("shell")
        self._current_req = req_id
        self._stdin_cancel.clear()
        try:
            await link.send(m.ExecuteRequest(
                req_id=req_id, code=code, silent=silent, store_history=store_history,
                user_expressions=user_expressions, allow_stdin=allow_stdin, execution_count=self.execution_count,
                cell_id=cell_id, kind=kind, parent_msg_id=_msg_id(self._parents[req_id]),
            ))
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, m.InputRequest):
                    await self._answer_input(link, item, allow_stdin)
                    continue
                assert isinstance(item, m.ExecuteReply)
                return _reply_content(item)
        except MessageTooLarge as exc:
            return self._error_reply("MessageTooLarge", str(exc), [
                f"This cell was NOT run: it is {exc.size} bytes once encoded, over the limit of {exc.limit} bytes "
                "for one message to the enclave.",
                "Nothing was sent; the session goes on. Move large data in with %cc_upload LOCAL_PATH [NAME].",
            ], silent=silent)
        except EnclaveError as exc:
            if link.stop_reason is not None:
                return self._error_reply("AuditError", str(exc), [
                    "SESSION STOPPED — the audit check failed; no further code is sent to this enclave.",
                    f"What was wrong: {link.stop_reason}",
                    "Restart the kernel for a fresh, re-attested enclave and a new log.",
                ], silent=silent)
            return self._error_reply("EnclaveError", str(exc), [
                f"The enclave stopped while running this cell: {exc}",
                "Restart the kernel to get a fresh, re-attested enclave.",
            ], silent=silent)
        finally:
            self._stdin_cancel.set()
            link.finish_request(req_id)
            self._parents.pop(req_id, None)

    async def _answer_input(self, link: EnclaveLink, req: m.InputRequest, allow_stdin: bool) -> None:
        if not allow_stdin:
            await link.send(m.InputReply(req_id=req.req_id, value="", cancelled=True))
            return
        try:
            value = await asyncio.to_thread(self._ask_frontend, req.prompt, req.password)
            await link.send(m.InputReply(req_id=req.req_id, value=value, cancelled=False))
        except (KeyboardInterrupt, EOFError, StdinNotImplementedError):
            await link.send(m.InputReply(req_id=req.req_id, value="", cancelled=True))

    def _ask_frontend(self, prompt: str, password: bool) -> str:
        """Send input_request on stdin and wait for the reply; give up when the cell ends."""
        parent = self.get_parent("shell")
        ident = self._get_shell_context_var(self._shell_parent_ident)
        while True:  # purge stale replies
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self._session.send(self.stdin_socket, "input_request", {"prompt": prompt, "password": password}, parent,
                          ident=ident)
        while not self._stdin_cancel.is_set():
            rlist, _, _ = zmq.select([self.stdin_socket], [], [], 0.05)
            if rlist:
                _ident, reply = self._session.recv(self.stdin_socket)
                if reply is not None:
                    value = str(reply["content"].get("value", ""))
                    if value == "\x04":
                        raise EOFError
                    return value
        raise KeyboardInterrupt("the cell ended")

    def _error_reply(self, ename: str, evalue: str, lines: list[str], *, silent: bool) -> dict[str, Any]:
        tb = [f"\x1b[0;31m{lines[0]}\x1b[0m", *lines[1:]]
        if not silent:
            self.send_response(self.iopub_socket, "error", {"ename": ename, "evalue": evalue, "traceback": tb})
        return {"status": "error", "execution_count": self.execution_count, "ename": ename, "evalue": evalue,
                "traceback": tb}

    def _ok(self) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}

    # -- magics handled on the trusted side -----------------------------------------------------------------------

    def _attestation_magic(self, silent: bool) -> dict[str, Any]:
        """The full claims: the same text the status indicator shows on a click (``badge.summary``)."""
        assert self._result is not None
        if not silent:
            data = {
                "text/plain": "\n".join(badge.summary(self._badge_state)),
                "application/json": {**self._result.to_json_dict(), "protections": self._badge_state.protections,
                                     "datasets": self._badge_state.datasets},
            }
            self.send_response(self.iopub_socket, "display_data", {"data": data, "metadata": {}, "transient": {}})
        return self._ok()

    async def _upload_magic(self, line: str, silent: bool, *, code: str, cell_id: str | None,
                            sealed: bool = False) -> dict[str, Any]:
        """``%cc_upload`` (``sealed``: ``%cc_dataset``, a sealed file the monitor opens with the owner's key, which
        it obtains over a relay this kernel carries, ``kernel.relay``): the file is read and streamed by
        ``kernel.upload``; an interrupt cancels the stream."""
        magic = "%cc_dataset" if sealed else "%cc_upload"
        try:
            request = upload.parse_upload_line(line, sealed=sealed)
            file, size = await asyncio.to_thread(upload.open_regular_file, request.path)
        except UploadError as exc:
            return self._error_reply(exc.ename, str(exc), [f"{magic}: {exc}"], silent=silent)
        link = self._link
        assert link is not None
        progress_id = f"cc-upload-{link.next_request_id}-{os.urandom(4).hex()}"
        self._progress(progress_id, request.name, 0, size, first=True, silent=silent)
        shown = [time.monotonic()]

        def progress(sent: int) -> None:
            if time.monotonic() - shown[0] > 0.1 or sent == size:
                self._progress(progress_id, request.name, sent, size, silent=silent)
                shown[0] = time.monotonic()

        allocated = link.new_request()
        # a sealed file: its header first, the rest once the monitor's key exchange (relayed here) is over
        after_first = link.relays.expect(allocated[0]).wait if sealed else None
        task = asyncio.ensure_future(upload.send_file(
            link, file, size=size, request=request, code=code, execution_count=self.execution_count,
            cell_id=cell_id, progress=progress, allocated=allocated, after_first=after_first))
        self._upload_task = task
        try:
            outcome = await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not task.cancelled() or (me is not None and me.cancelling()):
                raise  # this request itself was cancelled, not just the upload
            return self._error_reply("KeyboardInterrupt", "upload interrupted", [
                f"{magic} interrupted: {request.name} was not bound in the enclave (nothing more is sent)"],
                silent=silent)
        except (UploadError, MessageTooLarge) as exc:
            return self._error_reply("UploadError", str(exc), [f"{magic}: {exc}"], silent=silent)
        except EnclaveError as exc:
            return self._error_reply("EnclaveError", str(exc), [f"{magic} failed: {exc}"], silent=silent)
        finally:
            self._upload_task = None
        reply = outcome.reply
        if reply.status != "ok":
            return self._error_reply("UploadError", reply.message, [f"{magic}: {reply.message}"], silent=silent)
        if not silent:
            self.send_response(self.iopub_socket, "stream", {"name": "stdout", "text": (
                f"{'opened' if sealed else 'uploaded'} {request.path.name} ({outcome.sent} bytes, sha256 "
                f"{outcome.sha256.hex()[:16]}…) into the enclave: {reply.message}\n")})
        return self._ok()

    def _progress(self, did: str, name: str, done: int, total: int, *, first: bool = False, silent: bool) -> None:
        if silent:
            return
        frac = 1.0 if total == 0 else done / total
        bar = "█" * int(frac * 30) + "░" * (30 - int(frac * 30))
        text = f"uploading {name}: {bar} {frac:6.1%} ({done}/{total} bytes)"
        content = {"data": {"text/plain": text}, "metadata": {}, "transient": {"display_id": did}}
        self.send_response(self.iopub_socket, "display_data" if first else "update_display_data", content)

    # -- other requests --------------------------------------------------------------------------------------------

    async def _ask(self, msg_factory: Any, default: dict[str, Any]) -> dict[str, Any]:
        """Forward one request to the verified enclave; without a verified enclave, answer ``default``."""
        if self._ready is None or not self._ready.done() or self._ready.cancelled() or self._ready.exception():
            try:
                await asyncio.wait_for(self._wait_ready(), timeout=self.attest_timeout)
            except BaseException:
                return default
        link = self._link
        assert link is not None
        req_id, q = link.new_request()
        try:
            await link.send(msg_factory(req_id))
            item = await q.get()
        except (EnclaveError, MessageTooLarge):
            return default
        finally:
            link.finish_request(req_id)
        if isinstance(item, BaseException):
            return default
        return _reply_content(item)

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        pos = len(code) if cursor_pos is None else cursor_pos
        default = {"status": "ok", "matches": [], "cursor_start": pos, "cursor_end": pos, "metadata": {}}
        return await self._ask(lambda r: m.CompleteRequest(req_id=r, code=code, cursor_pos=pos), default)

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict[str, Any]:
        pos = len(code) if cursor_pos is None else cursor_pos
        default = {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return await self._ask(
            lambda r: m.InspectRequest(req_id=r, code=code, cursor_pos=pos, detail_level=1 if detail_level else 0),
            default)

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        return await self._ask(lambda r: m.IsCompleteRequest(req_id=r, code=code), {"status": "unknown"})

    async def do_history(self, hist_access_type: str, output: bool, raw: bool, session: int | None = None,
                         start: int | None = None, stop: int | None = None, n: int | None = None,
                         pattern: str | None = None, unique: bool = False) -> dict[str, Any]:
        return await self._ask(lambda r: m.HistoryRequest(
            req_id=r, hist_access_type=cast(Literal["range", "tail", "search"], hist_access_type),
            output=bool(output), raw=bool(raw), session=session or 0, start=start or 0, stop=stop, n=n,
            pattern=pattern or "", unique=bool(unique),
        ), {"status": "ok", "history": []})

    async def comm_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        target = parent["content"].get("target_name")
        content = await self._ask(lambda r: m.CommInfoRequest(req_id=r, target_name=target),
                                  {"status": "ok", "comms": {}})
        content.setdefault("status", "ok")
        self._session.send(stream, "comm_info_reply", content, parent, ident)

    async def _comm(self, kind: str, stream: Any, ident: Any, parent: Any) -> None:
        """Forward a frontend comm message (a widget moved, a button clicked) to the enclave, which runs its
        handler as user code and signs a ``comm`` receipt for it. Returns once the handler has finished (a
        ``comm_info`` round trip behind it on the ordered channel), so the handler's output is published with
        this request as its parent, between its busy and idle, as ipykernel does."""
        try:
            await self._wait_ready()
        except BaseException:  # attestation refused or enclave unreachable: nothing is sent
            return
        link = self._link
        if link is None:
            return
        content = parent["content"]
        req_id, _q = link.new_request()
        self._parents[req_id] = parent
        buffers = [bytes(b) for b in parent.get("buffers", [])]
        fields: dict[str, Any] = {"req_id": req_id, "comm_id": content["comm_id"], "data": content.get("data", {}),
                                  "metadata": parent.get("metadata", {}), "buffers": buffers,
                                  "parent_msg_id": _msg_id(parent)}
        cls: type[m.Message] = {"comm_open": m.CommOpen, "comm_msg": m.CommMsg, "comm_close": m.CommClose}[kind]
        if kind == "comm_open":
            fields["target_name"] = content.get("target_name", "")
        try:
            await link.send(cls(**fields))
            await self._ask(lambda r: m.CommInfoRequest(req_id=r, target_name=_NO_TARGET), {})
        except (EnclaveError, MessageTooLarge):
            pass
        finally:
            link.finish_request(req_id)
            self._parents.pop(req_id, None)

    async def comm_open(self, stream: Any, ident: Any, parent: Any) -> None:
        await self._comm("comm_open", stream, ident, parent)

    async def comm_msg(self, stream: Any, ident: Any, parent: Any) -> None:
        await self._comm("comm_msg", stream, ident, parent)

    async def comm_close(self, stream: Any, ident: Any, parent: Any) -> None:
        await self._comm("comm_close", stream, ident, parent)

    # -- interrupt and shutdown --------------------------------------------------------------------------------

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Interrupt (message mode, on the control thread): forwarded through the authenticated channel."""
        self._interrupt()
        self._session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    def _interrupt(self) -> None:
        """Interrupt what runs now (any thread). The interrupt reaches the enclave through the channel, possibly
        after requests the main loop sends meanwhile, so it carries the next request id as of now: the enclave
        interrupts only a request allocated before it."""
        self._stdin_cancel.set()
        task, loop = self._upload_task, self._main_loop
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)  # stop a %cc_upload mid-stream
        link = self._link
        if link is not None:
            link.send_soon(m.Interrupt(before=link.next_request_id))

    def pre_handler_hook(self) -> None:
        # Signal-mode interrupts (SIGINT to the kernel) are forwarded the same way; never raise in the loop.
        self.saved_sigint_handler = signal.signal(signal.SIGINT, lambda *_: self._interrupt())

    def post_handler_hook(self) -> None:
        signal.signal(signal.SIGINT, self.saved_sigint_handler)

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        """Shut the enclave down cleanly (on the main loop, which owns the channel), then kill what is left."""
        loop = self._main_loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._stop_enclave(restart), loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), timeout=4.0)
            except (TimeoutError, CCKernelError) as exc:
                self.log.warning("enclave did not shut down cleanly: %s", exc)
        if self._link is not None:
            self._link.kill_now()
        return {"status": "ok", "restart": restart}

    async def _stop_enclave(self, restart: bool) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        if self._link is not None:
            await self._link.shutdown(restart=restart)
        if self._audit_file is not None:
            try:
                await asyncio.to_thread(self._audit_file.close)
            except AuditError as exc:  # the log is still valid up to what reached the disk; say so in the server log
                self.log.warning("%s", exc)

    def _atexit(self) -> None:
        if self._link is not None:
            self._link.kill_now()


# -- helpers --------------------------------------------------------------------------------------------------


def _reply_content(msg: m.Message) -> dict[str, Any]:
    if isinstance(msg, m.ExecuteReply):
        out: dict[str, Any] = {"status": msg.status, "execution_count": msg.execution_count}
        if msg.status == "ok":
            out.update(user_expressions=msg.user_expressions, payload=msg.payload)
        else:
            out.update(ename=msg.ename, evalue=msg.evalue, traceback=msg.traceback)
        return out
    if isinstance(msg, m.CompleteReply):
        return {"status": msg.status, "matches": msg.matches, "cursor_start": msg.cursor_start,
                "cursor_end": msg.cursor_end, "metadata": msg.metadata}
    if isinstance(msg, m.InspectReply):
        return {"status": msg.status, "found": msg.found, "data": msg.data, "metadata": msg.metadata}
    if isinstance(msg, m.IsCompleteReply):
        out = {"status": msg.status}
        if msg.status == "incomplete":
            out["indent"] = msg.indent
        return out
    if isinstance(msg, m.HistoryReply):
        return {"status": msg.status, "history": [tuple(h) if isinstance(h, list) else h for h in msg.history]}
    if isinstance(msg, m.CommInfoReply):
        return {"status": "ok", "comms": msg.comms}
    raise TypeError(type(msg).__name__)


def _msg_id(parent: dict[str, Any] | None) -> str:
    """The ``msg_id`` of a Jupyter request (its header's), "" if it has none."""
    return str(((parent or {}).get("header") or {}).get("msg_id", ""))
