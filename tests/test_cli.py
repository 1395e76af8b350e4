"""The ``cc-kernel`` command, run as a user would (``python -m cc_kernel ...`` in a subprocess).

Exit codes: 0 success / verified, 1 verification refused, 2 usage, input or connection error; errors are one
clear line on stderr, never a traceback. Every run uses a private Jupyter data directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.policy import load_policy
from cc_kernel.channel.client import connect_attested
from cc_kernel.errors import BrokenChannelError
from cc_kernel.measure import enclave_measurement
from cc_kernel.simstore import load_simulation_anchors, simulation_dir
from cc_kernel.testing.enclaves import SupervisorProcess, enclave_env, start_supervisor
from cc_kernel.testing.waiting import wait_until

pytestmark = pytest.mark.slow


def cc_kernel(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``cc-kernel ARGS``; stderr must never hold a traceback, whatever the outcome."""
    proc = subprocess.run(
        [sys.executable, "-m", "cc_kernel", *args], capture_output=True, text=True, timeout=timeout,
        env=enclave_env(data_dir), stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def serve(cc_data_dir: Path) -> Iterator[SupervisorProcess]:
    """``cc-kernel enclave serve --listen 127.0.0.1:0``, its printed address parsed."""
    with start_supervisor(cc_data_dir) as sup:
        yield sup
    assert "Traceback" not in sup.log()


def test_policy_init_writes_a_loadable_pinned_policy_and_refuses_to_overwrite(
    cc_data_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "conf" / "policy.toml"
    first = cc_kernel(cc_data_dir, "policy", "init", "--simulation", "-o", str(path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"wrote {path}"
    text = path.read_text()
    policy = load_policy(text, source=str(path))
    assert policy.unsafe_allow_simulation
    assert policy.platforms == ("simulation",)
    assert enclave_measurement().hex() in text

    path.write_text("# keep me\n")
    again = cc_kernel(cc_data_dir, "policy", "init", "--simulation", "-o", str(path))
    assert again.returncode == 2
    assert f"{path} exists; pass --force to overwrite it" in again.stderr
    assert path.read_text() == "# keep me\n"

    forced = cc_kernel(cc_data_dir, "policy", "init", "--simulation", "-o", str(path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "# keep me" not in path.read_text()
    assert load_policy(path.read_text()).unsafe_allow_simulation


def test_policy_init_without_a_choice_is_a_usage_error(cc_data_dir: Path, tmp_path: Path) -> None:
    proc = cc_kernel(cc_data_dir, "policy", "init", "-o", str(tmp_path / "p.toml"))
    assert proc.returncode == 2
    assert "choose what to pin: --simulation" in proc.stderr
    assert not (tmp_path / "p.toml").exists()


def test_measure_prints_the_measurement_and_its_manifest(cc_data_dir: Path) -> None:
    plain = cc_kernel(cc_data_dir, "measure")
    assert plain.returncode == 0
    assert re.fullmatch(r"[0-9a-f]{96}\n", plain.stdout)
    assert plain.stdout.strip() == enclave_measurement().hex()

    as_json = cc_kernel(cc_data_dir, "measure", "--json")
    assert as_json.returncode == 0
    doc = json.loads(as_json.stdout)
    assert doc["measurement"] == plain.stdout.strip()
    assert doc["python"] == f"{platform.python_implementation()} {platform.python_version()}"
    names = [entry["name"] for entry in doc["manifest"]]
    assert "cc_kernel/enclave/monitor.py" in names and "cc_kernel/worker/shell.py" in names
    assert not any(n.startswith(("cc_kernel/kernel/", "cc_kernel/testing/")) for n in names)
    assert all(re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) for entry in doc["manifest"])


def test_policy_check_accepts_a_good_policy_and_names_a_typo(
    cc_data_dir: Path, sim_policy_path: Path, tmp_path: Path
) -> None:
    good = cc_kernel(cc_data_dir, "policy", "check", str(sim_policy_path))
    assert good.returncode == 0, good.stderr
    assert f"{sim_policy_path}: valid policy, sha256 " in good.stdout
    assert "weakenings in force: unsafe_allow_simulation" in good.stdout

    typo = tmp_path / "typo.toml"
    typo.write_text(sim_policy_path.read_text().replace("\nvmpl = 0\n", "\nvmpl_level = 0\n"))
    bad = cc_kernel(cc_data_dir, "policy", "check", str(typo))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert 'unknown key "vmpl_level" in [[accept]] #1' in bad.stderr

    missing = cc_kernel(cc_data_dir, "policy", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "cannot read policy file" in missing.stderr


def test_serve_prints_its_address(serve: SupervisorProcess) -> None:
    line = serve.stdout().splitlines()[0]
    assert line == f"cc-kernel enclave serving on {serve.address} — SIMULATED TEE (not hardware-protected)"
    assert serve.address.kind == "tcp" and serve.address.host == "127.0.0.1" and serve.address.port > 0


def test_attest_with_the_pinned_policy_verifies(
    cc_data_dir: Path, serve: SupervisorProcess, sim_policy_path: Path
) -> None:
    text = cc_kernel(cc_data_dir, "attest", str(serve.address), "--policy", str(sim_policy_path))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"verified {serve.address}\n")
    assert "SIMULATION - not hardware-protected" in text.stdout
    assert f"Measurement: {enclave_measurement().hex()}" in text.stdout
    assert "Sandbox:     " in text.stdout and "landlock" in text.stdout and "seccomp" in text.stdout

    as_json = cc_kernel(cc_data_dir, "attest", str(serve.address), "--policy", str(sim_policy_path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["verified"] is True
    assert doc["status"] == "simulation"
    assert doc["platform"] == "simulation"
    assert doc["measurement"] == enclave_measurement().hex()
    assert doc["debug"] is False
    assert set(doc["timings_ms"]) == {"tls_handshake", "evidence", "verify", "total"}
    assert doc["protections"]["landlock"]["in_force"] is True and doc["protections"]["seccomp"]["in_force"] is True


def test_attest_without_a_policy_refuses_the_simulated_enclave(cc_data_dir: Path, serve: SupervisorProcess) -> None:
    proc = cc_kernel(cc_data_dir, "attest", str(serve.address))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "attestation REFUSED: [snp.anchor]" in proc.stderr
    assert "SIMULATED TEE" in proc.stderr

    as_json = cc_kernel(cc_data_dir, "attest", str(serve.address), "--json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["verified"] is False
    assert [f["check"] for f in doc["failures"]] == ["snp.anchor"]


def test_attest_with_another_measurement_pinned_exits_1_and_lists_the_clause(
    cc_data_dir: Path, serve: SupervisorProcess, sim_policy_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(sim_policy_path.read_text().replace(enclave_measurement().hex(), "ab" * 48))
    proc = cc_kernel(cc_data_dir, "attest", str(serve.address), "--policy", str(other), "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False
    assert [f["check"] for f in doc["failures"]] == ["policy.measurement"]
    assert doc["failures"][0]["got"] == enclave_measurement().hex()
    assert "attestation REFUSED by policy" in proc.stderr
    assert "re-pin its measurement" in proc.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_attest_to_a_closed_port_is_a_connection_error(cc_data_dir: Path, sim_policy_path: Path) -> None:
    port = _closed_port()
    proc = cc_kernel(cc_data_dir, "attest", f"127.0.0.1:{port}", "--policy", str(sim_policy_path))
    assert proc.returncode == 2
    assert f"cannot connect to tcp://127.0.0.1:{port}" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one clear line


@pytest.mark.parametrize("address", ["not an address", "tcp://host:99999", "unix:"])
def test_attest_to_a_garbage_address_is_a_usage_error(cc_data_dir: Path, address: str) -> None:
    proc = cc_kernel(cc_data_dir, "attest", address)
    assert proc.returncode == 2
    assert proc.stderr.startswith("cc-kernel: ")
    assert repr(address) in proc.stderr


def test_serve_rejects_an_unknown_fault_and_a_bad_address(cc_data_dir: Path) -> None:
    fault = cc_kernel(cc_data_dir, "enclave", "serve", "--listen", "127.0.0.1:0", "--fault", "meltdown")
    assert fault.returncode == 2
    assert "unknown fault 'meltdown'; known: debug, old-tcb, swapped-key, replay" in fault.stderr
    address = cc_kernel(cc_data_dir, "enclave", "serve", "--listen", "nowhere")
    assert address.returncode == 2
    assert "cannot parse address 'nowhere'" in address.stderr


def test_usage_errors_exit_2(cc_data_dir: Path) -> None:
    proc = cc_kernel(cc_data_dir, "attest")
    assert proc.returncode == 2
    assert "cc-kernel: error: the following arguments are required: address" in proc.stderr


def test_serve_stops_every_enclave_it_started_on_sigterm(cc_data_dir: Path, sim_policy_path: Path) -> None:
    """``kill PID`` (SIGTERM: systemd, docker stop) is the usual way to stop a server; it must not leave enclave
    processes (which hold user data) running: neither the warm spare nor a live session."""
    policy = load_policy(sim_policy_path.read_bytes())
    with start_supervisor(cc_data_dir) as sup:

        async def main() -> int:
            attested = await connect_attested(
                sup.address, policy=policy, anchors=hardware_anchors(),
                simulation_anchors=load_simulation_anchors(simulation_dir(cc_data_dir)),
                client_identity=sup.client_identity,
            )
            try:
                wait_until(lambda: len(sup.enclave_pids()) == 2, timeout=30, what="a session and a new spare")
                pids = sup.enclave_pids()
                os.kill(sup.process.pid, signal.SIGTERM)
                status = sup.process.wait(15)
                wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15, what="enclaves stopped")
                with pytest.raises(BrokenChannelError):
                    async with asyncio.timeout(10):
                        await attested.channel.receive()
            finally:
                await attested.channel.aclose()
            return status

        assert asyncio.run(main()) == 0
    assert "Traceback" not in sup.log()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
