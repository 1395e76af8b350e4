"""Teaching: what attestation looks like — an SEV-SNP report's fields, an evidence envelope's certificates,
and the attested-channel protocol as a sequence diagram.

Layer: pure (bytes in, ``Table``/``Diagram`` out), part of ``cc_kernel.teaching``. Invariants: reports and
envelopes are read with the project's own unverified parsers (``parse_report_unverified``,
``parse_envelope_unverified``, ``load_amd_certificate``) and every table says its values are NOT verified; the
diagram's steps are those of ``channel.client.connect_attested``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Final

from cc_kernel.attestation.envelope import parse_envelope_unverified
from cc_kernel.attestation.platforms.sev_snp import LAYOUT, decode_tcb, parse_report_unverified
from cc_kernel.crypto.x509load import load_amd_certificate
from cc_kernel.teaching.display import Diagram, Table, short

__all__ = ["attestation_diagram", "describe_chain", "describe_report"]

_FIELD_NOTES: Final[Mapping[str, str]] = {
    "version": "report format version",
    "policy": "guest policy set at launch; bit 19 = DEBUG",
    "vmpl": "privilege level that asked (0 = most privileged)",
    "signature_algo": "1 = ECDSA P-384 with SHA-384",
    "current_tcb": "firmware security versions running now",
    "report_data": "64 bytes chosen by the enclave: our binding digest",
    "measurement": "hash of what was loaded (simulation: the enclave's files)",
    "host_data": "32 bytes the host supplied at launch",
    "report_id": "identifies this guest",
    "reported_tcb": "TCB the signing key (VCEK) was derived for",
    "cpuid_fam_id": "CPU family (0xCC = the simulated product)",
    "chip_id": "unique chip id (= the VCEK's hwID)",
    "committed_tcb": "firmware versions that cannot be rolled back",
    "launch_tcb": "TCB when the guest was launched",
    "signature_r": "ECDSA signature R (little-endian), over bytes 0x000-0x29F",
    "signature_s": "ECDSA signature S (little-endian)",
}


def describe_report(report: bytes) -> Table:
    """The fields of an SEV-SNP ATTESTATION_REPORT that matter for teaching: offset, size, value, meaning.

    Parses with the project's parser (``parse_report_unverified``): the values are NOT verified yet.

    Raises:
        MalformedEvidence: the bytes are not a well-formed report.
    """
    parsed = parse_report_unverified(report)
    product = parsed.product_from_cpuid() or "Milan"
    rows = []
    for name, note in _FIELD_NOTES.items():
        f = LAYOUT[name]
        raw = report[f.offset : f.end]
        if name.endswith("_tcb"):
            value = " ".join(f"{k}={v}" for k, v in decode_tcb(raw, product).items())
        elif name == "policy":
            value = f"0x{parsed.policy:x} (debug={'ON' if parsed.debug else 'off'})"
        elif name == "chip_id" and raw.startswith(b"CC-SIMULATION"):
            value = "'CC-SIMULATION' + " + short(raw[len(b"CC-SIMULATION") :], 24)
        elif f.kind == "int":
            value = str(int.from_bytes(raw, "little"))
            if name == "cpuid_fam_id":
                value = f"0x{int(value):02x}"
        else:
            value = short(raw.rstrip(b"\0") if name.startswith("signature") else raw, 48)
        rows.append((f"0x{f.offset:03x}", str(f.size), name, value, note))
    return Table(f"SEV-SNP report v{parsed.version}, {len(report)} bytes (unverified)",
                 ("offset", "size", "field", "value", "meaning"), tuple(rows))


def describe_chain(envelope_bytes: bytes) -> Table:
    """The certificates an evidence envelope carries (role, subject, issuer, key): the chain to a root.

    Raises:
        MalformedEvidence: the envelope or a certificate does not parse.
    """
    env = parse_envelope_unverified(envelope_bytes)
    rows = []
    for e in env.endorsements:
        if e.kind != "x509-der":
            rows.append((e.role or "-", e.kind, "", ""))
            continue
        cert = load_amd_certificate(e.data)
        key = cert.public_key()
        key_name = type(key).__name__.removeprefix("_").replace("PublicKey", "")
        size = getattr(key, "key_size", None)
        if size is None:
            size = getattr(getattr(key, "curve", None), "key_size", None)
        rows.append((e.role, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), f"{key_name} {size}"))
    return Table(f"certificates in the envelope (platform hint {env.platform!r}, format {env.format!r})",
                 ("role", "subject", "issuer", "key"), tuple(rows))



def attestation_diagram() -> Diagram:
    """The attested-channel protocol as a sequence diagram (SVG), with a plain-text version for ``print``."""
    lanes = [
        (100, "Confidential Python kernel", "your machine — trusted", "#e8f5e9"),
        (295, "host OS, network, relays", "untrusted: sees ciphertext", "#ffebee"),
        (490, "enclave (in the TEE)", "runs the measured code", "#e3f2fd"),
        (685, "security processor", "AMD SP (simulated here)", "#ede7f6"),
    ]
    width, height = 790, 530
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        '<defs><marker id="a" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto-start-reverse">'
        '<path d="M0,0 L10,4 L0,8 z" fill="#333"/></marker></defs>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    for x, title, sub, colour in lanes:
        parts.append(f'<rect x="{x - 94}" y="10" width="188" height="44" rx="6" fill="{colour}" stroke="#555"/>')
        parts.append(f'<text x="{x}" y="29" text-anchor="middle" font-weight="bold" font-size="11.5">'
                     f"{html.escape(title)}</text>")
        parts.append(f'<text x="{x}" y="46" text-anchor="middle" font-size="11" fill="#444">{html.escape(sub)}</text>')
        parts.append(f'<line x1="{x}" y1="54" x2="{x}" y2="{height - 10}" stroke="#999" stroke-dasharray="4 4"/>')

    def arrow(y: int, x1: int, x2: int, label: str, *, dashed: bool = False, both: bool = False) -> None:
        dash = ' stroke-dasharray="6 3"' if dashed else ""
        start = ' marker-start="url(#a)"' if both else ""
        parts.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#333" stroke-width="1.5"{dash}'
                     f' marker-end="url(#a)"{start}/>')
        parts.append(f'<text x="{(x1 + x2) / 2}" y="{y - 6}" text-anchor="middle">{html.escape(label)}</text>')

    def note(y: int, x: int, lines: Sequence[str], colour: str = "#fffde7") -> None:
        w = 12 + 6.4 * max(len(s) for s in lines)
        h = 8 + 15 * len(lines)
        left = min(max(4, x - w / 2), width - w - 4)
        parts.append(f'<rect x="{left:.0f}" y="{y}" width="{w:.0f}" height="{h}" rx="4" fill="{colour}" '
                     'stroke="#aaa"/>')
        for i, s in enumerate(lines):
            parts.append(f'<text x="{left + 6:.0f}" y="{y + 16 + 15 * i}" font-size="11">{html.escape(s)}</text>')

    k, h, e, sp = (lane[0] for lane in lanes)
    arrow(88, k, e, "1. TLS 1.3 handshake — the enclave's key was made inside the TEE", both=True)
    note(96, h, ["every byte from here on is encrypted: the host can",
                 "drop or alter bytes (TLS detects it), not read them"], "#ffebee")
    arrow(160, k, e, "2. AttestRequest(fresh nonce, session id) — inside TLS")
    note(170, e, ["3. report_data = SHA-512(tag ‖ TLS key ‖ audit key", "                ‖ nonce ‖ session id)"])
    arrow(232, e, sp, "4. report request (report_data)")
    note(240, sp, ["5. signs: measurement, debug bit,", "TCB, report_data — with its VCEK"], "#ede7f6")
    arrow(300, sp, e, "signed report", dashed=True)
    arrow(340, e, k, "6. AttestResponse: report + VCEK, ASK, ARK certificates", dashed=True)
    note(352, k, [
        "7. the kernel verifies, in order:",
        "  a. chain VCEK → ASK → pinned ARK, report signature",
        "  b. the evidence answers OUR nonce and session",
        "  c. report_data binds THIS TLS key and audit key",
        "  d. policy: measurement, debug off, TCB ≥ minimum",
        "  any failure: refuse, send no code",
    ], "#e8f5e9")
    arrow(480, k, e, "8. only now: the first cell (code and data, encrypted)")
    parts.append(f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle" font-size="11" fill="#666">'
                 "Simulation: the security processor is simulated by a key file on this machine — it protects "
                 "nothing.</text>")
    parts.append("</svg>")
    alt = "\n".join([
        "kernel (trusted)          host/network (untrusted)        enclave (TEE)          security processor",
        "1. <=========== TLS 1.3 handshake (enclave key made inside the TEE) ==========>",
        "2. AttestRequest(nonce, session id) ----------------------->",
        "3.                                               report_data = SHA-512(tag|TLS key|audit key|nonce|session)",
        "4.                                                 report request(report_data) ------------>",
        "5.                                                 <------------ signed report (VCEK)",
        "6. <------------------- AttestResponse(report + VCEK/ASK/ARK certificates)",
        "7. verify: chain to pinned ARK + signature; our nonce; binds this TLS key; policy",
        "8. first cell --------------------------------------------->  (only after 7 passed)",
    ])
    return Diagram("\n".join(parts), alt)

