"""Producing logs: the enclave's ReceiptSigner (chain state, redaction, size bound) and the kernel's LogWriter
(checks each receipt against the opening entry BEFORE appending; refuses bad ones and stays failed)."""

from __future__ import annotations

import dataclasses

import pytest
from audit_support import T0_MS, anchors, audit_key, open_session

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.policy import load_policy
from cc_kernel.audit import LogWriter, OutputDigester, ReceiptSigner, UploadInfo, make_opening, verify_log
from cc_kernel.audit.format import (
    MAGIC,
    MAX_LISTED_OUTPUTS,
    ClosingEntry,
    ReceiptEntry,
    code_hash,
    decode_body_unverified,
    decode_payload_unverified,
)
from cc_kernel.audit.receipts import comm_input_text, expected_receipt
from cc_kernel.errors import AuditError, LogVerificationError
from cc_kernel.protocol import messages as m

SID = b"S" * 16
OPENING_HASH = b"o" * 32


def body_of(receipt: bytes) -> ReceiptEntry | ClosingEntry:
    body, _ = decode_payload_unverified(receipt)
    entry = decode_body_unverified(body)
    assert isinstance(entry, ReceiptEntry | ClosingEntry)
    return entry


def sign(signer: ReceiptSigner, code: str = "x = 1", **kw: object) -> bytes:
    args: dict[str, object] = {"kind": "cell", "execution_count": 1, "code": code,
                               "outputs": OutputDigester().result(), "status": "ok", "started_ms": 1, "ended_ms": 2}
    args.update(kw)
    return signer.sign_receipt(**args)  # type: ignore[arg-type]


def test_signer_chains_from_the_opening_hash_and_counts() -> None:
    signer = ReceiptSigner(audit_key(b"k"), SID)
    with pytest.raises(ValueError, match="start"):
        sign(signer)
    with pytest.raises(ValueError, match="32-byte"):
        signer.start(bytes(32))
    signer.start(OPENING_HASH)
    with pytest.raises(ValueError, match="already started"):
        signer.start(OPENING_HASH)
    first = body_of(sign(signer))
    second = body_of(sign(signer, "y = 2", execution_count=2))
    assert (first.seq, first.prev) == (1, OPENING_HASH)
    assert second.seq == 2
    closing = body_of(signer.sign_closing(ended_ms=5))
    assert isinstance(closing, ClosingEntry)
    assert (closing.seq, closing.count, closing.reason) == (3, 3, "shutdown")
    assert closing.last == closing.prev
    assert signer.closed
    with pytest.raises(ValueError, match="closing"):
        sign(signer)
    with pytest.raises(ValueError, match="closing"):
        signer.sign_closing(ended_ms=6)


def test_signer_validates_its_inputs() -> None:
    signer = ReceiptSigner(audit_key(b"k"), SID, opening_hash=OPENING_HASH)
    with pytest.raises(ValueError, match="kind"):
        sign(signer, kind="shell")
    with pytest.raises(ValueError, match="status"):
        sign(signer, status="fine")
    with pytest.raises(ValueError, match="schema"):
        sign(signer, kind="upload")  # an upload receipt needs its UploadInfo
    with pytest.raises(ValueError, match="16 bytes"):
        ReceiptSigner(audit_key(b"k"), b"short")
    upload = body_of(sign(signer, "", kind="upload", upload=UploadInfo("df", b"u" * 32, 10, "npy")))
    assert isinstance(upload, ReceiptEntry) and upload.upload is not None and upload.upload.name == "df"


def test_code_is_hashed_always_and_inlined_unless_redacted_or_too_big() -> None:
    signer = ReceiptSigner(audit_key(b"k"), SID, opening_hash=OPENING_HASH, max_inline_code=100)
    plain = body_of(sign(signer, "print('visible')"))
    assert isinstance(plain, ReceiptEntry)
    assert (plain.code, plain.redaction) == ("print('visible')", "none")
    hidden = body_of(sign(signer, "token = 'secret'", redact_code=True))
    assert isinstance(hidden, ReceiptEntry)
    assert (hidden.code, hidden.redaction, hidden.code_sha256) == (None, "config", code_hash("token = 'secret'"))
    big = body_of(sign(signer, "x" * 101))
    assert isinstance(big, ReceiptEntry)
    assert (big.code, big.redaction) == (None, "size")


