"""The enclave process started before the kernel imports ipykernel (cc_kernel/kernel/early.py): adopted only if it
is exactly the one the kernel would start, killed otherwise, never started when the kernel will not start a local
simulated enclave the default way. Adoption grants nothing: the adopted enclave is attested like any other."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_env import SIM, JupyterEnv

from cc_kernel.kernel import early


@pytest.fixture(autouse=True)
def _no_leftover() -> Iterator[None]:
    yield
    early._discard()  # a test that did not adopt must not leave a process behind


def reap(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def default_argv() -> list[str]:
    return early.enclave_argv(-1, platform="simulation", sim_dir=None, faults=())


def test_the_early_process_is_adopted_when_it_is_the_one_the_kernel_would_start() -> None:
    assert early.start_early(["-f", "conn.json", "--mode", "simulation"], environ={})
    adopted = early.adopt(default_argv(), {})
    assert adopted is not None
    process, sock = adopted
    try:
        assert process.poll() is None
        assert process.args[process.args.index("--platform") + 1] == "simulation"  # type: ignore[union-attr]
        assert early.adopt(default_argv(), {}) is None  # only once
    finally:
        sock.close()
        reap(process)


@pytest.mark.parametrize(
    ("wanted", "extra_env"),
    [
        (early.enclave_argv(-1, platform="simulation", sim_dir=None, faults=("debug",)), None),
        (early.enclave_argv(-1, platform="simulation", sim_dir="/tmp/other-authority", faults=()), None),
        (early.enclave_argv(-1, platform="hardware", sim_dir=None, faults=()), None),
        (early.enclave_argv(-1, platform="simulation", sim_dir=None, faults=()), {"CC_TEST_EXTRA": "1"}),
    ],
    ids=["fault", "sim-dir", "hardware", "environment"],
)
def test_a_different_enclave_is_not_adopted_and_the_early_one_is_killed(
    wanted: list[str], extra_env: dict[str, str] | None
) -> None:
    assert early.start_early(["--mode", "simulation"], environ={})
    process = early._early.process if early._early is not None else None
    assert process is not None
    assert early.adopt(wanted, extra_env or {}) is None
    assert process.poll() is not None  # killed, not left running


def test_a_dead_early_process_is_not_adopted() -> None:
    assert early.start_early([], environ={})
    assert early._early is not None
    early._early.process.kill()
    early._early.process.wait(timeout=10)
    assert early.adopt(default_argv(), {}) is None


@pytest.mark.parametrize(
    ("args", "environ"),
    [
        (["--mode", "hardware"], {}),
        (["--mode", "simulation", "--ConfidentialKernel.faults=['debug']"], {}),
        (["--mode", "simulation"], {"CC_KERNEL_ENCLAVE": "tcp://tee.example:7800"}),
        (["--mode", "simulation"], {early.EARLY_ENV: "0"}),
    ],
    ids=["hardware-mode", "kernel-option", "remote-enclave", "turned-off"],
)
def test_no_early_process_when_the_kernel_would_not_start_it_this_way(
    args: list[str], environ: dict[str, str]
) -> None:
    assert not early.start_early(args, environ=environ)
    assert early._early is None


def test_faults_and_sim_dir_from_the_environment_are_used() -> None:
    env = {"CC_KERNEL_FAULTS": "debug,replay", "CC_KERNEL_SIM_DIR": "/tmp/cc-sim"}
    assert early.start_early(["--mode", "simulation"], environ=env)
    want = early.enclave_argv(-1, platform="simulation", sim_dir="/tmp/cc-sim", faults=("debug", "replay"))
    adopted = early.adopt(want, {})
    assert adopted is not None
    adopted[1].close()
    reap(adopted[0])


def test_an_unadopted_early_process_dies_with_the_kernel_process() -> None:
    code = (
        "from cc_kernel.kernel import early\n"
        "assert early.start_early(['--mode', 'simulation'], environ={})\n"
        "print(early._early.process.pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow
def test_a_real_kernel_adopts_its_early_enclave_and_attests_it(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    from jupyter_client.manager import KernelManager

    log_path = tmp_path / "kernel.log"
    with log_path.open("wb") as log_file:
        km = KernelManager(kernel_name=SIM)
        km.start_kernel(env=jupyter_env.kernel_env(), extra_arguments=["--log-level=INFO"], stderr=log_file,
                        stdout=log_file)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            reply = kc.execute_interactive("1 + 1", timeout=60)
            assert reply["content"]["status"] == "ok"  # attested and running
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
    log = log_path.read_text(errors="replace")
    assert "enclave attested: simulation (the enclave process started early was adopted)" in log, log[-3000:]
