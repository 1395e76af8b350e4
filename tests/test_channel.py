"""Integration tests of the attested channel against REAL enclave processes (``python -m cc_kernel.enclave``).

Three ways to reach an enclave, as in production: a socketpair (the kernel's local mode), TCP to
``cc-kernel enclave serve`` and a Unix socket to it. Every test uses a private Jupyter data directory holding
the session's simulated authority (``cc_data_dir``), so nothing touches the user's files.
"""

from __future__ import annotations

import asyncio
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.attestation.policy import Policy, default_hardware_policy, load_policy
from cc_kernel.channel import client as client_mod
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.ratls import verify_peer
from cc_kernel.channel.transport import Address, FramedChannel, open_client
from cc_kernel.clientkey import load_or_create_client_identity
from cc_kernel.enclave.evidence import SimulatedSource
from cc_kernel.errors import ClosedChannelError, LocalProtocolError, PolicyViolation
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, State
from cc_kernel.testing.enclaves import (
    InProcessEnclave,
    SupervisorProcess,
    attested_pair,
    raw_tls_server,
    start_enclave,
    start_supervisor,
    write_simulation_policy,
)

SLOW = pytest.mark.slow  # starts enclave processes (python -m cc_kernel.enclave)

TIMING_KEYS = {"tls_handshake", "evidence", "verify", "total"}


@pytest.fixture(autouse=True)
def _private_jupyter_dir(monkeypatch: pytest.MonkeyPatch, cc_data_dir: Path) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(cc_data_dir))


@pytest.fixture(scope="module")
def policy(sim_policy_path: Path) -> Policy:
    return load_policy(sim_policy_path.read_bytes(), source=str(sim_policy_path))


@pytest.fixture(scope="module")
def supervisor(cc_data_dir: Path) -> Iterator[SupervisorProcess]:
    with start_supervisor(cc_data_dir) as sup:
        yield sup
    assert "Traceback" not in sup.log()


async def _attest(target: Address | Any, policy: Policy, sim_anchors: TrustAnchors) -> AttestedChannel:
    """Attest (with the data directory's client key: the supervisors here authorise it; a local enclave requests
    none), then say the session keeps no log (the enclave runs nothing before AuditStart or AuditOff)."""
    attested = await connect_attested(target, policy=policy, anchors=hardware_anchors(),
                                      simulation_anchors=sim_anchors, client_identity=load_or_create_client_identity())
    await attested.channel.send(m.AuditOff())
    return attested


async def _execute(channel: FramedChannel, code: str, req_id: int = 1) -> tuple[str, m.ExecuteReply]:
    """Run a cell; its stdout and its reply."""
    await channel.send(m.ExecuteRequest(
        req_id=req_id, code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
        execution_count=req_id, cell_id=None, kind="cell",
    ))
    out = []
    async with asyncio.timeout(30):
        while True:
            msg = await channel.receive()
            if isinstance(msg, m.Stream) and msg.req_id == req_id:
                out.append(msg.text)
            elif isinstance(msg, m.ExecuteReply):
                assert msg.req_id == req_id
                return "".join(out), msg


def _check_result(attested: AttestedChannel, policy: Policy) -> None:
    result = attested.peer.result
    assert result.status == "simulation"
    assert result.platform == "simulation"
    assert not result.hardware_protected
    assert result.measurement == enclave_measurement()
    assert result.policy_sha256 == policy.sha256
    assert result.session_id == attested.session_id
    assert attested.peer.certificate_evidence_checked  # the start-up evidence in the certificate, too
    assert attested.channel.conn.state is State.READY
    assert set(attested.timings_ms) == TIMING_KEYS
    assert all(v >= 0 for v in attested.timings_ms.values())
    assert attested.timings_ms["total"] >= attested.timings_ms["tls_handshake"]