def test_worst_case_receipt_fits_the_protocol_cap() -> None:
    """24 KiB of code, 256+ outputs, two streams, maximal names: still under MAX_RECEIPT (64 KiB)."""
    signer = ReceiptSigner(audit_key(b"k"), SID, opening_hash=OPENING_HASH)
    digests = OutputDigester()
    digests.add_stream("stdout", "x")
    digests.add_stream("stderr", "y")
    for i in range(MAX_LISTED_OUTPUTS * 4):
        digests.add_output("update_display_data", {"data": {"text/plain": str(i)}})
    code = "é" * (24 * 1024 // 2)  # exactly MAX_INLINE_CODE bytes of UTF-8
    receipt = sign(signer, code, outputs=digests.result(), cell_id="c" * m.MAX_NAME)
    assert len(receipt) <= m.MAX_RECEIPT
    m.AuditReceipt(req_id=1, receipt=receipt)  # the protocol accepts it
    assert m.encode_message(m.AuditReceipt(req_id=1, receipt=receipt))


def test_comm_input_text_is_canonical_json() -> None:
    text = comm_input_text("comm_msg", "w1", {"b": 1, "a": [1, 2]})
    assert text == '{"comm_id":"w1","data":{"a":[1,2],"b":1},"msg_type":"comm_msg"}'
    assert '"target_name":"jupyter.widget"' in comm_input_text("comm_open", "w1", {}, "jupyter.widget")


# --- the kernel's writer ----------------------------------------------------------------------------------------


def test_writer_output_is_a_valid_log() -> None:
    s = open_session()
    assert s.out[0].startswith(MAGIC)
    assert s.writer.count == 1
    for i in range(1, 4):
        appended = s.writer.append(s.cell(f"x = {i}", count=i, text=f"{i}\n"))
        assert (appended.index, appended.entry.seq) == (i, i)
    s.writer.append(s.signer.sign_closing(ended_ms=s.clock))
    assert s.writer.closed
    assert len(s.out) == 5  # one sink call per entry (the first with the file header)
    report = verify_log(s.data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    assert report.status == "valid", report.findings
    assert [type(e.entry).__name__ for e in report.entries] == ["OpeningEntry", *["ReceiptEntry"] * 3, "ClosingEntry"]
    with pytest.raises(AuditError, match="closed"):
        s.writer.append(s.out[1][8:])


@pytest.mark.parametrize("fault", ["other-key", "other-session", "replay", "skip", "garbage", "opening"])
def test_writer_refuses_a_bad_receipt_before_appending(fault: str) -> None:
    s = open_session()
    good = s.cell("a = 1")
    s.writer.append(good)
    written = list(s.out)
    if fault == "other-key":
        bad = sign(ReceiptSigner(audit_key(b"intruder"), s.session_id, opening_hash=s.writer.last_hash or b""))
        check = "entry.signature"
    elif fault == "other-session":
        other = ReceiptSigner(s.key, b"X" * 16)
        other.start(s.writer.last_hash or b"")
        bad, check = sign(other), "entry.session_id"
    elif fault == "replay":
        bad, check = good, "entry.seq"
    elif fault == "skip":
        s.cell("lost = 1")  # signed, never delivered
        bad, check = s.cell("b = 2"), "entry.seq"
    elif fault == "garbage":
        bad, check = b"\x93garbage", "entry.decode"
    else:
        bad, check = s.out[0][len(MAGIC) + 8 :], "entry.signature"  # the opening entry itself
    with pytest.raises(LogVerificationError) as info:
        s.writer.append(bad)
    assert (info.value.check, info.value.index) == (check, 2)
    assert s.out == written  # nothing appended
    assert s.writer.failed
    with pytest.raises(AuditError, match="earlier failure"):
        s.writer.append(s.cell("c = 3"))


def test_writer_admit_sees_the_verified_entry_and_can_refuse_it() -> None:
    """``admit`` runs after verification and before the write: a refusal writes nothing and ends the log."""
    s = open_session()
    seen: list[str] = []

    def admit(entry: ReceiptEntry | ClosingEntry) -> None:
        seen.append(entry.type)
        if isinstance(entry, ClosingEntry):
            raise AuditError("not this closing entry")

    s.writer.append(s.cell("a = 1"), admit=admit)
    written = list(s.out)
    with pytest.raises(LogVerificationError):  # a receipt that does not verify never reaches admit
        s.writer.append(b"\x93garbage", admit=admit)
    assert seen == ["receipt"]
    s2 = open_session(seed=b"admit")
    s2.writer.append(s2.cell("a = 1"), admit=admit)
    with pytest.raises(AuditError, match="not this closing entry"):
        s2.writer.append(s2.signer.sign_closing(ended_ms=s2.clock), admit=admit)
    assert len(s2.out) == 2 and s2.writer.failed and not s2.writer.closed
    assert s.out == written


def test_expected_receipt_names_each_receipted_request_and_only_those() -> None:
    def execute(silent: bool) -> m.ExecuteRequest:
        return m.ExecuteRequest(req_id=1, code="x", silent=silent, store_history=True, user_expressions={},
                                allow_stdin=False, execution_count=1, cell_id=None, kind="cell")

    data = {"v": [1, "é"]}
    assert expected_receipt(execute(False)) == ("cell", "x")
    assert expected_receipt(execute(True)) == ("silent", "x")
    assert expected_receipt(m.CompleteRequest(req_id=1, code="pri", cursor_pos=3)) == ("complete", "pri")
    assert expected_receipt(m.InspectRequest(req_id=1, code="len", cursor_pos=3, detail_level=0)) == (
        "inspect", "len")
    assert expected_receipt(m.IsCompleteRequest(req_id=1, code="if x:")) == ("is_complete", "if x:")
    assert expected_receipt(m.CommOpen(req_id=1, comm_id="c", target_name="t", data=data, metadata={},
                                       buffers=[])) == ("comm", comm_input_text("comm_open", "c", data, "t"))
    assert expected_receipt(m.CommMsg(req_id=1, comm_id="c", data=data, metadata={}, buffers=[])) == (
        "comm", comm_input_text("comm_msg", "c", data))
    assert expected_receipt(m.CommClose(req_id=1, comm_id="c", data={}, metadata={}, buffers=[])) == (
        "comm", comm_input_text("comm_close", "c", {}))
    assert expected_receipt(m.UploadStart(req_id=1, name="d", size=1, fmt="bytes", code="%cc_upload f d",
                                          execution_count=2, cell_id=None)) == ("upload", "%cc_upload f d")
    for other in (
        m.HistoryRequest(req_id=1, hist_access_type="tail", output=False, raw=True, session=0, start=0, stop=None,
                         n=1, pattern="", unique=False),
        m.CommInfoRequest(req_id=1, target_name=None),
        m.UploadChunk(req_id=1, data=b"x"),
        m.UploadEnd(req_id=1, sha256=bytes(32)),
        m.InputReply(req_id=1, value="", cancelled=True),
        m.Interrupt(before=2),
        m.Shutdown(restart=False),
        m.AuditOff(),
    ):
        assert expected_receipt(other) is None, type(other).__name__


def test_writer_misuse_and_sink_failure() -> None:
    writer = LogWriter(lambda data: None)
    with pytest.raises(AuditError, match="not open"):
        writer.append(b"x")
    s = open_session()
    with pytest.raises(ValueError, match="already open"):
        s.writer.open(s.opening)
    with pytest.raises(ValueError, match="opening entry"):
        LogWriter(lambda data: None).open(dataclasses.replace(s.opening, seq=1))

    def broken(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    failing = LogWriter(broken)
    with pytest.raises(AuditError, match="No space left"):
        failing.open(s.opening)
    assert failing.failed


def test_make_opening_refuses_mismatched_inputs() -> None:
    s = open_session()
    report = verify_log(s.data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    result = report.result
    assert result is not None
    policy = load_policy(s.opening.policy, source=s.opening.policy_source)
    kwargs = {"result": result, "envelope_bytes": s.opening.evidence, "tls_spki": s.opening.tls_spki,
              "policy": policy, "opened_ms": T0_MS, "versions": {}}
    assert make_opening(**kwargs).audit_pub == s.key.public_bytes  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tls_spki"):
        make_opening(**{**kwargs, "tls_spki": b"other"})  # type: ignore[arg-type]
    other_policy = load_policy(s.opening.policy + "\n# edited\n", source="x")
    with pytest.raises(ValueError, match="policy"):
        make_opening(**{**kwargs, "policy": other_policy})  # type: ignore[arg-type]
