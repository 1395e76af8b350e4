"""Attacks on the attested channel, against REAL enclave processes: every one must fail closed, with the error
class, the ``check`` and a message that says what happened.

Untrusted parties modelled here: the enclave's code or configuration (wrong measurement, debug), the platform
(simulated TEE under a hardware policy, an unknown root, expired certificates), the host (a swapped TLS key,
replayed or edited evidence, oversized frames, garbage) and the network between kernel and enclave (a relay
that records every byte, or flips one).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import secrets
import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import SIM_CREATED_AT, SimKeys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.envelope import encode_envelope, parse_envelope_unverified
from cc_kernel.attestation.platforms.simulation import create_authority
from cc_kernel.attestation.policy import Policy, default_hardware_policy, load_policy
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.ratls import verify_peer
from cc_kernel.channel.transport import Address, open_client
from cc_kernel.clientkey import load_or_create_client_identity
from cc_kernel.errors import (
    BindingMismatch,
    BrokenChannelError,
    CertificateExpired,
    ConnectError,
    MalformedEvidence,
    PolicyViolation,
    RemoteProtocolError,
    SignatureInvalid,
    StaleEvidence,
    UntrustedRoot,
    VerificationError,
)
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.protocol.framing import NEED_DATA, FrameDecoder
from cc_kernel.testing.enclaves import (
    Direction,
    EnclaveProcess,
    Flip,
    Relay,
    SupervisorProcess,
    install_authority,
    raw_exchange_unverified,
    raw_tls_client,
    raw_tls_server,
    read_until_closed,
    send_eof,
    start_enclave,
    start_supervisor,
    write_simulation_policy,
)

SLOW = pytest.mark.slow  # starts enclave processes (python -m cc_kernel.enclave)

OVERSIZED_HEADER = (2**31).to_bytes(4, "big")
Edit = Callable[[bytes], bytes]


@pytest.fixture(autouse=True)
def _private_jupyter_dir(monkeypatch: pytest.MonkeyPatch, cc_data_dir: Path) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(cc_data_dir))


@pytest.fixture(scope="module")
def policy(sim_policy_path: Path) -> Policy:
    return load_policy(sim_policy_path.read_bytes(), source=str(sim_policy_path))


async def _attest(
    target: Address | socket.socket,
    policy: Policy,
    sim_anchors: TrustAnchors | None,
    **kwargs: object,
) -> AttestedChannel:
    kwargs.setdefault("client_identity", load_or_create_client_identity())  # what the supervisors authorise
    attested = await connect_attested(
        target, policy=policy, anchors=hardware_anchors(), simulation_anchors=sim_anchors, **kwargs  # type: ignore[arg-type]
    )
    await attested.channel.send(m.AuditOff())  # the enclave runs nothing before AuditStart or AuditOff
    return attested


def _refused(
    data_dir: Path, policy: Policy, sim_anchors: TrustAnchors | None, *, faults: tuple[str, ...] = (), **kw: object
) -> VerificationError:
    """Connect to a fresh enclave (socketpair) that must be refused; the error. The enclave must then end
    its session cleanly, knowing why."""

    async def main(enclave: EnclaveProcess) -> VerificationError:
        with pytest.raises(VerificationError) as info:
            attested = await _attest(enclave.sock, policy, sim_anchors, **kw)
            await attested.channel.aclose()  # pragma: no cover - only reached when the test is failing
        return info.value

    with start_enclave(data_dir, faults=faults) as enclave:
        error = asyncio.run(main(enclave))
        assert enclave.wait(10) == 0
        log = enclave.log()
    assert f"the kernel closed the session: attestation refused: {type(error).__name__}" in log
    assert "Traceback" not in log
    return error


def _execute_request(code: str, req_id: int = 1) -> m.ExecuteRequest:
    return m.ExecuteRequest(
        req_id=req_id, code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
        execution_count=req_id, cell_id=None, kind="cell",
    )


# --- the enclave is not the one we pinned, or not protected ----------------------------------------------------


@SLOW
def test_wrong_measurement_is_refused_with_a_repin_hint(
    cc_data_dir: Path, tmp_path: Path, sim_anchors: TrustAnchors
) -> None:
    pinned = hashlib.sha384(b"another enclave").digest()
    other = write_simulation_policy(tmp_path / "other.toml", [pinned])
    error = _refused(cc_data_dir, other, sim_anchors)
    assert isinstance(error, PolicyViolation)
    assert error.check == "policy.measurement"
    assert error.got == enclave_measurement().hex()
    assert error.expected == [pinned.hex()]
    assert [f.check for f in error.failures] == ["policy.measurement"]
    assert "re-pin its measurement with `cc-kernel policy init" in str(error)
    assert "the evidence is authentic" in error.message


@SLOW
def test_debug_enclave_is_refused_by_a_non_debug_policy(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    error = _refused(cc_data_dir, policy, sim_anchors, faults=("debug",))
    assert isinstance(error, PolicyViolation)
    assert error.check == "policy.debug"
    assert [f.check for f in error.failures] == ["policy.debug"]  # the measurement itself is the pinned one
    assert "DEBUG mode: the host can read and write its memory" in str(error)


@SLOW
def test_simulated_enclave_under_the_hardware_policy_is_an_untrusted_root(
    cc_data_dir: Path, sim_anchors: TrustAnchors
) -> None:
    """Even with simulation anchors at hand, a policy without unsafe_allow_simulation never consults them."""
    error = _refused(cc_data_dir, default_hardware_policy(), sim_anchors)
    assert type(error) is UntrustedRoot
    assert error.check == "snp.anchor"
    assert error.got == "Simulated"
    assert "SIMULATED TEE" in error.message
    assert "does not allow simulation" in error.message


@pytest.fixture(scope="module")
def foreign_data_dir(tmp_path_factory: pytest.TempPathFactory, sim_keys: SimKeys) -> Path:
    """A second simulated authority B (another ARK key and certificate) in its own Jupyter data dir."""
    other = create_authority(now=SIM_CREATED_AT, ark_key=sim_keys.ask, ask_key=sim_keys.ark, vcek_key=sim_keys.vcek)
    data_dir = tmp_path_factory.mktemp("foreign-authority")
    install_authority(data_dir, other)
    return data_dir


@SLOW
def test_evidence_from_an_unknown_simulation_root_is_refused(
    foreign_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """The kernel pins authority A; the enclave signs with B (same names, same measurement, other keys)."""
    error = _refused(foreign_data_dir, policy, sim_anchors)
    assert type(error) is UntrustedRoot
    assert error.check == "snp.presented_ark"
    assert "the presented ARK is not the pinned ARK-Simulated" in error.message
    assert error.expected == sim_anchors.roots[0].sha256.hex()


@SLOW
def test_certificates_expired_at_verification_time(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    later = datetime(2040, 1, 1, tzinfo=UTC)  # the simulated VCEK is valid for 7 years from 2025-06-01
    error = _refused(cc_data_dir, policy, sim_anchors, now=lambda: later)
    assert type(error) is CertificateExpired
    assert error.check == "chain.validity"
    assert error.index == 0  # the VCEK, first in the chain
    assert "is expired at 2040-01-01" in error.message
    assert "VCEK" in error.message


# --- the host interferes with the evidence -------------------------------------------------------------------


@SLOW
def test_swapped_tls_key_is_a_binding_mismatch(cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors) -> None:
    """``--fault swapped-key``: the evidence binds another key than the certificate's (a MITM's view)."""
    error = _refused(cc_data_dir, policy, sim_anchors, faults=("swapped-key",))
    assert type(error) is BindingMismatch
    assert error.check == "binding.report_data"
    assert "does not bind this connection's TLS key" in error.message
    assert isinstance(error.got, bytes) and isinstance(error.expected, bytes) and error.got != error.expected


@SLOW
def test_replayed_startup_evidence_is_stale(cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors) -> None:
    """``--fault replay``: the enclave answers our challenge with evidence recorded earlier (its start-up
    evidence, the only other evidence a one-session process ever made). The session id gives it away first."""
    error = _refused(cc_data_dir, policy, sim_anchors, faults=("replay",))
    assert type(error) is StaleEvidence
    assert error.check == "freshness.session_id"
    assert error.got == bytes(16)  # the start-up evidence's session id
    assert "produced for another session" in error.message


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What a kernel saw in one genuine session: the fresh evidence and the enclave's certificate."""

    envelope: bytes
    peer_cert: bytes
    nonce: bytes
    session_id: bytes


