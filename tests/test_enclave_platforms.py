"""Starting enclaves for a platform: ``cc-kernel enclave serve --platform {simulation,hardware}`` and the
one-session ``python -m cc_kernel.enclave --listen ADDR`` mode (Gramine-SGX: one process is the whole enclave).

This machine has no TEE: ``--platform hardware`` must fail at once, clearly, with exit status 3 and the list of
what was looked for — and never fall back to the simulation. The argument plumbing into the enclave processes
is checked in-process with a stand-in provider; the evidence providers themselves are tested against fakes of
their interfaces in tests/test_providers_*.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cc_kernel import cli
from cc_kernel.clientkey import client_key_dir, load_or_create_client_identity
from cc_kernel.enclave.providers import PROVIDER_NAMES
from cc_kernel.testing.enclaves import enclave_env
from cc_kernel.testing.waiting import wait_until

TEE_INTERFACES = (
    Path("/sys/kernel/config/tsm/report"),
    Path("/dev/sev-guest"),
    Path("/dev/attestation"),
    Path("/dev/nsm"),
)
no_tee_here = pytest.mark.skipif(
    any(p.exists() for p in TEE_INTERFACES), reason="this machine has a TEE interface; the test needs none"
)


def run(args: list[str], data_dir: Path, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=enclave_env(data_dir),
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# --- cc-kernel enclave serve --platform hardware ---------------------------------------------------------------


@no_tee_here
def test_serve_hardware_without_a_tee_exits_3_and_lists_what_it_looked_for(cc_data_dir: Path) -> None:
    proc = run(["-m", "cc_kernel", "enclave", "serve", "--platform", "hardware", "--listen", "127.0.0.1:0"],
               cc_data_dir)
    assert proc.returncode == 3
    assert proc.stderr.startswith("cc-kernel: cannot serve hardware enclaves: no TEE evidence provider works")
    for path in ("/sys/kernel/config/tsm/report", "/dev/sev-guest", "/dev/attestation/attestation_type", "/dev/nsm"):
        assert path in proc.stderr
    assert "serving on" not in proc.stdout  # it never listened


@no_tee_here
def test_a_forced_provider_that_is_not_usable_is_named(cc_data_dir: Path) -> None:
    proc = run(["-m", "cc_kernel", "enclave", "serve", "--platform", "hardware", "--evidence-provider", "nitro-nsm",
                "--listen", "127.0.0.1:0"], cc_data_dir)
    assert proc.returncode == 3
    assert "nitro-nsm" in proc.stderr and "/dev/nsm" in proc.stderr
    assert "configfs" not in proc.stderr  # a forced provider is the only one tried


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--platform", "hardware", "--fault", "debug"], "--fault and --sim-dir belong to the simulated TEE"),
        (["--platform", "hardware", "--sim-dir", "/tmp/x"], "--fault and --sim-dir belong to the simulated TEE"),
        (["--evidence-provider", "gramine"], "--evidence-provider chooses a hardware evidence provider"),
        (["--platform", "hardware", "--evidence-provider", "sgx"], "invalid choice: 'sgx'"),
        (["--platform", "tdx"], "invalid choice: 'tdx'"),
    ],
    ids=["fault", "sim-dir", "provider-without-hardware", "unknown-provider", "unknown-platform"],
)
def test_serve_usage_errors(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        code = cli.main(["enclave", "serve", "--listen", "127.0.0.1:0", *extra])
        raise SystemExit(code)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _keep_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``enclave serve`` installs a SIGTERM handler; in-process runs must not leave it in the test process."""
    import signal

    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)


def _record_argv(seen: list[list[str]]) -> object:
    def serve_forever(self: object) -> None:
        seen.append(self.worker_argv(7))  # type: ignore[attr-defined]
        self.close()  # type: ignore[attr-defined]

    return serve_forever


class _StandInProvider:
    """Stands in for a hardware provider so the plumbing can be checked on a machine without a TEE."""

    name = "stand-in"

    def collect(self, report_data: bytes, *, audit_pub: bytes, session_id: bytes, nonce: bytes) -> object:
        raise AssertionError("the supervisor must not collect evidence itself")


