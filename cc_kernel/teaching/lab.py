"""Teaching: the teaching lab, a private, throw-away confidential-computing lab behind the notebooks.

Layer: I/O (processes, sockets, temporary files), part of ``cc_kernel.teaching``, above ``channel``,
``attestation``, ``simstore`` and the kernelspecs; used by neither the kernel nor the enclave.

Invariants: nothing is mocked. Enclaves are real ``cc-kernel enclave serve`` processes (with the enclave's own
teaching faults, or launched from a modified copy of the package), and so is a data owner's broker (``cc-kernel
broker serve``); verdicts come from ``connect_attested``, the function the kernel itself calls, and are
explained with the kernel's own advice (``kernel.advice``); relays forward and record the real bytes; kernels
are real Jupyter kernels driven with jupyter_client. Everything a ``TeachingLab`` creates (a private simulated
authority, Jupyter directories, processes, sockets) lives under one temporary directory and is gone after
``close()``. Child processes never inherit the caller's stdout/stderr (a
notebook kernel captures them): their output is piped into the lab's logs. The lab's enclave servers authorise
only the lab's own client key (in its private data directory), which its kernels and ``attest`` present, as a
real deployment would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path

from cc_kernel import __version__
from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.binding import NONCE_SIZE, SESSION_ID_SIZE
from cc_kernel.attestation.policy import Policy, load_policy, render_policy
from cc_kernel.channel.client import connect_attested
from cc_kernel.channel.transport import Address, open_client, parse_address
from cc_kernel.clientkey import client_key_dir, load_or_create_client_identity
from cc_kernel.errors import CCKernelError, EnclaveError
from cc_kernel.labkit.processes import broker_address, stop_process
from cc_kernel.labkit.relay import Flip
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.protocol.messages import PROTOCOL_VERSION, AttestRequest, AttestResponse, Fatal, Hello
from cc_kernel.simstore import load_or_create_authority, load_simulation_anchors, simulation_dir
from cc_kernel.teaching.display import Table
from cc_kernel.teaching.enclaves import (
    ENCLAVE_FAULTS,
    FAULTS,
    MODIFIED_FILE,
    MODIFIED_LINE,
    SERVE_SNIPPET,
    EnclaveServer,
    ReplayServer,
)
from cc_kernel.teaching.kernels import LabKernel
from cc_kernel.teaching.loop import LoopThread
from cc_kernel.teaching.outcomes import AttestOutcome, CellRun, EvidenceExchange
from cc_kernel.teaching.recording import Relay

__all__ = ["TeachingLab"]


class _Resources:
    """Everything a lab must release; closed by ``TeachingLab.close`` or, at the latest, at interpreter exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop: LoopThread | None = None
        self.servers: list[EnclaveServer] = []
        self.relays: list[Relay] = []
        self.replayers: list[ReplayServer] = []
        self.kernels: list[LabKernel] = []
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.loop is not None:
            for kernel in self.kernels:
                with contextlib.suppress(Exception):
                    kernel.shutdown()
            for relay in self.relays:
                with contextlib.suppress(Exception):
                    self.loop.run(relay.aclose(), 5.0)
            for replayer in self.replayers:
                with contextlib.suppress(Exception):
                    self.loop.run(replayer.aclose(), 5.0)
            self.loop.close()
        for server in self.servers:
            if server.process is not None:
                stop_process(server.process)
        shutil.rmtree(self.root, ignore_errors=True)


