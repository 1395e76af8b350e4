"""`cc-kernel audit verify|show`: exit codes (0 pass; 1 invalid, unterminated, simulated without the auditor's
permission, or a notebook that does not match; 2 usage or unreadable input), the first bad entry and every finding
named, notebooks, JSON, and clear errors (never a traceback) on garbage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from audit_support import AUDIT_DIR, AUTHORITY_DIR, audit_file, manifest

from cc_kernel.cli import main

SIM = ["--sim-dir", str(AUTHORITY_DIR)]


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the user's own simulated authority."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def flipped(tmp_path: Path, name: str) -> Path:
    case = next(c for c in manifest()["cases"] if c["name"] == name)
    data = bytearray(audit_file(case["file"]))
    data[case["flip"]["offset"]] ^= case["flip"]["xor"]
    path = tmp_path / f"{name}.log"
    path.write_bytes(bytes(data))
    return path


def test_verify_valid_simulation_log_fails_unless_the_auditor_allows_simulation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = str(AUDIT_DIR / "valid.log")
    code, out, _ = run(capsys, "audit", "verify", log, *SIM)
    assert code == 1
    assert "VALID" in out and "SIMULATION" in out
    assert "VERDICT: FAIL — a SIMULATED TEE session (no hardware protection; --allow-simulation" in out
    code, out, _ = run(capsys, "audit", "verify", log, *SIM, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["status"] == "valid" and doc["entries"] == 13 and doc["first_bad"] is None
    assert doc["attestation"]["status"] == "simulation"
    assert doc["verdict"] == {"passed": False, "failures": ["attestation.simulation"], "accepted": []}
    # the auditor's permission: an explicit option, or their own policy allowing simulation
    for permission in (["--allow-simulation"], ["--policy", str(AUDIT_DIR / "policy-sim.toml")]):
        code, out, _ = run(capsys, "audit", "verify", log, *SIM, *permission, "--json")
        assert code == 0, permission
        assert json.loads(out)["verdict"] == {"passed": True, "failures": [], "accepted": ["attestation.simulation"]}
    code, out, _ = run(capsys, "audit", "verify", log, *SIM, "--allow-simulation")
    assert code == 0 and "VERDICT: PASS" in out and "accepted by option: attestation.simulation" in out


def test_verify_tampered_names_the_first_bad_entry_and_all_findings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = flipped(tmp_path, "flip-entry4.code")
    code, out, _ = run(capsys, "audit", "verify", str(path), *SIM)
    assert code == 1
    assert "INVALID — first bad entry #4 (check entry.signature)" in out
    assert "findings (3)" in out and "[entry.prev]" in out
    code, out, _ = run(capsys, "audit", "verify", str(path), *SIM, "--json")
    doc: dict[str, Any] = json.loads(out)
    assert code == 1 and doc["status"] == "invalid"
    assert (doc["first_bad"]["index"], doc["first_bad"]["check"]) == (4, "entry.signature")
    assert [[f["index"], f["check"]] for f in doc["findings"]] == [
        [4, "entry.signature"], [4, "receipt.code_sha256"], [5, "entry.prev"]]


def test_verify_unterminated_is_exit_1_and_says_not_altered(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "verify", str(AUDIT_DIR / "truncated-no-closing.log"), *SIM)
    assert code == 1
    assert "UNTERMINATED" in out and "not altered" in out
    code, out, _ = run(capsys, "audit", "verify", str(AUDIT_DIR / "truncated-no-closing.log"), *SIM, "--json")
    assert json.loads(out)["status"] == "unterminated"


def test_verify_under_a_hardware_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "verify", str(AUDIT_DIR / "valid.log"), *SIM,
                       "--policy", str(AUDIT_DIR / "policy-hw.toml"))
    assert code == 1
    assert "first bad entry #0 (check snp.anchor)" in out and "UntrustedRoot" in out


def test_verify_without_the_simulation_authority(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "verify", str(AUDIT_DIR / "valid.log"))
    assert code == 1 and "SIMULATED TEE" in out


def test_verify_with_a_notebook(capsys: pytest.CaptureFixture[str]) -> None:
    nb = str(AUDIT_DIR / "notebook.ipynb")
    log = str(AUDIT_DIR / "valid.log")
    code, out, _ = run(capsys, "audit", "verify", log, *SIM, "--allow-simulation", "--notebook", nb)
    assert code == 1
    assert "EDITED after execution" in out and "NOT EXECUTED" in out and "MATCHES" in out
    assert "receipts no cell of" in out and "entry #5    [4] cell: RAN, but no cell of the notebook has its code" in out
    assert "VERDICT: FAIL — cells were EDITED after execution (--accept notebook.edited)" in out
    code, out, _ = run(capsys, "audit", "verify", log, *SIM, "--allow-simulation", "--notebook", nb, "--json")
    assert [c["status"] for c in json.loads(out)["cells"]] == [s for s, _ in manifest()["notebook"]["cells"]]


def test_a_deleted_cell_is_reported_and_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Every receipt of valid.log accounted for by a cell, then one cell deleted: only that one is reported."""
    from audit_support import anchors

    from cc_kernel.attestation.anchors import hardware_anchors
    from cc_kernel.audit.verify import verify_log

    report = verify_log(audit_file("valid.log"), policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    ran = [(i, r) for i, r in report.receipts() if r.kind in ("cell", "upload")]
    cells = [{"cell_type": "code", "id": f"c{i}", "execution_count": r.execution_count, "metadata": {}, "outputs": [],
              "source": r.code} for i, r in ran if r.code is not None]
    whole = tmp_path / "whole.ipynb"
    whole.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}))
    redacted = [i for i, r in ran if r.code is None]  # code not in the log: no notebook can show it here
    code, out, _ = run(capsys, "audit", "verify", str(AUDIT_DIR / "valid.log"), *SIM, "--allow-simulation",
                       "--notebook", str(whole), "--json")
    doc = json.loads(out)
    assert [u["entry"] for u in doc["unaccounted"]] == redacted
    deleted = cells[1]
    gone = tmp_path / "deleted.ipynb"
    gone.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                                "cells": [c for c in cells if c is not deleted]}))
    code, out, _ = run(capsys, "audit", "verify", str(AUDIT_DIR / "valid.log"), *SIM, "--allow-simulation",
                       "--notebook", str(gone), "--json")
    doc = json.loads(out)
    entry = int(deleted["id"][1:])
    assert code == 1 and [u["entry"] for u in doc["unaccounted"]] == sorted([*redacted, entry])
    assert "notebook.unaccounted" in doc["verdict"]["failures"]


