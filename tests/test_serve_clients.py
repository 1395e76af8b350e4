"""``cc-kernel enclave serve`` with real processes: client keys (authorised, unknown, none, the unsafe option),
refusing to start without authorised clients, bounds on clients that never attest (an oversized frame, silence),
and a full server saying so (``ServerBusy``; the kernel's link retries within its start timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kernel_env import SIM, JupyterEnv, live_kernel

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.audit.format import OpeningEntry
from cc_kernel.audit.verify import read_log_unverified
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.clients import parse_authorized_clients
from cc_kernel.clientkey import CERT_FILE, KEY_FILE, client_key_dir, load_or_create_client_identity
from cc_kernel.crypto.clientcert import CLIENT_CERT_LIFETIME, make_client_identity, new_client_key
from cc_kernel.errors import EnclaveError, ServerBusy
from cc_kernel.kernel.link import EnclaveLink, LaunchSpec
from cc_kernel.protocol import messages as m
from cc_kernel.testing.enclaves import (
    SupervisorProcess,
    enclave_env,
    raw_tls_client,
    read_until_closed,
    start_supervisor,
    wait_until,
)

pytestmark = pytest.mark.slow


def cc_kernel(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``cc-kernel ARGS`` with ``data_dir`` as its Jupyter data directory (so its client key is that one's)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cc_kernel", *args], capture_output=True, text=True, timeout=timeout,
        env=enclave_env(data_dir), stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def policy(sim_policy_path: Path) -> Policy:
    return load_policy(sim_policy_path.read_bytes(), source=str(sim_policy_path))


@pytest.fixture(scope="module")
def serve(cc_data_dir: Path) -> Iterator[SupervisorProcess]:
    """A server authorising the client key of ``cc_data_dir`` only."""
    with start_supervisor(cc_data_dir, extra_args=["--log-level", "INFO"]) as sup:
        yield sup
    assert "Traceback" not in sup.log()


def _stranger(tmp_path: Path) -> Path:
    """Another user's Jupyter data directory (with its own client key), sharing nothing else."""
    other = tmp_path / "stranger"
    load_or_create_client_identity(client_key_dir(other), comment="stranger@elsewhere")
    return other


# --- client keys ----------------------------------------------------------------------------------------------


def test_client_key_prints_the_line_the_server_owner_adds(cc_data_dir: Path) -> None:
    proc = cc_kernel(cc_data_dir, "client-key")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("cc-kernel-client ") and "\n" not in line
    identity = load_or_create_client_identity(client_key_dir(cc_data_dir))
    assert line == identity.line
    assert parse_authorized_clients(line).is_authorized(identity.spki_sha256)
    assert f"(in {client_key_dir(cc_data_dir)})" in proc.stderr


