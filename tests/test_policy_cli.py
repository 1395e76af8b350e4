"""``cc-kernel policy check`` / ``policy init`` in process: the code-pin rule and hostile input give one clear
message and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cc_kernel.attestation.appraisal import TdxEntry
from cc_kernel.attestation.policy import load_policy
from cc_kernel.cli import main

M48 = "ab" * 48


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize(
    ("entry", "missing"),
    [
        (f'platform = "nitro"\npcr = {{ 3 = "{M48}" }}', '"pcr.0"'),
        (f'platform = "nitro"\npcr = {{ 8 = "{M48}" }}', '"pcr.0"'),
        (f'platform = "sgx-dcap"\nmrsigner = ["{"ef" * 32}"]', '"isv_prod_id", "min_isv_svn"'),
        (f'platform = "tdx"\nmr_td = ["{M48}"]', '"rtmr.1", "rtmr.2"'),
        ('platform = "sev-snp"', '"measurement"'),
    ],
)
def test_policy_check_refuses_an_entry_that_does_not_pin_the_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, entry: str, missing: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f"version = 1\n[[accept]]\n{entry}\n")
    code, out, err = run(capsys, "policy", "check", str(path))
    assert (code, out) == (2, "")
    assert f"{path}: [[accept]] #1" in err
    assert f"does not pin the enclave's code: {missing} missing" in err


def test_policy_init_for_tdx_pins_mrtd_and_the_rtmrs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "tdx.toml"
    code, _, err = run(capsys, "policy", "init", "--platform", "tdx", "--measurement", M48, "-o", str(path))
    assert code == 2 and not path.exists()
    assert '"rtmr.1", "rtmr.2" missing' in err and "--rtmr 1=HEX --rtmr 2=HEX" in err
    code, _, err = run(capsys, "policy", "init", "--platform", "tdx", "--measurement", M48, "--rtmr", "1",
                       "-o", str(path))
    assert code == 2 and "--rtmr '1': write INDEX=HEX" in err
    code, _, err = run(capsys, "policy", "init", "--platform", "tdx", "--measurement", M48,
                       "--rtmr", f"1={'01' * 48}", "--rtmr", f"2={'02' * 48}", "-o", str(path))
    assert code == 0, err
    (entry,) = load_policy(path.read_bytes()).accept
    assert isinstance(entry, TdxEntry)
    assert dict(entry.rtmr) == {1: b"\x01" * 48, 2: b"\x02" * 48}
    assert "docs/policy.md" in path.read_text() and "ATTESTATION" not in path.read_text()