class TeachingLab:
    """A private, throw-away confidential-computing lab: a simulated authority, enclave servers with faults,
    attestation, relays and kernels — all real, all cleaned up by ``close()`` (or at exit).

    Use it as a context manager, or call ``close()`` when done. Call its methods from one thread (a notebook's
    cells); enclave servers stop when the lab is closed, or at the latest when the thread that started them
    exits (Linux). ``root``: where to create the lab's temporary directory (default: the system's).
    """

    def __init__(self, *, root: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cc-teaching-", dir=root))
        self._res = _Resources(self.root)
        self._finalizer = weakref.finalize(self, self._res.close)
        #: The lab's private Jupyter data directory (the simulated authority lives below it).
        self.data_dir = self.root / "jupyter-data"
        #: The simulated TEE authority's directory: its ARK/ASK/VCEK keys, made for this lab only.
        self.sim_dir = simulation_dir(self.data_dir)
        for sub in ("logs", "policies", "runtime", "prefix", "config", "ipython"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.authority = load_or_create_authority(self.sim_dir)
        #: The simulation trust anchors (ARK and ASK certificates) the lab verifies against.
        self.anchors: TrustAnchors = load_simulation_anchors(self.sim_dir)
        #: The lab's client key (in its data directory, so the lab's kernels present it too), and the
        #: authorised-clients file of the lab's enclave servers, which lists it.
        self.client_identity = load_or_create_client_identity(client_key_dir(self.data_dir), comment="teaching lab")
        self.authorized_clients = self.root / "authorized_clients"
        self.authorized_clients.write_text(f"# the teaching lab's client key\n{self.client_identity.line}\n")
        self._res.loop = LoopThread()
        self._measurement: bytes | None = None
        self._policy_count = 0
        self._kernel_count = 0
        self._labels: dict[str, str] = {}
        self._kernelspecs_ready = False

    # -- lifecycle ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process and relay of this lab and delete its directory (idempotent)."""
        self._finalizer()

    def __enter__(self) -> TeachingLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _loop(self) -> LoopThread:
        if self._res.closed or self._res.loop is None:
            raise RuntimeError("this TeachingLab is closed")
        return self._res.loop

    # -- what is pinned ---------------------------------------------------------------------------------------

    @property
    def measurement(self) -> bytes:
        """The measurement of the installed enclave code (SHA-384 over its files), as ``cc-kernel measure``."""
        if self._measurement is None:
            from cc_kernel.measure import enclave_measurement

            self._measurement = enclave_measurement()
        return self._measurement

    @property
    def tcb(self) -> dict[str, int]:
        """The TCB (firmware security versions) the lab's simulated platform reports today."""
        return dict(self.authority.tcb)

    def policy(self, *, min_tcb: Mapping[str, int] | None = None, measurement: bytes | None = None,
               allow_debug: bool = False) -> Policy:
        """A verification policy pinning the real enclave measurement (or ``measurement``), accepting the
        simulated TEE (``unsafe_allow_simulation``), optionally with a minimum TCB and, with ``allow_debug``,
        debug enclaves (the ``unsafe_allow_debug`` weakening). Rendered by the same code as ``cc-kernel policy
        init --simulation`` and written to a file in the lab (``Policy.source`` is its path)."""
        self._policy_count += 1
        path = self.root / "policies" / f"policy-{self._policy_count}.toml"
        text = render_policy(
            "simulation", [measurement or self.measurement], min_tcb=dict(min_tcb) if min_tcb else None,
            note="written by cc_kernel.teaching.TeachingLab.policy",
        )
        if allow_debug:
            text = text.replace("\nversion = 1\n", "\nversion = 1\nunsafe_allow_debug = true\n", 1)
        path.write_text(text)
        policy = load_policy(text, source=str(path))
        if allow_debug and "unsafe_allow_debug" not in policy.unsafe_flags:  # pragma: no cover - layout changed
            raise RuntimeError("cannot place unsafe_allow_debug in the rendered policy")
        return policy

    # -- enclaves -----------------------------------------------------------------------------------------------

    def start_enclave(self, fault: str | None = None, *, timeout: float = 30.0) -> str:
        """Start an enclave server (``cc-kernel enclave serve``) with at most one fault; return its address.

        Faults: ``debug``, ``old-tcb`` and ``swapped-key`` are the enclave's own teaching knobs (``--fault``);
        ``modified-code`` launches the server from a copy of the installed package with ``MODIFIED_LINE``
        appended to ``MODIFIED_FILE``, so the measurement it computes of its own files really changes;
        ``replay`` starts a genuine enclave, asks it once for evidence, and returns the address of an impostor
        server (own TLS key) that answers every challenge with that recorded, genuine evidence. (The enclave's
        own ``--fault replay`` knob, which answers with its start-up evidence, is not used: the impostor is the
        attack a network or host can actually mount.)

        Raises:
            ValueError: unknown fault.
            EnclaveError: the server did not start (its log is in the message).
        """
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)} (or None)")
        if fault == "replay":
            return self._start_replayer(timeout)
        package_root = self._modified_package() if fault == "modified-code" else None
        argv = [sys.executable, "-c", SERVE_SNIPPET, "enclave", "serve", "--listen", "127.0.0.1:0", "--sim-dir",
                str(self.sim_dir), "--log-level", "INFO", "--authorized-clients", str(self.authorized_clients)]
        if fault in ENCLAVE_FAULTS:
            argv += ["--fault", fault]
        env = self._child_env()
        env["CC_TEACHING_PARENT"] = str(os.getpid())
        if package_root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            cwd=self.root, start_new_session=True,
        )
        server = EnclaveServer(fault=fault or "no fault", address="", process=proc, package_root=package_root)
        return self._await_server(server, "the enclave server", timeout)

    def start_broker(self, datasets: Path, *, timeout: float = 30.0) -> str:
        """Start a data owner's key broker (``cc-kernel broker serve``) on a free port over the key store
        ``datasets`` (the broker creates it if missing), trusting the lab's simulated authority; return its
        ``HOST:PORT``. It stops when the lab is closed; ``enclave_log(address)`` shows its output.

        Raises:
            EnclaveError: the broker did not start (its output, e.g. a store others may read, is in the message).
        """
        argv = [sys.executable, "-c", SERVE_SNIPPET, "broker", "serve", "--listen", "127.0.0.1:0", "--datasets",
                str(datasets), "--sim-dir", str(self.sim_dir)]
        env = self._child_env()
        env["CC_TEACHING_PARENT"] = str(os.getpid())
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            cwd=self.root, start_new_session=True,
        )
        server = EnclaveServer(fault="broker", address="", process=proc, address_of=broker_address)
        return self._await_server(server, "the broker", timeout)

    def _await_server(self, server: EnclaveServer, what: str, timeout: float) -> str:
        assert server.process is not None
        self._res.servers.append(server)
        found = threading.Event()
        threading.Thread(target=server.read_output, args=(found,), daemon=True, name="cc-teaching-log").start()
        if not found.wait(timeout) or not server.address:
            stop_process(server.process)
            tail = "\n".join(server.lines) or "(no output)"
            raise EnclaveError(f"{what} did not start within {timeout} s:\n{tail}")
        self._labels[server.address] = server.fault
        return server.address

    def _modified_package(self) -> Path:
        import cc_kernel

        source = Path(cc_kernel.__file__).resolve().parent
        root = Path(tempfile.mkdtemp(prefix="modified-code-", dir=self.root))
        shutil.copytree(source, root / "cc_kernel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with (root / "cc_kernel" / MODIFIED_FILE).open("a", encoding="utf-8") as fh:
            fh.write(MODIFIED_LINE)
        return root

    def _start_replayer(self, timeout: float) -> str:
        genuine = self.start_enclave(None, timeout=timeout)
        recorded = self.fetch_evidence(genuine, timeout=timeout)
        replayer = ReplayServer(recorded.envelope_bytes)
        self._loop.run(replayer.start(), timeout)
        self._res.replayers.append(replayer)
        address = f"tcp://127.0.0.1:{replayer.port}"
        self._res.servers.append(EnclaveServer(fault="replay", address=address, process=None))
        self._labels[address] = "replay"
        return address

    def enclave_log(self, address: str) -> str:
        """The output of the enclave server at ``address`` (its own log and its enclave processes')."""
        for server in self._res.servers:
            if server.address == address:
                return "\n".join(server.lines)
        raise KeyError(address)

    def stop_enclave(self, address: str) -> None:
        """Stop the enclave server at ``address`` (and every enclave process it started)."""
        for server in self._res.servers:
            if server.address == address and server.process is not None:
                stop_process(server.process)

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CC_KERNEL_") and k != "JPY_PARENT_PID"}
        env.update(
            JUPYTER_DATA_DIR=str(self.data_dir),
            JUPYTER_RUNTIME_DIR=str(self.root / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.root / "config"),
            JUPYTER_PATH=str(self.root / "prefix" / "share" / "jupyter"),
            JUPYTER_PLATFORM_DIRS="1",
            IPYTHONDIR=str(self.root / "ipython"),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
            PYTHONDONTWRITEBYTECODE="1",
            CC_KERNEL_SIM_DIR=str(self.sim_dir),
        )
        return env

    # -- attestation ------------------------------------------------------------------------------------------

    def attest(self, address: str | Address, *, policy: Policy | None = None, timeout: float = 20.0) -> AttestOutcome:
        """Connect to ``address`` and verify it exactly as the kernel does (``connect_attested``): TLS 1.3,
        challenge, authenticity, freshness, binding, policy. Returns the verified result or the refusal, with the
        advice a simulation kernel gives.

        ``policy`` defaults to ``self.policy()`` (the real measurement, simulation accepted).
        """
        address = str(address)
        policy = policy if policy is not None else self.policy()
        label = self._labels.get(address, "")

        async def attempt() -> AttestOutcome:
            attested = await connect_attested(
                parse_address(address), policy=policy, anchors=hardware_anchors(), simulation_anchors=self.anchors,
                timeout=timeout, client_identity=self.client_identity,
            )
            await attested.channel.aclose()
            return AttestOutcome(address, label, result=attested.peer.result, timings_ms=dict(attested.timings_ms))

        try:
            return self._loop.run(attempt(), timeout + 5.0)
        except CCKernelError as exc:
            return AttestOutcome(address, label, error=exc)

    def fetch_evidence(self, address: str | Address, *, timeout: float = 20.0) -> EvidenceExchange:
        """Do the first half of the kernel's exchange by hand — TLS 1.3 handshake, Hello, AttestRequest with a
        fresh nonce and session id — and return what came back WITHOUT verifying anything.

        Raises:
            ConnectError / BrokenChannelError / RemoteProtocolError: the exchange failed.
        """
        address = str(address)
        nonce, session_id = os.urandom(NONCE_SIZE), os.urandom(SESSION_ID_SIZE)

        async def exchange() -> EvidenceExchange:
            channel = await open_client(parse_address(address), Connection(Role.KERNEL), timeout=timeout,
                                        client_identity=self.client_identity)
            try:
                await channel.send(Hello(role="kernel", versions=[PROTOCOL_VERSION],
                                         software=f"cc-kernel {__version__} (teaching)"))
                hello = await channel.receive()
                await channel.send(AttestRequest(nonce=nonce, session_id=session_id))
                response = await channel.receive()
                if not isinstance(hello, Hello) or not isinstance(response, AttestResponse):
                    raise EnclaveError(f"unexpected answer from {address}: {type(response).__name__}")
                with contextlib.suppress(CCKernelError):
                    await channel.send(Fatal(reason="teaching: evidence fetched for manual verification"))
                return EvidenceExchange(
                    address=address, nonce=nonce, session_id=session_id,
                    peer_cert_der=channel.peer_cert_der or b"", envelope_bytes=response.envelope,
                    enclave_software=hello.software,
                )
            finally:
                await channel.aclose()

        return self._loop.run(exchange(), timeout + 5.0)

    def relay(self, address: str | Address, *, tamper: bool = False) -> Relay:
        """A recording relay in front of the enclave server at ``address``; connect to ``relay.address``.

        With ``tamper=True`` it flips one bit of the first record the enclave sends after the handshake
        (``Flip.after_handshake()``), in each connection.
        """
        address = str(address)
        if parse_address(address).kind != "tcp":
            raise ValueError("relays forward TCP addresses only")
        relay = Relay(address, flip=Flip.after_handshake() if tamper else None, channel="tls",
                      labels=("kernel → enclave", "enclave → kernel"))
        self._loop.run(relay.start(), 10.0)
        self._res.relays.append(relay)
        kind = "tampering relay" if tamper else "relay"
        self._labels[str(relay.address)] = f"{kind} to {self._labels.get(address, address)}"
        return relay

    # -- kernels ------------------------------------------------------------------------------------------------

    def _ensure_kernelspecs(self) -> Path:
        kernels = self.root / "prefix" / "share" / "jupyter" / "kernels"
        if not self._kernelspecs_ready:
            import ipykernel.kernelspec

            from cc_kernel.kernel.install import install

            install(prefix=str(self.root / "prefix"))
            ipykernel.kernelspec.install(prefix=str(self.root / "prefix"))
            self._kernelspecs_ready = True
        return kernels

    def start_kernel(
        self,
        kernel: str = "confidential-python-sim",
        *,
        enclave: str | Address | None = None,
        policy: Policy | None = None,
        audit_dir: str | Path | None = None,
        redact_code: bool = False,
        timeout: float = 60.0,
    ) -> LabKernel:
        """Start a real Jupyter kernel that stays up: run several cells in it with ``LabKernel.run``, then
        ``shutdown()``.

        For ``confidential-python-sim``: it connects to ``enclave`` (else starts its own local enclave),
        verified with ``policy`` (default ``self.policy()``), and keeps its session log in ``audit_dir``
        (``CC_KERNEL_AUDIT_DIR``; default: the lab's Jupyter data directory), with code redacted if
        ``redact_code``. The caller's own ``CC_KERNEL_*`` settings are never passed on.

        Raises:
            TimeoutError: the kernel did not become ready in time.
        """
        env = self._child_env()
        if kernel != "python3":
            env["CC_KERNEL_POLICY"] = (policy if policy is not None else self.policy()).source
            if enclave is not None:
                env["CC_KERNEL_ENCLAVE"] = str(enclave)
            if audit_dir is not None:
                env["CC_KERNEL_AUDIT_DIR"] = str(audit_dir)
            if redact_code:
                env["CC_KERNEL_AUDIT_REDACT"] = "1"
        return self._start_kernel(kernel, env, timeout, wiretap=False)

    def _start_kernel(self, kernel: str, env: dict[str, str], timeout: float, *, wiretap: bool) -> LabKernel:
        kernels = self._ensure_kernelspecs()
        self._kernel_count += 1
        n = self._kernel_count
        started = LabKernel(self._loop, kernel, self.root / "logs" / f"kernel-{n}-{kernel}.log")
        self._res.kernels.append(started)
        keep_relay = self._res.relays.append if wiretap else None
        try:
            self._loop.run(
                started._start(kernels, env, self.root / "runtime" / f"kernel-{n}.json", timeout, keep_relay),
                timeout + 30.0,
            )
        except BaseException:
            started.shutdown()
            raise
        return started

    def run_cell(
        self,
        code: str,
        *,
        kernel: str = "confidential-python-sim",
        enclave: str | Address | None = None,
        policy: Policy | None = None,
        wiretap: bool = False,
        timeout: float = 60.0,
    ) -> CellRun:
        """Start a real Jupyter kernel, run ``code`` as its first cell, collect every output, shut it down.

        ``kernel``: ``confidential-python-sim`` (connects to ``enclave`` — an address from ``start_enclave``
        or ``relay`` — verified with ``policy``; without ``enclave`` it starts its own local enclave) or
        ``python3`` (the stock IPython kernel). ``wiretap=True``: a relay records the traffic between the
        kernel and the untrusted side — for the confidential kernel the kernel ↔ enclave TLS stream (requires
        ``enclave``), for python3 its five ZMQ sockets (frontend ↔ kernel).

        Raises:
            ValueError: ``wiretap`` for the confidential kernel without ``enclave``.
            TimeoutError: the kernel did not answer in time.
        """
        if wiretap and kernel != "python3" and enclave is None:
            raise ValueError("wiretap on the Confidential Python kernel needs an enclave address to relay to")
        enclave = None if enclave is None else str(enclave)
        tap: Relay | None = None
        env = self._child_env()
        if kernel != "python3":
            if wiretap and enclave is not None:
                tap = self.relay(enclave)
                enclave = str(tap.address)
            env["CC_KERNEL_POLICY"] = (policy if policy is not None else self.policy()).source
            if enclave is not None:
                env["CC_KERNEL_ENCLAVE"] = enclave
        started = self._start_kernel(kernel, env, timeout, wiretap=wiretap and kernel == "python3")
        try:
            run = started.run(code, timeout=timeout)
        finally:
            started.shutdown()
        return dataclasses.replace(
            run, connection_info=started.connection_info, kernel_log=started.kernel_log, enclave=enclave,
            wiretap=tap if tap is not None else started.wiretap,
        )

    # -- summaries ------------------------------------------------------------------------------------------------

    @staticmethod
    def verdicts(outcomes: Mapping[str, AttestOutcome]) -> Table:
        """One line per attempt: what was switched on, verified or refused, the exception and the check."""
        rows = tuple(
            (name, "verified" if o.verified else "REFUSED", o.error_class or (o.result.status if o.result else ""),
             o.check)
            for name, o in outcomes.items()
        )
        return Table("what attestation caught", ("fault", "verdict", "exception / status", "check"), rows)

