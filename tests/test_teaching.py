"""cc_kernel.teaching: the display helpers, the tampering rule, and (slow) a real lab catching every fault."""

from __future__ import annotations

import html
import json
import stat
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report
from cc_kernel.attestation.result import REPIN_HINT
from cc_kernel.errors import EnclaveError, PolicyViolation, VerificationError
from cc_kernel.kernel.advice import advice_for
from cc_kernel.teaching import (
    FAULTS,
    AttestOutcome,
    Flip,
    Relay,
    Table,
    TeachingLab,
    attestation_diagram,
    describe_report,
    hexdump,
    side_by_side,
    tls_records,
)


def _record(content_type: int, body: bytes) -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


# -- display helpers -------------------------------------------------------------------------------------------


def test_hexdump_offsets_hex_and_ascii() -> None:
    text = hexdump(b"Hello, world!\x00\x01\xffABC", offset=0x20)
    lines = text.splitlines()
    assert lines[0].startswith("00000020  48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 00 01 ff  Hello, world!...")
    assert lines[1].startswith("00000030  41 42 43") and lines[1].endswith("ABC")


def test_hexdump_says_what_it_left_out() -> None:
    text = hexdump(bytes(100), max_lines=2)
    assert text.splitlines()[-1] == "… 68 more bytes"


def test_tls_records_split_and_ignore_a_partial_tail() -> None:
    stream = _record(22, b"hello") + _record(23, b"x" * 300) + _record(23, b"partial")[:-2]
    records = tls_records(stream)
    assert [(r.kind, r.length, r.offset) for r in records] == [("handshake", 5, 0), ("application_data", 300, 10)]


def test_side_by_side_renders_both_panels_escaped() -> None:
    panels = side_by_side("left <1>", "a & b", "right", "c")
    html = panels._repr_html_()
    assert "left &lt;1&gt;" in html and "a &amp; b" in html and "right" in html
    assert panels.text() == "== left <1> ==\na & b\n\n== right ==\nc"


def test_print_and_ipython_show_the_same_text() -> None:
    from IPython.lib.pretty import pretty

    shown = [side_by_side("a", "1", "b", "2"), attestation_diagram(), Table("t", ("c",), (("v",),)),
             Relay("tcp://127.0.0.1:9")]
    for widget in shown:
        assert pretty(widget) == str(widget) == widget.text(), type(widget).__name__


def test_attestation_diagram_is_valid_svg_with_a_text_twin() -> None:
    diagram = attestation_diagram()
    root = ET.fromstring(diagram._repr_svg_())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for step in ("1. TLS 1.3 handshake", "2. AttestRequest", "8. only now: the first cell"):
        assert step in texts
    assert "AttestRequest(nonce, session id)" in str(diagram)


def test_describe_report_decodes_the_fields_that_matter(sim_authority: SimulationAuthority) -> None:
    report = sign_report(
        sim_authority, report_data=bytes(range(64)), measurement=b"\xab" * 48, policy=0x30000 | 1 << 19
    )
    table = describe_report(report)
    rows = {row[2]: row for row in table.rows}
    assert rows["measurement"][0] == "0x090" and rows["measurement"][3].startswith("abababab")
    assert rows["report_data"][0] == "0x050" and rows["report_data"][3].startswith("000102030405")
    assert rows["policy"][3] == "0xb0000 (debug=ON)"
    assert rows["reported_tcb"][3] == "bl=4 tee=0 snp=24 ucode=219"
    assert rows["chip_id"][3].startswith("'CC-SIMULATION' + ")


# -- refusals are explained with the kernel's advice ----------------------------------------------------------------


