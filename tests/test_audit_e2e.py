"""End to end: session logs written by the real ``confidential-python-sim`` kernel, verified with the CLI.

Cells of every kind go through jupyter_client (ok, error, silent, stream and rich outputs, a completion, an
inspection, a ``%cc_upload``); after a clean shutdown ``python -m cc_kernel audit verify`` accepts the log and
lists exactly those receipts, whose output digests match what the frontend received. Then the log is attacked
the way an auditor would fear: one flipped byte (invalid, at that entry), a file cut after an entry
(unterminated, not altered), an enclave killed mid-cell (unterminated, every earlier receipt intact). Settings:
redaction keeps the hash only, ``CC_KERNEL_AUDIT=0`` writes nothing, files are mode 0600, the badge names the
file. Last, a notebook executed with nbclient cross-checks against its own log: every cell matches until one is
edited.

The verifier runs as a subprocess (``python -m cc_kernel``), as an auditor would run it, with ``--sim-dir``
pinning the test session's simulated authority. Every wait has a deadline; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from kernel_env import (
    BADGE_MIME,
    SIM,
    JupyterEnv,
    LiveKernel,
    children_running,
    is_badge,
    live_kernel,
    proc_alive,
)

from cc_kernel.audit import OutputDigester, code_hash
from cc_kernel.audit.format import MAGIC
from cc_kernel.testing.waiting import wait_until

pytestmark = pytest.mark.slow

#: The requests of the main session, in order, with the receipt kind each must produce.
EXPECTED_KINDS = [
    "opening", "cell", "cell", "cell", "silent", "complete", "inspect", "is_complete", "upload", "cell", "closing",
]
UPLOAD_BYTES = b"id,value\n1,42\n2,43\n"


# -- helpers ----------------------------------------------------------------------------------------------------


def sim_dir(env: JupyterEnv) -> Path:
    """The simulated authority the test session's kernels attest with (its certificates are the anchors)."""
    from cc_kernel.simstore import simulation_dir

    return simulation_dir(env.data_dir)


@dataclass
class Cli:
    code: int
    out: str
    err: str

    @property
    def doc(self) -> dict[str, Any]:
        return dict(json.loads(self.out))


