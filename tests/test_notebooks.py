"""The teaching notebooks (notebooks/01-07) run top to bottom on ``confidential-python-sim`` with nbclient and show
what they teach: the badge, ciphertext on the wire, the verifier's steps, every refusal with
its check, aggregates computed inside the enclave that match the data, and the audit log's verdicts.

Each notebook runs once per test session, from a copy (notebooks/ and the generator script, in the same relative
layout) in a temporary directory, inside the isolated Jupyter environment of ``kernel_env.jupyter_env``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import numpy as np
import pytest
from kernel_env import BADGE_MIME, SIM, JupyterEnv, strip_ansi
from nbclient import NotebookClient

from cc_kernel.audit.format import code_hash

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01-data-in-use", "02-attestation-step-by-step", "03-what-attestation-catches",
             "04-confidential-analytics", "05-auditing-a-session", "06-the-cell-is-an-adversary", "07-two-parties")
#: How long nbclient waits for one cell (a deadline, not a measurement: how long each notebook takes is measured
#: by benchmarks/notebooks.py).
CELL_TIMEOUT_S = 60.0
#: What notebook 1 plants in its cell (the test checks the relay never saw it for the confidential kernel).
SECRET = "Patient 0042: HbA1c 9.1 percent, diabetic"


@dataclass
class Executed:
    nb: Any
    workdir: Path

    def code_cells(self) -> list[Any]:
        return [c for c in self.nb.cells if c.cell_type == "code"]

    def cell(self, starts_with: str) -> Any:
        """The code cell whose source starts with ``starts_with`` (exactly one)."""
        found = [c for c in self.code_cells() if c.source.startswith(starts_with)]
        assert len(found) == 1, f"{len(found)} cells start with {starts_with!r}"
        return found[0]

    @staticmethod
    def text(cell: Any) -> str:
        """Every text output of a cell: streams, text/plain, errors (ANSI colours removed)."""
        parts = []
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type == "error":
                parts.append("\n".join(out.traceback))
            else:
                parts.append(str(out.get("data", {}).get("text/plain", "")))
        return strip_ansi("\n".join(parts))

    def all_text(self) -> str:
        return "\n".join(self.text(c) for c in self.code_cells())

    def outputs_with(self, mime: str) -> list[Any]:
        return [o for c in self.code_cells() for o in c.outputs if mime in o.get("data", {})]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("teaching")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    return root


@pytest.fixture(scope="module")
def run(jupyter_env: JupyterEnv, workdir: Path) -> Any:
    """``run(name)`` executes notebook ``name`` once (later calls return the same result)."""
    cache: dict[str, Executed] = {}

    def execute(name: str) -> Executed:
        if name not in cache:
            path = workdir / "notebooks" / f"{name}.ipynb"
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(nb, kernel_name=SIM, timeout=CELL_TIMEOUT_S, startup_timeout=60,
                                    resources={"metadata": {"path": str(path.parent)}})
            client.execute()  # raises CellExecutionError at the first cell that fails
            cache[name] = Executed(nb, workdir)
        return cache[name]

    return execute


# -- committed form -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_for_the_simulation_kernel(name: str) -> None:
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == SIM
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs in {cell.source[:60]!r}"


def test_readme_links_every_notebook() -> None:
    readme = (REPO / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"notebooks/{name}.ipynb" in readme


# -- each notebook, executed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_without_errors_with_the_simulation_badge(run: Any, name: str) -> None:
    executed = run(name)
    badges = executed.outputs_with(BADGE_MIME)
    assert badges, "no attestation badge"
    assert badges[0]["data"][BADGE_MIME]["state"] == "simulation"
    assert "SIMULATION — not hardware-protected" in badges[0]["data"]["text/plain"]
    errors = [o for c in executed.code_cells() for o in c.outputs if o.output_type == "error"]
    assert errors == []


def _text_column(dump: str) -> str:
    """The printable-text column of every hexdump line in ``dump``, joined (a string may span lines)."""
    line = re.compile(r"^[0-9a-f]{8}  (?:[0-9a-f]{2} ){15}[0-9a-f]{2}  (.{16})$", re.MULTILINE)
    return "".join(line.findall(dump))


def test_01_the_relay_sees_ciphertext_of_the_confidential_kernel_and_plaintext_of_python3(run: Any) -> None:
    nb = run("01-data-in-use")
    confidential = nb.text(nb.cell("enclave = lab.start_enclave()"))
    assert "SIMULATION — not hardware-protected" in confidential  # the nested kernel's own badge
    assert SECRET.upper() in confidential  # the cell ran in the enclave and its output came back
    side = nb.text(nb.cell('title, recorded = confidential.wiretap.excerpt(SECRET, "c2s")'))
    assert "TLS application_data record" in side and "the secret does not appear anywhere" in side
    hexdump_part, received = side.split("== what the notebook received", 1)
    assert SECRET not in hexdump_part and "Patient" not in hexdump_part
    assert SECRET.upper() in received
    verdict = nb.text(nb.cell("tap = confidential.wiretap"))
    assert re.search(r"relay saw the secret going in: +False", verdict)
    assert re.search(r"relay saw the result coming out: +False", verdict)
    assert "application_data" in verdict

    plain = nb.text(nb.cell('print("relay saw the secret going in:   ", plain.wiretap.contains(SECRET))'))
    assert re.search(r"relay saw the secret going in: +True", plain)
    assert re.search(r"relay saw the result coming out: +True", plain)
    assert SECRET.upper() in _text_column(plain)  # the output, readable in the hexdump's text column
    plain_side = nb.text(nb.cell("plain = lab.run_cell("))
    assert SECRET in _text_column(plain_side.split("== what the notebook received", 1)[0])
    assert "'key':" in nb.text(nb.cell("{k: plain.connection_info[k]"))


def test_02_shows_each_verification_step(run: Any) -> None:
    nb = run("02-attestation-step-by-step")
    assert "Attestation: SIMULATION - not hardware-protected" in nb.text(nb.cell("%attestation"))
    svgs = nb.outputs_with("image/svg+xml")
    assert len(svgs) == 1
    ET.fromstring(svgs[0]["data"]["image/svg+xml"])  # well-formed
    fetched = nb.text(nb.cell("from cc_kernel.teaching import TeachingLab"))
    assert "NOT verified yet" in fetched
    envelope = nb.text(nb.cell("from cc_kernel.attestation.envelope import parse_envelope_unverified"))
    assert "CN=ARK-Simulated" in envelope and "format: cc-sim-snp-report" in envelope
    report = nb.text(nb.cell("from cc_kernel.teaching import describe_report"))
    for field in ("report_data", "measurement", "reported_tcb", "signature_r"):
        assert field in report
    assert "debug=off" in report
    authentic = nb.text(nb.cell("from datetime import UTC, datetime"))
    assert "verified by the root of platform: simulation" in authentic
    assert "UntrustedRoot" in nb.text(nb.cell("from cc_kernel.errors import VerificationError"))
    assert "equal: True" in nb.text(nb.cell("from cc_kernel.attestation.binding import expected_report_data"))
    wrong = nb.text(nb.cell("import os"))
    assert "another TLS key  -> BindingMismatch: [binding.report_data]" in wrong
    assert "another nonce    -> StaleEvidence: [freshness.nonce]" in wrong
    appraised = nb.text(nb.cell("from pathlib import Path"))
    assert "unsafe_allow_simulation = true" in appraised and "min_tcb = { bl = 4" in appraised
    assert "Attestation: SIMULATION" in appraised
    assert nb.text(nb.cell("lab.attest(enclave, policy=policy)")).startswith("VERIFIED (simulation)")
    assert "REFUSED — UntrustedRoot" in nb.text(nb.cell("from cc_kernel.attestation.policy import"))


#: (outcome key in notebook 3, exception class, check name or message fragment)
REFUSALS = [
    ("modified code", "PolicyViolation", "[policy.measurement]"),
    ("debug mode", "PolicyViolation", "[policy.debug]"),
    ("outdated TCB", "PolicyViolation", "[policy.min_tcb.ucode]"),
    ("swapped key", "BindingMismatch", "[binding.report_data]"),
    ("replayed evidence", "StaleEvidence", "[freshness.session_id]"),
    ("tampering relay", "BrokenChannelError", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"),
]


def test_03_each_fault_is_refused_with_its_check_by_the_verifier_and_by_the_kernel(run: Any) -> None:
    nb = run("03-what-attestation-catches")
    assert nb.text(nb.cell("outcomes = {}")).startswith("VERIFIED (simulation)")
    sections = {
        "modified code": "from cc_kernel.teaching import MODIFIED_FILE",
        "debug mode": 'debug = lab.start_enclave(fault="debug")',
        "outdated TCB": 'old_tcb = lab.start_enclave(fault="old-tcb")',
        "swapped key": 'swapped = lab.start_enclave(fault="swapped-key")',
        "replayed evidence": 'replay = lab.start_enclave(fault="replay")',
        "tampering relay": "tampering = lab.relay(healthy, tamper=True)",
    }
    for key, error, check in REFUSALS:
        text = nb.text(nb.cell(sections[key]))
        assert f"REFUSED — {error}" in text, f"{key}: {text[:400]}"
        assert check in text, f"{key}: {check} not in {text[:400]}"
    assert "(one bit flipped)" in nb.text(nb.cell(sections["tampering relay"]))
    # the same faults behind a real Confidential Python kernel: the cell is never sent, the kernel says why
    kernel_view = nb.text(nb.cell("targets = {"))
    blocks = kernel_view.split("===== ")[1:]
    assert len(blocks) == len(REFUSALS)
    for block, (key, _error, check) in zip(blocks, REFUSALS, strict=True):
        assert block.startswith(f"{key}: cell error, badge: refused"), block[:200]
        assert "ATTESTATION REFUSED — the cell was NOT run and no code was sent to the enclave." in block
        assert check in block, f"{key}: {block[:400]}"
    summary = nb.text(nb.cell("lab.verdicts(outcomes)"))
    assert summary.count("REFUSED") == len(REFUSALS) and summary.count("verified") == 1


def _load_generator(workdir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_synthetic_records", workdir / "notebooks" /
                                                  "make_synthetic_records.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_04_releases_aggregates_that_match_the_data(run: Any) -> None:
    nb = run("04-confidential-analytics")
    assert "20000 synthetic patients" in nb.text(nb.cell("import sys"))
    upload = nb.text(nb.cell("%cc_upload synthetic-data/patients.npy patients"))
    assert "100.0%" in upload and "into the enclave: patients = numpy array (20000,)" in upload
    assert "100%" in nb.text(nb.cell("rng = np.random.default_rng(0)"))  # the streamed progress bar finished
    assert len(nb.outputs_with("image/png")) == 1
    release = json.loads(nb.text(nb.cell("import json")))
    # recompute the released aggregates outside the enclave, from the same generator and seed
    records = _load_generator(nb.workdir).make_records(20_000, 2024)
    diabetic = records["hba1c"] >= 6.5
    bands = np.digitize(records["age"], [40, 50, 60, 70])
    assert release["patients"] == len(records)
    assert release["diabetes_prevalence"] == round(float(diabetic.mean()), 4)
    expected = {name: round(float(diabetic[bands == k].mean()), 4)
                for k, name in enumerate(["18-39", "40-49", "50-59", "60-69", "70+"])}
    assert release["prevalence_by_age_band"] == expected
    for name, (low, high) in release["ci95_by_age_band"].items():
        assert low < expected[name] < high
    # nothing but the aggregates was printed: no record identifier or name appears in any output
    assert not re.search(r"P\d{7}", nb.all_text())
    assert str(records["name"][0]) not in nb.all_text()
    assert not (nb.workdir / "notebooks" / "synthetic-data").exists()


def test_05_verifies_the_session_log_and_pinpoints_each_tampering(run: Any) -> None:
    nb = run("05-auditing-a-session")
    ran = nb.text(nb.cell("from cc_kernel.teaching import TeachingLab"))
    assert "[1] ok" in ran and "[3] ok" in ran and "mean HbA1c: 6.76" in ran
    extras = nb.text(nb.cell('analyst.run("len(hba1c)", silent=True)'))
    assert "'statistics'" in extras and "found: True" in extras
    assert "SIMULATION — not hardware-protected" in extras and "audit log: " in extras
    assert re.search(r"session-\S+\.cclog\nmode 600, \d+ bytes", nb.text(nb.cell("analyst.shutdown()")))
    shown = nb.text(nb.cell("import subprocess"))
    assert "NOT verified" in shown
    for kind in (" opening ", " cell ", " silent ", " complete ", " inspect ", " closing "):
        assert kind in shown, kind
    valid = nb.text(nb.cell('cc_kernel("audit", "verify", LOG, *SIM)'))
    assert "VALID — 8 entries, closed cleanly" in valid and "[exit status 0]" in valid
    forged = nb.text(nb.cell("data = log.read_bytes()"))
    assert "INVALID — first bad entry #1 (check entry.signature)" in forged and "[exit status 1]" in forged
    assert "[receipt.code_sha256]" in forged
    dropped = nb.text(nb.cell("from cc_kernel.audit.verify import read_log_unverified"))
    assert "INVALID — first bad entry #2 (check entry.seq)" in dropped
    cut = nb.text(nb.cell('(lab.root / "cut.cclog")'))
    assert "UNTERMINATED" in cut and "INVALID" not in cut and "[exit status 1]" in cut
    hardware = nb.text(nb.cell("from cc_kernel.attestation.policy import render_policy"))
    assert "INVALID — first bad entry #0" in hardware and "UntrustedRoot" in hardware
    cells = nb.text(nb.cell("import nbformat"))
    assert "VALID" in cells and "[exit status 1]" in cells
    assert "VERDICT: FAIL — cells were EDITED after execution" in cells
    verdicts = re.findall(r"cell (\d+) +\[(\d+)\] (MATCHES|EDITED after execution|NOT EXECUTED)", cells)
    assert verdicts == [("0", "1", "MATCHES"), ("1", "2", "EDITED after execution"), ("2", "3", "MATCHES")], cells
    assert re.search(r"cell 3 +\[ \] NOT EXECUTED", cells)


def test_06_every_attack_from_a_cell_is_refused(run: Any) -> None:
    nb = run("06-the-cell-is-an-adversary")
    text = nb.all_text()
    assert "ALLOWED  " not in text.replace("ALLOWED  write a file in the working directory", "")
    sandbox = nb.text(nb.cell("%attestation"))
    assert "cell sandbox: " in sandbox and "NOT IN FORCE" not in sandbox, sandbox
    for part in ("no_new_privs", "landlock", "seccomp", "monitor_not_dumpable"):
        assert part in sandbox, part
    loot = nb.text(nb.cell("import gc, sys"))
    assert "key-like objects in this process:   none" in loot and "key-holding modules loaded here:    none" in loot
    monitor = nb.text(nb.cell("def ptrace_attach"))
    assert monitor.count("refused  ") == 5, monitor
    oracle = nb.text(nb.cell("import pwd"))
    assert oracle.count("refused  ") == 6 and "PermissionError" in oracle, oracle
    plant = nb.text(nb.cell("import sysconfig"))
    assert plant.count("refused  ") == 3 and "ALLOWED  write a file in the working directory" in plant, plant
    forged = nb.text(nb.cell("from cc_kernel.teaching import TeachingLab"))
    assert "cell status: error" in forged
    assert "broke the monitor's protocol" in forged and "audit_receipt is not allowed" in forged, forged


def test_07_the_owners_broker_releases_only_to_its_policy_and_logs_every_use(run: Any) -> None:
    nb = run("07-two-parties")
    sealed = nb.text(nb.cell("owner_policy = lab.policy()"))
    assert "[exit status 0]" in sealed and "owner 'St Example Hospital', mode inspect" in sealed, sealed
    assert "does the sealed file contain a patient's name? False" in sealed
    opened = nb.text(nb.cell("analyst = lab.start_kernel()"))
    assert opened.startswith("ok\n") and "mode inspect, release 1 of 5" in opened, opened
    aggregates = nb.text(nb.cell("AGGREGATES = "))
    assert re.search(r"^ok\n5000 patients, mean age \d+\.\d\ndiabetes prevalence \d+\.\d%", aggregates), aggregates
    assert "mode inspect, release 1 of 5" in aggregates.split("the analyst's badge:")[1], aggregates
    debug = nb.text(nb.cell("debug_enclave = "))
    assert debug.startswith("error\n") and "[release.policy] the broker refused" in debug, debug
    assert "[policy.debug]" in debug and "bound into the session? False" in debug, debug
    modified = nb.text(nb.cell("modified_enclave = "))
    assert "\nerror\n" in modified, modified
    assert "[release.policy] the broker refused" in modified and "[policy.measurement]" in modified, modified
    approved = nb.text(nb.cell("with lab.start_kernel() as kernel:"))
    assert re.search(r"approved cell:   ok -> 5000 patients; diabetes prevalence \d+\.\d%", approved), approved
    assert "unapproved cell: error" in approved and "DatasetRules" in approved, approved
    assert code_hash("print(patients[:3])").hex() in approved and "P0000001" not in approved, approved
    broker_log = nb.text(nb.cell('cc_kernel("broker", "verify-log"'))
    assert "[exit status 0]" in broker_log and "valid," in broker_log, broker_log
    assert broker_log.count("refused") >= 2 and "policy.debug" in broker_log and "policy.measurement" in broker_log
    owner_log = nb.text(nb.cell("owner_logs = "))
    assert "[exit status 0]" in owner_log and "VERDICT" in owner_log, owner_log
    shown = nb.text(nb.cell("for path in owner_logs:"))
    assert shown.count("[exit status 0]") == 2 and shown.count("closing ") == 2, shown
    assert re.search(r"cell +\[\d+\] ok .*diabetic = patients\[", shown), shown  # the inspect session's cell
    assert re.search(r"cell +\[\d+\] error .*print\(patients\[:3\]\)", shown), shown  # the refused cell
