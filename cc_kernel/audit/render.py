"""Pure audit layer: human-readable and JSON renderings of logs, reports and notebook matches (for the CLI).

Invariants: no I/O; every function returns lines or JSON-ready dicts (bytes as lowercase hex, times as ISO 8601
UTC with milliseconds); nothing here decides validity — it only shows what ``verify_log`` decided, and
``timeline`` output of an unverified log says that it is unverified.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from cc_kernel.audit.format import Body, ClosingEntry, OpeningEntry, ReceiptEntry
from cc_kernel.audit.verify import (
    AuditVerdict,
    CellFinding,
    LoggedEntry,
    LogReport,
    UnaccountedReceipt,
    recorded_result,
)

__all__ = ["cells_lines", "entry_json", "report_json", "report_lines", "timeline_lines"]

_PREVIEW = 60


def _when(ms: int) -> str:
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _preview(code: str | None, redaction: str) -> str:
    if code is None:
        return f"<code redacted: {redaction}>"
    line = " ⏎ ".join(part.strip() for part in code.strip().splitlines() if part.strip())
    return json.dumps(line if len(line) <= _PREVIEW else line[: _PREVIEW - 1] + "…", ensure_ascii=False)


def _result(opening: OpeningEntry) -> dict[str, Any]:
    return recorded_result(opening.result) or {}


def _client_key(opening: OpeningEntry) -> str:
    if not opening.client_key_recorded:
        return "client key not recorded (older log)"
    if opening.client_key_sha256 is None:
        return "no client key (local mode)"
    return f"client key sha256 {opening.client_key_sha256.hex()}"


def entry_json(logged: LoggedEntry) -> dict[str, Any]:
    """One entry as JSON (code included when the receipt carries it)."""
    out: dict[str, Any] = {"index": logged.index, "offset": logged.offset, "size": logged.size,
                           "hash": logged.hash.hex() if logged.hash else None, "signature_ok": logged.signature_ok}
    e = logged.entry
    if e is None:
        out["type"] = None
        return out
    out.update({"type": e.type, "seq": e.seq, "session_id": e.session_id.hex(), "prev": e.prev.hex()})
    if isinstance(e, OpeningEntry):
        result = _result(e)
        out.update({
            "opened_at": _when(e.opened_ms), "verified_at": e.verified_at, "policy_source": e.policy_source,
            "policy_sha256": e.policy_sha256.hex(), "audit_pub": e.audit_pub.hex(), "nonce": e.nonce.hex(),
            "tls_spki": e.tls_spki.hex(), "evidence_size": len(e.evidence), "versions": dict(e.versions),
            "settings": dict(e.settings), "attestation": result,
            "client_key_sha256": e.client_key_sha256.hex() if e.client_key_sha256 else None,
            "client_key_recorded": e.client_key_recorded,
        })
    elif isinstance(e, ReceiptEntry):
        out.update({
            "kind": e.kind, "execution_count": e.execution_count, "cell_id": e.cell_id, "status": e.status,
            "started_at": _when(e.started_ms), "ended_at": _when(e.ended_ms),
            "duration_ms": e.ended_ms - e.started_ms, "code_sha256": e.code_sha256.hex(), "code": e.code,
            "redaction": e.redaction, "streams": {n: d.hex() for n, d in e.streams},
            "outputs": [[k, d.hex()] for k, d in e.outputs], "output_count": e.output_count,
            "upload": None if e.upload is None else {
                "name": e.upload.name, "sha256": e.upload.sha256.hex(), "size": e.upload.size, "fmt": e.upload.fmt},
        })
    else:
        out.update({"count": e.count, "last": e.last.hex(), "ended_at": _when(e.ended_ms), "reason": e.reason})
    return out


def _line(index: int, e: Body | None) -> str:
    if e is None:
        return f"#{index:<4} {'?':24} (undecodable entry)"
    if isinstance(e, OpeningEntry):
        r = _result(e)
        status = str(r.get("status", "?"))
        label = "SIMULATION (not hardware-protected)" if status == "simulation" else f"{r.get('platform')} {status}"
        flags = r.get("unsafe_flags_used") or []
        extra = f"; unsafe: {', '.join(map(str, flags))}" if flags else ""
        return (f"#{index:<4} {_when(e.opened_ms):24} opening   session {e.session_id.hex()} — {label}; "
                f"measurement {str(r.get('measurement', ''))[:16]}…; policy {e.policy_source} "
                f"(sha256 {e.policy_sha256.hex()[:12]}…){extra}; {_client_key(e)}")
    if isinstance(e, ClosingEntry):
        return f"#{index:<4} {_when(e.ended_ms):24} closing   {e.count} entries before it; reason {e.reason}"
    secs = (e.ended_ms - e.started_ms) / 1000
    head = f"#{index:<4} {_when(e.started_ms):24} {e.kind:9} "
    if e.kind == "upload" and e.upload is not None:
        u = e.upload
        return head + f"{e.status:11} {u.name} ({u.fmt}, {u.size} bytes, sha256 {u.sha256.hex()[:16]}…)"
    parts = [name for name, _ in e.streams]
    if e.output_count:
        parts.append(f"{e.output_count} rich output{'s' if e.output_count != 1 else ''}")
    count = f"[{e.execution_count}]"
    return (head + f"{count:>6} {e.status:11} {secs:7.3f}s  code {e.code_sha256.hex()[:12]}… "
            f"{_preview(e.code, e.redaction)}  ({', '.join(parts) or 'no output'})")


def timeline_lines(entries: Sequence[LoggedEntry]) -> list[str]:
    """One line per entry: index, time, type/kind, and the essentials."""
    return [_line(logged.index, logged.entry) for logged in entries]


def report_lines(report: LogReport, *, source: str = "log") -> list[str]:
    """The verdict, the first bad entry, every finding, and the attestation summary."""
    n = len(report.entries)
    lines: list[str] = []
    if report.status == "valid":
        reason = report.closing.reason if report.closing is not None else ""
        if reason in ("shutdown", "restart"):
            lines.append(f"{source}: VALID — {n} entries, closed cleanly ({reason}); every signature, link and "
                         "sequence number verifies")
        else:  # e.g. the kernel stopped the session because a receipt was missing or did not match
            lines.append(f"{source}: VALID — {n} entries; every signature, link and sequence number verifies; "
                         f"the session was closed for this reason: {reason}")
    elif report.status == "unterminated":
        lines.append(f"{source}: UNTERMINATED — the {n} entries present verify, but the closing entry is missing "
                     "(the session crashed or the file was cut short; not altered)")
    else:
        first = next(f for f in report.findings if not f.terminal)
        lines.append(f"{source}: INVALID — first bad entry #{first.index} (check {first.check}): {first.message}")
    if report.findings:
        lines.append(f"findings ({len(report.findings)}):")
        for f in report.findings:
            where = f"#{f.index}" if f.index is not None else "-"
            text = f.message.replace("\n", "\n      ")
            lines.append(f"  {where:>5} [{f.check}] {f.error}: {text}")
    if report.opening is not None:
        lines.append(f"session {report.opening.session_id.hex()}; policy used: {report.policy_used}"
                     + (f" (sha256 {report.policy_sha256.hex()[:16]}…)" if report.policy_sha256 else ""))
        lines.append(f"{_client_key(report.opening)} (recorded by the kernel)")
    if report.result is not None:
        lines.extend(f"  {line}" for line in report.result.summary_lines())
    lines.extend(f"note: {note}" for note in report.notes)
    return lines


def cells_lines(cells: Sequence[CellFinding]) -> list[str]:
    """One line per notebook code cell."""
    out = []
    for c in cells:
        count = f"[{c.execution_count}]" if c.execution_count is not None else "[ ]"
        where = f"entry #{c.receipt}" if c.receipt is not None else "no receipt"
        label = {"matching": "MATCHES", "edited": "EDITED after execution", "unexecuted": "NOT EXECUTED"}[c.status]
        note = f" — {c.note}" if c.note else ""
        out.append(f"  cell {c.cell:<3} {count:>6} {label} ({where}){note}")
    return out


def report_json(
    report: LogReport,
    *,
    cells: Sequence[CellFinding] | None = None,
    unaccounted: Sequence[UnaccountedReceipt] | None = None,
    verdict: AuditVerdict | None = None,
) -> dict[str, Any]:
    """The whole report as JSON (``verdict``: the auditor's pass/fail and why; ``unaccounted``: receipts no
    notebook cell accounts for)."""
    first = next((f for f in report.findings if not f.terminal), report.first)
    out: dict[str, Any] = {
        "status": report.status,
        "valid": report.valid,
        "entries": len(report.entries),
        "first_bad": first.to_json_dict() if first is not None else None,
        "findings": [f.to_json_dict() for f in report.findings],
        "session_id": report.session_id.hex() if report.session_id else None,
        "policy_used": report.policy_used,
        "policy_sha256": report.policy_sha256.hex() if report.policy_sha256 else None,
        "attestation": report.result.to_json_dict() if report.result is not None else None,
        "client_key_sha256": report.opening.client_key_sha256.hex()
        if report.opening is not None and report.opening.client_key_sha256 else None,
        "verified_prefix": report.verified_prefix,
        "notes": list(report.notes),
        "timeline": [entry_json(e) for e in report.entries],
    }
    if cells is not None:
        out["cells"] = [c.to_json_dict() for c in cells]
    if unaccounted is not None:
        out["unaccounted"] = [u.to_json_dict() for u in unaccounted]
    if verdict is not None:
        out["verdict"] = verdict.to_json_dict()
    return out


def unaccounted_lines(unaccounted: Sequence[UnaccountedReceipt]) -> list[str]:
    """One line per receipt that no notebook cell accounts for."""
    return [
        f"  entry #{u.entry:<4} [{u.execution_count}] {u.kind}: RAN, but no cell of the notebook has its code or its "
        f"execution count (deleted or replaced after it ran){f'; cell id {u.cell_id}' if u.cell_id else ''}"
        for u in unaccounted
    ]


_WHY: Final = {
    "log.invalid": "the log is INVALID",
    "log.unterminated": "the log is UNTERMINATED",
    "attestation.simulation": "a SIMULATED TEE session (no hardware protection; --allow-simulation, or a --policy "
    "with unsafe_allow_simulation = true, accepts it)",
    "notebook.edited": "cells were EDITED after execution (--accept notebook.edited)",
    "notebook.unexecuted": "cells were NOT EXECUTED in this session (--accept notebook.unexecuted)",
    "notebook.unaccounted": "receipts that no notebook cell accounts for (--accept notebook.unaccounted)",
}


def verdict_lines(verdict: AuditVerdict) -> list[str]:
    """The auditor's verdict: PASS, or FAIL and every reason; what an option accepted."""
    head = "VERDICT: PASS" if verdict.passed else "VERDICT: FAIL — " + "; ".join(_WHY[f] for f in verdict.failures)
    lines = [head]
    if verdict.accepted:
        lines.append("accepted by option: " + ", ".join(verdict.accepted))
    return lines
