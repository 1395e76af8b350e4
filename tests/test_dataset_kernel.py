"""``%cc_dataset`` end to end: a real kernel, its sandboxed enclave and ``cc-kernel broker serve`` as processes; the
sealed file made by ``cc-kernel data seal``. The kernel relays the monitor's TLS connection to the broker; the
worker binds the plaintext with the types of ``%cc_upload``; approved-code rules hold in the real monitor."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_env import SIM, JupyterEnv, live_kernel

from cc_kernel.audit.format import code_hash
from cc_kernel.measure import enclave_measurement
from cc_kernel.simstore import simulation_dir
from cc_kernel.testing.enclaves import running_broker, simulation_policy_text

pytestmark = pytest.mark.slow

RECORDS = "patient,age\n" + "".join(f"{i},{i % 90}\n" for i in range(20000))
COUNT = "print(len(records.splitlines()))"


@pytest.fixture
def broker(jupyter_env: JupyterEnv, tmp_path: Path) -> Iterator[str]:
    with running_broker(tmp_path / "store", sim_dir=simulation_dir(), env=dict(os.environ)) as address:
        yield address


def seal(tmp_path: Path, broker: str, rules: str, name: str) -> Path:
    (tmp_path / "policy.toml").write_text(simulation_policy_text([enclave_measurement()]))
    (tmp_path / f"{name}.rules.toml").write_text(rules)
    (tmp_path / "records.csv").write_text(RECORDS)
    out = tmp_path / f"{name}.ccdata"
    proc = subprocess.run(
        [sys.executable, "-m", "cc_kernel", "data", "seal", str(tmp_path / "records.csv"), "--owner-policy",
         str(tmp_path / "policy.toml"), "--rules", str(tmp_path / f"{name}.rules.toml"), "--broker", broker,
         "--datasets", str(tmp_path / "store"), "-o", str(out), "--owner", "St Example"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_sealed_dataset_opens_in_a_real_session_and_approved_code_holds(broker: str, tmp_path: Path) -> None:
    inspect = seal(tmp_path, broker, 'version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\n'
                   "max_sessions = 3\n", "open")
    approved = seal(tmp_path, broker, f'version = 1\nmode = "approved-code"\napproved_code_sha256 = '
                    f'["{code_hash(COUNT).hex()}"]\nnot_after = 2099-01-01T00:00:00Z\nmax_sessions = 3\n', "strict")
    with live_kernel(SIM) as k:
        cell = k.ok(f"%cc_dataset {inspect} records", timeout=120)
        assert "opened open.ccdata" in cell.stream() and "mode inspect, release 1 of 3" in cell.stream()
        assert k.value("type(records).__name__") == "'str'"
        claims = k.ok("%attestation").of_type("display_data")[-1]["content"]["data"]
        assert "dataset records of 'St Example': mode inspect, release 1 of 3" in claims["text/plain"]
        assert claims["application/json"]["datasets"][0]["owner_log"] == "open"
        assert k.value("__import__('hashlib').sha256(records.encode()).hexdigest()") == \
            repr(hashlib.sha256(RECORDS.encode()).hexdigest())
    with live_kernel(SIM) as k:
        k.ok(f"%cc_dataset {approved} records", timeout=120)
        assert k.ok(COUNT).stream() == "20001\n"
        leak = "print(records[:200])"
        cell = k.execute(leak)
        assert cell.status == "error" and cell.content["ename"] == "DatasetRules"
        assert code_hash(leak).hex() in cell.traceback_text
        assert "patient" not in cell.stream()
    # the owner's logs of both sessions verify like session logs, each closed when its kernel shut down
    logs = sorted((tmp_path / "store").glob("*.cclog"))
    assert len(logs) == 2
    for path in logs:
        proc = subprocess.run([sys.executable, "-m", "cc_kernel", "audit", "verify", str(path), "--allow-simulation",
                               "--sim-dir", str(simulation_dir())], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = subprocess.run([sys.executable, "-m", "cc_kernel", "audit", "show", str(logs[0])], capture_output=True,
                           text=True, timeout=120).stdout + subprocess.run(
        [sys.executable, "-m", "cc_kernel", "audit", "show", str(logs[1])], capture_output=True, text=True,
        timeout=120).stdout
    assert COUNT in shown and "print(records[:200])" in shown  # the refused cell is in the owner's log too


def test_a_kernel_with_a_list_of_brokers_relays_to_no_other(broker: str, tmp_path: Path) -> None:
    sealed = seal(tmp_path, broker, 'version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\n'
                  "max_sessions = 3\n", "open")
    elsewhere = "broker.hospital.example:4712"
    with live_kernel(SIM, env={**os.environ, "CC_KERNEL_BROKERS": elsewhere}) as k:
        cell = k.execute(f"%cc_dataset {sealed} records", timeout=120)
        assert cell.status == "error", cell.summary()
        assert (f"the kernel ended the relay saying \"the kernel does not relay there: the sealed file names the "
                f"broker at '{broker}', which is not one of the brokers this kernel may reach ({elsewhere}: setting "
                "brokers, CC_KERNEL_BROKERS)\"") in cell.traceback_text
        assert k.execute("records").content["ename"] == "NameError"
    with live_kernel(SIM) as k:  # the refused attempt never reached the broker: this is its first release
        assert "release 1 of 3" in k.ok(f"%cc_dataset {sealed} records", timeout=120).stream()
