"""Kernel side: the attestation badge shown as the first output of a session, updated in place.

The badge is produced only by the kernel process. Enclave output claiming the badge's display id prefix or
its MIME type is dropped (``is_reserved``), so cell code cannot update or imitate the live badge through the
kernel. A saved badge stays in the notebook file: it carries the session id and the time it was produced so
that a reopened notebook's badge is not mistaken for a live one. Inline styles only, no script.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cc_kernel.attestation.result import AttestationResult

BADGE_MIME = "application/vnd.cc-kernel.attestation.v1+json"
DISPLAY_ID_PREFIX = "cc-kernel-attestation"

#: state -> (background, border/text colour, headline)
STYLES = {
    "pending": ("#eceff1", "#455a64", "Attesting the enclave…"),
    "affirming": ("#e8f5e9", "#1b5e20", "VERIFIED TEE hardware"),
    "warning": ("#fff3e0", "#8a4b00", "VERIFIED with accepted weakenings"),
    "simulation": ("#fff8e1", "#b26a00", "SIMULATION — not hardware-protected"),
    "refused": ("#ffebee", "#b71c1c", "ATTESTATION REFUSED — no code was sent"),
    "stopped": ("#ffebee", "#b71c1c", "ENCLAVE STOPPED"),
}


@dataclass
class BadgeState:
    """What the badge shows. ``state`` is one of STYLES."""

    state: str
    session_id: str
    mode: str
    result: AttestationResult | None = None
    detail: str = ""
    audit_log: str = ""
    failures: list[str] = field(default_factory=list)
    #: What the enclave's monitor says protects the cells' sandbox: name -> {"in_force", "detail"}.
    protections: dict[str, Any] = field(default_factory=dict)
    #: The data owners' datasets open in the session, as the enclave's monitor reports them (``DatasetInfo``).
    datasets: list[Any] = field(default_factory=list)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def display_id(session_id: str) -> str:
    return f"{DISPLAY_ID_PREFIX}-{session_id}"


def is_reserved(data: dict[str, Any], transient: dict[str, Any] | None) -> bool:
    """True if enclave output tries to use the badge's MIME type or display id."""
    if BADGE_MIME in data:
        return True
    did = (transient or {}).get("display_id")
    return isinstance(did, str) and did.startswith(DISPLAY_ID_PREFIX)


def protections_text(protections: dict[str, Any]) -> str:
    """One line: the protections in force, then each missing one with its reason."""
    on = [name for name, p in protections.items() if isinstance(p, dict) and p.get("in_force")]
    off = [f"{name} ({p.get('detail', '')})" for name, p in protections.items()
           if isinstance(p, dict) and not p.get("in_force")]
    text = ", ".join(on) or "none"
    return text + (f"; NOT IN FORCE: {'; '.join(off)}" if off else "")
def carries_badge(value: Any) -> bool:
    """True if JSON ``value`` holds, at any depth, the badge's MIME type as a key or a ``display_id`` with the
    badge's prefix: comm messages (an ipywidgets ``Output``'s outputs) may carry whole outputs inside them."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == BADGE_MIME:
                return True
            if key == "display_id" and isinstance(item, str) and item.startswith(DISPLAY_ID_PREFIX):
                return True
            if carries_badge(item):
                return True
        return False
    if isinstance(value, list | tuple):
        return any(carries_badge(item) for item in value)
    return False


def datasets_text(datasets: list[Any]) -> list[str]:
    """One line per open dataset: its name, owner, the rules the monitor enforces and its owner's log."""
    lines = []
    for d in datasets:
        if not isinstance(d, dict):
            continue
        lines.append(
            f"{d.get('name')} of {d.get('owner')!r}: mode {d.get('mode')}, release {d.get('session')} of "
            f"{d.get('max_sessions')}, until {d.get('not_after')}; owner's log {d.get('owner_log')}")
    return lines


def summary(b: BadgeState) -> list[str]:
    """The full claims as text: what ``%attestation`` prints for a verified enclave, else the refusal or stop."""
    if b.result is not None and b.state not in ("refused", "stopped"):
        sandbox = [f"cell sandbox: {protections_text(b.protections)}"] if b.protections else []
        data = [f"dataset {line}" for line in datasets_text(b.datasets)]
        return [*b.result.summary_lines(), *sandbox, *data]
    lines = [STYLES[b.state][2], *b.failures]
    if b.detail:
        lines.append(b.detail)
    if b.result is not None:
        lines += ["", "Last verified attestation:", *b.result.summary_lines()]
    return lines


def machine(b: BadgeState) -> dict[str, Any]:
    """The badge's machine-readable content (its MIME type's value; also in ``kernel_info_reply.cc_kernel``)."""
    return {
        "state": b.state, "headline": STYLES[b.state][2], "session_id": b.session_id, "mode": b.mode,
        "as_of": b.at.isoformat(), "audit_log": b.audit_log, "failures": b.failures, "detail": b.detail,
        "summary": summary(b), "result": b.result.to_json_dict() if b.result else None,
        "protections": b.protections, "datasets": b.datasets,
    }


def _rows(b: BadgeState) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    r = b.result
    if r is not None:
        rows.append(("platform", f"{r.platform} ({r.product})"))
        rows.append(("measurement", r.measurement.hex()[:16] + "…"))
        rows.append(("verdict", f"{r.status} (policy {r.policy_source}, entry #{r.matched_entry})"))
        weak = list(r.unsafe_flags_used) + [w for w in r.warnings if w not in r.unsafe_flags_used]
        rows.append(("accepted warnings", ", ".join(weak) or "none"))
        rows.append(("debug", "ENABLED" if r.debug else "disabled"))
    if b.protections:
        rows.append(("cell sandbox", protections_text(b.protections)))
    for line in datasets_text(b.datasets):
        rows.append(("dataset", line))
    if b.failures:
        rows.append(("failed checks", "; ".join(b.failures)))
    if b.detail:
        rows.append(("detail", b.detail))
    rows.append(("enclave", b.mode))
    rows.append(("session", b.session_id))
    rows.append(("audit log", b.audit_log or "none (audit disabled or not yet open)"))
    rows.append(("as of", b.at.strftime("%Y-%m-%d %H:%M:%S UTC") + " (a saved badge is not live)"))
    return rows


def render(b: BadgeState) -> dict[str, Any]:
    """The mimebundle of the badge: text/plain, text/html and the machine-readable JSON."""
    bg, fg, headline = STYLES[b.state]
    rows = _rows(b)
    plain = [f"[Confidential Python] {headline}"] + [f"  {k}: {v}" for k, v in rows]
    cells = "".join(
        f'<tr><td style="padding:0 8px 0 0;color:#555;white-space:nowrap">{html.escape(k)}</td>'
        f'<td style="font-family:monospace">{html.escape(v)}</td></tr>'
        for k, v in rows
    )
    body = (
        f'<div style="border:2px solid {fg};background:{bg};color:#222;border-radius:6px;'
        f'padding:6px 10px;margin:2px 0;font-size:12px;max-width:60em">'
        f'<div style="font-weight:bold;color:{fg};font-size:13px">🛡 Confidential Python — {html.escape(headline)}</div>'
        f'<table style="border-collapse:collapse;margin-top:4px">{cells}</table></div>'
    )
    return {"text/plain": "\n".join(plain), "text/html": body, BADGE_MIME: machine(b)}
