"""Teaching: outcomes the teaching lab shows — an attestation verdict (``AttestOutcome``), raw evidence fetched for
manual verification (``EvidenceExchange``), and one cell run in a real kernel (``CellRun``).

Layer: pure values with text and HTML views, part of ``cc_kernel.teaching``. Invariants: a refusal is shown as
the kernel shows it — what failed (``kernel.advice.refusal_text``) and, once, what to do
(``kernel.advice.advice_for``, for the kernel's mode); an exchange's material is labelled NOT verified; a cell
run keeps every output the kernel sent, and the badge's latest version.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cc_kernel.attestation.result import AttestationResult
from cc_kernel.errors import PolicyViolation, VerificationError
from cc_kernel.kernel.advice import advice_for, refusal_text
from cc_kernel.teaching.display import Shown, pre, short
from cc_kernel.teaching.recording import Recording

__all__ = ["BADGE_MIME_PREFIX", "AttestOutcome", "CellRun", "EvidenceExchange", "latest_badge"]

#: The MIME type prefix of the Confidential Python kernel's machine-readable attestation badge.
BADGE_MIME_PREFIX: Final = "application/vnd.cc-kernel.attestation"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def latest_badge(outputs: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, str]:
    """The latest version of the attestation badge among ``outputs`` (messages with ``content``): its
    machine-readable state and its text, or (None, "") without a badge. The badge is shown once ("pending" while
    attestation runs), then updated in place."""
    state: Mapping[str, Any] | None = None
    text = ""
    for out in outputs:
        data = out.get("content", {}).get("data", {})
        for mime, value in data.items():
            if mime.startswith(BADGE_MIME_PREFIX) and isinstance(value, Mapping):
                state, text = value, str(data.get("text/plain", ""))
    return state, text


@dataclass(frozen=True, repr=False)
class AttestOutcome(Shown):
    """The verdict of one attestation attempt: the verified result, or the refusal (the exception)."""

    address: str
    label: str
    result: AttestationResult | None = None
    error: BaseException | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    #: The mode of the kernel whose verdict this is ("simulation": the lab's kernels), for its advice.
    mode: str = "simulation"

    @property
    def verified(self) -> bool:
        return self.result is not None

    @property
    def error_class(self) -> str:
        return "" if self.error is None else type(self.error).__name__

    @property
    def message(self) -> str:
        """What the kernel shows as refused (``refusal_text``: the failed checks), or '' if verified."""
        return "" if self.error is None else refusal_text(self.error)

    @property
    def advice(self) -> str:
        """What the kernel advises doing about this refusal (``advice_for`` in this mode), or '' if verified."""
        return "" if self.error is None else advice_for(self.error, self.mode)

    @property
    def check(self) -> str:
        """The failed check's stable name (the first one for a PolicyViolation), or ''."""
        return self.error.check if isinstance(self.error, VerificationError) else ""

    @property
    def failures(self) -> list[tuple[str, str, str, str]]:
        """(check, message, got, expected) of every failed check; one row for a non-policy error."""
        err = self.error
        if err is None:
            return []
        if isinstance(err, PolicyViolation):
            return [(f.check, f.message, short(f.got), short(f.expected)) for f in err.failures]
        if isinstance(err, VerificationError):
            return [(err.check, err.message, short(err.got), short(err.expected))]
        return [("(channel)", str(err), "", "")]

    def text(self) -> str:
        where = f"{self.address} [{self.label}]"
        if self.result is not None:
            return f"VERIFIED ({self.result.status}) — {where}\n" + "\n".join(
                f"  {line}" for line in self.result.summary_lines()
            )
        lines = [f"REFUSED — {self.error_class} — {where}", "  no code would be sent; the kernel says:"]
        lines += [f"  {line}" for line in self.message.splitlines()]
        lines.append(f"  what to do: {self.advice}")
        for check, _message, got, expected in self.failures:
            if got or expected:
                lines.append(f"  check {check}: got {got}, expected {expected}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if self.result is not None:
            colour, bg = ("#b26a00", "#fff8e1") if self.result.status == "simulation" else ("#1b5e20", "#e8f5e9")
            head = f"VERIFIED ({html.escape(self.result.status)})"
            body = pre("\n".join(self.result.summary_lines()))
        else:
            colour, bg = "#b71c1c", "#ffebee"
            head = f"REFUSED — {html.escape(self.error_class)}"
            rows = "".join(
                "<tr>" + "".join(f'<td style="padding:2px 6px;font-family:monospace;vertical-align:top">'
                                 f"{html.escape(v)}</td>" for v in row) + "</tr>"
                for row in self.failures
            )
            body = (
                f"<div>the kernel's message:</div>{pre(self.message)}"
                f"<div>what to do: {html.escape(self.advice)}</div>"
                '<table style="border-collapse:collapse;font-size:12px;margin-top:4px"><tr>'
                + "".join(f'<th style="text-align:left;padding:2px 6px">{h}</th>'
                          for h in ("check", "message", "got", "expected"))
                + f"</tr>{rows}</table>"
            )
        return (
            f'<div style="border:2px solid {colour};background:{bg};border-radius:6px;padding:6px 10px;'
            f'margin:2px 0;font-size:12px"><div style="font-weight:bold;color:{colour}">{head} — '
            f"{html.escape(self.address)} [{html.escape(self.label)}]</div>{body}</div>"
        )


@dataclass(frozen=True, repr=False)
class EvidenceExchange(Shown):
    """Raw, UNVERIFIED material of one attestation exchange, for verifying it step by step by hand.

    ``nonce`` and ``session_id`` are the challenge the lab sent; ``peer_cert_der`` the TLS certificate the
    enclave presented; ``envelope_bytes`` its answer (an evidence envelope).
    """

    address: str
    nonce: bytes
    session_id: bytes
    peer_cert_der: bytes
    envelope_bytes: bytes
    enclave_software: str

    def text(self) -> str:
        return "\n".join([
            f"evidence fetched from {self.address} ({self.enclave_software}) — NOT verified yet",
            f"  our challenge: nonce {self.nonce.hex()} session {self.session_id.hex()}",
            f"  TLS certificate: {len(self.peer_cert_der)} bytes; evidence envelope: {len(self.envelope_bytes)} bytes",
        ])


@dataclass(frozen=True, repr=False)
class CellRun:
    """One cell run in a separate, real Jupyter kernel started by the lab, with everything it produced."""

    kernel: str
    code: str
    status: str
    outputs: tuple[Mapping[str, Any], ...]
    seconds: float
    connection_info: Mapping[str, Any]
    kernel_log: str
    enclave: str | None = None
    wiretap: Recording | None = None

    @property
    def badge(self) -> Mapping[str, Any] | None:
        """The attestation badge's machine-readable state (Confidential Python kernels), or None: its latest
        version in this cell (it is shown once, "pending" if attestation was still running, then updated in
        place)."""
        return latest_badge(self.outputs)[0]

    @property
    def badge_text(self) -> str:
        """The text of the badge's latest version in this cell ("" without a badge)."""
        return latest_badge(self.outputs)[1]

    @property
    def text(self) -> str:
        """What the notebook received, as text: streams, text/plain results and errors (no badge)."""
        parts = []
        for out in self.outputs:
            kind, content = out["msg_type"], out["content"]
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("display_data", "execute_result"):
                data = content.get("data", {})
                if any(m.startswith(BADGE_MIME_PREFIX) for m in data):
                    continue
                parts.append(str(data.get("text/plain", "")) + "\n")
            elif kind == "error":
                parts.append(_ANSI.sub("", "\n".join(content.get("traceback", []))) + "\n")
        return "".join(parts)

    def render(self) -> str:
        lines = [f"{self.kernel} kernel: cell {self.status} in {self.seconds * 1000:.0f} ms"]
        if self.badge_text:
            lines += ["--- the badge that kernel showed ---", self.badge_text]
        lines += ["--- what the notebook received ---", self.text.rstrip()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.render())

    def _repr_html_(self) -> str:
        return pre(self.render())