def cli(*argv: str | Path, timeout: float = 30.0) -> Cli:
    """``python -m cc_kernel ARGV`` in a subprocess (never a traceback, whatever the input)."""
    proc = subprocess.run([sys.executable, "-m", "cc_kernel", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return Cli(proc.returncode, proc.stdout, proc.stderr)


def verify(env: JupyterEnv, log: Path, *extra: str | Path) -> Cli:
    """``audit verify`` of a simulation session, the auditor allowing simulation (these tests are about the log)."""
    return cli("audit", "verify", log, "--sim-dir", sim_dir(env), "--allow-simulation", *extra)


def records(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every whole record, parsed from the spec (docs/audit-log.md §2), not the library."""
    assert data.startswith(MAGIC)
    out, pos = [], len(MAGIC)
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        assert int.from_bytes(data[pos + 4:pos + 8], "big") == n ^ 0xFFFFFFFF
        if pos + 8 + n > len(data):
            break
        out.append((pos, pos + 8 + n))
        pos += 8 + n
    return out


def kinds(doc: dict[str, Any]) -> list[str]:
    """The timeline of a ``verify --json`` report: the entry type, or the receipt kind."""
    return [e["kind"] if e["type"] == "receipt" else e["type"] for e in doc["timeline"]]


def logs_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("session-*.cclog")) if directory.exists() else []


def badge_log_path(k: LiveKernel) -> str:
    """The log path the latest version of the badge shows (after attestation it names the file)."""
    versions = [m["content"]["data"] for m in k.iopub if is_badge(m) and "data" in m["content"]]
    assert versions, "no badge"
    latest = versions[-1]
    assert f"audit log: {latest[BADGE_MIME]['audit_log']}" in latest["text/plain"]
    return str(latest[BADGE_MIME]["audit_log"])


def clean_shutdown(k: LiveKernel) -> None:
    """Shut down as a frontend does (shutdown_request); the enclave signs the closing entry on the way out."""
    k.shut_down_by_request()


def digests_of(outputs: list[dict[str, Any]]) -> tuple[dict[str, str], list[list[str]]]:
    """What a receipt must say about ``outputs`` (IOPub messages a frontend received), recomputed here."""
    d = OutputDigester()
    for msg in outputs:
        if msg["msg_type"] == "stream":
            d.add_stream(msg["content"]["name"], msg["content"]["text"])
        else:
            d.add_output(msg["msg_type"], msg["content"])
    r = d.result()
    return {name: h.hex() for name, h in r.streams}, [[kind, h.hex()] for kind, h in r.outputs]


# -- one real session, verified --------------------------------------------------------------------------------


@dataclass
class Session:
    log: Path
    data: bytes
    badge_path: str
    k: LiveKernel
    receipts: list[dict[str, Any]]  # the verifier's JSON timeline entries 1..n-2
    doc: dict[str, Any]


@pytest.fixture(scope="module")
def session(jupyter_env: JupyterEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("audit-e2e")
    audit_dir = root / "logs"
    upload = root / "small.csv"
    upload.write_bytes(UPLOAD_BYTES)
    k = LiveKernel.start(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir)))
    try:
        k.ok("import sys\nprint('hello')\nprint('warn', file=sys.stderr)\n"
             "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))", timeout=60)
        k.ok("40 + 2")
        assert k.execute("1 / 0").status == "error"
        k.ok("quiet = 'from a variable viewer'\nprint(quiet)", silent=True)
        assert k.request("complete", "pri", 3)["content"]["matches"]
        assert k.request("inspect", "print", 5)["content"]["found"]
        assert k.request("is_complete", "for i in range(3):")["content"]["status"] == "incomplete"
        assert "uploaded small.csv" in k.ok(f"%cc_upload {upload} table").stream()
        k.ok("print(table.splitlines()[1])")
        badge_path = badge_log_path(k)
        clean_shutdown(k)
    finally:
        k.shutdown()
    [log] = logs_in(audit_dir)
    result = verify(jupyter_env, log, "--json")
    assert result.code == 0, result.out + result.err
    doc = result.doc
    yield Session(log, log.read_bytes(), badge_path, k, doc["timeline"][1:-1], doc)


def test_clean_session_verifies_with_every_kind_of_receipt(session: Session) -> None:
    doc = session.doc
    assert doc["status"] == "valid" and doc["first_bad"] is None and doc["findings"] == []
    assert doc["attestation"]["status"] == "simulation"
    assert doc["entries"] == len(EXPECTED_KINDS) == len(records(session.data))
    assert kinds(doc) == EXPECTED_KINDS
    assert doc["timeline"][-1]["reason"] == "shutdown" and doc["timeline"][-1]["count"] == len(EXPECTED_KINDS) - 1
    assert [e["seq"] for e in doc["timeline"]] == list(range(len(EXPECTED_KINDS)))
    assert all(e["signature_ok"] for e in doc["timeline"][1:])
    cell, result, error, silent, complete, inspect, is_complete, upload, after = session.receipts
    assert [r["status"] for r in session.receipts] == ["ok", "ok", "error", "ok", "ok", "ok", "ok", "ok", "ok"]
    assert [r["execution_count"] for r in session.receipts] == [1, 2, 3, 3, 3, 3, 3, 4, 5]  # %cc_upload was [4]
    assert is_complete["code"] == "for i in range(3):"
    assert result["code"] == "40 + 2" and result["code_sha256"] == code_hash("40 + 2").hex()
    assert complete["code"] == "pri" and inspect["code"] == "print"
    assert silent["code"].startswith("quiet = ") and silent["streams"].keys() == {"stdout"}
    assert upload["upload"] == {"name": "table", "size": len(UPLOAD_BYTES), "fmt": "text",
                                "sha256": hashlib.sha256(UPLOAD_BYTES).hexdigest()}
    assert upload["code"].startswith("%cc_upload ") and upload["code"].endswith(" table")  # the cell that asked
    assert [o[0] for o in error["outputs"]] == ["error"]
    assert cell["code"].startswith("import sys") and after["code"] == "print(table.splitlines()[1])"


def test_receipt_digests_match_what_the_frontend_received(session: Session) -> None:
    sent = [c for c in session.k.cells if not c.code.startswith("%cc_upload")]
    by_code = {r["code"]: r for r in session.receipts if r["kind"] in ("cell", "silent")}
    assert len(sent) == len(by_code) == 5
    for cell in sent:
        receipt = by_code[cell.code]
        # the frontend's view: every output of the request except the kernel's own badge
        streams, outputs = digests_of(cell.without_badge())
        assert (receipt["streams"], receipt["outputs"]) == (streams, outputs), cell.summary()
        assert receipt["output_count"] == len(outputs)
    assert session.receipts[0]["streams"].keys() == {"stdout", "stderr"}
    assert [o[0] for o in session.receipts[0]["outputs"]] == ["display_data"]
    assert [o[0] for o in session.receipts[1]["outputs"]] == ["execute_result"]


def test_log_file_is_private_and_named_on_the_badge(session: Session) -> None:
    assert session.badge_path == str(session.log)
    assert stat.S_IMODE(session.log.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.log.parent.stat().st_mode) == 0o700
    assert session.log.name.endswith(f"-{session.doc['session_id']}.cclog")


def test_show_prints_the_timeline(session: Session) -> None:
    shown = cli("audit", "show", session.log)
    assert shown.code == 0
    lines = shown.out.splitlines()
    assert "NOT verified" in lines[0] and len(lines) == 1 + len(EXPECTED_KINDS)
    assert " opening " in lines[1] and "SIMULATION" in lines[1] and " closing " in lines[-1]
    assert '"40 + 2"' in shown.out and "table (text, 19 bytes" in shown.out


@pytest.mark.parametrize("index", [1, 3, 7, len(EXPECTED_KINDS) - 1], ids=lambda i: f"entry{i}")
def test_a_flipped_byte_in_a_receipt_is_invalid_at_that_entry(
    jupyter_env: JupyterEnv, session: Session, tmp_path: Path, index: int
) -> None:
    start, end = records(session.data)[index]
    tampered = bytearray(session.data)
    tampered[(start + 8 + end) // 2] ^= 0x01  # a byte in the middle of the entry's payload
    copy = tmp_path / "tampered.cclog"
    copy.write_bytes(bytes(tampered))
    result = verify(jupyter_env, copy, "--json")
    assert result.code == 1
    doc = result.doc
    assert doc["status"] == "invalid" and doc["first_bad"]["index"] == index, doc["findings"]
    assert doc["verified_prefix"] == index
    text = verify(jupyter_env, copy)
    assert text.code == 1 and f"INVALID — first bad entry #{index} (check " in text.out


@pytest.mark.parametrize("keep", [1, 4, len(EXPECTED_KINDS) - 1], ids=lambda k: f"after-entry{k - 1}")
def test_a_log_cut_after_an_entry_is_unterminated_not_tampered(
    jupyter_env: JupyterEnv, session: Session, tmp_path: Path, keep: int
) -> None:
    end = records(session.data)[keep - 1][1]
    cut = tmp_path / "cut.cclog"
    cut.write_bytes(session.data[:end])
    result = verify(jupyter_env, cut, "--json")
    assert result.code == 1
    doc = result.doc
    assert doc["status"] == "unterminated" and doc["entries"] == keep
    assert [f["check"] for f in doc["findings"]] == ["log.unterminated"]
    assert doc["findings"][0]["index"] == keep and doc["verified_prefix"] == keep
    text = verify(jupyter_env, cut)
    assert text.code == 1 and "UNTERMINATED" in text.out and "not altered" in text.out and "INVALID" not in text.out
    # a torn write (the last record half written) is also just "cut short"
    torn = tmp_path / "torn.cclog"
    torn.write_bytes(session.data[:end + 20])
    doc = verify(jupyter_env, torn, "--json").doc
    assert doc["status"] == "unterminated" and {f["check"] for f in doc["findings"]} <= {"record.truncated",
                                                                                      "log.unterminated"}


# -- sessions with other settings ----------------------------------------------------------------------------


def test_worker_killed_mid_cell_is_receipted_and_the_log_closed_with_the_reason(
    jupyter_env: JupyterEnv, tmp_path: Path
) -> None:
    """The cells' process dies mid-cell: the monitor, which holds the audit key, receipts the cell in flight
    (status error) and closes the log saying why, so nothing of the session is lost."""
    audit_dir = tmp_path / "logs"
    with live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir))) as k:
        k.ok("before = 1", timeout=60)
        k.ok("print(before + 1)")
        crash = k.execute("import os\nos.kill(os.getpid(), 9)", timeout=10)
        assert crash.status == "error" and "enclave" in crash.content["evalue"].lower()
        k.km.shutdown_kernel(now=False)
    [log] = logs_in(audit_dir)
    result = verify(jupyter_env, log, "--json")
    assert result.code == 0, result.out
    doc = result.doc
    assert doc["status"] == "valid", doc["findings"]
    assert kinds(doc) == ["opening", "cell", "cell", "cell", "closing"]
    assert [e["code"] for e in doc["timeline"][1:4]] == ["before = 1", "print(before + 1)",
                                                         "import os\nos.kill(os.getpid(), 9)"]
    assert doc["timeline"][3]["status"] == "error"
    assert doc["timeline"][-1]["reason"].startswith("worker died: ") and "SIGKILL" in doc["timeline"][-1]["reason"]


def test_kernel_killed_after_its_receipts_were_logged_leaves_a_valid_unterminated_log(
    jupyter_env: JupyterEnv, tmp_path: Path
) -> None:
    audit_dir = tmp_path / "logs"
    with live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir))) as k:
        k.ok("before = 1", timeout=60)
        k.ok("print(before + 1)")
        [log] = logs_in(audit_dir)
        # wait for the last receipt to be in the file (it needs no further request; how soon it gets there is
        # tested deterministically in test_link_receipts.py), then kill: what the file holds must verify
        wait_until(lambda: len(records(log.read_bytes())) >= 3, timeout=10,
                   what="the last cell's receipt reaching the log")
        [enclave] = children_running("cc_kernel.enclave", k.pid)
        os.kill(k.pid, signal.SIGKILL)  # no shutdown, no closing entry
        wait_until(lambda: not proc_alive(k.pid), timeout=10, what="the kernel to die")
        wait_until(lambda: not proc_alive(enclave), timeout=10, what="the orphaned enclave to end its session")
    result = verify(jupyter_env, log, "--json")
    assert result.code == 1
    doc = result.doc
    assert doc["status"] == "unterminated", doc["findings"]
    assert kinds(doc) == ["opening", "cell", "cell"]
    assert [e["code"] for e in doc["timeline"][1:]] == ["before = 1", "print(before + 1)"]
    assert [f["check"] for f in doc["findings"]] == ["log.unterminated"]


def test_redaction_keeps_the_hash_and_drops_the_code(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    audit_dir = tmp_path / "logs"
    secret = "api_token = 'do-not-log-me'"
    with live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir),
                                                     CC_KERNEL_AUDIT_REDACT="1")) as k:
        k.ok(secret, timeout=60)
        k.ok("len(api_token)", silent=True)
        clean_shutdown(k)
    [log] = logs_in(audit_dir)
    assert b"do-not-log-me" not in log.read_bytes()
    result = verify(jupyter_env, log, "--json")
    assert result.code == 0, result.out
    cell, silent = result.doc["timeline"][1:3]
    assert (cell["kind"], silent["kind"]) == ("cell", "silent")
    for receipt, code in ((cell, secret), (silent, "len(api_token)")):
        assert receipt["code"] is None and receipt["redaction"] == "config"
        assert receipt["code_sha256"] == code_hash(code).hex()
    assert result.doc["timeline"][0]["settings"] == {"redact_code": True}


def test_output_a_thread_prints_between_cells_is_in_a_background_receipt(
    jupyter_env: JupyterEnv, tmp_path: Path
) -> None:
    """A thread a cell started prints after the cell ended (here: when the test sends it a byte): the output
    reaches the notebook, and the log, which verifies, holds it in a ``background`` receipt."""
    audit_dir = tmp_path / "logs"
    with socket.create_server(("127.0.0.1", 0)) as server, \
            live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir))) as k:
        port = server.getsockname()[1]
        k.ok("import socket, threading\n"
             f"conn = socket.create_connection(('127.0.0.1', {port}))\n"
             "t = threading.Thread(target=lambda: print('after the cell:', conn.recv(1).decode()))\n"
             "t.start()", timeout=60)
        peer, _ = server.accept()
        with peer:
            peer.sendall(b"!")
            assert k.wait_iopub(lambda msg: msg["msg_type"] == "stream"
                                and "after the cell: !" in msg["content"].get("text", ""), timeout=30)
        k.ok("t.join(); conn.close()")
        clean_shutdown(k)
    [log] = logs_in(audit_dir)
    result = verify(jupyter_env, log, "--json")
    assert result.code == 0, result.out
    assert kinds(result.doc) == ["opening", "cell", "background", "cell", "closing"]
    background = result.doc["timeline"][2]
    expected = OutputDigester()
    expected.add_stream("stdout", "after the cell: !\n")
    assert background["code"] == "" and background["streams"] == {n: h.hex() for n, h in expected.result().streams}


def test_audit_disabled_writes_no_log_and_cells_still_run(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    audit_dir = tmp_path / "logs"
    with live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir), CC_KERNEL_AUDIT="0")) as k:
        assert k.value("6 * 7") == "42"
        k.ok("print('silent')", silent=True)
        assert k.request("complete", "pri", 3)["content"]["matches"]
        badge = [m["content"]["data"] for m in k.iopub if is_badge(m)][-1]
        assert badge[BADGE_MIME]["audit_log"] == "" and "audit log: none" in badge["text/plain"]
        clean_shutdown(k)
    assert logs_in(audit_dir) == []


# -- a notebook and its log -------------------------------------------------------------------------------------

NOTEBOOK_CELLS = ["values = [3, 1, 2]", "print(sorted(values))", "sum(values)", "%cc_upload {data} rows"]


def test_notebook_cross_check_matches_then_reports_the_edited_cell(
    jupyter_env: JupyterEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    audit_dir = tmp_path / "logs"
    data = tmp_path / "rows.csv"
    data.write_text("a,b\n1,2\n")
    nb = nbformat.v4.new_notebook()
    sources = [s.format(data=data) for s in NOTEBOOK_CELLS]
    nb.cells = [nbformat.v4.new_markdown_cell("# audited"), *map(nbformat.v4.new_code_cell, sources)]
    nb.metadata["kernelspec"] = {"name": SIM, "display_name": SIM, "language": "python"}
    monkeypatch.setenv("CC_KERNEL_AUDIT_DIR", str(audit_dir))  # the kernel nbclient starts inherits it
    NotebookClient(nb, kernel_name=SIM, timeout=30, startup_timeout=60).execute()
    assert [c.execution_count for c in nb.cells[1:]] == [1, 2, 3, 4]
    path = tmp_path / "audited.ipynb"
    nbformat.write(nb, path)
    [log] = logs_in(audit_dir)

    result = verify(jupyter_env, log, "--notebook", path, "--json")
    assert result.code == 0, result.out
    cells = result.doc["cells"]
    assert [c["status"] for c in cells] == ["matching"] * 4  # the %cc_upload cell matches its upload receipt
    assert [c["receipt"] for c in cells] == [1, 2, 3, 4]
    assert [c["cell_id"] for c in cells] == [c.id for c in nb.cells[1:]]
    text = verify(jupyter_env, log, "--notebook", path)
    assert text.out.count("MATCHES") == 4

    edited = json.loads(path.read_text())
    edited["cells"][2]["source"] = "print(sorted(values, reverse=True))"  # edited after it ran
    edited["cells"].append(nbformat.v4.new_code_cell("print('never run')"))
    path.write_text(json.dumps(edited))
    result = verify(jupyter_env, log, "--notebook", path, "--json")
    assert result.code == 1  # the log itself is still valid: the notebook changed, and the verdict says so
    assert result.doc["status"] == "valid"
    assert result.doc["verdict"]["failures"] == ["notebook.edited", "notebook.unexecuted"]
    assert [c["status"] for c in result.doc["cells"]] == ["matching", "edited", "matching", "matching", "unexecuted"]
    assert result.doc["cells"][1]["receipt"] == 2
    assert "EDITED after execution" in verify(jupyter_env, log, "--notebook", path).out