def test_an_authorised_client_attests(
    cc_data_dir: Path, serve: SupervisorProcess, sim_policy_path: Path
) -> None:
    proc = cc_kernel(cc_data_dir, "attest", str(serve.address), "--policy", str(sim_policy_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"verified {serve.address}")
    fingerprint = load_or_create_client_identity(client_key_dir(cc_data_dir)).spki_sha256.hex()
    wait_until(lambda: f"client key {fingerprint}" in serve.log(), timeout=30, what="the session logs the key")


def test_an_unknown_client_key_is_refused_with_the_line_to_add(
    cc_data_dir: Path, serve: SupervisorProcess, sim_policy_path: Path, tmp_path: Path
) -> None:
    stranger = _stranger(tmp_path)
    proc = cc_kernel(stranger, "attest", str(serve.address), "--policy", str(sim_policy_path))
    assert proc.returncode == 2, proc.stderr
    line = load_or_create_client_identity(client_key_dir(stranger)).line
    assert proc.stderr == ("cc-kernel: the enclave server did not accept this client key; ask its owner to add:\n"
                           f"{line}\n")
    wait_until(lambda: "session ended: ClientNotAuthorized: client refused at the TLS handshake" in serve.log(),
               timeout=30, what="the refusal in the server's log")


def test_a_client_without_a_key_is_refused(
    cc_data_dir: Path, serve: SupervisorProcess, sim_policy_path: Path
) -> None:
    proc = cc_kernel(cc_data_dir, "attest", str(serve.address), "--policy", str(sim_policy_path), "--no-client-key")
    assert proc.returncode == 2, proc.stderr
    assert "the enclave server requires a client key and none was presented" in proc.stderr
    assert "`cc-kernel client-key`" in proc.stderr
    wait_until(lambda: "peer did not return a certificate" in serve.log(), timeout=30, what="the refusal logged")


def test_the_kernel_link_says_its_key_was_refused(
    serve: SupervisorProcess, policy: Policy, sim_anchors: TrustAnchors, tmp_path: Path
) -> None:
    stranger = _stranger(tmp_path)
    link = EnclaveLink(LaunchSpec(address=serve.address, client_key_dir=client_key_dir(stranger)), policy=policy,
                       simulation_anchors=sim_anchors, on_output=lambda msg: None, on_closed=lambda reason: None)
    with pytest.raises(EnclaveError) as info:
        asyncio.run(link.start(timeout=30))
    line = load_or_create_client_identity(client_key_dir(stranger)).line
    assert str(info.value) == f"the enclave server did not accept this client key; ask its owner to add:\n{line}"


def test_unsafe_serve_any_client_serves_anyone_and_says_so(
    cc_data_dir: Path, sim_policy_path: Path
) -> None:
    with start_supervisor(cc_data_dir, clients="any", extra_args=["--log-level", "INFO"]) as sup:
        assert "UNSAFE: serving ANY client (--unsafe-serve-any-client): no client key is checked" in sup.stdout()
        proc = cc_kernel(cc_data_dir, "attest", str(sup.address), "--policy", str(sim_policy_path),
                         "--no-client-key")
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: "none (local mode, or a server that serves any client)" in sup.log(), timeout=30,
                   what="the session's log line")
        log = sup.log()
    assert "UNSAFE: --unsafe-serve-any-client: anyone who can reach" in log
    assert "UNSAFE: serving any client (--unsafe-serve-any-client): no client key is checked" in log