@pytest.mark.parametrize("provider", [None, *PROVIDER_NAMES])
def test_serve_hardware_starts_hardware_enclave_processes(
    provider: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cc_kernel.enclave import evidence, server

    asked: list[str | None] = []

    def detect(preferred: str | None = None) -> _StandInProvider:
        asked.append(preferred)
        return _StandInProvider()

    seen: list[list[str]] = []
    monkeypatch.setattr(evidence, "detect_hardware_source", detect)
    monkeypatch.setattr(server.Supervisor, "serve_forever", _record_argv(seen))
    args = ["enclave", "serve", "--platform", "hardware", "--listen", "127.0.0.1:0", "--unsafe-serve-any-client"]
    if provider is not None:
        args += ["--evidence-provider", provider]
    assert cli.main(args) == 0
    assert asked == [provider]
    (argv,) = seen
    want = ["--platform", "hardware"] + (["--evidence-provider", provider] if provider else [])
    assert argv[argv.index("--platform"):] == want
    assert "--sim-dir" not in argv and "--fault" not in argv
    out = capsys.readouterr().out
    assert "TEE hardware, evidence from stand-in" in out and "SIMULATED" not in out


def test_serve_simulation_says_so_and_starts_simulated_enclaves(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cc_kernel.enclave import server

    seen: list[list[str]] = []
    monkeypatch.setattr(server.Supervisor, "serve_forever", _record_argv(seen))
    assert cli.main(["enclave", "serve", "--listen", "127.0.0.1:0", "--unsafe-serve-any-client"]) == 0
    assert "--platform" not in seen[0]  # the enclave's default is the simulation
    assert "SIMULATED TEE (not hardware-protected)" in capsys.readouterr().out


# --- python -m cc_kernel.enclave ---------------------------------------------------------------------------------


@no_tee_here
def test_a_hardware_enclave_process_without_a_tee_exits_3_before_listening(cc_data_dir: Path, tmp_path: Path) -> None:
    sock = tmp_path / "enclave.sock"
    proc = run(["-m", "cc_kernel.enclave", "--platform", "hardware", "--listen", f"unix:{sock}",
                "--unsafe-serve-any-client"], cc_data_dir)
    assert proc.returncode == 3
    assert "cannot produce evidence: no TEE evidence provider works" in proc.stderr
    assert not sock.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--platform", "hardware", "--fault", "debug"], "--fault and --sim-dir are for the simulated TEE"),
        (["--evidence-provider", "gramine"], "--evidence-provider needs --platform hardware"),
        (["--fd", "5"], "not allowed with argument"),
    ],
    ids=["fault-with-hardware", "provider-without-hardware", "two-modes"],
)
def test_enclave_process_usage_errors(extra: list[str], message: str, cc_data_dir: Path, tmp_path: Path) -> None:
    proc = run(["-m", "cc_kernel.enclave", "--listen", f"unix:{tmp_path / 's'}", "--unsafe-serve-any-client", *extra],
               cc_data_dir)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.slow
def test_listen_mode_serves_exactly_one_attested_session(
    cc_data_dir: Path, sim_policy_path: Path, tmp_path: Path
) -> None:
    sock = tmp_path / "enclave.sock"
    listed = tmp_path / "authorized_clients"  # the key `cc-kernel attest` presents with this data directory
    listed.write_text(load_or_create_client_identity(client_key_dir(cc_data_dir)).line + "\n")
    enclave = subprocess.Popen(
        [sys.executable, "-m", "cc_kernel.enclave", "--listen", f"unix:{sock}", "--log-level", "INFO",
         "--authorized-clients", str(listed)],
        env=enclave_env(cc_data_dir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(sock.exists, timeout=60, what="the enclave to listen")
        assert sock.stat().st_mode & 0o777 == 0o600
        first = run(["-m", "cc_kernel", "attest", f"unix:{sock}", "--policy", str(sim_policy_path), "--json"],
                    cc_data_dir)
        assert first.returncode == 0, first.stderr
        claims = json.loads(first.stdout)
        assert claims["platform"] == "simulation" and claims["status"] == "simulation"
        assert enclave.wait(timeout=30) == 0  # one session, then the process is gone
        second = run(["-m", "cc_kernel", "attest", f"unix:{sock}", "--policy", str(sim_policy_path)], cc_data_dir)
        assert second.returncode == 2 and "cannot connect" in second.stderr
    finally:
        if enclave.poll() is None:
            enclave.kill()
        _, err = enclave.communicate(timeout=30)
    assert "listening on unix:" in err and "Traceback" not in err
