"""The conformance suite an auditor gets (tests/vectors/audit/, README.md there): ``cc-kernel audit verify``
gives the documented verdict and exit status on every vector, and the documented findings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from audit_support import AUDIT_DIR, AUTHORITY_DIR, manifest

from cc_kernel.cli import main

CASES = manifest()["cases"]


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # never the user's simulated authority


def verify_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any] | None, str]:
    code = main(["audit", "verify", *argv, "--sim-dir", str(AUTHORITY_DIR), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, (json.loads(out) if out else None), err


def case_file(case: dict[str, Any], tmp_path: Path) -> Path:
    if "flip" not in case:
        return AUDIT_DIR / case["file"]
    data = bytearray((AUDIT_DIR / case["file"]).read_bytes())
    data[case["flip"]["offset"]] ^= case["flip"]["xor"]
    path = tmp_path / "flipped.log"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_cli_gives_the_documented_verdict(case: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    policy = ["--policy", str(AUDIT_DIR / case["policy"])] if case.get("policy") else []
    code, doc, err = verify_json(capsys, str(case_file(case, tmp_path)), *policy)
    assert code == case["exit"]
    expect = case["expect"]
    if "raises" in expect:
        assert doc is None and err.startswith("cc-kernel: ") and case["verdict"] is None
        return
    assert doc is not None
    assert doc["status"] == expect["status"]
    assert [[f["index"], f["check"]] for f in doc["findings"]] == case["findings"]
    allowed = ["attestation.simulation"] if doc["attestation"] and doc["attestation"]["status"] == "simulation" else []
    assert doc["verdict"] == {"passed": code == 0, "failures": case["verdict"],
                              "accepted": allowed if case.get("policy") == "policy-sim.toml" else []}
    if expect["status"] != "valid":
        first = doc["first_bad"]
        assert (first["index"], first["check"], first["error"]) == (expect["index"], expect["check"], expect["error"])


def test_every_case_has_a_verdict_and_valid_logs_fail_only_for_simulation() -> None:
    by_name = {c["name"]: c for c in CASES}
    assert by_name["valid"]["verdict"] == ["attestation.simulation"] and by_name["valid"]["exit"] == 1
    assert by_name["valid-given-policy"]["verdict"] == [] and by_name["valid-given-policy"]["exit"] == 0
    assert by_name["truncated-no-closing"]["verdict"] == ["log.unterminated", "attestation.simulation"]
    assert all(c["exit"] == (2 if c["verdict"] is None else int(bool(c["verdict"]))) for c in CASES)


def test_the_notebook_vector_reports_unaccounted_receipts_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    expected = manifest()["notebook"]
    log, nb = str(AUDIT_DIR / expected["log"]), str(AUDIT_DIR / expected["file"])
    code, doc, _ = verify_json(capsys, log, "--notebook", nb, "--allow-simulation")
    assert doc is not None and code == 1
    assert [[c["status"], c["receipt"]] for c in doc["cells"]] == expected["cells"]
    assert [u["entry"] for u in doc["unaccounted"]] == expected["unaccounted"]
    notebook_failures = [f for f in expected["verdict"] if f.startswith("notebook.")]
    assert expected["verdict"] == ["attestation.simulation", *notebook_failures]  # recorded with no option
    assert notebook_failures == ["notebook.edited", "notebook.unexecuted", "notebook.unaccounted"]
    assert doc["verdict"] == {"passed": False, "failures": notebook_failures, "accepted": ["attestation.simulation"]}
    for name in notebook_failures:  # each one alone still fails
        others = [a for other in notebook_failures if other != name for a in ("--accept", other)]
        code, doc, _ = verify_json(capsys, log, "--notebook", nb, "--allow-simulation", *others)
        assert doc is not None and (code, doc["verdict"]["failures"]) == (1, [name])
    accept = [a for name in notebook_failures for a in ("--accept", name)]
    code, doc, _ = verify_json(capsys, log, "--notebook", nb, "--allow-simulation", *accept)
    assert doc is not None and code == 0
    assert doc["verdict"] == {"passed": True, "failures": [], "accepted": expected["verdict"]}
