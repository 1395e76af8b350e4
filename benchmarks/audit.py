"""Audit-log costs (not a test; run by hand): per-receipt signing + checked append, and offline verification.

    /tmp/venv/bin/python benchmarks/audit.py [--entries 10000] [--repeat 3]

Measures, for a simulated session (a throwaway RSA-2048 simulated authority; the attestation check is a fixed
cost of one opening entry):

* enclave ``ReceiptSigner.sign_receipt`` + kernel ``LogWriter.append`` per receipt (a one-line cell with a
  short stdout): into memory; into the kernel's ``AuditFile`` (a write per entry, fsync by group commit, its
  closing fsync included); and into a file with a write + fsync per entry (the design before the group commit);
* ``verify_log`` of the whole N-entry log (target: 10,000 entries under 5 s).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms import simulation as sim
from cc_kernel.attestation.policy import load_policy, render_policy
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.audit import LogWriter, OutputDigester, ReceiptSigner, make_opening, verify_log
from cc_kernel.crypto.keys import AuditKey, new_tls_key, spki_der_of_key
from cc_kernel.kernel.auditlog import AuditFile
from cc_kernel.protocol import messages as m

NOW = datetime(2025, 6, 2, tzinfo=UTC)


def setup() -> tuple[sim.SimulationAuthority, object, AuditKey, bytes]:
    authority = sim.create_authority(
        now=datetime(2025, 6, 1, tzinfo=UTC),
        ark_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ask_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        vcek_key=ec.generate_private_key(ec.SECP384R1()),
    )
    key = AuditKey(ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest()))
    sid, nonce, spki = b"b" * 16, b"n" * 32, spki_der_of_key(new_tls_key())
    measurement = hashlib.sha384(b"bench enclave").digest()
    report = sim.sign_report(authority, measurement=measurement, report_data=expected_report_data(
        tls_spki=spki, audit_pub=key.public_bytes, nonce=nonce, session_id=sid))
    env = sim.simulated_envelope(authority, report, audit_pub=key.public_bytes, session_id=sid, nonce=nonce,
                                 collected_at_ms=0)
    policy = load_policy(render_policy("simulation", [measurement]), source="bench.toml")
    verified = verify_evidence(env, anchors=hardware_anchors(), now=NOW, simulation_anchors=authority.anchors())
    bound = check_binding(verified, tls_spki=spki, audit_pub=key.public_bytes, nonce=nonce, session_id=sid)
    opening = make_opening(result=appraise(bound, policy, now=NOW), envelope_bytes=encode_envelope(env),
                           tls_spki=spki, policy=policy, opened_ms=0, versions={"cc_kernel": "bench"})
    return authority, opening, key, sid


def write_session(opening: object, key: AuditKey, sid: bytes, n: int, sink: object) -> float:
    """Write an n-entry session through ``sink``; return seconds per receipt (sign + digest + checked append)."""
    writer = LogWriter(sink)  # type: ignore[arg-type]
    signer = ReceiptSigner(key, sid, opening_hash=writer.open(opening))  # type: ignore[arg-type]
    start = time.perf_counter()
    for i in range(1, n - 1):
        digests = OutputDigester()
        digests.add(m.Stream(req_id=i, name="stdout", text=f"{i}\n"))
        writer.append(signer.sign_receipt(kind="cell", execution_count=i, code=f"print({i})",
                                          outputs=digests.result(), status="ok", started_ms=i, ended_ms=i + 1))
    writer.append(signer.sign_closing(ended_ms=n))
    return (time.perf_counter() - start) / max(1, n - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    authority, opening, key, sid = setup()

    chunks: list[bytes] = []
    per_receipt_mem = write_session(opening, key, sid, args.entries, chunks.append)
    data = b"".join(chunks)

    file_entries = min(args.entries, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        log_file = AuditFile(Path(tmp), sid.hex())
        per_receipt_group = write_session(opening, key, sid, file_entries, log_file.write)
        start = time.perf_counter()
        log_file.close()
        per_receipt_group += (time.perf_counter() - start) / file_entries
        group_fsyncs = log_file.fsyncs
        fd = os.open(os.path.join(tmp, "session.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def file_sink(chunk: bytes) -> None:
            os.write(fd, chunk)
            os.fsync(fd)

        try:
            per_receipt_file = write_session(opening, key, sid, file_entries, file_sink)
        finally:
            os.close(fd)

    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        report = verify_log(data, policy=None, anchors=hardware_anchors(), simulation_anchors=authority.anchors())
        times.append(time.perf_counter() - start)
        if not report.valid:
            print(f"unexpected: {report.status} {report.first}", file=sys.stderr)
            return 1
    print(f"log: {args.entries} entries, {len(data) / 1e6:.2f} MB ({len(data) / args.entries:.0f} B/entry)")
    print(f"sign + digest + checked append, in memory:        {per_receipt_mem * 1e6:8.1f} µs per receipt")
    print(f"... + the kernel's AuditFile (group commit):       {per_receipt_group * 1e6:8.1f} µs per receipt "
          f"({file_entries} entries back to back, {group_fsyncs} fsyncs)")
    print(f"... + write + fsync per entry (before):            {per_receipt_file * 1e6:8.1f} µs per receipt")
    best, median = min(times), statistics.median(times)
    print(f"verify_log ({args.entries} entries): best {best:.3f} s, median {median:.3f} s "
          f"({best / args.entries * 1e6:.1f} µs per entry; target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
