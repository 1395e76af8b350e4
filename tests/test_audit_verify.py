"""The offline verifier against the committed vectors (tests/vectors/audit/manifest.json): every expected status,
first bad entry, check and error class, and the full list of findings; the property that no single changed byte
verifies; cut-short logs are unterminated (not tampered); notebook matching."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from audit_support import anchors, audit_file, manifest, open_session, policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.audit import LogReport, match_notebook, verify_log
from cc_kernel.audit.format import LogDecoder, Record
from cc_kernel.audit.verify import read_log_unverified
from cc_kernel.errors import AuditError, LogUnterminated, LogVerificationError

CASES = manifest()["cases"]
VALID = audit_file("valid.log")


def verify(data: bytes, policy_name: str | None = None, **kw: Any) -> LogReport:
    return verify_log(data, policy=policy(policy_name) if policy_name else None, anchors=hardware_anchors(),
                      simulation_anchors=anchors(), **kw)


def case_data(case: dict[str, Any]) -> bytes:
    data = bytearray(audit_file(case["file"]))
    if "flip" in case:
        data[case["flip"]["offset"]] ^= case["flip"]["xor"]
    return bytes(data)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case: dict[str, Any]) -> None:
    data = case_data(case)
    expect = case["expect"]
    if "raises" in expect:
        with pytest.raises(AuditError):
            verify(data, case.get("policy"))
        return
    report = verify(data, case.get("policy"))
    assert report.status == expect["status"]
    assert [[f.index, f.check] for f in report.findings] == case["findings"]
    if expect["status"] == "valid":
        assert report.valid and report.first is None and report.closing is not None
        assert report.result is not None and report.result.status == "simulation"
        assert report.verified_prefix == len(report.entries)
        report.raise_for_status()
        return
    first = report.first
    assert first is not None
    assert (first.index, first.check, first.error) == (expect["index"], expect["check"], expect["error"])
    error_type = LogUnterminated if expect["status"] == "unterminated" else LogVerificationError
    with pytest.raises(error_type) as info:
        report.raise_for_status()
    assert (info.value.index, info.value.check) == (expect["index"], expect["check"])
    if expect["status"] == "invalid":
        assert not isinstance(info.value, LogUnterminated)
        assert report.verified_prefix == expect["index"]


def test_every_negative_vector_has_its_positive_twin() -> None:
    """Each structural negative file differs from valid.log, and every flip hits a byte inside valid.log."""
    for case in CASES:
        if "flip" in case:
            assert 0 <= case["flip"]["offset"] < len(VALID)
        elif case["expect"].get("status") != "valid":
            assert audit_file(case["file"]) != VALID or "policy" in case


def test_manifest_covers_the_required_cases() -> None:
    names = {c["name"] for c in CASES}
    required = {"valid", "dropped-middle", "duplicated", "swapped", "truncated-no-closing", "torn-tail",
                "spliced-other-session", "spliced-same-key", "wrong-audit-key", "simulation-under-hardware-policy",
                "garbage", "empty", "flip-entry4.<signature>", "flip-magic"}
    assert required <= names
    receipt_fields = {"v", "type", "session_id", "seq", "prev", "kind", "execution_count", "cell_id", "code_sha256",
                      "code", "redaction", "streams", "outputs", "output_count", "status", "started_ms", "ended_ms",
                      "upload"}
    assert {f"flip-entry4.{name}" for name in receipt_fields} <= names
    assert {f"flip-entry9.{name}" for name in receipt_fields} <= names
    assert {f"flip-entry12.{name}" for name in ("count", "last", "seq", "prev", "session_id", "reason")} <= names


@settings(deadline=None, database=None, max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_single_changed_byte_verifies(data: st.DataObject) -> None:
    """Flipping any bits of any one byte of a valid log is always detected: never "valid"."""
    offset = data.draw(st.integers(0, len(VALID) - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = bytearray(VALID)
    tampered[offset] ^= mask
    try:
        report = verify(bytes(tampered))
    except AuditError:
        return  # the file header: not a log any more
    assert report.status != "valid"


@settings(deadline=None, database=None, max_examples=100)
@given(st.integers(0, len(VALID) - 1))
def test_a_cut_log_is_never_valid_and_never_called_tampered(cut: int) -> None:
    """Cutting the file anywhere gives "unterminated" (everything present verifies), never "valid" or "invalid"."""
    try:
        report = verify(VALID[:cut])
    except AuditError:
        assert cut < 16  # inside the magic
        return
    assert report.status == "unterminated", report.findings
    assert all(f.terminal for f in report.findings)


def test_dropping_any_middle_entry_is_pinpointed() -> None:
    decoder = LogDecoder()
    decoder.feed(VALID)
    records = []
    while isinstance(rec := decoder.next_record(), Record):
        records.append(rec)
    head = VALID[: records[0].offset]
    raw = [VALID[r.offset : r.offset + 8 + len(r.payload)] for r in records]
    for drop in range(1, len(raw) - 1):
        report = verify(head + b"".join(raw[:drop] + raw[drop + 1 :]))
        first = report.first
        assert report.status == "invalid"
        assert first is not None and (first.index, first.check) == (drop, "entry.seq")


def test_verification_uses_the_recorded_time_not_now() -> None:
    """Certificates expire: re-verifying decades later still checks the evidence at the recorded time."""
    late = verify(VALID, now=datetime(2060, 1, 1, tzinfo=UTC))
    assert late.valid
    early = verify(VALID, now=datetime(2020, 1, 1, tzinfo=UTC))
    assert early.valid and any("later than now" in note for note in early.notes)


def test_given_policy_is_reported_and_recorded_one_is_the_default() -> None:
    given_report = verify(VALID, "policy-sim.toml")
    assert given_report.valid and given_report.policy_used == "given"
    assert verify(VALID).policy_used == "embedded"


def test_without_simulation_anchors_simulated_evidence_is_untrusted() -> None:
    report = verify_log(VALID, policy=None, anchors=hardware_anchors(), simulation_anchors=None)
    first = report.first
    assert report.status == "invalid"
    assert first is not None and (first.index, first.error) == (0, "UntrustedRoot")
    assert "SIMULATED TEE" in first.message


def test_a_long_log_verifies_and_a_flip_deep_inside_is_pinpointed() -> None:
    s = open_session(seed=b"long")
    for i in range(1, 1500):
        s.writer.append(s.cell(f"x = {i}", count=i))
    s.writer.append(s.signer.sign_closing(ended_ms=s.clock))
    data = bytearray(s.data)
    assert verify(bytes(data)).valid
    target = sum(len(chunk) for chunk in s.out[:1234]) + 30  # inside entry 1234's payload
    data[target] ^= 0x40
    report = verify(bytes(data))
    first = report.first
    assert first is not None and first.index == 1234 and first.check == "entry.signature"


def test_log_report_is_only_made_by_verify_log() -> None:
    with pytest.raises(TypeError, match="only produced by verify_log"):
        LogReport(status="valid", findings=(), entries=(), opening=None, closing=None, result=None,
                  policy_used="none", policy_sha256=None, verified_prefix=0)


def test_a_log_report_cannot_be_changed_into_a_valid_one() -> None:
    report = verify(VALID[: len(VALID) // 2])
    assert report.status == "unterminated"
    with pytest.raises(TypeError, match="LogReport is only produced by verify_log"):
        dataclasses.replace(report, status="valid", findings=())


def test_findings_render_as_json() -> None:
    flip = next(c for c in CASES if c["name"] == "flip-entry4.code")
    report = verify(case_data(flip))
    doc = json.loads(json.dumps([f.to_json_dict() for f in report.findings]))
    assert doc[0]["index"] == 4 and doc[0]["check"] == "entry.signature"
    assert isinstance(doc[0]["got"], str)  # bytes as hex


def test_read_log_unverified_parses_for_display() -> None:
    log = read_log_unverified(VALID)
    assert len(log.entries) == 13 and not log.problems
    flip = next(c for c in CASES if c["name"] == "flip-entry4.<payload key 'body'>")
    broken = read_log_unverified(case_data(flip))
    assert [(p.index, p.check) for p in broken.problems] == [(4, "entry.decode")]
    torn = read_log_unverified(audit_file("torn-tail.log"))
    assert [(p.index, p.check) for p in torn.problems] == [(12, "record.truncated")]
    with pytest.raises(AuditError):
        read_log_unverified(b"")


# --- notebooks ------------------------------------------------------------------------------------------------


def test_match_notebook() -> None:
    expected = manifest()["notebook"]
    notebook = json.loads(audit_file(expected["file"]))
    report = verify(audit_file(expected["log"]))
    cells = match_notebook(report, notebook)
    assert [[c.status, c.receipt] for c in cells] == expected["cells"]
    by_id = {c.cell_id: c for c in cells}
    assert "edited after it ran" in by_id["c-sqrt"].note
    assert "no verified receipt of this session" in by_id["c-forged"].note
    assert by_id["c-secret"].status == "matching"  # a redacted receipt still matches by its code hash
    assert [c.cell for c in cells] == [1, 2, 3, 4, 5, 6]  # the markdown cell 0 is skipped


def test_match_notebook_only_trusts_the_verified_prefix() -> None:
    notebook = json.loads(audit_file("notebook.ipynb"))
    flip = next(c for c in CASES if c["name"] == "flip-entry4.code")
    cells = match_notebook(verify(case_data(flip)), notebook)
    statuses = {c.cell_id: c.status for c in cells}
    assert statuses["c-hello"] == "matching"  # entry 1: before the first bad entry
    assert statuses["c-html"] == "unexecuted"  # entry 4 is the altered one: not trusted
    assert statuses["c-secret"] == "unexecuted"  # after it: not trusted either


@pytest.mark.parametrize("notebook", [{}, {"cells": "x"}, {"cells": [1]}, {"cells": [{"cell_type": "code",
                                                                                        "source": 5}]}])
def test_match_notebook_rejects_non_notebooks(notebook: dict[str, Any]) -> None:
    with pytest.raises(AuditError):
        match_notebook(verify(VALID), notebook)


@settings(deadline=None, database=None, max_examples=200)
@given(st.binary(max_size=600), st.integers(0, 12))
def test_hostile_bytes_after_the_magic_are_findings_not_crashes(tail: bytes, keep: int) -> None:
    """Whatever follows a valid prefix, the verifier and the display parser return; the log is never valid."""
    decoder = LogDecoder()
    decoder.feed(VALID)
    records = []
    while isinstance(rec := decoder.next_record(), Record):
        records.append(rec)
    prefix = VALID[: records[keep].offset] if keep else VALID[:16]
    report = verify(prefix + tail)
    assert report.status != "valid"
    read_log_unverified(prefix + tail)


def test_a_log_without_its_opening_entry_is_invalid_at_entry_0() -> None:
    decoder = LogDecoder()
    decoder.feed(VALID)
    first = decoder.next_record()
    assert isinstance(first, Record)
    without = VALID[:16] + VALID[first.offset + 8 + len(first.payload) :]
    report = verify(without)
    assert report.first is not None and (report.first.index, report.first.check) == (0, "entry.type")
    assert report.result is None


def test_anchor_misuse_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="simulation_anchors="):
        verify_log(VALID, policy=None, anchors=anchors(), simulation_anchors=None)
    with pytest.raises(ValueError, match="only hold simulation roots"):
        verify_log(VALID, policy=None, anchors=hardware_anchors(), simulation_anchors=hardware_anchors())