@pytest.fixture(scope="module")
def recorded(cc_data_dir: Path, sim_policy_path: Path, sim_anchors: TrustAnchors) -> Recorded:
    policy = load_policy(sim_policy_path.read_bytes(), source=str(sim_policy_path))
    session_id = secrets.token_bytes(16)

    async def main(enclave: EnclaveProcess) -> Recorded:
        attested = await _attest(enclave.sock, policy, sim_anchors, session_id=session_id)
        await attested.channel.aclose()
        assert attested.channel.peer_cert_der is not None
        return Recorded(attested.peer.envelope_bytes, attested.channel.peer_cert_der, attested.peer.bound.nonce,
                        session_id)

    with start_enclave(cc_data_dir) as enclave:
        return asyncio.run(main(enclave))


def _verify(rec: Recorded, policy: Policy, sim_anchors: TrustAnchors, *, envelope: bytes | None = None,
            nonce: bytes | None = None) -> object:
    return verify_peer(
        peer_cert_der=rec.peer_cert, envelope_bytes=rec.envelope if envelope is None else envelope,
        nonce=rec.nonce if nonce is None else nonce, session_id=rec.session_id, policy=policy,
        anchors=hardware_anchors(), simulation_anchors=sim_anchors, now=datetime.now(UTC),
    )


