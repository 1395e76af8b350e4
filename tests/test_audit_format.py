"""The session log format (docs/audit-log.md): hashes and their tags, output digests, canonical entries, schema
checks, and the incremental record decoder (fed whole and byte by byte)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from audit_support import audit_file
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_kernel.audit import format as fmt
from cc_kernel.audit.format import (
    MAGIC,
    MAX_LISTED_OUTPUTS,
    NEED_DATA,
    ClosingEntry,
    LogDecoder,
    OutputDigester,
    ReceiptEntry,
    Record,
    UploadInfo,
    decode_body_unverified,
    decode_payload_unverified,
    encode_body,
    encode_payload,
    encode_record,
)
from cc_kernel.crypto.hashing import (
    TAG_AUDIT_CODE,
    TAG_AUDIT_ENTRY,
    TAG_AUDIT_OUTPUT,
    TAG_AUDIT_SIGNATURE,
    lp,
    tagged_hash,
)
from cc_kernel.errors import AuditError, LogVerificationError
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m

FAST = settings(deadline=None, database=None, max_examples=60)
SID = b"s" * 16
H = b"h" * 32


def receipt(**changes: Any) -> ReceiptEntry:
    fields: dict[str, Any] = {
        "session_id": SID, "seq": 1, "prev": H, "kind": "cell", "execution_count": 1, "cell_id": "c1",
        "code_sha256": fmt.code_hash("x = 1"), "code": "x = 1", "redaction": "none", "streams": (),
        "outputs": (), "output_count": 0, "status": "ok", "started_ms": 1, "ended_ms": 2, "upload": None,
    }
    fields.update(changes)
    return ReceiptEntry(**fields)


def raw_body(entry: ReceiptEntry | ClosingEntry) -> dict[str, Any]:
    return codec.unpackb(encode_body(entry))  # type: ignore[no-any-return]


def schema_error(raw: dict[str, Any]) -> LogVerificationError:
    with pytest.raises(LogVerificationError) as info:
        decode_body_unverified(codec.packb(raw))
    return info.value


# --- hashes ---------------------------------------------------------------------------------------------------


def test_hashes_are_tagged_and_length_prefixed() -> None:
    body = b"body bytes"
    assert fmt.entry_hash(body) == tagged_hash(TAG_AUDIT_ENTRY, body)
    assert fmt.entry_hash(body) == hashlib.sha256(lp(TAG_AUDIT_ENTRY) + lp(body)).digest()
    assert fmt.signed_message(H) == lp(TAG_AUDIT_SIGNATURE) + lp(H)
    assert fmt.code_hash("print(1)") == hashlib.sha256(lp(TAG_AUDIT_CODE) + lp(b"print(1)")).digest()
    text_sha = hashlib.sha256(b"hello\n").digest()
    assert fmt.stream_digest("stdout", text_sha) == tagged_hash(TAG_AUDIT_OUTPUT, b"stream", b"stdout", text_sha)
    # the four tags are distinct, so no hash of one kind can stand in for another
    assert len({TAG_AUDIT_ENTRY, TAG_AUDIT_CODE, TAG_AUDIT_OUTPUT, TAG_AUDIT_SIGNATURE}) == 4
    with pytest.raises(ValueError, match="32 bytes"):
        fmt.signed_message(b"short")


def test_output_digest_covers_exactly_the_documented_fields() -> None:
    data = {"text/plain": "1", "image/png": "iVBO"}
    expected = tagged_hash(TAG_AUDIT_OUTPUT, b"display_data", codec.packb({"data": data, "metadata": {}}))
    assert fmt.output_digest("display_data", {"data": data, "metadata": {}}) == expected
    # transient (display ids) and execution_count are not covered; absent metadata reads as {}
    assert fmt.output_digest("display_data", {"data": data, "transient": {"display_id": "x"}}) == expected
    result = fmt.output_digest("execute_result", {"data": data, "metadata": {}, "execution_count": 7})
    assert result == fmt.output_digest("execute_result", {"data": data, "metadata": {}, "execution_count": 8})
    assert result != expected  # the kind is hashed too
    with pytest.raises(ValueError, match="no 'ename'"):
        fmt.output_digest("error", {"evalue": "x", "traceback": []})
    with pytest.raises(ValueError, match="not a rich output kind"):
        fmt.output_digest("stream", {"name": "stdout", "text": ""})


def test_digester_from_messages_equals_digester_from_jupyter_content() -> None:
    from_messages, from_content = OutputDigester(), OutputDigester()
    msgs: list[m.Message] = [
        m.Stream(req_id=1, name="stdout", text="a"),
        m.DisplayData(req_id=1, data={"text/plain": "x"}, metadata={"k": 1}, transient={"display_id": "d"}),
        m.Stream(req_id=1, name="stderr", text="warn\n"),
        m.Stream(req_id=1, name="stdout", text="b\n"),
        m.UpdateDisplayData(req_id=1, data={"text/plain": "y"}, metadata={}, transient={"display_id": "d"}),
        m.ExecuteResult(req_id=1, execution_count=3, data={"text/plain": "3"}, metadata={}),
        m.Error(req_id=1, ename="E", evalue="v", traceback=["t"]),
        m.ClearOutput(req_id=1, wait=True),
        m.CommOpen(req_id=1, comm_id="c", target_name="t", data={}, metadata={}, buffers=[b"\x00"]),
        m.CommMsg(req_id=1, comm_id="c", data={"a": 1}, metadata={}, buffers=[]),
        m.CommClose(req_id=1, comm_id="c", data={}, metadata={}, buffers=[]),
    ]
    for msg in msgs:
        from_messages.add(msg)
    from_content.add_stream("stdout", "a")
    from_content.add_output("display_data", {"data": {"text/plain": "x"}, "metadata": {"k": 1}})
    from_content.add_stream("stderr", "warn\n")
    from_content.add_stream("stdout", "b\n")
    from_content.add_output("update_display_data", {"data": {"text/plain": "y"}})
    from_content.add_output("execute_result", {"data": {"text/plain": "3"}, "metadata": {}})
    from_content.add_output("error", {"ename": "E", "evalue": "v", "traceback": ["t"]})
    from_content.add_output("clear_output", {"wait": True})
    from_content.add_output("comm_open", {"comm_id": "c", "target_name": "t", "data": {}, "buffers": [b"\x00"]})
    from_content.add_output("comm_msg", {"comm_id": "c", "data": {"a": 1}})
    from_content.add_output("comm_close", {"comm_id": "c", "data": {}})
    a, b = from_messages.result(), from_content.result()
    assert a == b
    assert [name for name, _ in a.streams] == ["stderr", "stdout"]
    assert dict(a.streams)["stdout"] == fmt.stream_digest("stdout", hashlib.sha256(b"ab\n").digest())
    assert [kind for kind, _ in a.outputs] == [
        "display_data", "update_display_data", "execute_result", "error", "clear_output", "comm_open", "comm_msg",
        "comm_close",
    ]
    with pytest.raises(TypeError, match="not an output message"):
        from_messages.add(m.Ping(seq=1))


@FAST
@given(st.lists(st.text(max_size=20), max_size=8))
def test_stream_digest_does_not_depend_on_chunking(chunks: list[str]) -> None:
    """Streams are flushed in timing-dependent chunks; the digest covers the concatenated text only."""
    split, whole = OutputDigester(), OutputDigester()
    for chunk in chunks:
        split.add_stream("stdout", chunk)
    whole.add_stream("stdout", "".join(chunks))
    assert split.result() == whole.result()


def test_outputs_past_the_listing_cap_fold_into_one_overflow_item() -> None:
    d = OutputDigester()
    for i in range(MAX_LISTED_OUTPUTS + 10):
        d.add_output("display_data", {"data": {"text/plain": str(i)}})
    result = d.result()
    assert result.output_count == MAX_LISTED_OUTPUTS + 10
    assert len(result.outputs) == MAX_LISTED_OUTPUTS
    assert result.outputs[-1][0] == "overflow"
    exactly = OutputDigester()
    for i in range(MAX_LISTED_OUTPUTS):
        exactly.add_output("display_data", {"data": {"text/plain": str(i)}})
    assert all(kind == "display_data" for kind, _ in exactly.result().outputs)


# --- entries --------------------------------------------------------------------------------------------------


def test_entries_round_trip_canonically() -> None:
    upload = receipt(kind="upload", code="", code_sha256=fmt.code_hash(""), cell_id=None,
                     upload=UploadInfo(name="df", sha256=b"u" * 32, size=3, fmt="bytes"))
    digests = OutputDigester()
    digests.add(m.Stream(req_id=1, name="stdout", text="x"))
    digests.add_output("display_data", {"data": {"text/plain": "x"}})
    d = digests.result()
    rich = receipt(streams=d.streams, outputs=d.outputs, output_count=d.output_count, redaction="config", code=None)
    closing = ClosingEntry(session_id=SID, seq=5, prev=H, count=5, last=H, ended_ms=9, reason="shutdown")
    for entry in (receipt(), upload, rich, closing):
        body = encode_body(entry)
        assert decode_body_unverified(body) == entry
        assert codec.packb(codec.unpackb(body)) == body


def test_non_canonical_encodings_are_rejected() -> None:
    body = encode_body(receipt())
    raw = codec.unpackb(body)
    unsorted = msgpack.packb(dict(reversed(list(raw.items()))), use_bin_type=True)
    with pytest.raises(LogVerificationError, match="not canonically encoded") as info:
        decode_body_unverified(unsorted)
    assert info.value.check == "entry.decode"
    # a wide integer encoding of a small number decodes to the same value: refused
    wide = body.replace(codec.packb("seq") + b"\x01", codec.packb("seq") + b"\xcd\x00\x01")
    assert wide != body
    with pytest.raises(LogVerificationError, match="not canonically encoded"):
        decode_body_unverified(wide)
    with pytest.raises(LogVerificationError) as info:
        decode_payload_unverified(msgpack.packb({"sig": b"", "body": body}, use_bin_type=True))
    assert info.value.check == "entry.decode"
    with pytest.raises(LogVerificationError, match='"body"'):
        decode_payload_unverified(codec.packb({"body": "text", "sig": b""}))


@pytest.mark.parametrize(
    ("change", "check", "match"),
    [
        ({"v": 2}, "entry.version", "version"),
        ({"v": True}, "entry.version", "version"),
        ({"type": "note"}, "entry.type", "unknown entry type"),
        ({"extra": 1}, "entry.schema", "unknown field 'extra'"),
        ({"seq": -1}, "entry.schema", "'seq'"),
        ({"seq": True}, "entry.schema", "'seq'"),
        ({"session_id": b"short"}, "entry.schema", "'session_id'"),
        ({"kind": "shell"}, "entry.schema", "not one of"),
        ({"status": "maybe"}, "entry.schema", "not one of"),
        ({"code": None}, "entry.schema", "nil exactly when"),
        ({"code": "y = 2"}, "receipt.code_sha256", "does not hash"),
        ({"output_count": 3}, "entry.schema", "output_count"),
        ({"outputs": [["overflow", H], ["display_data", H]]}, "entry.schema", "overflow only last"),
        ({"outputs": [["stream", H]]}, "entry.schema", "outputs"),
        ({"streams": {"stdout": b"x"}}, "entry.schema", "streams"),
        ({"upload": {"name": "a", "sha256": H, "size": 1, "fmt": "bytes"}}, "entry.schema", "upload"),
        ({"cell_id": 5}, "entry.schema", "cell_id"),
    ],
)
def test_schema_violations_name_the_field(change: dict[str, Any], check: str, match: str) -> None:
    raw = raw_body(receipt())
    raw.update(change)
    error = schema_error(raw)
    assert error.check == check
    assert match in error.message


def test_missing_field_and_upload_without_info() -> None:
    raw = raw_body(receipt())
    del raw["status"]
    assert "no field 'status'" in schema_error(raw).message
    raw = raw_body(receipt())
    raw["kind"] = "upload"
    assert "upload" in schema_error(raw).message
    with pytest.raises(ValueError, match="does not fit the log schema"):
        encode_body(receipt(kind="mystery"))


# --- records and the incremental decoder ----------------------------------------------------------------------


def test_record_framing() -> None:
    record = encode_record(b"abc")
    assert record == b"\x00\x00\x00\x03\xff\xff\xff\xfcabc"
    with pytest.raises(ValueError):
        encode_record(b"")
    assert encode_payload(b"b", b"") == codec.packb({"body": b"b", "sig": b""})


def decode_all(data: bytes, *, step: int | None = None) -> tuple[list[Record], fmt.Truncation | None]:
    decoder = LogDecoder()
    records: list[Record] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        decoder.feed(chunk)
        while isinstance(rec := decoder.next_record(), Record):
            records.append(rec)
        assert rec is NEED_DATA
    return records, decoder.end()


def test_decoder_whole_and_byte_by_byte_agree() -> None:
    data = audit_file("valid.log")
    whole, end = decode_all(data)
    assert end is None
    assert len(whole) == 13
    assert decode_all(data, step=1) == (whole, None)
    assert decode_all(data, step=977) == (whole, None)
    assert whole[0].offset == len(MAGIC)
    assert [r.index for r in whole] == list(range(13))


def test_decoder_reports_a_cut_tail_and_a_corrupt_header() -> None:
    data = audit_file("valid.log")
    records, _ = decode_all(data)
    cut = data[: records[3].offset + 5]
    got, end = decode_all(cut, step=1)
    assert len(got) == 3 and end is not None
    assert (end.index, end.offset, end.have, end.need) == (3, records[3].offset, 5, None)
    _, end = decode_all(data[: records[3].offset + 20])
    assert end is not None and end.need == 8 + len(records[3].payload)
    corrupt = bytearray(data)
    corrupt[records[2].offset + 7] ^= 0x10
    decoder = LogDecoder()
    decoder.feed(bytes(corrupt))
    for _ in range(2):
        decoder.next_record()
    with pytest.raises(LogVerificationError) as info:
        decoder.next_record()
    assert (info.value.check, info.value.index) == ("record.length", 2)
    with pytest.raises(LogVerificationError):  # the decoder stays failed
        decoder.next_record()


def test_decoder_rejects_non_logs_early() -> None:
    decoder = LogDecoder()
    decoder.feed(b"cc-audit")  # a prefix of the magic: wait for more
    assert decoder.next_record() is NEED_DATA
    with pytest.raises(AuditError, match="not a cc-kernel audit log"):
        decoder.feed(b"-XXX")
    with pytest.raises(AuditError, match="empty"):
        LogDecoder().end()
    short = LogDecoder()
    short.feed(b"cc-")
    with pytest.raises(AuditError, match="shorter than its header"):
        short.end()
    with pytest.raises(AuditError, match="not a cc-kernel audit log"):
        LogDecoder().feed(b"\x89PNG\r\n")


def test_decoder_refuses_records_above_its_cap() -> None:
    decoder = LogDecoder(max_record_size=10)
    decoder.feed(MAGIC + encode_record(b"x" * 11))
    with pytest.raises(LogVerificationError, match="corrupt record header"):
        decoder.next_record()