@SLOW
def test_socketpair_attest_execute_and_clean_shutdown(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    async def main() -> None:
        with start_enclave(cc_data_dir) as enclave:
            attested = await _attest(enclave.sock, policy, sim_anchors)
            _check_result(attested, policy)
            text, reply = await _execute(attested.channel, "print(6 * 7)")
            assert (text, reply.status) == ("42\n", "ok")
            await attested.channel.send(m.Shutdown(restart=False))
            async with asyncio.timeout(10):
                assert await attested.channel.receive() == m.ShutdownReply(restart=False)
            assert attested.channel.conn.state is State.CLOSED
            await attested.channel.aclose()
            assert enclave.wait(10) == 0
            log = enclave.log()
            assert "session ended: shutdown requested by the kernel" in log
            assert "Traceback" not in log

    asyncio.run(main())


@SLOW
def test_tcp_via_supervisor_gives_every_session_fresh_keys(
    supervisor: SupervisorProcess, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    async def main() -> None:
        assert supervisor.address.kind == "tcp" and supervisor.address.host == "127.0.0.1"
        first = await _attest(supervisor.address, policy, sim_anchors)
        second = await _attest(supervisor.address, policy, sim_anchors)
        try:
            for attested in (first, second):
                _check_result(attested, policy)
            one, two = first.peer.result, second.peer.result
            assert one.tls_spki_sha256 != two.tls_spki_sha256  # a fresh enclave process per session
            assert one.audit_pub != two.audit_pub
            assert one.nonce != two.nonce and one.session_id != two.session_id
            # two live sessions, two interpreters: state does not leak from one to the other
            await _execute(first.channel, "x = 'first'")
            text, _ = await _execute(second.channel, "print(globals().get('x', 'fresh'))")
            assert text == "fresh\n"
        finally:
            await first.channel.aclose()
            await second.channel.aclose()

    asyncio.run(main())


@SLOW
def test_unix_socket_via_supervisor(
    cc_data_dir: Path, tmp_path: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    path = tmp_path / "enclave.sock"
    assert len(str(path)) < 100  # AF_UNIX path limit

    async def main(address: Address) -> None:
        attested = await _attest(address, policy, sim_anchors)
        try:
            _check_result(attested, policy)
            text, _ = await _execute(attested.channel, "import os; print(os.getpid() > 1)")
            assert text == "True\n"
        finally:
            await attested.channel.aclose()

    with start_supervisor(cc_data_dir, listen=f"unix:{path}") as sup:
        assert sup.address == Address("unix", path=str(path))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # only our user may connect
        asyncio.run(main(sup.address))
    assert "Traceback" not in sup.log()


class _Spy:
    """Records the kernel Connection that connect_attested creates, the state it was in when the evidence
    was verified, and every message type the kernel sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.conns: list[Connection] = []
        self.states_at_verify: list[State] = []
        self.sent: list[str] = []
        real_verify, real_send = verify_peer, FramedChannel.send

        def connection(*args: Any, **kwargs: Any) -> Connection:
            conn = Connection(*args, **kwargs)
            self.conns.append(conn)
            return conn

        def verify(**kwargs: Any) -> Any:
            self.states_at_verify.append(self.conns[-1].state)
            return real_verify(**kwargs)

        async def send(channel: FramedChannel, msg: m.Message) -> None:
            self.sent.append(type(msg).__name__)
            await real_send(channel, msg)

        monkeypatch.setattr(client_mod, "Connection", connection)
        monkeypatch.setattr(client_mod, "verify_peer", verify)
        monkeypatch.setattr(FramedChannel, "send", send)


@SLOW
def test_ready_only_after_verification(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)

    async def main() -> None:
        with start_enclave(cc_data_dir) as enclave:
            attested = await _attest(enclave.sock, policy, sim_anchors)
            await attested.channel.aclose()

    asyncio.run(main())
    assert spy.states_at_verify == [State.AWAITING_VERIFICATION]
    assert spy.conns[0].state is State.READY
    assert spy.sent == ["Hello", "AttestRequest", "AuditOff"]  # AuditOff: this test's own first message


@SLOW
def test_refused_enclave_never_gets_past_the_challenge(
    cc_data_dir: Path, tmp_path: Path, sim_anchors: TrustAnchors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On refusal only Hello, AttestRequest and Fatal were sent, and the channel cannot carry code."""
    other = write_simulation_policy(tmp_path / "other.toml", [bytes(range(48))])
    spy = _Spy(monkeypatch)

    async def main() -> None:
        with start_enclave(cc_data_dir) as enclave:
            with pytest.raises(PolicyViolation) as info:
                await _attest(enclave.sock, other, sim_anchors)
            assert info.value.check == "policy.measurement"
            assert enclave.wait(10) == 0
            log = enclave.log()
            assert "the kernel closed the session: attestation refused: PolicyViolation" in log
            assert "Traceback" not in log

    asyncio.run(main())
    assert spy.states_at_verify == [State.AWAITING_VERIFICATION]
    assert spy.sent == ["Hello", "AttestRequest", "Fatal"]
    conn = spy.conns[0]
    assert conn.state is State.CLOSED
    with pytest.raises(LocalProtocolError, match="cannot send ExecuteRequest in state CLOSED"):
        conn.send(m.ExecuteRequest(
            req_id=1, code="1", silent=False, store_history=False, user_expressions={}, allow_stdin=False,
            execution_count=1, cell_id=None, kind="cell",
        ))


@SLOW
def test_debug_enclave_accepted_only_with_the_unsafe_flag(
    cc_data_dir: Path, tmp_path: Path, sim_anchors: TrustAnchors
) -> None:
    """Positive twin of the policy.debug refusal in test_channel_attacks: the weakening is visible."""
    lenient = write_simulation_policy(tmp_path / "debug.toml", allow_debug=True)

    async def main() -> None:
        with start_enclave(cc_data_dir, faults=["debug"]) as enclave:
            attested = await _attest(enclave.sock, lenient, sim_anchors)
            await attested.channel.aclose()
        result = attested.peer.result
        assert result.status == "simulation"
        assert result.debug is True
        assert "unsafe_allow_debug" in result.unsafe_flags_used
        assert any("ENABLED" in line for line in result.summary_lines())

    asyncio.run(main())


def test_cancelled_connect_closes_its_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel giving up mid-attestation (cancelled, e.g. by an outer timeout) closes the channel at once:
    the enclave sees the end of the connection, and the channel refuses further use."""
    opened: list[FramedChannel] = []
    real_open = open_client

    async def recording_open(*args: Any, **kwargs: Any) -> FramedChannel:
        channel = await real_open(*args, **kwargs)
        opened.append(channel)  # keeps it referenced: only an explicit close can end the connection
        return channel

    monkeypatch.setattr(client_mod, "open_client", recording_open)

    async def main() -> None:
        kernel_sock, enclave_sock = socket.socketpair()
        got_hello = asyncio.Event()

        async def silent_enclave() -> bytes:
            reader, writer = await raw_tls_server(enclave_sock)
            assert await reader.read(65536)  # the kernel's Hello; never answered
            got_hello.set()
            async with asyncio.timeout(5):
                rest = await reader.read(65536)
            writer.close()
            return rest

        server = asyncio.ensure_future(silent_enclave())
        task = asyncio.ensure_future(
            connect_attested(kernel_sock, policy=default_hardware_policy(), anchors=hardware_anchors())
        )
        async with asyncio.timeout(10):
            await got_hello.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await server == b""  # the enclave saw the connection end
        with pytest.raises(ClosedChannelError, match="the channel was closed"):
            await opened[0].receive()

    asyncio.run(main())


def test_in_process_enclave_helper_attests_for_real(
    sim_authority: SimulationAuthority, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """cc_kernel.testing's in-process enclave (used by benchmarks and fast tests) gets through the same
    verification as a real one, and a faulty source is refused the same way."""

    async def main() -> None:
        good = InProcessEnclave(SimulatedSource(authority=sim_authority, measurement=enclave_measurement()))
        attested, enclave = await attested_pair(good, policy=policy, anchors=hardware_anchors(),
                                                simulation_anchors=sim_anchors)
        assert attested.peer.result.status == "simulation"
        assert attested.peer.certificate_evidence_checked
        assert attested.channel.conn.state is State.READY and enclave.conn.state is State.READY
        await attested.channel.send(m.Ping(seq=7))
        assert await enclave.receive() == m.Ping(seq=7)
        await attested.channel.aclose()
        await enclave.aclose()

        debug = InProcessEnclave(SimulatedSource(
            authority=sim_authority, measurement=enclave_measurement(), faults=frozenset({"debug"})
        ))
        with pytest.raises(PolicyViolation) as info:
            await attested_pair(debug, policy=policy, anchors=hardware_anchors(), simulation_anchors=sim_anchors)
        assert info.value.check == "policy.debug"

    asyncio.run(main())


@SLOW
def test_an_interrupt_only_hits_a_request_allocated_before_it(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """The kernel's interrupt travels after requests its main loop sent meanwhile; ``before`` (the kernel's next
    request id when the user interrupted) keeps a stale interrupt from hitting the next cell."""

    async def main() -> None:
        with start_enclave(cc_data_dir) as enclave:
            attested = await _attest(enclave.sock, policy, sim_anchors)
            channel = attested.channel
            try:
                # issued while idle (next id was 2), delivered after request 2 started: no effect
                cell = "print('started', flush=True); import time; time.sleep(1.5); print('done')"
                await channel.send(m.ExecuteRequest(
                    req_id=2, code=cell, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                    execution_count=2, cell_id=None, kind="cell",
                ))
                await _until_output(channel, 2, "started\n")
                await channel.send(m.Interrupt(before=2))
                out, reply = await _collect(channel, 2)
                assert (out, reply.status) == ("done\n", "ok")
                # issued while request 3 runs: it is interrupted
                await channel.send(m.ExecuteRequest(
                    req_id=3, code="print('started', flush=True); import time; time.sleep(20)", silent=False,
                    store_history=True, user_expressions={}, allow_stdin=False, execution_count=3, cell_id=None,
                    kind="cell",
                ))
                await _until_output(channel, 3, "started\n")
                await channel.send(m.Interrupt(before=4))
                _out, reply = await _collect(channel, 3)
                assert (reply.status, reply.ename) == ("error", "KeyboardInterrupt")
            finally:
                await channel.aclose()

    asyncio.run(main())


async def _until_output(channel: FramedChannel, req_id: int, text: str) -> None:
    """Receive until request ``req_id`` has printed ``text`` (so it is running); nothing else may come first."""
    out = ""
    async with asyncio.timeout(15):
        while out != text:
            msg = await channel.receive()
            assert isinstance(msg, m.Stream) and msg.req_id == req_id, msg
            out += msg.text
            assert text.startswith(out), out


async def _collect(channel: FramedChannel, req_id: int) -> tuple[str, m.ExecuteReply]:
    out = []
    async with asyncio.timeout(15):
        while True:
            msg = await channel.receive()
            if isinstance(msg, m.Stream) and msg.req_id == req_id:
                out.append(msg.text)
            elif isinstance(msg, m.ExecuteReply) and msg.req_id == req_id:
                return "".join(out), msg
