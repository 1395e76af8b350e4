"""Hostile input to every parser gets that parser's documented error, never a RecursionError or a traceback.

Deep nesting (100 000 nested arrays) in a policy TOML, a session log (msgpack entry and the JSON result it
records), a protocol frame, CBOR evidence (RA-TLS, Nitro), JSON evidence (Intel collateral), an evidence
envelope and a notebook; then a Hypothesis fuzz test per parser over nested and arbitrary input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
from audit_support import anchors, open_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.envelope import parse_envelope_unverified
from cc_kernel.attestation.platforms.intel_collateral import load_qe_identity, load_tcb_info
from cc_kernel.attestation.platforms.nitro import parse_document_unverified
from cc_kernel.attestation.platforms.ratls_interop import parse_interop_extension
from cc_kernel.attestation.policy import load_policy
from cc_kernel.audit import LogWriter
from cc_kernel.audit.format import MAGIC, decode_body_unverified, encode_record
from cc_kernel.audit.verify import verify_log
from cc_kernel.cli import main
from cc_kernel.errors import LogVerificationError, MalformedEvidence, PolicyError, RemoteProtocolError
from cc_kernel.protocol import codec
from cc_kernel.protocol.connection import Connection, Role

DEPTH = 100_000
FUZZ = settings(deadline=None, database=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def msgpack_arrays(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]


def cbor_arrays(depth: int) -> bytes:
    return b"\x81" * depth + b"\xf6"


def json_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- 100k nested arrays: the documented error, with its message ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [f"version = 1\nx = {json_arrays(DEPTH)}\n", "version = 1\nx = " + "{a=" * DEPTH + "1" + "}" * DEPTH],
    ids=["arrays", "inline-tables"],
)
def test_policy_toml_nested_deeply_is_a_policy_error(text: str) -> None:
    with pytest.raises(PolicyError, match="arrays or inline tables nested too deeply"):
        load_policy(text, source="deep.toml")


def test_policy_check_of_deep_toml_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(f"version = 1\n[[accept]]\nplatform = \"nitro\"\npcr = {json_arrays(DEPTH)}\n")
    assert main(["policy", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"{path}: the policy is not valid TOML for this schema: arrays or inline tables nested too deeply" in err


def test_msgpack_nested_deeply_is_a_remote_protocol_error() -> None:
    for depth in (codec.MAX_DEPTH + 1, 1000, DEPTH):
        with pytest.raises(RemoteProtocolError, match=f"nested deeper than {codec.MAX_DEPTH} levels"):
            codec.unpackb(msgpack_arrays(depth))
    assert codec.unpackb(msgpack_arrays(codec.MAX_DEPTH - 1)) is not None  # the limit itself decodes


def test_a_protocol_frame_nested_deeply_is_a_remote_protocol_error() -> None:
    conn = Connection(Role.KERNEL)
    body = msgpack_arrays(DEPTH)
    conn.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(RemoteProtocolError, match="nested deeper than"):
        conn.next_event()


def test_an_envelope_nested_deeply_is_malformed_evidence() -> None:
    with pytest.raises(MalformedEvidence, match="nested deeper than") as info:
        parse_envelope_unverified(msgpack_arrays(60_000))
    assert info.value.check == "envelope"


def test_a_log_entry_nested_deeply_is_a_decode_finding_not_a_crash() -> None:
    session = open_session()
    data = session.data + encode_record(msgpack_arrays(DEPTH))
    report = verify_log(data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    assert report.status == "invalid"
    first = report.first
    assert first is not None and (first.index, first.check) == (1, "entry.decode")
    assert "nested deeper than" in first.message
    with pytest.raises(LogVerificationError, match="nested deeper than"):
        decode_body_unverified(msgpack_arrays(DEPTH))


@pytest.mark.parametrize("depth", [600, DEPTH], ids=["within-json-limit", "100k"])
def test_a_recorded_result_nested_deeply_is_an_opening_result_finding(
    depth: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    session = open_session()
    out: list[bytes] = []
    LogWriter(out.append).open(dataclasses.replace(session.opening, result=json_arrays(depth)))
    report = verify_log(b"".join(out), policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    assert report.status == "invalid"
    assert ("opening.result", "the recorded attestation result is not a JSON object (nested at most 16 levels)") in [
        (f.check, f.message) for f in report.findings
    ]
    log = tmp_path / "deep.cclog"
    log.write_bytes(b"".join(out))
    for command in (["audit", "verify", str(log), "--json"], ["audit", "show", str(log), "--json"]):
        main(command)
        assert "Traceback" not in capsys.readouterr().err


def test_a_notebook_nested_deeply_is_not_a_notebook(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log, notebook = tmp_path / "s.cclog", tmp_path / "deep.ipynb"
    log.write_bytes(open_session().data)
    notebook.write_text(json_arrays(DEPTH))
    assert main(["audit", "verify", str(log), "--notebook", str(notebook)]) == 2
    err = capsys.readouterr().err
    assert f"{notebook} is not a JSON notebook: nested too deeply" in err and "Traceback" not in err


def test_cbor_evidence_nested_deeply_is_malformed_evidence() -> None:
    with pytest.raises(MalformedEvidence) as ratls:
        parse_interop_extension(cbor_arrays(DEPTH))
    assert ratls.value.check == "ratls.extension.size"  # 100k bytes: over the cap before any decoding
    with pytest.raises(MalformedEvidence, match="is not valid CBOR") as ratls:
        parse_interop_extension(cbor_arrays(60_000))
    assert ratls.value.check == "ratls.cbor"
    with pytest.raises(MalformedEvidence) as nitro:
        parse_document_unverified(cbor_arrays(DEPTH))
    assert nitro.value.check.startswith("nitro.")


@pytest.mark.parametrize("loader", [load_tcb_info, load_qe_identity])
def test_json_evidence_nested_deeply_is_malformed_evidence(loader: object) -> None:
    data = ('{"tcbInfo": ' + json_arrays(DEPTH) + ', "signature": "00"}').encode()
    with pytest.raises(MalformedEvidence, match="not a valid JSON document") as info:
        loader(data)  # type: ignore[operator]
    assert info.value.check.endswith(".json")


# --- fuzz: one per parser ----------------------------------------------------------------------------------------

nesting = st.tuples(st.integers(1, 5000), st.sampled_from(["arrays", "maps"]))


@FUZZ
@given(st.one_of(st.text(max_size=400), nesting.map(lambda n: "x = " + ("[" if n[1] == "arrays" else "{a=") * n[0])))
def test_fuzz_policy_toml_raises_only_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        load_policy("version = 1\n" + text)


@FUZZ
@given(
    st.one_of(st.binary(max_size=400), nesting.map(lambda n: (b"\x91" if n[1] == "arrays" else b"\x81\xa1a") * n[0]))
)
def test_fuzz_protocol_frames_raise_only_remote_protocol_error(body: bytes) -> None:
    conn = Connection(Role.ENCLAVE)
    conn.receive_data(len(body).to_bytes(4, "big") + body)
    with contextlib.suppress(RemoteProtocolError):
        conn.next_event()


@FUZZ
@given(st.one_of(st.binary(max_size=400), nesting.map(lambda n: b"\x91" * n[0] + b"\xc0")))
def test_fuzz_session_log_records_are_findings_never_exceptions(payload: bytes) -> None:
    session = open_session()
    data = session.data + (encode_record(payload) if payload else b"")
    report = verify_log(data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    assert report.status in ("invalid", "unterminated")


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_log_bytes_after_the_magic_are_findings(rest: bytes) -> None:
    report = verify_log(MAGIC + rest, policy=None, anchors=hardware_anchors())
    assert report.status in ("invalid", "unterminated")


@FUZZ
@given(st.one_of(st.binary(max_size=400), nesting.map(lambda n: (b"\x81" if n[1] == "arrays" else b"\xa1\x01") * n[0])))
def test_fuzz_cbor_evidence_raises_only_malformed_evidence(data: bytes) -> None:
    for parse in (parse_interop_extension, parse_document_unverified):
        with contextlib.suppress(MalformedEvidence):
            parse(data)


@FUZZ
@given(st.one_of(st.text(max_size=300), nesting.map(lambda n: ("[" if n[1] == "arrays" else '{"a":') * n[0])))
def test_fuzz_json_evidence_raises_only_malformed_evidence(text: str) -> None:
    for loader in (load_tcb_info, load_qe_identity):
        with contextlib.suppress(MalformedEvidence):
            loader(('{"tcbInfo": ' + text + ', "signature": "00"}').encode())


@FUZZ
@given(st.one_of(st.binary(max_size=400), nesting.map(lambda n: b"\x81\xa1a" * n[0] + b"\xc0")))
def test_fuzz_envelope_raises_only_malformed_evidence(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        parse_envelope_unverified(data)


@FUZZ
@given(st.one_of(st.text(max_size=300), nesting.map(lambda n: ("[" if n[1] == "arrays" else '{"a":') * n[0])))
def test_fuzz_recorded_results_never_crash_the_verifier(text: str) -> None:
    out: list[bytes] = []
    LogWriter(out.append).open(dataclasses.replace(open_session().opening, result=text))
    report = verify_log(b"".join(out), policy=None, anchors=hardware_anchors(), simulation_anchors=anchors())
    assert report.status == "invalid"
    json.dumps([f.to_json_dict() for f in report.findings])