@SLOW
def test_replay_to_the_same_enclave_and_session_fails_on_the_nonce(
    recorded: Recorded, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """A host replays the evidence of an earlier attestation of THIS enclave process (same certificate, same
    session id) to a new challenge. Processes serve one session each, so the replay is driven through
    verify_peer with the recorded envelope; everything but the nonce is genuine and current."""
    _verify(recorded, policy, sim_anchors)  # the recording itself verifies: only the nonce differs below
    fresh = secrets.token_bytes(32)
    with pytest.raises(StaleEvidence) as info:
        _verify(recorded, policy, sim_anchors, nonce=fresh)
    assert info.value.check == "freshness.nonce"
    assert "replayed from an earlier connection" in info.value.message
    assert (info.value.got, info.value.expected) == (recorded.nonce, fresh)


@SLOW
def test_editing_the_unsigned_envelope_to_claim_our_nonce_breaks_the_binding(
    recorded: Recorded, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """The envelope's binding fields are not signed; the report_data inside the signed report is."""
    fresh = secrets.token_bytes(32)
    env = parse_envelope_unverified(recorded.envelope)
    forged = encode_envelope(dataclasses.replace(env, nonce=fresh))
    with pytest.raises(BindingMismatch) as info:
        _verify(recorded, policy, sim_anchors, envelope=forged, nonce=fresh)
    assert info.value.check == "binding.report_data"
    other_audit = encode_envelope(dataclasses.replace(env, audit_pub=secrets.token_bytes(32)))
    with pytest.raises(BindingMismatch, match="audit key") as info:
        _verify(recorded, policy, sim_anchors, envelope=other_audit)
    assert info.value.check == "binding.report_data"


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def _edit_report(envelope: bytes, edit: Edit) -> bytes:
    env = parse_envelope_unverified(envelope)
    return encode_envelope(dataclasses.replace(env, evidence=edit(env.evidence)))


def _edit_vcek(envelope: bytes, edit: Edit) -> bytes:
    env = parse_envelope_unverified(envelope)
    endorsements = tuple(
        dataclasses.replace(e, data=edit(e.data)) if e.role == "vcek" else e
        for e in env.endorsements
    )
    return encode_envelope(dataclasses.replace(env, endorsements=endorsements))


CORRUPTIONS: dict[str, tuple[Edit, type[VerificationError], str, str]] = {
    # name: (corrupt(envelope bytes), error class, check, message fragment)
    "envelope-truncated": (lambda env: env[: len(env) // 2], MalformedEvidence, "envelope", "not valid msgpack"),
    "envelope-trailing-byte": (lambda env: env + b"\x00", MalformedEvidence, "envelope", "trailing bytes"),
    "report-truncated": (lambda env: _edit_report(env, lambda r: r[:-1]), MalformedEvidence, "snp.length",
                         "exactly 1184 bytes"),
    "measurement-flipped": (lambda env: _edit_report(env, lambda r: _flip(r, 0x90)), SignatureInvalid,
                            "snp.signature", "does not verify"),
    "report-data-flipped": (lambda env: _edit_report(env, lambda r: _flip(r, 0x50)), SignatureInvalid,
                            "snp.signature", "does not verify"),
    "signature-flipped": (lambda env: _edit_report(env, lambda r: _flip(r, 0x2A0 + 7)), SignatureInvalid,
                          "snp.signature", "does not verify"),
    "vcek-signature-flipped": (lambda env: _edit_vcek(env, lambda c: _flip(c, len(c) - 3)), SignatureInvalid,
                               "chain.signature", "VCEK"),
    "vcek-truncated": (lambda env: _edit_vcek(env, lambda c: c[:-40]), MalformedEvidence, "x509.parse",
                       "not a valid X.509 certificate"),
}


@SLOW
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_evidence_is_refused(
    name: str, recorded: Recorded, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    corrupt, cls, check, fragment = CORRUPTIONS[name]
    with pytest.raises(VerificationError) as info:
        _verify(recorded, policy, sim_anchors, envelope=corrupt(recorded.envelope))
    assert type(info.value) is cls, info.value
    assert info.value.check == check, info.value
    assert fragment in str(info.value)


# --- frames the protocol cannot carry ------------------------------------------------------------------------


def _frame_types(data: bytes) -> list[str]:
    from cc_kernel.protocol import codec
    from cc_kernel.protocol.framing import NEED_DATA, FrameDecoder

    decoder = FrameDecoder()
    decoder.feed(data)
    types = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        types.append(codec.unpackb(frame)["t"])
    return types


@SLOW
@pytest.mark.parametrize("phase", ["before-hello", "after-attestation"])
def test_enclave_closes_on_an_oversized_frame_header(cc_data_dir: Path, phase: str) -> None:
    with start_enclave(cc_data_dir) as enclave, raw_tls_client(enclave.sock) as tls:
        if phase == "after-attestation":
            _, response = raw_exchange_unverified(tls)
            assert response.envelope
        tls.sendall(OVERSIZED_HEADER)  # and nothing else: the enclave must not wait for 2 GiB
        plaintext, how = read_until_closed(tls, timeout=10)
        # no error text, no traceback: the enclave just closes (after SessionInfo, owed since attestation)
        assert _frame_types(plaintext) in ([], ["session_info"]) if phase == "after-attestation" else plaintext == b""
        assert how in ("eof", "reset") or how.startswith("tls-error"), how
        assert enclave.wait(10) == 0
        log = enclave.log()
    limit = 65536 if phase == "before-hello" else 67108864  # before READY only a small frame is accepted
    assert f"session ended: RemoteProtocolError: frame length 2147483648 exceeds the limit of {limit}" in log
    assert "Traceback" not in log


def test_kernel_refuses_an_oversized_frame_header_and_says_why() -> None:
    """A fake enclave sends a 2 GiB length header where its Hello should be."""

    async def main() -> list[m.Message]:
        kernel_sock, enclave_sock = socket.socketpair()
        received = bytearray()

        async def fake_enclave() -> None:
            reader, writer = await raw_tls_server(enclave_sock)
            writer.write(OVERSIZED_HEADER)
            await writer.drain()
            while data := await reader.read(65536):
                received.extend(data)
            writer.close()

        server = asyncio.ensure_future(fake_enclave())
        with pytest.raises(RemoteProtocolError, match="frame length 2147483648 exceeds the limit of 67108864"):
            await _attest(kernel_sock, default_hardware_policy(), None)
        async with asyncio.timeout(10):
            await server
        decoder = FrameDecoder()
        decoder.feed(received)
        frames = []
        while (frame := decoder.next_frame()) is not NEED_DATA:
            frames.append(m.decode_message(codec.unpackb(frame)))
        return frames

    frames = asyncio.run(main())
    assert [type(f) for f in frames] == [m.Hello, m.Fatal]  # the kernel told the peer why, and nothing else
    assert frames[1] == m.Fatal(reason="attestation refused: RemoteProtocolError")


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=512), abort=st.booleans())
def test_kernel_channel_fed_arbitrary_bytes_only_raises_protocol_or_broken(data: bytes, abort: bool) -> None:
    """Whatever a (TLS-authenticated but malicious) peer writes before it goes away (closing TLS properly, or
    just dropping TCP), the kernel's FramedChannel yields whole messages and then raises RemoteProtocolError or
    BrokenChannelError; it never hangs or lets another exception out."""

    async def main() -> None:
        kernel_sock, peer_sock = socket.socketpair()
        server = asyncio.ensure_future(raw_tls_server(peer_sock))
        channel = await open_client(kernel_sock, Connection(Role.KERNEL))
        _, writer = await server
        try:
            await channel.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="test"))
            writer.write(data)
            await writer.drain()
            if abort:
                writer.transport.abort()
            else:
                writer.close()
            with pytest.raises((RemoteProtocolError, BrokenChannelError)):
                async with asyncio.timeout(5):
                    while True:
                        assert isinstance(await channel.receive(), m.Message)
        finally:
            writer.close()
            await channel.aclose()

    asyncio.run(main())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(min_size=1, max_size=2048),
    phase=st.sampled_from(["before-hello", "after-attestation"]),
)
@SLOW
def test_enclave_fed_arbitrary_bytes_closes_cleanly_and_leaks_nothing(
    cc_data_dir: Path, data: bytes, phase: str
) -> None:
    """Arbitrary bytes inside TLS never make an enclave send a traceback (or anything but protocol frames),
    and it always ends its session and exits with status 0."""
    conn = Connection(Role.KERNEL)
    with start_enclave(cc_data_dir) as enclave, raw_tls_client(enclave.sock) as tls:
        if phase == "after-attestation":
            conn, _ = raw_exchange_unverified(tls)
        tls.sendall(data)
        send_eof(tls)  # if the bytes happened to be valid frames, EOF ends the session
        plaintext, how = read_until_closed(tls, timeout=15)
        assert b"Traceback" not in plaintext and b"File \"" not in plaintext
        assert enclave.wait(15) == 0
        log = enclave.log()
    assert "session ended:" in log
    assert "Traceback" not in log
    # whatever came back is well-formed protocol (e.g. a Pong), never free text
    if plaintext:
        conn.receive_data(plaintext)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, m.Message), event
            assert "Traceback" not in repr(event)
    assert how in ("eof", "reset") or how.startswith("tls-error"), how


