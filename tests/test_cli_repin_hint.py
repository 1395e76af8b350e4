"""``cc-kernel attest`` against an enclave whose measurement the policy does not pin: the refusal lists the
failed check and says how to re-pin exactly once (the kernel side is in tests/test_kernel_hints.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_kernel.attestation.result import REPIN_HINT
from cc_kernel.measure import enclave_measurement
from cc_kernel.testing.enclaves import SupervisorProcess, enclave_env, start_supervisor

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def serve(cc_data_dir: Path) -> Iterator[SupervisorProcess]:
    with start_supervisor(cc_data_dir) as sup:
        yield sup


@pytest.fixture(scope="module")
def other_policy(sim_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installation's simulation policy with another measurement pinned in place of this enclave's."""
    path = tmp_path_factory.mktemp("repin") / "other.toml"
    text = sim_policy_path.read_text()
    assert enclave_measurement().hex() in text
    path.write_text(text.replace(enclave_measurement().hex(), "ab" * 48))
    return path


def attest(data_dir: Path, address: str, policy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cc_kernel", "attest", address, "--policy", str(policy), *extra],
        capture_output=True, text=True, timeout=60, env=enclave_env(data_dir), stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "attestation REFUSED by policy" in proc.stderr and "[policy.measurement]" in proc.stderr
    return proc


def test_attest_says_re_pin_once(cc_data_dir: Path, serve: SupervisorProcess, other_policy: Path) -> None:
    proc = attest(cc_data_dir, str(serve.address), other_policy)
    assert proc.stderr.count("re-pin") == 1, proc.stderr
    assert proc.stderr.count(REPIN_HINT) == 1


def test_attest_json_says_re_pin_once(cc_data_dir: Path, serve: SupervisorProcess, other_policy: Path) -> None:
    proc = attest(cc_data_dir, str(serve.address), other_policy, "--json")
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False and [f["check"] for f in doc["failures"]] == ["policy.measurement"]
    assert json.dumps(doc).count("re-pin") == 1, doc
    assert proc.stderr.count("re-pin") == 1, proc.stderr