@pytest.mark.parametrize("name", ["empty.log", "garbage.bin", "text.log"])
def test_non_logs_are_unreadable_input(capsys: pytest.CaptureFixture[str], name: str) -> None:
    for command in ("verify", "show"):
        code, _out, err = run(capsys, "audit", command, str(AUDIT_DIR / name), *(SIM if command == "verify" else []))
        assert code == 2
        assert err.startswith("cc-kernel: ") and ("not a cc-kernel audit log" in err or "empty" in err)


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    valid = str(AUDIT_DIR / "valid.log")
    assert run(capsys, "audit", "verify", str(tmp_path / "missing.log"))[0] == 2
    assert run(capsys, "audit", "verify", valid, "--policy", str(tmp_path / "missing.toml"))[0] == 2
    bad_nb = tmp_path / "bad.ipynb"
    bad_nb.write_text("{not json")
    code, _, err = run(capsys, "audit", "verify", valid, *SIM, "--notebook", str(bad_nb))
    assert code == 2 and "not a JSON notebook" in err
    bad_nb.write_text('{"cells": 3}')
    code, _, err = run(capsys, "audit", "verify", valid, *SIM, "--notebook", str(bad_nb))
    assert code == 2 and "not a Jupyter notebook" in err
    code, _, err = run(capsys, "audit", "verify", valid, "--sim-dir", str(tmp_path))
    assert code == 2 and f"--sim-dir {tmp_path}: ark-cert.pem and ask-cert.pem are missing" in err


@pytest.mark.parametrize("missing", ["ask-cert.pem", "ark-cert.pem"])
def test_a_sim_dir_without_one_anchor_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               missing: str) -> None:
    for name in ("ark-cert.pem", "ask-cert.pem"):
        if name != missing:
            (tmp_path / name).write_bytes((AUTHORITY_DIR / name).read_bytes())
    code, out, err = run(capsys, "audit", "verify", str(AUDIT_DIR / "valid.log"), "--sim-dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith(f"cc-kernel: --sim-dir {tmp_path}: {missing} is missing; a simulated TEE authority")
    with pytest.raises(SystemExit) as info:
        main(["audit"])
    assert info.value.code == 2
    capsys.readouterr()


def test_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "audit", "show", str(AUDIT_DIR / "valid.log"))
    assert code == 0
    lines = out.splitlines()
    assert "NOT verified" in lines[0]
    assert len(lines) == 14
    assert " opening " in lines[1] and " closing " in lines[-1]
    assert '"print(\\"hello\\")"' in out and "<code redacted: config>" in out and "table (text, 8 bytes" in out
    code, out, _ = run(capsys, "audit", "show", str(AUDIT_DIR / "valid.log"), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["verified"] is False and len(doc["entries"]) == 13
    assert doc["entries"][1]["code"] == 'print("hello")'
    code, out, _ = run(capsys, "audit", "show", str(flipped(tmp_path, "flip-entry4.<payload key 'body'>")))
    assert code == 1 and "problem at entry #4: [entry.decode]" in out