# --- the network: a relay between kernel and enclave ---------------------------------------------------------


@pytest.fixture(scope="module")
def supervisor(cc_data_dir: Path) -> Iterator[SupervisorProcess]:
    with start_supervisor(cc_data_dir) as sup:
        yield sup
    assert "Traceback" not in sup.log()


def _forms(secret: str) -> dict[str, bytes]:
    raw = bytes.fromhex(secret)
    utf8 = secret.encode()
    return {
        "utf-8": utf8, "upper": secret.upper().encode(), "utf-16": secret.encode("utf-16-le"),
        "hex-of-utf8": utf8.hex().encode(), "base64-of-utf8": base64.b64encode(utf8),
        "raw": raw, "base64-of-raw": base64.b64encode(raw), "half": utf8[:16],
    }


@SLOW
def test_relay_sees_no_planted_secret_in_either_direction(
    supervisor: SupervisorProcess, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """The secret goes kernel -> enclave in the code and comes back in the output; the client gets both in
    the clear, the untrusted relay sees neither, in any encoding we can think of."""
    sent = secrets.token_hex(16)
    derived = hashlib.sha256(sent.encode()).hexdigest()[:32]  # exists only inside the enclave, then the output
    code = f"import hashlib\nsecret = {sent!r}\nprint(secret)\nprint(hashlib.sha256(secret.encode()).hexdigest()[:32])"

    async def main() -> tuple[str, bytes, bytes, int]:
        async with Relay(supervisor.address) as relay:
            assert relay.address is not None
            attested = await _attest(relay.address, policy, sim_anchors)
            try:
                await attested.channel.send(_execute_request(code))
                out = []
                async with asyncio.timeout(30):
                    while not isinstance(msg := await attested.channel.receive(), m.ExecuteReply):
                        if isinstance(msg, m.Stream):
                            out.append(msg.text)
                assert msg.status == "ok"
            finally:
                await attested.channel.aclose()
            return "".join(out), relay.data("c2s"), relay.data("s2c"), relay.connections

    text, c2s, s2c, connections = asyncio.run(main())
    assert text == f"{sent}\n{derived}\n"  # the client has both secrets in plaintext
    assert connections == 1
    assert len(c2s) > 500 and len(s2c) > 2000
    assert b"\x17\x03\x03" in c2s and b"\x17\x03\x03" in s2c  # positive control: TLS records were recorded
    for name, secret in (("sent", sent), ("derived", derived)):
        for form, needle in _forms(secret).items():
            assert needle not in c2s, f"{name} secret ({form}) visible kernel -> enclave"
            assert needle not in s2c, f"{name} secret ({form}) visible enclave -> kernel"


EXPECTED_LINES = "".join(f"line {i:05d}\n" for i in range(20000))


@SLOW
@pytest.mark.parametrize("direction", ["s2c", "c2s"])
def test_one_flipped_byte_after_attestation_fails_closed(
    cc_data_dir: Path, tmp_path: Path, policy: Policy, sim_anchors: TrustAnchors, direction: Direction
) -> None:
    """One byte of one TLS record flipped while a cell and its output are in flight: the channel breaks,
    the kernel never gets a garbled message, a tampered request never runs."""
    code = (  # output in 20 flushed bursts of about 11 KB: several messages before and after the damage
        "import sys\nopen('cell-ran', 'w').close()\n"  # in the cells' working directory
        "for i in range(20000):\n    print(f'line {i:05d}')\n    if i % 1000 == 999: sys.stdout.flush()\n"
    )

    async def main(enclave: EnclaveProcess) -> tuple[str, BaseException, bool, tuple[Direction, int] | None]:
        async with Relay(enclave.sock) as relay:
            assert relay.address is not None
            attested = await _attest(relay.address, policy, sim_anchors)
            # c2s: inside the ExecuteRequest's record; s2c: well into the output stream
            relay.arm_flip(direction, after=10 if direction == "c2s" else 50_000)
            out: list[str] = []
            replied = False
            try:
                await attested.channel.send(_execute_request(code))
                async with asyncio.timeout(30):
                    while True:
                        msg = await attested.channel.receive()
                        if isinstance(msg, m.Stream):
                            out.append(msg.text)
                        elif isinstance(msg, m.ExecuteReply):
                            replied = True
            except (BrokenChannelError, RemoteProtocolError) as exc:
                error: BaseException = exc
            finally:
                await attested.channel.aclose()
            return "".join(out), error, replied, relay.flipped_at

    with start_enclave(cc_data_dir) as enclave:
        text, error, replied, flipped = asyncio.run(main(enclave))
        assert enclave.wait(10) == 0
        log = enclave.log()
        assert enclave.workdir is not None
        marker = enclave.workdir / "cell-ran"
    assert flipped is not None and flipped[0] == direction
    assert not replied
    assert EXPECTED_LINES.startswith(text)  # genuine output only, cut at a message boundary
    if direction == "s2c":
        assert type(error) is BrokenChannelError
        assert "DECRYPTION_FAILED_OR_BAD_RECORD_MAC" in str(error)
        assert len(text) > 0  # output before the damaged record did arrive
        assert marker.exists()  # the request was intact: the cell ran
    else:
        assert type(error) is BrokenChannelError
        assert "the peer closed the channel" in str(error)
        assert text == ""
        assert not marker.exists()  # the damaged request was never executed
        assert "session ended: BrokenChannelError: receiving failed: SSLError" in log
    assert "Traceback" not in log


@SLOW
@pytest.mark.parametrize(("direction", "offset"), [("c2s", 20), ("s2c", 20), ("s2c", 3000)])
def test_one_flipped_byte_during_the_handshake_fails_to_connect(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors, direction: Direction, offset: int
) -> None:
    """ClientHello / ServerHello random (offset 20) or the encrypted certificate (s2c 3000)."""

    async def main(enclave: EnclaveProcess) -> tuple[BaseException, tuple[Direction, int] | None]:
        async with Relay(enclave.sock, flip=Flip(direction, offset)) as relay:
            assert relay.address is not None
            with pytest.raises(ConnectError) as info:
                attested = await _attest(relay.address, policy, sim_anchors)
                await attested.channel.aclose()  # pragma: no cover - only reached when the test is failing
            return info.value, relay.flipped_at

    with start_enclave(cc_data_dir) as enclave:
        error, flipped = asyncio.run(main(enclave))
        assert enclave.wait(10) == 0
        log = enclave.log()
    assert flipped == (direction, offset)
    assert isinstance(error.__cause__, ssl.SSLError)
    assert "cannot connect to tcp://127.0.0.1:" in str(error)
    assert "session ended: ConnectError: TLS handshake failed" in log
    assert "Traceback" not in log


@SLOW
@pytest.mark.parametrize("stop_after", ["handshake", "hello"])
def test_enclave_ends_a_session_that_never_attests(cc_data_dir: Path, stop_after: str) -> None:
    """A client that completes TLS (and maybe Hello) and then goes silent must not hold an enclave process
    forever (with ``enclave serve``, --max-sessions such clients would lock everyone else out). The timeout is
    shortened to 1 s in this enclave process."""
    shorter = ["--pre-attestation-timeout", "1.0"]
    conn = Connection(Role.KERNEL)
    with start_enclave(cc_data_dir, extra_args=shorter) as enclave, raw_tls_client(enclave.sock) as tls:
        if stop_after == "hello":
            tls.sendall(conn.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="silent")))
        plaintext, how = read_until_closed(tls, timeout=15)
        assert enclave.wait(10) == 0
        log = enclave.log()
    assert how in ("eof", "reset") or how.startswith("tls-error"), how
    if stop_after == "hello":
        conn.receive_data(plaintext)
        assert isinstance(conn.next_event(), m.Hello)  # the enclave answered, then waited for the challenge
    else:
        assert plaintext == b""
    assert "session ended: ConnectError: the client sent no attestation request within 1.0 s of connecting" in log
    assert "Traceback" not in log
