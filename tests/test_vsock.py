"""AF_VSOCK transport (``vsock://CID:PORT``): how AWS Nitro enclaves reach their parent instance.

Address parsing runs everywhere. Listening is real (a bound AF_VSOCK socket sends nothing) wherever the kernel
lets us create one. A connection needs the kernel's vsock loopback transport (CID 1): the probe below reads the
kernel configuration instead of trying a connection, because without that transport a connection to CID 1 is
sent to the hypervisor. Where loopback is missing, the end-to-end tests are skipped with the probe's finding.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.policy import load_policy
from cc_kernel.channel.client import connect_attested
from cc_kernel.channel.transport import (
    VMADDR_CID_ANY,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    Address,
    listen,
    open_client,
    parse_address,
)
from cc_kernel.cli import main as cli_main
from cc_kernel.errors import ConfigError, ConnectError
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.testing.enclaves import SupervisorProcess, start_supervisor

SLOW = pytest.mark.slow


# --- probes: what this machine's kernel offers -----------------------------------------------------------------


def _vsock_socket_probe() -> str | None:
    """None if an AF_VSOCK stream socket can be created here, else why not."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return "socket.AF_VSOCK does not exist in this Python (not Linux)"
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as exc:
        return f"socket(AF_VSOCK, SOCK_STREAM) failed: {exc}"
    return None


def _kernel_config_option(name: str) -> tuple[str | None, str]:
    """(value of CONFIG_<name> as "y"/"m"/"n", where it was read) from the running kernel's configuration."""
    candidates = [Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")]
    for path in candidates:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1], str(path)
            if line == f"# {name} is not set":
                return "n", str(path)
        return "n", str(path)
    return None, " or ".join(str(p) for p in candidates) + " (neither readable)"


def _vsock_loopback_probe() -> str | None:
    """None if connections to VMADDR_CID_LOCAL (1) stay on this machine, else the probe's finding."""
    reason = _vsock_socket_probe()
    if reason is not None:
        return reason
    if Path("/sys/module/vsock_loopback").exists():
        return None
    value, where = _kernel_config_option("CONFIG_VSOCKETS_LOOPBACK")
    if value == "y":
        return None
    if value == "m":
        return (f"AF_VSOCK sockets work, but CONFIG_VSOCKETS_LOOPBACK=m in {where} and the vsock_loopback module "
                "is not loaded (modprobe vsock_loopback)")
    if value == "n":
        return (f"AF_VSOCK sockets work, but the kernel has no vsock loopback transport: CONFIG_VSOCKETS_LOOPBACK "
                f"is not set in {where} and /sys/module/vsock_loopback does not exist, so CID 1 is unreachable")
    return (f"AF_VSOCK sockets work, but whether the kernel has a vsock loopback transport is unknown ({where}; "
            "no /sys/module/vsock_loopback); not probing by connecting, since without it a connection to CID 1 "
            "goes to the hypervisor")


VSOCK_SOCKET_MISSING = _vsock_socket_probe()
VSOCK_LOOPBACK_MISSING = _vsock_loopback_probe()
needs_vsock_socket = pytest.mark.skipif(VSOCK_SOCKET_MISSING is not None, reason=f"{VSOCK_SOCKET_MISSING}")
needs_vsock_loopback = pytest.mark.skipif(VSOCK_LOOPBACK_MISSING is not None, reason=f"{VSOCK_LOOPBACK_MISSING}")


def _free_vsock_port() -> int:
    """A port the kernel just handed out for CID any (bound to VMADDR_PORT_ANY, then released)."""
    sock = listen(Address("vsock", cid=VMADDR_CID_ANY, port=VMADDR_PORT_ANY))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


# --- parsing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cid", "port"),
    [
        ("vsock://16:5005", 16, 5005),
        ("vsock://any:5005", VMADDR_CID_ANY, 5005),
        ("vsock://ANY:7800", VMADDR_CID_ANY, 7800),
        ("vsock://4294967295:1", VMADDR_CID_ANY, 1),
        ("vsock://1:0", VMADDR_CID_LOCAL, 0),
        ("vsock://3:4294967294", 3, 4294967294),
        ("  vsock://0016:5005\n", 16, 5005),
    ],
)
def test_vsock_addresses_parse(text: str, cid: int, port: int) -> None:
    address = parse_address(text)
    assert address == Address("vsock", cid=cid, port=port)
    assert parse_address(str(address)) == address  # printed addresses parse back (serve prints its address)


