"""Sealed-dataset costs (not a test; run by hand):

    .venv/bin/python benchmarks/dataset.py [--mib 256] [--repeat 3] [--exchanges 50]

* sealing (``Sealer.feed``) and unsealing (``Unsealer.feed``/``next_event``) throughput of an in-memory buffer
  fed in 1 MiB pieces, against raw AES-256-GCM (``AESGCM.encrypt``/``decrypt`` of the same 1 MiB chunks, no
  framing) in the same run (target: >= 50% of raw);
* the broker exchange: request, challenge, evidence from the simulated TEE, appraisal under the owner's policy,
  HPKE wrap and unwrap, through a real TLS 1.3 connection to an in-process broker on 127.0.0.1 (target: < 50 ms
  median); and the same exchange's pure part alone (no network, no TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms import simulation as sim
from cc_kernel.attestation.policy import load_policy, render_policy
from cc_kernel.broker.client import request_key
from cc_kernel.broker.server import serve
from cc_kernel.broker.store import BrokerStore
from cc_kernel.dataset.format import NEED_DATA, DatasetHeader, Sealer, Unsealer, encode_header, header_hash
from cc_kernel.dataset.release import (
    DatasetRecord,
    ReleaseClient,
    appraise_release,
    new_challenge,
    release_response,
)
from cc_kernel.dataset.rules import load_rules
from cc_kernel.enclave.evidence import SimulatedSource

MIB = 1024 * 1024
RULES = 'version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\nmax_sessions = 1000000\n'


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput(mib: int, repeat: int) -> None:
    data = os.urandom(mib * MIB)
    key = os.urandom(32)
    header = DatasetHeader(owner="bench", dataset_id=bytes(16), broker="127.0.0.1:1", broker_spki_sha256=bytes(32),
                           policy_sha256=bytes(32), rules_sha256=bytes(32), format="bytes", plaintext_size=len(data),
                           chunk_size=MIB)
    aead = AESGCM(key)
    nonce = bytes(12)
    pieces = [data[i : i + MIB] for i in range(0, len(data), MIB)]  # the same 1 MiB bytes objects for both
    # streaming, as a sealer writing to a file would: each output is dropped once made
    raw_ct = [aead.encrypt(nonce, piece, b"aad") for piece in pieces]

    def raw_seal() -> None:
        for piece in pieces:
            aead.encrypt(nonce, piece, b"aad")

    def raw_open() -> None:
        for ct in raw_ct:
            aead.decrypt(nonce, ct, b"aad")

    def seal() -> None:
        s = Sealer(header, key)
        for piece in pieces:
            s.feed(piece)
        s.finish()

    sealer = Sealer(header, key)
    sealed_parts = [sealer.header_bytes, *(sealer.feed(piece) for piece in pieces), sealer.finish()]

    def unseal() -> None:
        u = Unsealer(key)
        for part in sealed_parts:
            u.feed(part)
            while u.next_event() is not NEED_DATA:
                pass
        u.end()

    for fn in (raw_seal, seal, raw_open, unseal):  # warm up (allocator, page cache of the buffers)
        fn()
    t_raw_seal = best(raw_seal, repeat)
    t_seal = best(seal, repeat)
    t_raw_open = best(raw_open, repeat)
    t_unseal = best(unseal, repeat)
    for name, t, ref in (("seal", t_seal, t_raw_seal), ("unseal", t_unseal, t_raw_open)):
        print(f"{name:7s} {mib / t:8.0f} MiB/s   raw AES-GCM {mib / ref:8.0f} MiB/s   ratio {ref / t:5.0%}")


async def exchange_latency(n: int) -> None:
    now = datetime.now(UTC)
    authority = sim.create_authority(now=now)
    measurement = os.urandom(48)
    source = SimulatedSource(authority, measurement)
    policy = render_policy("simulation", [measurement]).encode()
    rules = load_rules(RULES)
    with tempfile.TemporaryDirectory() as tmp:
        store = BrokerStore(Path(tmp) / "store")
        header = DatasetHeader(owner="bench", dataset_id=os.urandom(16), broker="127.0.0.1:1",
                               broker_spki_sha256=store.spki_sha256, policy_sha256=load_policy(policy).sha256,
                               rules_sha256=rules.sha256, format="bytes", plaintext_size=0)
        hh = header_hash(encode_header(header))
        record = DatasetRecord(dataset_id=header.dataset_id, owner="bench", header_sha256=hh,
                               data_key=os.urandom(32), policy=policy, rules=RULES.encode())
        store.put(record)

        async def collect(report_data: bytes, release_pub: bytes, dataset_id: bytes, nonce: bytes) -> bytes:
            return encode_envelope(source.collect(report_data, audit_pub=release_pub, session_id=dataset_id,
                                                  nonce=nonce))

        # the pure exchange (no TLS, no log): what the decision itself costs
        pure: list[float] = []
        anchors = hardware_anchors()
        for _ in range(n):
            t0 = time.perf_counter()
            client = ReleaseClient(header, hh, requester_spki_sha256=bytes(32))
            request = client.request()
            challenge = new_challenge(request, record, nonce=os.urandom(32))
            att = client.attestation(await collect(client.report_data(challenge), client.release_key.public_bytes,
                                                   header.dataset_id, challenge.nonce))
            grant = appraise_release(record, request, challenge, att, anchors=anchors,
                                     simulation_anchors=authority.anchors(), now=datetime.now(UTC), sessions_used=0)
            client.open(release_response(grant, record))
            pure.append(time.perf_counter() - t0)

        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(store, "127.0.0.1:0", simulation_anchors=authority.anchors(),
                                         on_ready=ready.set_result))
        address = await ready
        full: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            await request_key(address, header, hh, collect=collect, requester_spki_sha256=bytes(32))
            full.append(time.perf_counter() - t0)
        task.cancel()
    ms = 1000
    print(f"exchange, pure (evidence + appraisal + HPKE): median {statistics.median(pure) * ms:6.1f} ms, "
          f"p90 {sorted(pure)[int(0.9 * n)] * ms:6.1f} ms")
    print(f"exchange over TLS to the broker (+ fsynced log): median {statistics.median(full) * ms:6.1f} ms, "
          f"p90 {sorted(full)[int(0.9 * n)] * ms:6.1f} ms  (n={n})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--exchanges", type=int, default=50)
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    throughput(args.mib, args.repeat)
    asyncio.run(exchange_latency(args.exchanges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
