"""Helpers for the audit tests: the committed vectors (tests/vectors/audit/) and a fast session builder that uses
their TEST ONLY simulated authority (RSA-2048, loaded from files: no key generation)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms import simulation as sim
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.audit import LogWriter, OpeningEntry, OutputDigester, ReceiptSigner, make_opening
from cc_kernel.crypto.keys import AuditKey, new_tls_key, spki_der_of_key
from cc_kernel.protocol import messages as m

AUDIT_DIR = Path(__file__).parent / "vectors" / "audit"
AUTHORITY_DIR = AUDIT_DIR / "test-authority"
VERIFIED_AT = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0_MS = int(VERIFIED_AT.timestamp() * 1000)
MEASUREMENT = hashlib.sha384(b"cc-kernel audit vectors: simulated enclave (TEST ONLY)").digest()


def audit_file(name: str) -> bytes:
    return (AUDIT_DIR / name).read_bytes()


@functools.cache
def manifest() -> dict[str, Any]:
    return json.loads(audit_file("manifest.json"))


@functools.cache
def authority() -> sim.SimulationAuthority:
    return sim.authority_from_pem({name: (AUTHORITY_DIR / name).read_bytes() for name in sim.PEM_FILES})


@functools.cache
def anchors() -> TrustAnchors:
    return authority().anchors()


@functools.cache
def policy(name: str) -> Policy:
    return load_policy(audit_file(name), source=name)


def audit_key(seed: bytes) -> AuditKey:
    return AuditKey(ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))


@dataclass
class Built:
    """A session under construction: the writer's output so far, its signer, and the opening entry."""

    key: AuditKey
    session_id: bytes
    opening: OpeningEntry
    writer: LogWriter
    signer: ReceiptSigner
    out: list[bytes] = field(default_factory=list)
    clock: int = T0_MS + 1000

    @property
    def data(self) -> bytes:
        return b"".join(self.out)

    def cell(self, code: str = "x = 1", *, count: int = 1, kind: str = "cell", text: str = "") -> bytes:
        d = OutputDigester()
        if text:
            d.add(m.Stream(req_id=1, name="stdout", text=text))
        receipt = self.signer.sign_receipt(kind=kind, execution_count=count, code=code, outputs=d.result(),
                                           status="ok", started_ms=self.clock, ended_ms=self.clock + 3)
        self.clock += 10
        return receipt


def open_session(*, seed: bytes = b"audit tests", session_id: bytes | None = None,
                 policy_name: str = "policy-sim.toml") -> Built:
    """A verified opening entry for a fresh simulated session, written to an in-memory log."""
    key = audit_key(seed)
    sid = session_id or hashlib.sha256(seed + b"/sid").digest()[:16]
    nonce = hashlib.sha256(seed + b"/nonce").digest()
    spki = spki_der_of_key(new_tls_key())
    auth = authority()
    report = sim.sign_report(
        auth, measurement=MEASUREMENT,
        report_data=expected_report_data(tls_spki=spki, audit_pub=key.public_bytes, nonce=nonce, session_id=sid),
    )
    env = sim.simulated_envelope(auth, report, audit_pub=key.public_bytes, session_id=sid, nonce=nonce,
                                 collected_at_ms=T0_MS)
    pol = policy(policy_name)
    verified = verify_evidence(env, anchors=hardware_anchors(), now=VERIFIED_AT, simulation_anchors=anchors())
    bound = check_binding(verified, tls_spki=spki, audit_pub=key.public_bytes, nonce=nonce, session_id=sid)
    result = appraise(bound, pol, now=VERIFIED_AT)
    opening = make_opening(result=result, envelope_bytes=encode_envelope(env), tls_spki=spki, policy=pol,
                           opened_ms=T0_MS, versions={"cc_kernel": "test"})
    out: list[bytes] = []
    writer = LogWriter(out.append)
    signer = ReceiptSigner(key, sid, opening_hash=writer.open(opening))
    return Built(key=key, session_id=sid, opening=opening, writer=writer, signer=signer, out=out)