# --- refusing to start ------------------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_authorised_clients(cc_data_dir: Path, tmp_path: Path) -> None:
    proc = cc_kernel(cc_data_dir, "enclave", "serve", "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    assert proc.stderr.startswith("cc-kernel: refusing to start: no authorised client keys (no "
                                  "--authorized-clients FILE, and /etc/cc-kernel/authorized_clients does not exist)")
    assert "run `cc-kernel client-key` and add the line it prints" in proc.stderr
    assert "--unsafe-serve-any-client" in proc.stderr

    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    proc = cc_kernel(cc_data_dir, "enclave", "serve", "--listen", "127.0.0.1:0", "--authorized-clients", str(empty))
    assert proc.returncode == 2
    assert f"cc-kernel: refusing to start: {empty} lists no client key" in proc.stderr

    bad = tmp_path / "bad"
    bad.write_text("# ok\n\ncc-kernel-client !!!\n")
    proc = cc_kernel(cc_data_dir, "enclave", "serve", "--listen", "127.0.0.1:0", "--authorized-clients", str(bad))
    assert proc.returncode == 2
    assert proc.stderr == f"cc-kernel: {bad} line 3: the certificate is not valid base64\n"

    both = cc_kernel(cc_data_dir, "enclave", "serve", "--listen", "127.0.0.1:0", "--authorized-clients", str(bad),
                     "--unsafe-serve-any-client")
    assert both.returncode == 2
    assert "contradict each other" in both.stderr


def test_an_enclave_process_refuses_to_listen_without_client_keys(cc_data_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cc_kernel.enclave", "--listen", f"unix:{tmp_path / 's'}"], capture_output=True,
        text=True, timeout=60, env=enclave_env(cc_data_dir), stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "--control-fd and --listen need --authorized-clients FILE (or --unsafe-serve-any-client)" in proc.stderr


# --- bounds on clients that do not attest -------------------------------------------------------------------


def test_a_huge_frame_header_before_attesting_is_cut_off(serve: SupervisorProcess, cc_data_dir: Path) -> None:
    """64 MiB is a valid frame size once attested; before, the enclave refuses it as soon as its header
    arrives instead of buffering for it."""
    identity = load_or_create_client_identity(client_key_dir(cc_data_dir))
    with raw_tls_client(serve.address, client_identity=identity) as tls:
        tls.sendall((64 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * 1024)
        plaintext, how = read_until_closed(tls, timeout=30)
    assert plaintext == b"" and (how in ("eof", "reset") or how.startswith("tls-error")), how
    wait_until(lambda: "frame length 67108864 exceeds the limit of 65536" in serve.log(), timeout=30,
               what="the reason in the server's log")


def test_a_silent_client_is_dropped_after_the_pre_attestation_timeout(cc_data_dir: Path) -> None:
    identity = load_or_create_client_identity(client_key_dir(cc_data_dir))
    with start_supervisor(cc_data_dir, extra_args=["--log-level", "INFO", "--pre-attestation-timeout", "1.0"]) as sup:
        with raw_tls_client(sup.address, client_identity=identity) as tls:
            plaintext, how = read_until_closed(tls, timeout=30)  # we send nothing at all
        assert plaintext == b"", how
        wait_until(lambda: "the client sent no attestation request within 1.0 s of connecting" in sup.log(),
                   timeout=30, what="the reason in the server's log")


# --- a full server ----------------------------------------------------------------------------------------------


async def _attest(sup: SupervisorProcess, policy: Policy, sim: TrustAnchors) -> AttestedChannel:
    return await connect_attested(sup.address, policy=policy, anchors=hardware_anchors(), simulation_anchors=sim,
                                  client_identity=sup.client_identity)


def test_a_full_server_says_it_is_busy(cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors,
                                       sim_policy_path: Path) -> None:
    with start_supervisor(cc_data_dir, extra_args=["--max-sessions", "1"]) as sup:

        async def main() -> tuple[ServerBusy, ServerBusy]:
            first = await _attest(sup, policy, sim_anchors)
            try:
                with pytest.raises(ServerBusy) as second:
                    await _attest(sup, policy, sim_anchors)
                with pytest.raises(ServerBusy) as third:
                    await _attest(sup, policy, sim_anchors)
                proc = await asyncio.to_thread(
                    cc_kernel, cc_data_dir, "attest", str(sup.address), "--policy", str(sim_policy_path))
                assert proc.returncode == 2, proc.stderr
                assert proc.stderr == (f"cc-kernel: the enclave server at {sup.address} is busy: 1 of 1 sessions "
                                       "are active; try again later\n")
            finally:
                await first.channel.aclose()
            return second.value, third.value

        second, third = asyncio.run(main())
        log = sup.log()
    assert (second.active, second.maximum) == (1, 1) == (third.active, third.maximum)
    assert "sessions are active" in str(second)
    assert log.count("sessions active (--max-sessions)") >= 3


def test_the_kernel_retries_a_busy_server_until_a_session_ends(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    with start_supervisor(cc_data_dir, extra_args=["--max-sessions", "1"]) as sup:

        async def main() -> None:
            first = await _attest(sup, policy, sim_anchors)
            link = EnclaveLink(LaunchSpec(address=sup.address, client_key_dir=client_key_dir(cc_data_dir)),
                               policy=policy, simulation_anchors=sim_anchors, on_output=lambda msg: None,
                               on_closed=lambda reason: None)
            starting = asyncio.ensure_future(link.start(timeout=60))
            # wait until the link was told "busy" at least once, then end the first session
            await asyncio.to_thread(wait_until, lambda: "refusing" in sup.log(), timeout=30,
                                    what="the server refusing the second client")
            assert not starting.done()
            await first.channel.aclose()
            attested = await starting
            assert attested.peer.result.status == "simulation"
            await link.shutdown()

        asyncio.run(main())


def test_the_kernel_gives_up_on_a_busy_server_within_its_timeout(
    cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    with start_supervisor(cc_data_dir, extra_args=["--max-sessions", "1"]) as sup:

        async def main() -> EnclaveError:
            first = await _attest(sup, policy, sim_anchors)
            try:
                link = EnclaveLink(LaunchSpec(address=sup.address, client_key_dir=client_key_dir(cc_data_dir)),
                                   policy=policy, simulation_anchors=sim_anchors, on_output=lambda msg: None,
                                   on_closed=lambda reason: None)
                with pytest.raises(EnclaveError) as info:
                    await link.start(timeout=2.0)
                return info.value
            finally:
                await first.channel.aclose()

        error = asyncio.run(main())
    assert isinstance(error.__cause__, ServerBusy)
    assert str(error) == (f"the enclave server at {sup.address} is busy: 1 of 1 sessions are active; try again "
                          "later (still busy after retrying for the kernel's start timeout)")


def test_busy_line_is_sent_before_the_close(cc_data_dir: Path, policy: Policy, sim_anchors: TrustAnchors) -> None:
    """The plain bytes a busy server sends (what any client, TLS or not, receives)."""
    with start_supervisor(cc_data_dir, extra_args=["--max-sessions", "1"]) as sup:

        async def main() -> bytes:
            first = await _attest(sup, policy, sim_anchors)
            try:
                with socket.create_connection((sup.address.host, sup.address.port), timeout=30) as raw:
                    received = b""
                    while chunk := await asyncio.to_thread(raw.recv, 4096):
                        received += chunk
                return received
            finally:
                await first.channel.aclose()

        assert asyncio.run(main()) == b"CC-KERNEL-BUSY active=1 max=1\n"


def test_a_session_after_attesting_accepts_large_frames(
    serve: SupervisorProcess, policy: Policy, sim_anchors: TrustAnchors
) -> None:
    """The pre-attestation bound does not limit a session: a 1 MiB cell runs once attested."""

    async def main() -> str:
        attested = await _attest(serve, policy, sim_anchors)
        try:
            await attested.channel.send(m.AuditOff())  # the enclave runs nothing before AuditStart or AuditOff
            code = "x = '" + "a" * (1024 * 1024) + "'\nprint(len(x))"
            await attested.channel.send(m.ExecuteRequest(
                req_id=1, code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                execution_count=1, cell_id=None, kind="cell",
            ))
            out = ""
            async with asyncio.timeout(60):
                while True:
                    msg = await attested.channel.receive()
                    if isinstance(msg, m.Stream):
                        out += msg.text
                    if isinstance(msg, m.ExecuteReply):
                        return out
        finally:
            await attested.channel.aclose()

    assert asyncio.run(main()) == f"{1024 * 1024}\n"


# --- the kernel's session log records its client key ------------------------------------------------------------


def test_a_remote_kernel_session_log_records_its_client_key(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    """The real simulation kernel in remote mode presents the data directory's client key to a server that
    authorises it, and writes that key's fingerprint into its log's opening entry; a local-mode kernel writes
    nil."""
    identity = load_or_create_client_identity(client_key_dir(jupyter_env.data_dir))
    fingerprints = []
    for remote in (True, False):
        audit_dir = tmp_path / ("remote" if remote else "local")
        env = {"CC_KERNEL_AUDIT_DIR": str(audit_dir)}
        with contextlib.ExitStack() as stack:
            if remote:
                sup = stack.enter_context(start_supervisor(jupyter_env.data_dir))
                assert sup.client_identity == identity
                env["CC_KERNEL_ENCLAVE"] = str(sup.address)
            with live_kernel(SIM, env=jupyter_env.kernel_env(**env)) as kernel:
                kernel.ok("x = 1", timeout=120)
        (log,) = audit_dir.glob("session-*.cclog")
        opening = read_log_unverified(log.read_bytes()).entries[0].entry
        assert isinstance(opening, OpeningEntry) and opening.client_key_recorded
        fingerprints.append(opening.client_key_sha256)
    assert fingerprints == [identity.spki_sha256, None]


def test_an_expired_authorised_key_is_refused(cc_data_dir: Path, sim_policy_path: Path, tmp_path: Path) -> None:
    """Listed, but expired: OpenSSL refuses it at the handshake (the listing does not make it valid)."""
    old = tmp_path / "old-user"
    directory = client_key_dir(old)
    directory.mkdir(parents=True, mode=0o700)
    then = datetime.now(UTC) - CLIENT_CERT_LIFETIME - timedelta(days=1)
    expired = make_client_identity(new_client_key(), now=then, name="old@machine")
    (directory / KEY_FILE).write_bytes(expired.key_pem)
    (directory / CERT_FILE).write_bytes(expired.cert_pem)
    line = load_or_create_client_identity(directory).line
    listed = tmp_path / "authorized_clients"
    listed.write_text(line + "\n")
    with start_supervisor(cc_data_dir, clients=listed, extra_args=["--log-level", "INFO"]) as sup:
        proc = cc_kernel(old, "attest", str(sup.address), "--policy", str(sim_policy_path))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == ("cc-kernel: the enclave server did not accept this client key; ask its owner to "
                               f"add:\n{line}\n")
        wait_until(lambda: "certificate has expired" in sup.log(), timeout=30, what="the refusal in the log")
    shown = cc_kernel(old, "client-key")
    assert shown.returncode == 0 and shown.stdout == line + "\n"
    assert "cc-kernel: warning: this client key's certificate expired on " in shown.stderr
    assert "run this command again for a new key" in shown.stderr
    assert "expired" not in cc_kernel(cc_data_dir, "client-key").stderr
