"""The opening entry's ``client_key_sha256`` (docs/audit-log.md §4.1): written by the kernel, optional in logs
written before it existed, shown by ``audit show`` and ``audit verify``."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from audit_support import VERIFIED_AT, anchors, open_session

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding
from cc_kernel.attestation.envelope import parse_envelope_unverified
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.audit.format import (
    OpeningEntry,
    OutputDigester,
    decode_body_unverified,
    encode_body,
    encode_payload,
    encode_record,
)
from cc_kernel.audit.receipts import LogWriter, ReceiptSigner, make_opening
from cc_kernel.audit.render import entry_json, report_json, report_lines, timeline_lines
from cc_kernel.audit.verify import read_log_unverified, verify_log
from cc_kernel.errors import LogVerificationError
from cc_kernel.protocol import codec

KEY = bytes(range(32))


def _opening(**changes: object) -> OpeningEntry:
    return dataclasses.replace(open_session().opening, **changes)  # type: ignore[arg-type]


def test_the_opening_carries_the_client_key_and_round_trips() -> None:
    opening = _opening(client_key_sha256=KEY)
    body = encode_body(opening)
    assert codec.unpackb(body, max_size=1 << 20)["client_key_sha256"] == KEY
    decoded = decode_body_unverified(body)
    assert isinstance(decoded, OpeningEntry) and decoded == opening
    local = decode_body_unverified(encode_body(_opening(client_key_sha256=None)))
    assert isinstance(local, OpeningEntry)
    assert local.client_key_sha256 is None and local.client_key_recorded


def test_an_opening_written_before_the_field_existed_still_decodes_unchanged() -> None:
    raw = codec.unpackb(encode_body(_opening()), max_size=1 << 20)
    del raw["client_key_sha256"]
    body = codec.packb(raw)
    decoded = decode_body_unverified(body)
    assert isinstance(decoded, OpeningEntry)
    assert decoded.client_key_sha256 is None and not decoded.client_key_recorded
    assert encode_body(decoded) == body  # its hash, which the enclave's first receipt chains to, is unchanged


def test_a_client_key_of_the_wrong_size_is_a_schema_error() -> None:
    raw = codec.unpackb(encode_body(_opening()), max_size=1 << 20)
    raw["client_key_sha256"] = b"short"
    with pytest.raises(LogVerificationError) as info:
        decode_body_unverified(codec.packb(raw))
    assert info.value.check == "entry.schema"
    assert "opening field 'client_key_sha256' must be 32-byte binary" in str(info.value)
    with pytest.raises(ValueError, match="client_key_sha256 must be a 32-byte SHA-256 digest"):
        s = open_session()
        make_opening(result=_result_of(s.opening), envelope_bytes=s.opening.evidence, tls_spki=s.opening.tls_spki,
                     policy=_policy_of(s.opening), opened_ms=0, versions={}, client_key_sha256=b"short")


def _result_of(opening: OpeningEntry) -> AttestationResult:
    env = parse_envelope_unverified(opening.evidence)
    verified = verify_evidence(env, anchors=hardware_anchors(), now=VERIFIED_AT, simulation_anchors=anchors())
    bound = check_binding(verified, tls_spki=opening.tls_spki, audit_pub=opening.audit_pub, nonce=opening.nonce,
                          session_id=opening.session_id)
    return appraise(bound, _policy_of(opening), now=VERIFIED_AT)


def _policy_of(opening: OpeningEntry) -> Policy:
    return load_policy(opening.policy, source=opening.policy_source)


def test_make_opening_records_the_key_it_is_given() -> None:
    s = open_session()
    opening = make_opening(result=_result_of(s.opening), envelope_bytes=s.opening.evidence,
                           tls_spki=s.opening.tls_spki, policy=_policy_of(s.opening), opened_ms=0, versions={},
                           client_key_sha256=KEY)
    assert opening.client_key_sha256 == KEY and opening.client_key_recorded


def _log_with(opening: OpeningEntry) -> bytes:
    """A session log whose opening is ``opening`` and whose enclave chained to it (then closed)."""
    s = open_session()
    out: list[bytes] = []
    writer = LogWriter(out.append)
    signer = ReceiptSigner(s.key, opening.session_id, opening_hash=writer.open(opening))
    writer.append(signer.sign_receipt(kind="cell", execution_count=1, code="x = 1",
                                      outputs=OutputDigester().result(), status="ok", started_ms=1, ended_ms=2))
    writer.append(signer.sign_closing(ended_ms=3, reason="shutdown"))
    return b"".join(out)


@pytest.mark.parametrize(
    ("key", "text"),
    [(KEY, f"client key sha256 {KEY.hex()}"), (None, "no client key (local mode)")],
)
def test_show_and_verify_print_the_client_key(key: bytes | None, text: str) -> None:
    opening = open_session().opening
    data = _log_with(dataclasses.replace(opening, client_key_sha256=key))
    log = read_log_unverified(data)
    assert text in timeline_lines(log.entries)[0]
    assert entry_json(log.entries[0])["client_key_sha256"] == (key.hex() if key else None)
    report = verify_log(data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors(),
                        now=datetime(2025, 6, 3, tzinfo=UTC))
    assert report.status == "valid", report.findings
    assert f"{text} (recorded by the kernel)" in report_lines(report)
    assert json.loads(json.dumps(report_json(report)))["client_key_sha256"] == (key.hex() if key else None)


def test_an_older_log_without_the_field_verifies_and_says_so() -> None:
    opening = open_session().opening
    raw = codec.unpackb(encode_body(opening), max_size=1 << 20)
    del raw["client_key_sha256"]
    old = decode_body_unverified(codec.packb(raw))
    assert isinstance(old, OpeningEntry)
    data = _log_with(old)
    report = verify_log(data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors(),
                        now=datetime(2025, 6, 3, tzinfo=UTC))
    assert report.status == "valid", report.findings
    assert "client key not recorded (older log) (recorded by the kernel)" in report_lines(report)


def test_removing_the_client_key_from_an_opening_breaks_the_chain() -> None:
    """The field is optional for old logs, but stripping it from a new one changes the opening's hash, which the
    enclave's first signed receipt chained to."""
    opening = dataclasses.replace(open_session().opening, client_key_sha256=KEY)
    data = _log_with(opening)
    log = read_log_unverified(data)
    raw = codec.unpackb(encode_body(opening), max_size=1 << 20)
    del raw["client_key_sha256"]
    first = log.entries[0]
    stripped = encode_record(encode_payload(codec.packb(raw), b""))
    tampered = data[: first.offset] + stripped + data[first.offset + 8 + first.size:]  # 8: the record header
    report = verify_log(tampered, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors(),
                        now=datetime(2025, 6, 3, tzinfo=UTC))
    assert report.status == "invalid"
    assert [(f.index, f.check) for f in report.findings if f.check == "opening.chain"] == [(0, "opening.chain")]