def test_a_refusal_shows_what_failed_then_the_kernels_advice_once() -> None:
    # as the appraisal words a measurement refusal: its re-pin hint in the message and in the failure
    error = PolicyViolation(f"refused. {REPIN_HINT}", failures=[
        VerificationError(f"not pinned. {REPIN_HINT}", check="policy.measurement", got=b"\x5a", expected=b"\x11"),
    ])
    outcome = AttestOutcome("tcp://127.0.0.1:9", "modified code", error=error)
    assert REPIN_HINT not in outcome.message and "[policy.measurement] not pinned" in outcome.message
    assert outcome.advice == advice_for(error, "simulation") and "policy init --simulation" in outcome.advice
    assert outcome.text().count("re-pin") == 1 and f"what to do: {outcome.advice}" in outcome.text()
    assert html.escape(outcome.advice) in outcome._repr_html_()
    hardware = AttestOutcome("tcp://127.0.0.1:9", "modified code", error=error, mode="hardware")
    assert hardware.advice == advice_for(error, "hardware") != outcome.advice
    assert AttestOutcome("tcp://127.0.0.1:9", "healthy").advice == ""


# -- the tampering rule ------------------------------------------------------------------------------------------


def test_tamperer_flips_one_bit_in_the_first_server_record_after_the_handshake() -> None:
    relay = Relay("tcp://127.0.0.1:9", flip=Flip.after_handshake())
    tamperer = relay.new_connection()
    server_flight = _record(22, b"server hello") + _record(20, b"\x01") + _record(23, b"encrypted handshake")
    # before the client's first application-data record, nothing from the server is touched
    assert tamperer.feed("s2c", server_flight) == server_flight
    client_flight = _record(22, b"client hello") + _record(20, b"\x01") + _record(23, b"client finished")
    assert tamperer.feed("c2s", client_flight) == client_flight
    assert tamperer.feed("c2s", _record(23, b"kernel hello")) == _record(23, b"kernel hello")
    # the server's answer arrives in two pieces: the record is re-framed, then exactly one bit changes
    answer = _record(23, b"enclave hello, encrypted")
    out = tamperer.feed("s2c", answer[:7]) + tamperer.feed("s2c", answer[7:])
    assert len(out) == len(answer)
    diff = [i for i in range(len(out)) if out[i] != answer[i]]
    assert len(diff) == 1 and diff[0] >= 5  # inside the body, never the header
    assert bin(out[diff[0]] ^ answer[diff[0]]).count("1") == 1
    assert [(t.direction, t.record_index, t.stream_offset) for t in relay.tampered] == [
        ("s2c", 3, len(server_flight) + diff[0])
    ]
    # only once
    later = _record(23, b"evidence")
    assert tamperer.feed("s2c", later) == later


# -- a real lab (processes, TLS, kernels' verifier) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[TeachingLab]:
    with TeachingLab() as lab:
        yield lab


@pytest.mark.slow
def test_lab_is_self_contained_and_cleans_up(tmp_path: Path) -> None:
    with TeachingLab(root=tmp_path) as lab:
        root = lab.root
        assert (lab.sim_dir / "ark-cert.pem").exists()
        assert str(lab.sim_dir).startswith(str(tmp_path))
        address = lab.start_enclave()
        assert address.startswith("tcp://127.0.0.1:")
        assert "serving on" in lab.enclave_log(address)
    assert not root.exists()


@pytest.mark.slow
def test_unknown_fault_is_refused(lab: TeachingLab) -> None:
    with pytest.raises(ValueError, match="unknown fault 'rowhammer'"):
        lab.start_enclave("rowhammer")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "error", "check"),
    [
        (None, "", ""),
        ("modified-code", "PolicyViolation", "policy.measurement"),
        ("debug", "PolicyViolation", "policy.debug"),
        ("old-tcb", "PolicyViolation", "policy.min_tcb.bl"),
        ("swapped-key", "BindingMismatch", "binding.report_data"),
        ("replay", "StaleEvidence", "freshness.session_id"),
    ],
)
def test_each_fault_is_caught_by_its_check(lab: TeachingLab, fault: str | None, error: str, check: str) -> None:
    policy = lab.policy(min_tcb=lab.tcb)
    outcome = lab.attest(lab.start_enclave(fault), policy=policy)
    assert outcome.error_class == error, outcome.text()
    assert outcome.check == check
    assert outcome.verified == (fault is None)
    if fault is None:
        assert outcome.result is not None and outcome.result.status == "simulation"
    else:
        assert check in outcome.text() and check in outcome._repr_html_()
        # what to do: the kernel's own advice for a simulation kernel, said once
        assert outcome.advice == advice_for(outcome.error, "simulation")
        assert outcome.text().count(outcome.advice) == 1
        if fault == "modified-code":
            assert outcome.text().count("re-pin") == 1