def test_vsock_addresses_print_any_by_name() -> None:
    assert str(parse_address("vsock://any:5005")) == "vsock://any:5005"
    assert str(parse_address("vsock://4294967295:5005")) == "vsock://any:5005"
    assert str(parse_address("vsock://16:5005")) == "vsock://16:5005"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vsock:16:5005", "cannot parse vsock address 'vsock:16:5005': use vsock://CID:PORT"),
        ("vsock://16", "vsock address 'vsock://16' needs a CID and a port"),
        ("vsock://:5005", "vsock address 'vsock://:5005' needs a CID and a port"),
        ("vsock://parent:5005", "vsock CID 'parent' in 'vsock://parent:5005' is not a number from 0 to 4294967295"),
        ("vsock://-1:5005", "vsock CID '-1' in 'vsock://-1:5005' is not a number"),
        ("vsock://4294967296:5005", "vsock CID '4294967296'"),
        ("vsock://16:port", "vsock port 'port' in 'vsock://16:port' is not a number from 0 to 4294967294"),
        ("vsock://16:4294967295", "vsock port '4294967295'"),
        ("vsock://16:-5", "vsock port '-5'"),
        ("vsock://16:\u00b2", "vsock port"),  # a digit to str.isdigit(), not to int()
        ("vsock://\u0661\u0666:5005", "vsock CID"),
    ],
)
def test_bad_vsock_addresses_are_config_errors_that_show_the_form(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert message in str(info.value)
    assert "vsock://16:5005 to connect or vsock://any:5005 to listen" in str(info.value)


def test_other_address_forms_are_unchanged() -> None:
    assert parse_address("tcp://example.org:7800") == Address("tcp", host="example.org", port=7800)
    assert parse_address("127.0.0.1:7800") == Address("tcp", host="127.0.0.1", port=7800)
    assert parse_address("unix:/run/cc.sock") == Address("unix", path="/run/cc.sock")
    assert str(Address("tcp", host="h", port=1)) == "tcp://h:1"


# --- listening and connecting ------------------------------------------------------------------------------------


@needs_vsock_socket
def test_listen_binds_cid_any_and_the_port() -> None:
    port = _free_vsock_port()
    sock = listen(parse_address(f"vsock://any:{port}"))
    try:
        assert sock.family == socket.AF_VSOCK
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockname() == (VMADDR_CID_ANY, port)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with pytest.raises(ConnectError, match=rf"cannot listen on vsock://any:{port}: .*in use"):
            listen(parse_address(f"vsock://any:{port}"))
    finally:
        sock.close()


def test_connecting_to_cid_any_is_refused() -> None:
    async def main() -> None:
        await open_client(parse_address("vsock://any:5005"), Connection(Role.KERNEL))

    with pytest.raises(ConnectError, match=r"cannot connect to vsock://any:5005: 'any' is for listening; connect "
                                           r"to the enclave's CID \(e\.g\. vsock://16:5005\)"):
        asyncio.run(main())


def test_without_af_vsock_listen_and_connect_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_VSOCK", raising=False)
    with pytest.raises(ConnectError, match=r"cannot listen on vsock://any:5005: this system has no AF_VSOCK"):
        listen(parse_address("vsock://any:5005"))

    async def main() -> None:
        await open_client(parse_address("vsock://16:5005"), Connection(Role.KERNEL))

    with pytest.raises(ConnectError, match=r"cannot connect to vsock://16:5005: this system has no AF_VSOCK"):
        asyncio.run(main())


def test_cli_attest_to_cid_any_or_a_bad_vsock_address_is_one_usage_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["attest", "vsock://any:5005"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cc-kernel: cannot connect to vsock://any:5005: 'any' is for listening")
    assert err.count("\n") == 1
    assert cli_main(["attest", "vsock://16"]) == 2
    assert "vsock address 'vsock://16' needs a CID and a port" in capsys.readouterr().err


@SLOW
@needs_vsock_socket
def test_enclave_serve_listens_on_vsock(cc_data_dir: Path) -> None:
    """``cc-kernel enclave serve --listen vsock://any:PORT`` (what a Nitro enclave runs) binds and says where."""
    port = _free_vsock_port()
    with start_supervisor(cc_data_dir, listen=f"vsock://any:{port}") as sup:
        assert sup.address == Address("vsock", cid=VMADDR_CID_ANY, port=port)
        line = sup.stdout().splitlines()[0]
        assert line == f"cc-kernel enclave serving on vsock://any:{port} — SIMULATED TEE (not hardware-protected)"
    assert "Traceback" not in sup.log()


# --- end to end over vsock loopback (CID 1) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def vsock_supervisor(cc_data_dir: Path) -> Iterator[SupervisorProcess]:
    with start_supervisor(cc_data_dir, listen=f"vsock://any:{_free_vsock_port()}") as sup:
        yield sup
    assert "Traceback" not in sup.log()


@SLOW
@needs_vsock_loopback
def test_attest_and_run_a_cell_over_vsock_loopback(
    vsock_supervisor: SupervisorProcess, sim_policy_path: Path, sim_anchors: TrustAnchors
) -> None:
    target = parse_address(f"vsock://{VMADDR_CID_LOCAL}:{vsock_supervisor.address.port}")
    policy = load_policy(sim_policy_path.read_bytes(), source=str(sim_policy_path))

    async def main() -> None:
        attested = await connect_attested(
            target, policy=policy, anchors=hardware_anchors(), simulation_anchors=sim_anchors,
            client_identity=vsock_supervisor.client_identity,
        )
        try:
            assert attested.peer.result.status == "simulation"
            assert attested.peer.result.measurement == enclave_measurement()
            await attested.channel.send(m.ExecuteRequest(
                req_id=1, code="print(6 * 7)", silent=False, store_history=True, user_expressions={},
                allow_stdin=False, execution_count=1, cell_id=None, kind="cell",
            ))
            out: list[str] = []
            async with asyncio.timeout(30):
                while True:
                    msg = await attested.channel.receive()
                    if isinstance(msg, m.Stream):
                        out.append(msg.text)
                    elif isinstance(msg, m.ExecuteReply):
                        assert msg.status == "ok"
                        break
            assert "".join(out) == "42\n"
        finally:
            await attested.channel.aclose()

    asyncio.run(main())


@SLOW
@needs_vsock_loopback
def test_cli_attest_over_vsock_loopback(
    vsock_supervisor: SupervisorProcess, sim_policy_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, cc_data_dir: Path,
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(cc_data_dir))  # the simulated anchors of this test session
    target = f"vsock://1:{vsock_supervisor.address.port}"
    assert cli_main(["attest", target, "--policy", str(sim_policy_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"verified {target}\n")
    assert "SIMULATION - not hardware-protected" in out

