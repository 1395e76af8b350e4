"""Generate the audit-log test vectors in this directory (run by hand; the outputs are committed).

    .venv/bin/python tests/vectors/audit/make_vectors.py

What it makes (see README.md here, and manifest.json for every expected outcome):

* ``test-authority/`` — a TEST ONLY simulated TEE authority (RSA-2048 ARK/ASK, P-384 VCEK: smaller than the
  RSA-4096 the product uses, so the vectors stay small). Created on the first run only; later runs reuse it, so
  regenerating keeps the anchors the tests pin.
* ``policy-sim.toml`` (accepts the simulated enclave measurement below) and ``policy-hw.toml`` (SEV-SNP
  hardware only).
* ``valid.log`` — one complete session: opening entry, 11 receipts of every kind, closing entry. Fixed inputs
  (audit key from a fixed seed, TLS key, nonce, session id, times); the simulated report's ECDSA signature and
  the certificates are randomised, so the bytes differ from run to run but not the outcomes.
* negative twins as files (dropped / duplicated / swapped entries, truncated, torn tail, spliced entries,
  another audit key, entries after the closing entry, a corrupt header after it, a drop in a cut log, 100 000
  nested arrays in an entry, garbage, empty) and as single-byte flips of ``valid.log``
  (offset + xor mask, one per field of an opening, a receipt and the closing entry), listed in manifest.json.
* ``notebook.ipynb`` — a notebook to match against ``valid.log`` (matching, edited, unexecuted cells, and
  receipts no cell accounts for).
* for every case, the auditor's verdict (``verdict``: the failures ``audit_verdict`` reports with no ``--accept``
  or ``--allow-simulation`` option) and the exit status of ``cc-kernel audit verify`` (``exit``).

Every expected outcome is checked against ``cc_kernel.audit.verify_log`` before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms import simulation as sim
from cc_kernel.attestation.policy import Policy, load_policy, render_policy
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.audit import LogWriter, OutputDigester, ReceiptSigner, UploadInfo, comm_input_text, make_opening
from cc_kernel.audit.format import LogDecoder, Record, encode_record
from cc_kernel.audit.verify import audit_verdict, match_notebook, unaccounted_receipts, verify_log
from cc_kernel.crypto.keys import AuditKey, spki_der_of_key
from cc_kernel.errors import AuditError
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m

HERE = Path(__file__).resolve().parent
AUTHORITY_DIR = HERE / "test-authority"
CREATED = datetime(2025, 6, 1, tzinfo=UTC)
VERIFIED = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0_MS = int(VERIFIED.timestamp() * 1000)
MEASUREMENT = hashlib.sha384(b"cc-kernel audit vectors: simulated enclave (TEST ONLY)").digest()
HW_MEASUREMENT = hashlib.sha384(b"cc-kernel audit vectors: a hardware enclave (TEST ONLY)").digest()
LVE = "LogVerificationError"
HTML_CELL = (
    'import sys\n\nfrom IPython.display import HTML\n\nprint("table:")\nprint("careful", file=sys.stderr)\n'
    'HTML("<b>42</b>")'
)
VERSIONS = {"cc_kernel": "0.0.0+vectors", "protocol": "1", "python": "3.x", "enclave": "0.0.0+vectors"}


def seed(label: str) -> bytes:
    return hashlib.sha256(f"cc-kernel audit vectors: {label} (TEST ONLY)".encode()).digest()


def audit_key(label: str) -> AuditKey:
    return AuditKey(ed25519.Ed25519PrivateKey.from_private_bytes(seed(label)))


def tls_spki(label: str) -> bytes:
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256
    key = ec.derive_private_key(int.from_bytes(seed(label), "big") % (order - 1) + 1, ec.SECP256R1())
    return spki_der_of_key(key)


# --- the TEST ONLY authority ---------------------------------------------------------------------------------


def load_or_create_authority() -> sim.SimulationAuthority:
    if (AUTHORITY_DIR / "ark-cert.pem").exists():
        return sim.authority_from_pem({name: (AUTHORITY_DIR / name).read_bytes() for name in sim.PEM_FILES})
    authority = sim.create_authority(
        now=CREATED,
        ark_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ask_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        vcek_key=ec.generate_private_key(ec.SECP384R1()),
    )
    AUTHORITY_DIR.mkdir(exist_ok=True)
    for name, blob in sim.authority_to_pem(authority).items():
        (AUTHORITY_DIR / name).write_bytes(blob)
    return authority


# --- one session --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    data: bytes
    records: list[bytes]  # each whole record (header + payload), in order; records[0] includes MAGIC


def attest(authority: sim.SimulationAuthority, *, key: AuditKey, sid: bytes, nonce: bytes, spki: bytes,
           policy: Policy, hint_key: AuditKey | None = None) -> tuple[Any, bytes]:
    report_data = expected_report_data(tls_spki=spki, audit_pub=key.public_bytes, nonce=nonce, session_id=sid)
    report = sim.sign_report(authority, report_data=report_data, measurement=MEASUREMENT)
    hint = (hint_key or key).public_bytes
    env = sim.simulated_envelope(authority, report, audit_pub=hint, session_id=sid, nonce=nonce,
                                 collected_at_ms=T0_MS - 1500)
    verified = verify_evidence(env, anchors=hardware_anchors(), now=VERIFIED, simulation_anchors=authority.anchors())
    bound = check_binding(verified, tls_spki=spki, audit_pub=key.public_bytes, nonce=nonce, session_id=sid,
                          claimed_nonce=nonce)
    return appraise(bound, policy, now=VERIFIED), encode_envelope(env)


def digests(*outputs: m.Message) -> Any:
    d = OutputDigester()
    for msg in outputs:
        d.add(msg)
    return d.result()


def session(authority: sim.SimulationAuthority, policy: Policy, *, label: str, key: AuditKey | None = None,
            opening_edit: Callable[[Any], Any] | None = None, signing_key: AuditKey | None = None,
            close: bool = True) -> Session:
    key = key or audit_key(label)
    sid, nonce, spki = seed(f"{label} session id")[:16], seed(f"{label} nonce"), tls_spki(label)
    result, envelope = attest(authority, key=key, sid=sid, nonce=nonce, spki=spki, policy=policy)
    opening = make_opening(result=result, envelope_bytes=envelope, tls_spki=spki, policy=policy,
                           opened_ms=T0_MS + 5, versions=VERSIONS, settings={"redact_code": False})
    if opening_edit is not None:
        opening = opening_edit(opening)
    records: list[bytes] = []
    writer = LogWriter(records.append)
    signer = ReceiptSigner(signing_key or key, sid, opening_hash=writer.open(opening))
    t = T0_MS + 1000

    def receipt(**kw: Any) -> None:
        nonlocal t
        kw.setdefault("outputs", digests())
        kw.setdefault("status", "ok")
        writer.append(signer.sign_receipt(started_ms=t, ended_ms=t + 37, **kw))
        t += 1000

    r = 1
    receipt(kind="cell", execution_count=1, code='print("hello")', cell_id="c-hello",
            outputs=digests(m.Stream(req_id=r, name="stdout", text="hello\n")))
    receipt(kind="cell", execution_count=2, code="root = 2 ** 0.5\nroot", cell_id="c-sqrt",
            outputs=digests(m.ExecuteResult(req_id=r, execution_count=2, data={"text/plain": "1.4142135623730951"},
                                            metadata={})))
    receipt(kind="silent", execution_count=2, code="x = 1", cell_id=None)
    receipt(kind="cell", execution_count=3, code=HTML_CELL, cell_id="c-html",
            outputs=digests(m.Stream(req_id=r, name="stdout", text="table:\n"),
                            m.Stream(req_id=r, name="stderr", text="careful\n"),
                            m.ExecuteResult(req_id=r, execution_count=3,
                                            data={"text/html": "<b>42</b>", "text/plain": "<IPython.core.display.HTML "
                                                  "object>"}, metadata={})))
    receipt(kind="cell", execution_count=4, code="1/0", cell_id="c-error", status="error",
            outputs=digests(m.Error(req_id=r, ename="ZeroDivisionError", evalue="division by zero",
                                    traceback=["Traceback ...", "ZeroDivisionError: division by zero"])))
    receipt(kind="complete", execution_count=4, code="math.sq")
    receipt(kind="inspect", execution_count=4, code="math.sqrt")
    receipt(kind="comm", execution_count=4, code=comm_input_text("comm_msg", "w1", {"method": "update", "value": 3}),
            outputs=digests(m.CommMsg(req_id=r, comm_id="w1", data={"method": "echo"}, metadata={}, buffers=[])))
    content = b"a,b\n1,2\n"
    receipt(kind="upload", execution_count=4, code="",
            upload=UploadInfo(name="table", sha256=hashlib.sha256(content).digest(), size=len(content), fmt="text"))
    receipt(kind="cell", execution_count=5, code="secret = 42  # redacted", cell_id="c-secret", redact_code=True)
    receipt(kind="cell", execution_count=6, code="while True:\n    pass", cell_id="c-loop", status="interrupted",
            outputs=digests(m.Error(req_id=r, ename="KeyboardInterrupt", evalue="", traceback=["KeyboardInterrupt"])))
    if close:
        writer.append(signer.sign_closing(ended_ms=t, reason="shutdown"))
    return Session(b"".join(records), records)


# --- locating fields in valid.log -------------------------------------------------------------------------------


def records_of(data: bytes) -> list[Record]:
    decoder = LogDecoder()
    decoder.feed(data)
    out = []
    while isinstance(rec := decoder.next_record(), Record):
        out.append(rec)
    return out


def field_spans(data: bytes, index: int) -> dict[str, tuple[int, int]]:
    """File offsets [start, end) of each body field's encoded value in entry ``index``."""
    rec = records_of(data)[index]
    payload_at = rec.offset + 8
    wrapper = codec.unpackb(rec.payload)
    body = wrapper["body"]
    body_at = payload_at + rec.payload.index(body)
    spans = {}
    # canonical msgpack: the map header, then key ‖ value for each key in sorted order, back to back
    items = sorted(codec.unpackb(body).items())
    pairs = [(codec.packb(k), codec.packb(v)) for k, v in items]
    at = len(body) - sum(len(k) + len(v) for k, v in pairs)
    for (key, _), (kb, vb) in zip(items, pairs, strict=True):
        assert body[at : at + len(kb) + len(vb)] == kb + vb, key
        spans[key] = (body_at + at + len(kb), body_at + at + len(kb) + len(vb))
        at += len(kb) + len(vb)
    sig = wrapper["sig"]
    if sig:
        spans["<signature>"] = (payload_at + rec.payload.rindex(sig), payload_at + rec.payload.rindex(sig) + len(sig))
    spans["<header>"] = (rec.offset, rec.offset + 8)
    key_at = payload_at + rec.payload.index(b"body")
    spans["<payload key 'body'>"] = (key_at, key_at + 4)
    return spans