@pytest.mark.slow
def test_the_owners_broker_starts_over_a_private_store_and_refuses_one_others_may_read(lab: TeachingLab) -> None:
    store = lab.root / "broker-store"
    address = lab.start_broker(store)
    assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
    assert "cc-kernel broker listening on " + address in lab.enclave_log(address)
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    shared = lab.root / "shared-store"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(EnclaveError, match=r"(?s)the broker did not start.*must be private \(mode 0700\), not 0755"):
        lab.start_broker(shared)


def test_a_lab_policy_accepts_debug_only_when_asked(lab: TeachingLab) -> None:
    assert lab.policy().unsafe_flags == ("unsafe_allow_simulation",)
    weak = lab.policy(allow_debug=True)
    assert set(weak.unsafe_flags) == {"unsafe_allow_simulation", "unsafe_allow_debug"}
    assert "\nunsafe_allow_debug = true\n" in Path(weak.source).read_text()


def test_faults_list_matches_the_parametrisation() -> None:
    assert set(FAULTS) == {"modified-code", "debug", "old-tcb", "swapped-key", "replay"}


def test_the_lab_takes_its_faults_from_the_simulated_enclave() -> None:
    """One list of the simulated enclave's faults: the lab adds only its own "modified-code"."""
    from cc_kernel.enclave.evidence import FAULTS as SIMULATED_FAULTS
    from cc_kernel.teaching import ENCLAVE_FAULTS

    assert (*SIMULATED_FAULTS, "modified-code") == FAULTS
    assert tuple(f for f in SIMULATED_FAULTS if f != "replay") == ENCLAVE_FAULTS


@pytest.mark.slow
def test_tampering_relay_breaks_the_channel_and_says_where(lab: TeachingLab) -> None:
    relay = lab.relay(lab.start_enclave(), tamper=True)
    outcome = lab.attest(relay.address)
    assert outcome.error_class == "BrokenChannelError", outcome.text() + "\n" + relay.summary()
    assert "DECRYPTION_FAILED_OR_BAD_RECORD_MAC" in outcome.message
    assert len(relay.tampered) == 1 and relay.tampered[0].direction == "s2c"


@pytest.mark.slow
def test_relay_sees_only_ciphertext_of_a_confidential_cell_and_plaintext_of_a_plain_one(lab: TeachingLab) -> None:
    secret = "teaching-secret-4711"
    cell = f"print({secret!r}.upper())"
    confidential = lab.run_cell(cell, enclave=lab.start_enclave(), wiretap=True)
    assert confidential.status == "ok" and secret.upper() in confidential.text
    assert confidential.badge is not None and confidential.badge["state"] == "simulation"
    assert confidential.wiretap is not None and confidential.wiretap.data("c2s")
    assert not confidential.wiretap.contains(secret) and not confidential.wiretap.contains(secret.upper())
    plain = lab.run_cell(cell, kernel="python3", wiretap=True)
    assert plain.status == "ok" and secret.upper() in plain.text
    assert plain.wiretap is not None and plain.wiretap.contains(secret) and plain.wiretap.contains(secret.upper())
    assert plain.connection_info["key"]


@pytest.mark.slow
def test_a_kernel_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    with TeachingLab(root=tmp_path) as lab:
        spec = lab._ensure_kernelspecs() / "dies"
        spec.mkdir()
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-c", "import sys; print('no ports for me'); sys.exit(3)", "{connection_file}"],
            "display_name": "dies", "language": "python"}))
        with pytest.raises(RuntimeError) as caught:
            lab.start_kernel("dies", timeout=30)
        message = str(caught.value)
        assert message.startswith("Kernel died before replying to kernel_info; the dies kernel's log (")
        assert message.endswith("ends:\nno ports for me")
