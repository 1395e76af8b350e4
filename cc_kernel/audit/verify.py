"""Pure audit layer: the offline verifier of session logs, and matching a notebook's cells against receipts.

Invariants:

* ``verify_log`` re-checks everything from the log bytes and the caller's trust anchors alone: the opening
  entry's evidence at its recorded verification time (authenticity), the binding of the audit key (with the
  recorded TLS SPKI, nonce and session id), the policy (the caller's, else the embedded one, whose digest is
  re-checked), then every entry's signature, session id, sequence number and chain, and the closing entry;
* a ``LogReport`` is only made here; ``valid`` means no finding at all; ``unterminated`` means the only
  findings are a missing closing entry / a cut-short last record (a crash or a cut file: nothing present was
  altered); anything else is ``invalid``; every finding is listed, each with its entry index and check name;
* input that is not a session log at all (empty, wrong magic) raises ``AuditError``; nothing else escapes as
  an exception (foreign parser failures on hostile evidence become findings);
* no I/O, no clock: ``now`` is a parameter and only used for notes.

Check names (``record.*``, ``entry.*``, ``receipt.*``, ``closing.*``, ``log.*``, ``opening.*``, the evidence
checks at index 0, ``policy.*``) are listed in docs/audit-log.md §9; the verdict's reasons (``notebook.*``,
``attestation.simulation``, ...) in §6.1.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, Literal

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding
from cc_kernel.attestation.envelope import parse_envelope_unverified
from cc_kernel.attestation.evidence import Sealed, seal
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.attestation.verify import answered_nonce, verify_evidence
from cc_kernel.audit.format import (
    GENESIS,
    Body,
    ClosingEntry,
    LogDecoder,
    OpeningEntry,
    ReceiptEntry,
    Record,
    check_signed_entry,
    code_hash,
    decode_body_unverified,
    decode_payload_unverified,
    entry_hash,
)
from cc_kernel.audit.receipts import result_json
from cc_kernel.crypto.hashing import constant_time_equal
from cc_kernel.errors import (
    AuditError,
    LogUnterminated,
    LogVerificationError,
    PolicyError,
    PolicyViolation,
    VerificationError,
)
from cc_kernel.protocol.codec import nesting_depth

__all__ = [
    "ACCEPTABLE",
    "RESULT_FIELDS",
    "RESULT_MAX_DEPTH",
    "TERMINATION_CHECKS",
    "VERDICT_FAILURES",
    "AuditVerdict",
    "CellFinding",
    "Finding",
    "LogReport",
    "LoggedEntry",
    "UnaccountedReceipt",
    "UnverifiedLog",
    "audit_verdict",
    "match_notebook",
    "read_log_unverified",
    "recorded_result",
    "unaccounted_receipts",
    "verify_log",
]

Status = Literal["valid", "unterminated", "invalid"]
#: Findings that mean "the log stops early" rather than "something in it was altered".
TERMINATION_CHECKS: Final = frozenset({"log.unterminated", "record.truncated"})
#: How deeply a recorded attestation result may nest (the real one nests 3 levels: claims of claims).
RESULT_MAX_DEPTH: Final = 16
#: The AttestationResult fields re-computed and compared with the recorded result (docs/audit-log.md).
RESULT_FIELDS: Final = (
    "status",
    "platform",
    "product",
    "measurement",
    "debug",
    "tcb",
    "tcb_status",
    "signer",
    "unsafe_flags_used",
    "policy_unsafe_flags",
    "policy_sha256",
    "matched_entry",
    "anchor_sha256",
    "evidence_sha256",
    "verified_at",
    "session_id",
    "tls_spki_sha256",
    "audit_pub",
    "nonce",
)


@dataclass(frozen=True)
class Finding:
    """One failed check: which entry (``index``), which check, why, and the error class that reports it."""

    index: int | None
    check: str
    message: str
    error: str = "LogVerificationError"
    got: object = None
    expected: object = None

    @property
    def terminal(self) -> bool:
        """True for "the log stops early" findings (a crash or a cut file), False for alterations."""
        return self.check in TERMINATION_CHECKS

    def to_error(self) -> LogVerificationError:
        """This finding as an exception (``LogUnterminated`` for termination findings)."""
        cls = LogUnterminated if self.terminal else LogVerificationError
        return cls(
            f"{self.error}: {self.message}" if self.error not in ("LogVerificationError", "LogUnterminated")
            else self.message,
            check=self.check,
            got=self.got,
            expected=self.expected,
            index=self.index,
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "check": self.check,
            "error": self.error,
            "message": self.message,
            "got": _plain(self.got),
            "expected": _plain(self.expected),
        }


def _plain(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def _finding(exc: BaseException, index: int | None) -> Finding:
    if isinstance(exc, VerificationError):
        return Finding(
            index=index,
            check=exc.check,
            message=exc.message,
            error=type(exc).__name__,
            got=exc.got,
            expected=exc.expected,
        )
    return Finding(index=index, check="opening.evidence", message=f"{type(exc).__name__}: {exc}",
                   error=type(exc).__name__)


@dataclass(frozen=True)
class LoggedEntry:
    """One record of a log: index, file offset, entry hash and parsed body (None where it did not decode)."""

    index: int
    offset: int
    size: int
    hash: bytes | None
    entry: Body | None
    signature_ok: bool | None = None


@dataclass(frozen=True)
class LogReport(Sealed):
    """The outcome of ``verify_log``; only ``verify_log`` makes one.

    ``status``: ``valid`` (no finding), ``unterminated`` (only termination findings: everything present
    verifies but the closing entry is missing), ``invalid`` (anything else). ``findings`` are sorted by entry
    index; ``first`` is the first one. ``verified_prefix`` is how many leading entries have no finding (for an
    unterminated log: all of them). ``result`` is the re-verified attestation, if it verified.
    """

    status: Status
    findings: tuple[Finding, ...]
    entries: tuple[LoggedEntry, ...]
    opening: OpeningEntry | None
    closing: ClosingEntry | None
    result: AttestationResult | None
    policy_used: Literal["embedded", "given", "none"]
    policy_sha256: bytes | None
    verified_prefix: int
    notes: tuple[str, ...] = ()
    checked_at: datetime | None = None

    PRODUCER: ClassVar[str] = "verify_log"

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    @property
    def first(self) -> Finding | None:
        """The first finding (lowest entry index), or None for a valid log."""
        return self.findings[0] if self.findings else None

    @property
    def session_id(self) -> bytes | None:
        return self.opening.session_id if self.opening is not None else None

    def receipts(self, *, verified_only: bool = True) -> list[tuple[int, ReceiptEntry]]:
        """(entry index, receipt) pairs; by default only within the verified prefix."""
        limit = self.verified_prefix if verified_only else len(self.entries)
        return [
            (e.index, e.entry) for e in self.entries[:limit] if isinstance(e.entry, ReceiptEntry)
        ]

    def raise_for_status(self) -> None:
        """Raise the first finding as ``LogVerificationError`` (``LogUnterminated`` if the log is only
        unterminated); do nothing for a valid log."""
        if self.status == "valid" or not self.findings:
            return
        alterations = [f for f in self.findings if not f.terminal]
        raise (alterations or list(self.findings))[0].to_error()


# --- verification ---------------------------------------------------------------------------------------------


def verify_log(
    data: bytes,
    *,
    policy: Policy | None,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None = None,
    now: datetime | None = None,
) -> LogReport:
    """Re-verify a session log offline.

    ``policy``: appraise the evidence under this policy; None means the policy embedded in the log (whose
    digest is re-checked, and whose re-computed result must equal the recorded one). ``anchors``: pinned
    hardware roots; ``simulation_anchors`` are used only if the policy in use allows simulation. ``now`` (the
    auditor's time, timezone-aware) only adds notes such as "verified in the future".

    Raises:
        AuditError: ``data`` is empty or is not a session log (wrong magic) — nothing to verify.
        ValueError: ``anchors`` holds a simulation root or ``simulation_anchors`` a hardware one (misuse).
    """
    if "simulation" in anchors.platforms:
        raise ValueError("pass simulation roots as simulation_anchors=, never as anchors=")
    if simulation_anchors is not None and simulation_anchors.platforms - {"simulation"}:
        raise ValueError("simulation_anchors may only hold simulation roots")
    decoder = LogDecoder()
    decoder.feed(bytes(data))
    findings: list[tuple[int, Finding]] = []  # (detection order, finding)
    entries: list[LoggedEntry] = []
    notes: list[str] = []

    def add(f: Finding) -> None:
        findings.append((len(findings), f))

    opening: OpeningEntry | None = None
    closing: ClosingEntry | None = None
    result: AttestationResult | None = None
    policy_used: Literal["embedded", "given", "none"] = "none"
    policy_sha: bytes | None = None
    audit_pub: bytes | None = None
    session_id: bytes | None = None
    last_hash: bytes | None = None
    last_seq: int | None = None
    framing_failed = False

    while True:
        # 1. framing: one whole record at a time
        try:
            record = decoder.next_record()
        except LogVerificationError as exc:
            add(_finding(exc, exc.index))
            framing_failed = True
            break
        if not isinstance(record, Record):  # NEED_DATA: every whole record has been read
            break
        i = record.index
        # 2. nothing may follow the closing entry
        if closing is not None:
            add(Finding(i, "entry.after_closing",
                        f"a record follows the closing entry (at byte {record.offset}): entries were appended "
                        "after the session closed", got=record.offset))
            framing_failed = True
            break
        if i == 0:
            # 3. the opening entry (kernel-written, unsigned): decode, then the attestation it records
            logged, opening, op_findings = _check_opening_record(record)
            for f in op_findings:
                add(f)
            entries.append(logged)
            last_hash = logged.hash
            if opening is not None:
                audit_pub, session_id, last_seq = opening.audit_pub, opening.session_id, 0
                result, policy_used, policy_sha, att_findings, att_notes = _verify_attestation(
                    opening, policy=policy, anchors=anchors, simulation_anchors=simulation_anchors, now=now
                )
                for f in att_findings:
                    add(f)
                notes += att_notes
            continue
        # 4. a signed entry: signature, schema, session, sequence, chain, closing fields
        checked = check_signed_entry(
            record.payload,
            index=i,
            audit_pub=audit_pub,
            session_id=session_id,
            expected_seq=None if last_seq is None else last_seq + 1,
            prev_hash=last_hash,
        )
        for error in checked.errors:
            add(_finding(error, i))
        entry = checked.entry
        entries.append(LoggedEntry(i, record.offset, len(record.payload), checked.hash, entry, checked.signature_ok))
        if entry is not None and session_id is None:
            session_id = entry.session_id  # the opening is unusable: hold the rest to the first signed entry
        # 5. attribute a broken link to the opening entry: the enclave chained its (authentic) first entry
        #    to an opening entry whose hash differs from the one present, so the opening entry was altered
        if (
            i == 1
            and checked.signature_ok
            and entry is not None
            and entry.seq == 1
            and last_hash is not None
            and not constant_time_equal(entry.prev, last_hash)
        ):
            add(Finding(0, "opening.chain",
                        "the enclave's first signed entry chains to a different opening entry: this opening "
                        "entry was altered or replaced", got=last_hash, expected=entry.prev))
        last_hash = checked.hash
        if entry is not None:
            last_seq = entry.seq
            if isinstance(entry, ClosingEntry):
                closing = entry
        elif last_seq is not None:
            last_seq += 1

    # 6. the end: a closing entry must be there, and no partial record after the last whole one
    if not framing_failed:
        torn = decoder.end()
        if torn is not None and closing is not None:
            add(Finding(torn.index, "entry.after_closing",
                        f"{torn.have} bytes follow the closing entry (at byte {torn.offset})", got=torn.have))
        elif torn is not None:
            need = f" of {torn.need}" if torn.need is not None else ""
            add(Finding(torn.index, "record.truncated",
                        f"the log ends inside a record: {torn.have}{need} bytes at byte {torn.offset} (a write "
                        "cut short by a crash, or a cut file)", error="LogUnterminated", got=torn.have,
                        expected=torn.need))
    if closing is None:
        n = len(entries)
        add(Finding(n, "log.unterminated",
                    f"the log has no closing entry after its {n} entr{'y' if n == 1 else 'ies'}: the session "
                    "crashed, or the file was cut short",
                    error="LogUnterminated", expected="closing entry"))

    ordered = [f for _, f in sorted(findings, key=lambda p: (_index_key(p[1].index), p[0]))]
    bad = [f for f in ordered if not f.terminal]
    status: Status = "invalid" if bad else ("unterminated" if ordered else "valid")
    first_bad = min((_index_key(f.index) for f in bad), default=len(entries))
    return seal(
        LogReport,
        status=status,
        findings=tuple(ordered),
        entries=tuple(entries),
        opening=opening,
        closing=closing,
        result=result,
        policy_used=policy_used,
        policy_sha256=policy_sha,
        verified_prefix=min(first_bad, len(entries)),
        notes=tuple(notes),
        checked_at=now,
    )


def _index_key(index: int | None) -> int:
    return index if index is not None else 1 << 62


def _check_opening_record(record: Record) -> tuple[LoggedEntry, OpeningEntry | None, list[Finding]]:
    findings: list[Finding] = []
    try:
        body, sig = decode_payload_unverified(record.payload)
    except LogVerificationError as exc:
        findings.append(_finding(exc, 0))
        return LoggedEntry(0, record.offset, len(record.payload), None, None), None, findings
    digest = entry_hash(body)
    try:
        entry = decode_body_unverified(body)
    except LogVerificationError as exc:
        findings.append(_finding(exc, 0))
        entry = None
    if entry is not None and not isinstance(entry, OpeningEntry):
        findings.append(Finding(0, "entry.type", "a session log must start with its opening entry",
                                got=entry.type, expected="opening"))
        return LoggedEntry(0, record.offset, len(record.payload), digest, entry), None, findings
    if sig:
        findings.append(Finding(0, "opening.signature", "the opening entry is written by the kernel and carries no "
                                "signature, but this one has one", got=sig, expected=b""))
    logged = LoggedEntry(0, record.offset, len(record.payload), digest, entry)
    if entry is None:
        return logged, None, findings
    if entry.seq != 0:
        findings.append(Finding(0, "entry.seq", "the opening entry must have sequence number 0",
                                got=entry.seq, expected=0))
    if not constant_time_equal(entry.prev, GENESIS):
        findings.append(Finding(0, "entry.prev", "the opening entry's prev must be 32 zero bytes",
                                got=entry.prev, expected=GENESIS))
    return logged, entry, findings


def recorded_result(text: str) -> dict[str, Any] | None:
    """The opening entry's ``result`` as a JSON object, or None if it is not one (or nests deeper than
    ``RESULT_MAX_DEPTH`` levels, which no result does: hostile nesting never reaches a recursive encoder)."""
    try:
        loaded = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(loaded, dict) or nesting_depth(loaded, limit=RESULT_MAX_DEPTH) > RESULT_MAX_DEPTH:
        return None
    return loaded


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None and moment.utcoffset() is not None else None


def _verify_attestation(
    op: OpeningEntry,
    *,
    policy: Policy | None,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None,
    now: datetime | None,
) -> tuple[AttestationResult | None, Literal["embedded", "given", "none"], bytes | None, list[Finding], list[str]]:
    findings: list[Finding] = []
    notes: list[str] = []

    def bad(check: str, message: str, *, got: object = None, expected: object = None, error: str = "") -> None:
        findings.append(Finding(0, check, message, error or "LogVerificationError", got, expected))

    # a. the embedded policy: it must load and hash to the recorded digest
    embedded: Policy | None = None
    try:
        embedded = load_policy(op.policy, source=op.policy_source)
    except PolicyError as exc:
        bad("opening.policy", f"the recorded policy does not load: {exc}", error="PolicyError")
    if embedded is not None and not constant_time_equal(embedded.sha256, op.policy_sha256):
        bad("opening.policy_sha256", "the recorded policy text does not hash to the recorded policy digest",
            got=embedded.sha256, expected=op.policy_sha256)
        embedded = None
    effective = policy if policy is not None else embedded
    used: Literal["embedded", "given", "none"] = "given" if policy is not None else (
        "embedded" if embedded is not None else "none")
    if policy is not None and not constant_time_equal(policy.sha256, op.policy_sha256):
        notes.append(f"appraised under the given policy {policy.source} (sha256 {policy.sha256.hex()[:16]}...), "
                     f"not the recorded one (sha256 {op.policy_sha256.hex()[:16]}...)")
    # b. the recorded result and times
    recorded: dict[str, Any] | None = None
    recorded = recorded_result(op.result)
    if recorded is None:
        bad("opening.result", "the recorded attestation result is not a JSON object (nested at most "
            f"{RESULT_MAX_DEPTH} levels)")
    verified_at = _parse_time(op.verified_at)
    if verified_at is None:
        bad("opening.verified_at", "the recorded verification time is not an ISO 8601 time with a UTC offset",
            got=op.verified_at)
        return None, used, effective.sha256 if effective else None, findings, notes
    if recorded is not None and recorded.get("verified_at") != op.verified_at:
        bad("opening.verified_at", "the recorded verification time differs from the recorded result's",
            got=op.verified_at, expected=recorded.get("verified_at"))
    appraised_at = _parse_time(recorded.get("appraised_at")) if recorded is not None else None
    # c. authenticity at the recorded time. Simulation anchors only count when the policy in use allows
    #    simulation; with no usable policy nothing can be accepted anyway, so they only make the findings precise
    sim = simulation_anchors if effective is None or effective.unsafe_allow_simulation else None
    try:
        env = parse_envelope_unverified(op.evidence)
        verified = verify_evidence(env, anchors=anchors, now=verified_at, simulation_anchors=sim)
    except VerificationError as exc:
        findings.append(_finding(exc, 0))
        return None, used, effective.sha256 if effective else None, findings, notes
    except Exception as exc:  # a foreign parser failing on hostile evidence is a finding, not a crash
        findings.append(_finding(exc, 0))
        return None, used, effective.sha256 if effective else None, findings, notes
    # d. binding: report_data binds the recorded TLS key, audit key, nonce and session id
    try:
        bound = check_binding(verified, tls_spki=op.tls_spki, audit_pub=op.audit_pub, nonce=op.nonce,
                              session_id=op.session_id, claimed_nonce=answered_nonce(verified, env))
    except VerificationError as exc:
        findings.append(_finding(exc, 0))
        return None, used, effective.sha256 if effective else None, findings, notes
    for name, hint, value in (("session_id", env.session_id, op.session_id), ("audit_pub", env.audit_pub,
                                                                              op.audit_pub)):
        if not constant_time_equal(hint, value):
            bad(f"opening.envelope_{name}", f"the envelope's {name} hint differs from the bound {name}",
                got=hint, expected=value)
    # e. policy
    if effective is None:
        return None, used, None, findings, notes
    try:
        result = appraise(bound, effective, now=appraised_at or verified_at)
    except PolicyViolation as exc:
        for failure in exc.failures or (exc,):
            findings.append(Finding(0, failure.check, failure.message, "PolicyViolation", failure.got,
                                    failure.expected))
        return None, used, effective.sha256, findings, notes
    # f. the recorded result must be the one re-computed (under the recorded policy)
    if policy is None and recorded is not None:
        fresh = json.loads(result_json(result))
        differ = [k for k in RESULT_FIELDS if fresh.get(k) != recorded.get(k)]
        if differ:
            bad("opening.result", "the recorded attestation result differs from the re-computed one in "
                + ", ".join(differ), got={k: recorded.get(k) for k in differ},
                expected={k: fresh.get(k) for k in differ})
    if now is not None and verified_at > now:
        notes.append("the recorded verification time is later than now")
    return result, used, effective.sha256, findings, notes


# --- unverified reading (for `audit show`) ---------------------------------------------------------------------


@dataclass(frozen=True)
class UnverifiedLog:
    """Entries parsed without any check of signatures or chain, and the reason parsing stopped, if any."""

    entries: tuple[LoggedEntry, ...]
    problems: tuple[Finding, ...]


def read_log_unverified(data: bytes) -> UnverifiedLog:
    """Parse a log for display. Nothing is verified.

    Raises:
        AuditError: empty or not a session log.
    """
    decoder = LogDecoder()
    decoder.feed(bytes(data))
    entries: list[LoggedEntry] = []
    problems: list[Finding] = []
    while True:
        try:
            record = decoder.next_record()
        except LogVerificationError as exc:
            problems.append(_finding(exc, exc.index))
            break
        if not isinstance(record, Record):  # NEED_DATA: the rest is not a whole record
            torn = decoder.end()
            if torn is not None:
                problems.append(Finding(torn.index, "record.truncated", f"{torn.have} bytes of an incomplete record"))
            break
        try:
            body, _sig = decode_payload_unverified(record.payload)
            digest = entry_hash(body)
            entry = decode_body_unverified(body)
        except LogVerificationError as exc:
            problems.append(_finding(exc, record.index))
            entries.append(LoggedEntry(record.index, record.offset, len(record.payload), None, None))
            continue
        entries.append(LoggedEntry(record.index, record.offset, len(record.payload), digest, entry))
    return UnverifiedLog(tuple(entries), tuple(problems))


# --- notebooks -------------------------------------------------------------------------------------------------

CellStatus = Literal["matching", "edited", "unexecuted"]


@dataclass(frozen=True)
class CellFinding:
    """How one code cell of a notebook relates to the log.

    ``matching``: the cell's source hashes to a receipt's code hash (``receipt`` = that entry's index; the one
    with the cell's execution count if there is one). ``edited``: a receipt has the cell's execution count but
    other code: the cell was edited after it ran (``receipt`` = that run). ``unexecuted``: no receipt of this
    session ran this source.
    """

    cell: int
    cell_id: str | None
    execution_count: int | None
    status: CellStatus
    receipt: int | None
    note: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "cell_id": self.cell_id,
            "execution_count": self.execution_count,
            "status": self.status,
            "receipt": self.receipt,
            "note": self.note,
        }


def _source(cell: Mapping[str, Any], number: int) -> str:
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    if isinstance(source, str):
        return source
    raise AuditError(f"notebook cell {number} has a source that is neither a string nor a list of strings")


def match_notebook(report: LogReport, notebook_json: Mapping[str, Any]) -> list[CellFinding]:
    """Classify every code cell of a notebook (``json.load`` of the .ipynb) against the log's ``cell`` and
    ``upload`` receipts (an upload receipt records its ``%cc_upload`` cell) in the verified prefix (for an
    invalid log, only the entries before the first bad one count).

    Raises:
        AuditError: the JSON is not an nbformat 4 notebook (no ``cells`` list of objects).
    """
    cells = notebook_json.get("cells") if isinstance(notebook_json, Mapping) else None
    if not isinstance(cells, list) or not all(isinstance(c, Mapping) for c in cells):
        raise AuditError("not a Jupyter notebook: it has no list of cells")
    receipts = [(i, r) for i, r in report.receipts() if r.kind in ("cell", "upload")]
    by_count: dict[int, list[tuple[int, ReceiptEntry]]] = {}
    by_code: dict[bytes, list[tuple[int, ReceiptEntry]]] = {}
    for i, r in receipts:
        by_count.setdefault(r.execution_count, []).append((i, r))
        by_code.setdefault(r.code_sha256, []).append((i, r))
    out: list[CellFinding] = []
    for number, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell, number)
        count_raw = cell.get("execution_count")
        count = count_raw if isinstance(count_raw, int) and not isinstance(count_raw, bool) else None
        cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
        digest = code_hash(source)
        runs = by_count.get(count, []) if count is not None else []
        same = [i for i, r in runs if hmac.compare_digest(r.code_sha256, digest)]
        ran = by_code.get(digest, [])
        if same:
            out.append(CellFinding(number, cell_id, count, "matching", same[-1]))
        elif runs:
            note = "the cell was edited after it ran"
            if ran:
                note += f"; its current source ran as entry {ran[-1][0]} (execution {ran[-1][1].execution_count})"
            out.append(CellFinding(number, cell_id, count, "edited", runs[-1][0], note))
        elif ran:
            shown = f"execution count {count}" if count is not None else "no execution count"
            out.append(CellFinding(number, cell_id, count, "matching", ran[-1][0],
                                   f"the notebook shows {shown}, the receipt says {ran[-1][1].execution_count}"))
        else:
            note = "" if count is None else (
                f"the notebook shows execution count {count}, but no verified receipt of this session has it")
            out.append(CellFinding(number, cell_id, count, "unexecuted", None, note))
    return out



@dataclass(frozen=True)
class UnaccountedReceipt:
    """A ``cell`` or ``upload`` receipt in the verified prefix that no code cell of the notebook accounts for
    (no cell has its code, none has its execution count): a cell that ran and was then deleted or replaced."""

    entry: int
    execution_count: int
    cell_id: str | None
    kind: str
    code_sha256: bytes

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "execution_count": self.execution_count,
            "cell_id": self.cell_id,
            "kind": self.kind,
            "code_sha256": self.code_sha256.hex(),
        }


def unaccounted_receipts(report: LogReport, notebook_json: Mapping[str, Any]) -> list[UnaccountedReceipt]:
    """The ``cell``/``upload`` receipts of the verified prefix that no code cell accounts for, in log order.

    A code cell accounts for every receipt whose code hash is its source's (each run of it) and for every receipt
    with its execution count (the run it was edited after).

    Raises:
        AuditError: the JSON is not an nbformat 4 notebook (as ``match_notebook``).
    """
    cells = notebook_json.get("cells") if isinstance(notebook_json, Mapping) else None
    if not isinstance(cells, list) or not all(isinstance(c, Mapping) for c in cells):
        raise AuditError("not a Jupyter notebook: it has no list of cells")
    hashes: set[bytes] = set()
    counts: set[int] = set()
    for number, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        hashes.add(code_hash(_source(cell, number)))
        count = cell.get("execution_count")
        if isinstance(count, int) and not isinstance(count, bool):
            counts.add(count)
    return [
        UnaccountedReceipt(i, r.execution_count, r.cell_id, r.kind, r.code_sha256)
        for i, r in report.receipts()
        if r.kind in ("cell", "upload") and r.code_sha256 not in hashes and r.execution_count not in counts
    ]


# --- the auditor's verdict -------------------------------------------------------------------------------------

#: Everything that makes ``audit verify`` fail, in the order it is reported (docs/audit-log.md §6.1).
VERDICT_FAILURES: Final = (
    "log.invalid",
    "log.unterminated",
    "attestation.simulation",
    "notebook.edited",
    "notebook.unexecuted",
    "notebook.unaccounted",
)
#: The failures an auditor may accept explicitly (``--accept`` / ``--allow-simulation``).
ACCEPTABLE: Final = frozenset(
    {"attestation.simulation", "notebook.edited", "notebook.unexecuted", "notebook.unaccounted"}
)


@dataclass(frozen=True)
class AuditVerdict:
    """Pass or fail for an auditor: ``failures`` are the reasons it fails, ``accepted`` those an option waived."""

    failures: tuple[str, ...]
    accepted: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": list(self.failures), "accepted": list(self.accepted)}


def audit_verdict(
    report: LogReport,
    *,
    cells: Sequence[CellFinding] | None = None,
    unaccounted: Sequence[UnaccountedReceipt] = (),
    allow_simulation: bool = False,
    accept: Collection[str] = (),
) -> AuditVerdict:
    """Decide pass/fail: the log must be valid, its attestation not simulated (unless ``allow_simulation``: the
    auditor's own policy allows simulation, or they said so), and with a notebook, every cell must match and every
    receipt be accounted for (unless ``accept`` names ``notebook.edited``, ``notebook.unexecuted`` or
    ``notebook.unaccounted``).

    Raises:
        ValueError: ``accept`` names something that cannot be accepted.
    """
    unknown = set(accept) - ACCEPTABLE
    if unknown:
        raise ValueError(f"cannot accept {sorted(unknown)}; acceptable: {sorted(ACCEPTABLE)}")
    waived = set(accept) | ({"attestation.simulation"} if allow_simulation else set())
    found: set[str] = set()
    if report.status != "valid":
        found.add(f"log.{report.status}")
    if report.result is not None and report.result.status == "simulation":
        found.add("attestation.simulation")
    statuses = {c.status for c in cells or ()}
    if "edited" in statuses:
        found.add("notebook.edited")
    if "unexecuted" in statuses:
        found.add("notebook.unexecuted")
    if unaccounted:
        found.add("notebook.unaccounted")
    ordered = [name for name in VERDICT_FAILURES if name in found]
    return AuditVerdict(
        failures=tuple(n for n in ordered if n not in waived), accepted=tuple(n for n in ordered if n in waived)
    )