# --- expectations -------------------------------------------------------------------------------------------------


def outcome(data: bytes, policy: Policy | None, sim_anchors: TrustAnchors) -> dict[str, Any]:
    try:
        report = verify_log(data, policy=policy, anchors=hardware_anchors(), simulation_anchors=sim_anchors)
    except AuditError as exc:
        return {"raises": "AuditError", "message": str(exc), "verdict": None, "exit": 2}
    first = report.first
    verdict = audit_verdict(report, allow_simulation=policy is not None and policy.unsafe_allow_simulation)
    return {
        "status": report.status,
        "index": None if first is None else first.index,
        "check": None if first is None else first.check,
        "error": None if first is None else first.error,
        "findings": [[f.index, f.check] for f in report.findings],
        "verdict": list(verdict.failures),
        "exit": 0 if verdict.passed else 1,
    }


def main() -> int:
    authority = load_or_create_authority()
    anchors = authority.anchors()
    sim_text = render_policy("simulation", [MEASUREMENT], note="TEST ONLY: audit log vectors")
    hw_text = render_policy("sev-snp", [HW_MEASUREMENT], note="TEST ONLY: audit log vectors (hardware only)")
    (HERE / "policy-sim.toml").write_text(sim_text)
    (HERE / "policy-hw.toml").write_text(hw_text)
    sim_policy = load_policy(sim_text, source="policy-sim.toml")
    hw_policy = load_policy(hw_text, source="policy-hw.toml")

    valid = session(authority, sim_policy, label="session A")
    other_key = session(authority, sim_policy, label="session B")
    same_key = session(authority, sim_policy, label="session C", key=audit_key("session A"))
    recs = valid.records
    head, first = recs[0][:16], recs[0][16:]  # MAGIC, opening record
    body = [first, *recs[1:]]

    def join(parts: list[bytes]) -> bytes:
        return head + b"".join(parts)

    assert join(body) == valid.data
    # the attacker's rewrite: a key they hold (B) instead of the one the evidence binds (A)
    forged_key = audit_key("forger")

    def swap_audit_key(op: Any) -> Any:
        env = codec.unpackb(op.evidence)
        env["binding"]["audit_pub"] = forged_key.public_bytes
        doc = json.loads(op.result)
        doc["audit_pub"] = forged_key.public_bytes.hex()
        return dataclasses.replace(op, audit_pub=forged_key.public_bytes, evidence=codec.packb(env),
                                   result=json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False))

    wrong_key = session(authority, sim_policy, label="session A", opening_edit=swap_audit_key, signing_key=forged_key)
    last = len(body) - 1  # index of the closing entry
    files: dict[str, bytes] = {
        "valid.log": valid.data,
        "dropped-middle.log": join(body[:5] + body[6:]),
        "duplicated.log": join(body[:6] + body[5:]),
        "swapped.log": join([*body[:5], body[6], body[5], *body[7:]]),
        "truncated-no-closing.log": join(body[:-1]),
        "torn-tail.log": valid.data[: len(valid.data) - len(body[-1]) // 2],
        "opening-only.log": join(body[:1]),
        "header-only.log": head,
        "spliced-other-session.log": join([*body[:5], other_key.records[5], *body[6:]]),
        "spliced-same-key.log": join([*body[:5], same_key.records[5], *body[6:]]),
        "wrong-audit-key.log": wrong_key.data,
        "after-closing.log": join([*body, body[5]]),
        # a record header whose halves disagree, after the closing entry: framing is checked first
        "corrupt-header-after-closing.log": join(body) + (40).to_bytes(4, "big") + (41).to_bytes(4, "big"),
        # an entry dropped from a log that is also cut short: invalid, and the first bad entry is the drop
        "dropped-and-truncated.log": join(body[:5] + body[6:-1]),
        # entry 1 is 100 000 nested msgpack arrays: a decode finding, never a crash
        "deep-nesting.log": join([*body[:1], encode_record(b"\x91" * 100_000 + b"\xc0"), *body[2:]]),
        "empty.log": b"",
        "garbage.bin": b"".join(hashlib.sha256(seed("garbage") + bytes([i])).digest() for i in range(16)),
        "text.log": b"This is not an audit log.\n",
    }
    cases: list[dict[str, Any]] = [
        {"name": "valid", "file": "valid.log", "expect": {"status": "valid"}},
        {"name": "valid-given-policy", "file": "valid.log", "policy": "policy-sim.toml", "expect": {"status": "valid"}},
        {"name": "dropped-middle", "file": "dropped-middle.log",
         "expect": {"status": "invalid", "index": 5, "check": "entry.seq", "error": LVE}},
        {"name": "duplicated", "file": "duplicated.log",
         "expect": {"status": "invalid", "index": 6, "check": "entry.seq", "error": LVE}},
        {"name": "swapped", "file": "swapped.log",
         "expect": {"status": "invalid", "index": 5, "check": "entry.seq", "error": LVE}},
        {"name": "truncated-no-closing", "file": "truncated-no-closing.log",
         "expect": {"status": "unterminated", "index": last, "check": "log.unterminated", "error": "LogUnterminated"}},
        {"name": "torn-tail", "file": "torn-tail.log",
         "expect": {"status": "unterminated", "index": last, "check": "record.truncated", "error": "LogUnterminated"}},
        {"name": "opening-only", "file": "opening-only.log",
         "expect": {"status": "unterminated", "index": 1, "check": "log.unterminated", "error": "LogUnterminated"}},
        {"name": "header-only", "file": "header-only.log",
         "expect": {"status": "unterminated", "index": 0, "check": "log.unterminated", "error": "LogUnterminated"}},
        {"name": "spliced-other-session", "file": "spliced-other-session.log",
         "expect": {"status": "invalid", "index": 5, "check": "entry.signature", "error": LVE}},
        {"name": "spliced-same-key", "file": "spliced-same-key.log",
         "expect": {"status": "invalid", "index": 5, "check": "entry.session_id", "error": LVE}},
        {"name": "wrong-audit-key", "file": "wrong-audit-key.log",
         "expect": {"status": "invalid", "index": 0, "check": "binding.report_data", "error": "BindingMismatch"}},
        {"name": "after-closing", "file": "after-closing.log",
         "expect": {"status": "invalid", "index": last + 1, "check": "entry.after_closing", "error": LVE}},
        {"name": "corrupt-header-after-closing", "file": "corrupt-header-after-closing.log",
         "expect": {"status": "invalid", "index": last + 1, "check": "record.length", "error": LVE}},
        {"name": "dropped-and-truncated", "file": "dropped-and-truncated.log",
         "expect": {"status": "invalid", "index": 5, "check": "entry.seq", "error": LVE}},
        {"name": "deep-nesting", "file": "deep-nesting.log",
         "expect": {"status": "invalid", "index": 1, "check": "entry.decode", "error": LVE}},
        {"name": "simulation-under-hardware-policy", "file": "valid.log", "policy": "policy-hw.toml",
         "expect": {"status": "invalid", "index": 0, "check": "snp.anchor", "error": "UntrustedRoot"}},
        {"name": "empty", "file": "empty.log", "expect": {"raises": "AuditError"}},
        {"name": "garbage", "file": "garbage.bin", "expect": {"raises": "AuditError"}},
        {"name": "text", "file": "text.log", "expect": {"raises": "AuditError"}},
    ]

    # single-byte flips of valid.log: every field of the opening, of receipt #4 (the richest), of the upload
    # receipt #9 and of the closing entry; the signature; a record header; the payload wrapper; the magic
    opening_checks = {
        "v": ("entry.version", LVE), "type": ("entry.type", LVE),
        "session_id": ("binding.report_data", "BindingMismatch"),
        "seq": ("entry.seq", LVE), "prev": ("entry.prev", LVE), "evidence": ("envelope", "MalformedEvidence"),
        "tls_spki": ("binding.report_data", "BindingMismatch"), "nonce": ("freshness.nonce", "StaleEvidence"),
        "audit_pub": ("binding.report_data", "BindingMismatch"), "policy": ("opening.policy", "PolicyError"),
        "policy_sha256": ("opening.policy_sha256", LVE), "policy_source": ("opening.chain", LVE),
        "result": ("opening.result", LVE), "verified_at": ("opening.verified_at", LVE),
        "opened_ms": ("opening.chain", LVE), "versions": ("opening.chain", LVE), "settings": ("opening.chain", LVE),
    }
    flips: list[tuple[str, int, int, int, dict[str, Any]]] = []  # name, offset, xor, entry, expect
    spans0 = field_spans(valid.data, 0)
    for name, (check, error) in opening_checks.items():
        flips.append((f"opening.{name}", spans0[name][1] - 1, 0x01, 0,
                      {"status": "invalid", "index": 0, "check": check, "error": error}))
    # inside the policy text: a comment letter (the policy still loads, but its digest differs)
    policy_at = spans0["policy"][0] + valid.data[spans0["policy"][0]:spans0["policy"][1]].index(b"# ") + 2
    flips.append(("opening.policy.comment", policy_at, 0x01, 0,
                  {"status": "invalid", "index": 0, "check": "opening.policy_sha256", "error": LVE}))
    # inside the evidence: the report's MEASUREMENT (signed by the VCEK) and the presented ARK certificate
    evidence_at = spans0["evidence"][0]
    op_evidence = codec.unpackb(codec.unpackb(codec.unpackb(records_of(valid.data)[0].payload)["body"])["evidence"])
    raw_evidence = valid.data[evidence_at:spans0["evidence"][1]]
    report_at = evidence_at + raw_evidence.index(op_evidence["evidence"])
    flips.append(("opening.evidence.report.measurement", report_at + 0x90, 0x01, 0,
                  {"status": "invalid", "index": 0, "check": "snp.signature", "error": "SignatureInvalid"}))
    ark = next(e["data"] for e in op_evidence["endorsements"] if e.get("role") == "ark")
    flips.append(("opening.evidence.ark", evidence_at + raw_evidence.index(ark) + len(ark) - 40, 0x01, 0,
                  {"status": "invalid", "index": 0, "check": "snp.presented_ark", "error": "UntrustedRoot"}))
    for index in (4, 9, last):
        for name, (start, end) in field_spans(valid.data, index).items():
            if name == "<header>":
                expect = {"status": "invalid", "index": index, "check": "record.length", "error": LVE}
                flips.append((f"entry{index}.{name}", start, 0x01, index, expect))
                continue
            check = "entry.decode" if name.startswith("<payload") else "entry.signature"
            flips.append((f"entry{index}.{name}", end - 1, 0x01, index,
                          {"status": "invalid", "index": index, "check": check, "error": LVE}))
    flips.append(("magic", 3, 0x01, -1, {"raises": "AuditError"}))

    # check every expectation, then write
    policies = {None: None, "policy-sim.toml": sim_policy, "policy-hw.toml": hw_policy}
    problems = []
    for case in cases:
        got = outcome(files[case["file"]], policies[case.get("policy")], anchors)
        if any(got.get(k) != v for k, v in case["expect"].items()):
            problems.append(f"{case['name']}: expected {case['expect']}, got {got}")
        case["findings"] = got.get("findings", [])
        case["verdict"], case["exit"] = got["verdict"], got["exit"]
    for name, offset, mask, index, expect in flips:
        data = bytearray(valid.data)
        data[offset] ^= mask
        got = outcome(bytes(data), None, anchors)
        if any(got.get(k) != v for k, v in expect.items()):
            problems.append(f"flip {name} @ {offset}: expected {expect}, got {got}")
        cases.append({"name": f"flip-{name}", "file": "valid.log", "flip": {"offset": offset, "xor": mask},
                      "entry": index, "expect": expect, "findings": got.get("findings", []),
                      "verdict": got["verdict"], "exit": got["exit"]})
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1

    notebook = {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [
            {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": ["# An audited notebook\n"]},
            {"cell_type": "code", "id": "c-hello", "execution_count": 1, "metadata": {}, "outputs": [],
             "source": ['print("hello")']},
            {"cell_type": "code", "id": "c-sqrt", "execution_count": 2, "metadata": {}, "outputs": [],
             "source": ["root = 3 ** 0.5\n", "root"]},
            {"cell_type": "code", "id": "c-html", "execution_count": 3, "metadata": {}, "outputs": [],
             "source": HTML_CELL},
            {"cell_type": "code", "id": "c-secret", "execution_count": 5, "metadata": {}, "outputs": [],
             "source": "secret = 42  # redacted"},
            {"cell_type": "code", "id": "c-new", "execution_count": None, "metadata": {}, "outputs": [],
             "source": "print('never ran')"},
            {"cell_type": "code", "id": "c-forged", "execution_count": 9, "metadata": {}, "outputs": [],
             "source": "print('claims to have run')"},
        ],
    }
    expected_cells = [["matching", 1], ["edited", 2], ["matching", 4], ["matching", 10], ["unexecuted", None],
                      ["unexecuted", None]]
    report = verify_log(valid.data, policy=None, anchors=hardware_anchors(), simulation_anchors=anchors)
    cells = match_notebook(report, notebook)
    got_cells = [[c.status, c.receipt] for c in cells]
    if got_cells != expected_cells:
        print(f"notebook: expected {expected_cells}, got {got_cells}", file=sys.stderr)
        return 1
    # receipts of valid.log whose cell is not in the notebook: the error cell, the upload and the loop
    expected_unaccounted = [5, 9, 11]
    unaccounted = unaccounted_receipts(report, notebook)
    if [u.entry for u in unaccounted] != expected_unaccounted:
        print(f"notebook: expected unaccounted {expected_unaccounted}, got {unaccounted}", file=sys.stderr)
        return 1
    notebook_verdict = audit_verdict(report, cells=cells, unaccounted=unaccounted)

    for name, data in files.items():
        (HERE / name).write_bytes(data)
    (HERE / "notebook.ipynb").write_text(json.dumps(notebook, indent=1) + "\n")
    manifest = {
        "about": "Audit log vectors: expected outcomes of cc_kernel.audit.verify_log. Made by make_vectors.py "
                 "(regenerate only by hand). Verify with the hardware anchors plus the simulation anchors of "
                 "test-authority/ (ark-cert.pem, ask-cert.pem; TEST ONLY). 'policy' null = the embedded policy. "
                 "'flip' = XOR the byte at offset with the mask before verifying. 'index'/'check'/'error' describe "
                 "the first finding; 'findings' lists [index, check] of all of them. 'verdict' lists the reasons "
                 "`cc-kernel audit verify` fails with no --accept or --allow-simulation option (a --policy that "
                 "allows simulation is the auditor's own permission), null if the input is not a log; 'exit' is "
                 "its exit status (0 pass, 1 fail, 2 not a log).",
        "created": {"authority_created": CREATED.isoformat(), "verified_at": VERIFIED.isoformat()},
        "notebook": {"file": "notebook.ipynb", "log": "valid.log", "cells": expected_cells,
                     "unaccounted": expected_unaccounted, "verdict": list(notebook_verdict.failures)},
        "cases": cases,
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(files)} files and {len(cases)} cases to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
