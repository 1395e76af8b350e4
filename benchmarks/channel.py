"""Benchmark of the attested channel: ``python benchmarks/channel.py [--rounds 3] [--connections 50]``.

Measures, in one run, on this machine, interleaved round by round (raw, channel, raw, channel, ...):

(a) raw TLS 1.3 loopback throughput with stdlib ``ssl``: a blocking client ``sendall``s 64 KiB buffers over TCP
    to a sink process that reads and discards them; timed until the sink confirms the last byte. Same TLS
    contexts as the channel (``transport.client_context`` / ``server_context``): same TLS 1.3 cipher suite.
(b) the channel: 64 KiB ``UploadChunk`` messages over an attested channel (TCP) to a REAL enclave process behind
    ``cc-kernel enclave serve``: the real ``FramedChannel`` at both ends (``connect_attested`` here, the
    enclave's ``accept_server``). The enclave decrypts, deframes, decodes and validates each message and hands
    it to its main thread, which drops it (no upload was started for that request id); timed until the reply
    to an ``IsCompleteRequest`` sent last, which the main thread answers after the last chunk.
(b+) an upload end to end: the same chunks into a started 64 MiB upload, timed until the ``UploadReply`` (the
    enclave also buffered every byte, copied it out and checked its SHA-256): channel + application work.
(b') the kernel's sending path alone: the same frames through ``FramedChannel`` (``open_client``) to the raw
    sink of (a).
(c) connect + attest (TCP connect, TLS 1.3 handshake, challenge, fresh evidence, full verification: chain,
    signature, binding, policy) over N connections to ``cc-kernel enclave serve``, each started once the
    supervisor's warm spare is idle (the production case: a spare is always ready); and a few back-to-back
    connections, which each wait for the next spare's interpreter to start.
(d) where the receiving time goes: receiver CPU per 64 KiB UploadChunk in a sink process, for the channel's
    receive path (``FramedChannel`` from ``accept_server``: TLS decrypted into a reusable buffer, fed to
    ``Connection.receive_data``) and, for comparison, a PROTOTYPE that exists only in this file: decrypting
    straight into the frame buffer and decoding frames from a memoryview (no FrameDecoder, no state machine:
    a lower bound for framing in Python), and the raw TLS sink of (a) (no framing at all).

Besides wall-clock throughput it reports CPU time per MiB of each end (``time.process_time`` here, the sink's
own, the enclave's from ``/proc/PID/stat``): on a shared machine wall time varies with other users' load, CPU
time much less; ``bytes / max(sender CPU, receiver CPU)`` is the throughput with one core per end.

Targets: (b) / (a) >= 0.5, and median (c) < 50 ms. Linux only (/proc). Waits (bounded) for the machine to be
quiet before each round. The simulated authority lives in a temporary Jupyter data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.policy import Policy
from cc_kernel.channel.client import AttestedChannel, connect_attested
from cc_kernel.channel.transport import Address, accept_server, client_context, open_client, server_context
from cc_kernel.crypto.keys import make_tls_identity, new_tls_key
from cc_kernel.errors import PolicyViolation
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.simstore import load_or_create_authority, load_simulation_anchors, simulation_dir
from cc_kernel.testing.enclaves import SupervisorProcess, start_supervisor, write_simulation_policy

KIB, MIB = 1024, 1024 * 1024
CHUNK = 64 * KIB
UPLOAD = 64 * MIB
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One timed transfer: bytes, wall seconds, CPU seconds of the sender and of the receiver."""

    nbytes: int
    wall: float
    cpu_send: float
    cpu_recv: float

    @property
    def rate(self) -> float:
        return self.nbytes / self.wall

    @property
    def cpu_rate(self) -> float:
        return self.nbytes / max(self.cpu_send, self.cpu_recv)


# --- the machine -------------------------------------------------------------------------------------------


def cpu_busy(interval: float) -> float:
    """Fraction of all CPUs busy (any process) over ``interval`` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(max_busy: float, timeout: float = 30.0) -> float:
    """Wait (at most ``timeout`` s) until other processes leave the CPUs mostly idle; the busy fraction seen."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy(0.3)
    while busy > max_busy and time.monotonic() < deadline:
        busy = cpu_busy(0.5)
    return busy


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def newest_child(parent: int) -> int | None:
    """The most recently started child process of ``parent`` (the supervisor's warm spare), or None."""
    best: tuple[int, int] | None = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and (best is None or int(fields[19]) > best[0]):
            best = (int(fields[19]), int(entry.name))
    return best[1] if best else None


def wait_spare_idle(sup: SupervisorProcess, timeout: float = 10.0) -> int | None:
    """Wait until the supervisor's newest enclave process stopped using CPU (its interpreter is built and it
    waits for a connection); its pid. Polls /proc: no fixed sleep."""
    deadline = time.monotonic() + timeout
    last, stable = -1.0, 0
    while time.monotonic() < deadline:
        pid = newest_child(sup.process.pid)
        if pid is not None:
            try:
                used = proc_cpu(pid)
            except OSError:
                used = -1.0
            stable = stable + 1 if used == last and used > 0 else 0
            last = used
            if stable >= 3:
                return pid
        time.sleep(0.03)
    return newest_child(sup.process.pid)


# --- (a) raw TLS -------------------------------------------------------------------------------------------


def _done_frame() -> bytes:
    """What every sink answers once it has received all the bytes: one protocol frame (a Pong), which a
    FramedChannel reads as a message and a raw TLS client as "some bytes"."""
    _, enclave = _ready_pair()
    return enclave.send(m.Pong(seq=1))


def raw_sink(total: int) -> None:
    """Subprocess: accept one TLS connection, read ``total`` bytes and discard them, answer with a Pong frame,
    then print the CPU seconds it spent receiving (from the end of the handshake)."""
    ctx = server_context(make_tls_identity(new_tls_key(), now=datetime.now(UTC)))
    done = _done_frame()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            got = 0
            buf = bytearray(256 * KIB)
            cpu0 = time.process_time()
            while got < total:
                n = tls.recv_into(buf)
                if not n:
                    break
                got += n
            cpu = time.process_time() - cpu0
            tls.sendall(done)
    print(f"{cpu:.6f}", flush=True)


def _start_sink(total: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--raw-sink", str(total)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _sink_cpu(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    cpu = float(proc.stdout.readline())
    proc.wait(10)
    return cpu


def bench_raw_tls(total: int) -> Run:
    total = total // CHUNK * CHUNK
    proc, port = _start_sink(total)
    payload = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as sock, client_context().wrap_socket(sock) as tls:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(total // CHUNK):
            tls.sendall(payload)
        if not tls.recv(64):
            raise RuntimeError("the raw sink did not confirm")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Run(total, wall, cpu, _sink_cpu(proc))


async def bench_framed_send(total: int) -> Run:
    """UploadChunk frames through the kernel's FramedChannel (a READY Connection) to the raw sink."""
    conn, _ = _ready_pair()  # BENCHMARK ONLY: no attestation on this path (see _ready_pair)
    payload = os.urandom(CHUNK)
    frame_size = len(conn.send(m.UploadChunk(req_id=1, data=payload)))  # the sink counts bytes, cannot parse
    frames = max(1, total // frame_size)
    proc, port = _start_sink(frame_size * (frames + 1))
    channel = await open_client(Address("tcp", host="127.0.0.1", port=port), conn)
    try:
        await channel.send(m.UploadChunk(req_id=1, data=payload))  # warm-up frame, untimed (counted by the sink)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(frames):
            await channel.send(m.UploadChunk(req_id=1, data=payload))
        if not isinstance(await channel.receive(), m.Pong):
            raise RuntimeError("the raw sink did not confirm")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await channel.aclose()
    return Run(frame_size * frames, wall, cpu, _sink_cpu(proc))


# --- (b) the channel to a real enclave -----------------------------------------------------------------------


@dataclass
class Target:
    """The supervisor, and how to attest its enclaves (re-pinning if the installation changes mid-run)."""

    sup: SupervisorProcess
    data_dir: Path
    sim: TrustAnchors
    policy: Policy

    async def attest(self, before: Callable[[], Any] | None = None) -> tuple[AttestedChannel, Any]:
        """Connect and attest; ``before()`` runs in a thread first (its result is returned too). Re-pins once
        if the enclave's files changed during the run (shared checkout): the next spare measures the new files.
        """
        for attempt in (1, 2):
            found = await asyncio.to_thread(before) if before else None
            try:
                attested = await connect_attested(
                    self.sup.address, policy=self.policy, anchors=hardware_anchors(), simulation_anchors=self.sim,
                    client_identity=self.sup.client_identity,  # the data directory's key, which it authorised
                )
            except PolicyViolation as exc:
                if exc.check != "policy.measurement" or attempt == 2:
                    raise
                print("the enclave's measurement changed during the run: re-pinning", file=sys.stderr)
                self.policy = write_simulation_policy(self.data_dir / "policy.toml")
                continue
            return attested, found
        raise AssertionError("unreachable")

    async def session(self) -> tuple[AttestedChannel, int]:
        """An attested channel to a warm enclave, once the next spare has finished starting; the enclave pid."""
        attested, pid = await self.attest(lambda: wait_spare_idle(self.sup))
        if pid is None:
            raise RuntimeError("the supervisor has no enclave process")
        await attested.channel.send(m.AuditOff())  # the enclave runs nothing before AuditStart or AuditOff
        await asyncio.to_thread(wait_spare_idle, self.sup)  # the new spare must not compete for CPU
        return attested, int(pid)


async def bench_channel(target: Target, total: int) -> Run:
    attested, pid = await target.session()
    channel = attested.channel
    payload = os.urandom(CHUNK)
    try:
        await channel.send(m.IsCompleteRequest(req_id=1, code="x = 1"))  # the shell is up
        await channel.receive()
        t0, c0, e0 = time.perf_counter(), time.process_time(), proc_cpu(pid)
        for _ in range(total // CHUNK):
            await channel.send(m.UploadChunk(req_id=10**6, data=payload))
        await channel.send(m.IsCompleteRequest(req_id=2, code="x = 1"))
        reply = await channel.receive()
        wall, cpu, ecpu = time.perf_counter() - t0, time.process_time() - c0, proc_cpu(pid) - e0
        if not isinstance(reply, m.IsCompleteReply):
            raise RuntimeError(f"unexpected answer: {reply}")
    finally:
        await channel.aclose()
    return Run(total, wall, cpu, ecpu)


async def bench_upload(target: Target) -> Run:
    attested, pid = await target.session()
    channel = attested.channel
    payload = os.urandom(CHUNK)
    h = hashlib.sha256()
    for _ in range(UPLOAD // CHUNK):
        h.update(payload)
    try:
        t0, c0, e0 = time.perf_counter(), time.process_time(), proc_cpu(pid)
        start = m.UploadStart(req_id=1, name="blob", size=UPLOAD, fmt="bytes", code="", execution_count=0, cell_id=None)
        await channel.send(start)
        for _ in range(UPLOAD // CHUNK):
            await channel.send(m.UploadChunk(req_id=1, data=payload))
        await channel.send(m.UploadEnd(req_id=1, sha256=h.digest()))
        reply = await channel.receive()
        wall, cpu, ecpu = time.perf_counter() - t0, time.process_time() - c0, proc_cpu(pid) - e0
        if not isinstance(reply, m.UploadReply) or reply.status != "ok":
            raise RuntimeError(f"upload failed: {reply}")
    finally:
        await channel.aclose()
    return Run(UPLOAD, wall, cpu, ecpu)


# --- (c) connect + attest ------------------------------------------------------------------------------------


async def bench_connect(target: Target, count: int, *, warm: bool) -> tuple[list[float], dict[str, list[float]]]:
    totals: list[float] = []
    parts: dict[str, list[float]] = {}
    for _ in range(count):
        if warm:
            await asyncio.to_thread(wait_spare_idle, target.sup)
        t0 = time.perf_counter()
        attested, _ = await target.attest()
        totals.append((time.perf_counter() - t0) * 1000)
        for key, value in attested.timings_ms.items():
            parts.setdefault(key, []).append(value)
        await attested.channel.aclose()
    return totals, parts


# --- (d) where the receiving time goes -----------------------------------------------------------------------


class _DecryptIntoFrames(asyncio.BufferedProtocol):
    """PROTOTYPE receive path (not used by cc_kernel), a lower bound: asyncio's SSL transport decrypts straight
    into this buffer and frames are decoded from a memoryview: msgpack decode + message validation as in the
    channel, minus the FrameDecoder copies and the state machine."""

    def __init__(self, total: int) -> None:
        self.buf = bytearray(8 * MIB)
        self.start = self.end = self.received = 0
        self.total = total
        self.cpu0 = time.process_time()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.cpu0 = time.process_time()  # the handshake is over

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buf) - self.end < 256 * KIB:
            live = self.end - self.start
            self.buf[:live] = self.buf[self.start : self.end]
            self.start, self.end = 0, live
        return memoryview(self.buf)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        with memoryview(self.buf) as view:
            while self.end - self.start >= 4:
                length = int.from_bytes(view[self.start : self.start + 4], "big")
                if self.end - self.start < 4 + length:
                    break
                body = view[self.start + 4 : self.start + 4 + length]
                msg = m.decode_message(codec.unpackb(body))  # type: ignore[arg-type]
                body.release()
                self.start += 4 + length
                self.received += len(msg.data)  # type: ignore[attr-defined]
        if self.received >= self.total and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool:
        return False


def frame_sink(mode: str, total: int) -> None:
    """Subprocess: receive UploadChunk frames carrying ``total`` payload bytes with ``mode`` ("channel": the
    FramedChannel of transport.py; "buffered": the prototype above); answer with a Pong frame; print receiver
    CPU µs per 64 KiB."""

    async def serve(conn_sock: socket.socket) -> float:
        loop = asyncio.get_running_loop()
        identity = make_tls_identity(new_tls_key(), now=datetime.now(UTC))
        if mode == "channel":
            channel = await accept_server(conn_sock, identity, _ready_pair()[1], clients=None)
            received, c0 = 0, time.process_time()
            while received < total:
                msg = await channel.receive()
                assert isinstance(msg, m.UploadChunk)
                received += len(msg.data)
            cpu = time.process_time() - c0
            await channel.send(m.Pong(seq=1))
            await asyncio.sleep(0.05)  # let the confirmation leave before the loop closes
            await channel.aclose()
        else:
            proto = _DecryptIntoFrames(total)
            transport, _ = await loop.connect_accepted_socket(lambda: proto, conn_sock, ssl=server_context(identity))
            await proto.done
            received, cpu = proto.received, time.process_time() - proto.cpu0
            transport.write(_done_frame())
            await asyncio.sleep(0.05)
            transport.close()
        return cpu / (received / CHUNK) * 1e6

    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
        conn.setblocking(False)
        print(f"{asyncio.run(serve(conn)):.3f}", flush=True)


def _ready_pair() -> tuple[Connection, Connection]:
    """A kernel and an enclave Connection driven to READY with real frames. BENCHMARK ONLY: nothing is
    verified (the frames carry no evidence); used where only the data path is measured."""
    kernel, enclave = Connection(Role.KERNEL), Connection(Role.ENCLAVE)
    enclave.receive_data(kernel.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="bench")))
    enclave.next_event()
    kernel.receive_data(enclave.send(m.Hello(role="enclave", versions=[m.PROTOCOL_VERSION], software="bench")))
    kernel.next_event()
    enclave.receive_data(kernel.send(m.AttestRequest(nonce=bytes(32), session_id=bytes(16))))
    enclave.next_event()
    kernel.receive_data(enclave.send(m.AttestResponse(envelope=b"benchmark: not evidence")))
    kernel.next_event()
    kernel.attestation_verified()
    return kernel, enclave


async def receive_path_cpu(mode: str, total: int) -> float:
    """Receiver CPU µs per 64 KiB UploadChunk for receive path ``mode`` (sender: this process, asyncio)."""
    total = total // CHUNK * CHUNK
    proc = subprocess.Popen(
        [sys.executable, __file__, "--frame-sink", mode, str(total)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(), server_hostname="")
    kernel, _ = _ready_pair()
    payload = os.urandom(CHUNK)
    for _ in range(total // CHUNK):
        writer.write(kernel.send(m.UploadChunk(req_id=1, data=payload)))
        await writer.drain()
    if not await reader.read(64):
        raise RuntimeError("the frame sink did not confirm")
    writer.close()
    cpu = float(proc.stdout.readline())
    proc.wait(10)
    return cpu


# --- main ----------------------------------------------------------------------------------------------------


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def _run(coro: Callable[[], Coroutine[Any, Any, Run]]) -> Run:
    return asyncio.run(coro())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (median reported)")
    p.add_argument("--mib", type=int, default=256, help="MiB per raw / channel transfer")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--back-to-back", type=int, default=5)
    p.add_argument("--max-busy", type=float, default=0.25, help="wait for the CPUs to be at most this busy")
    p.add_argument("--raw-sink", type=int, metavar="BYTES", help=argparse.SUPPRESS)
    p.add_argument("--frame-sink", nargs=2, metavar=("MODE", "BYTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw_sink is not None:
        raw_sink(args.raw_sink)
        return 0
    if args.frame_sink:
        frame_sink(args.frame_sink[0], int(args.frame_sink[1]))
        return 0
    total = args.mib * MIB

    raw, framed, chan, upload = [], [], [], []
    receive_paths: dict[str, list[float]] = {"channel": [], "buffered": []}
    busy: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
        data_dir = Path(tmp)
        os.environ["JUPYTER_DATA_DIR"] = str(data_dir)
        sim_dir = simulation_dir(data_dir)
        load_or_create_authority(sim_dir)
        policy = write_simulation_policy(data_dir / "policy.toml")
        with start_supervisor(data_dir) as sup:
            target = Target(sup, data_dir, load_simulation_anchors(sim_dir), policy)
            for i in range(args.rounds):
                busy.append(wait_quiet(args.max_busy))
                raw.append(bench_raw_tls(total))
                chan.append(_run(lambda: bench_channel(target, total)))
                framed.append(_run(lambda: bench_framed_send(total)))
                upload.append(_run(lambda: bench_upload(target)))
                for mode, samples in receive_paths.items():
                    samples.append(asyncio.run(receive_path_cpu(mode, total)))
                print(f"round {i + 1}/{args.rounds}: raw {raw[-1].rate / MIB:.0f} MiB/s, channel "
                      f"{chan[-1].rate / MIB:.0f} MiB/s (machine {busy[-1]:.0%} busy before)", file=sys.stderr)
            busy.append(wait_quiet(args.max_busy))
            warm, parts = asyncio.run(bench_connect(target, args.connections, warm=True))
            cold, _ = asyncio.run(bench_connect(target, args.back_to_back, warm=False))

    a, b, b_up, b_send = _median_run(raw), _median_run(chan), _median_run(upload), _median_run(framed)
    ratio = statistics.median(c.rate / r.rate for c, r in zip(chan, raw, strict=True))
    cpu_ratio = statistics.median(c.cpu_rate / r.cpu_rate for c, r in zip(chan, raw, strict=True))
    median = statistics.median(warm)

    def us_per_chunk(seconds: float, run: Run) -> str:
        return f"{seconds / (run.nbytes / CHUNK) * 1e6:6.0f}"

    print(f"\nattested channel benchmark — Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds of {args.mib} MiB, machine {max(busy):.0%} busy at most before a round\n")
    head = f"{'throughput (median of rounds)':<64} {'wall MiB/s':>10} {'CPU µs/64KiB send / recv':>26} " \
           f"{'MiB/s at 1 core/end':>20}"
    print(head)
    for name, run in (
        ("(a)  raw TLS 1.3 loopback, stdlib ssl, 64 KiB sendall", a),
        ("(b)  channel: UploadChunk 64 KiB -> real enclave, consumed", b),
        ("(b+) upload 64 MiB end to end (buffered, SHA-256 checked)", b_up),
        ("(b') kernel send path only: FramedChannel -> raw sink", b_send),
    ):
        print(f"{name:<64} {run.rate / MIB:10.0f} {us_per_chunk(run.cpu_send, run):>15} / "
              f"{us_per_chunk(run.cpu_recv, run):>6}  {run.cpu_rate / MIB:20.0f}")
    print(f"\n{'ratio (b) / (a), wall (median of per-round ratios)':<64} {ratio:10.2f}   target >= 0.5: "
          f"{'PASS' if ratio >= 0.5 else 'MISS'}")
    print(f"{'ratio (b) / (a), one core per end (CPU time)':<64} {cpu_ratio:10.2f}")
    print(f"\n{'(d) receiver CPU µs per 64 KiB UploadChunk (median of rounds)':<64}")
    print(f"{'     FramedChannel (transport.py: BufferedProtocol -> Connection)':<64} "
          f"{statistics.median(receive_paths['channel']):10.1f}")
    print(f"{'     prototype: decrypt into the frame buffer, no FrameDecoder':<64} "
          f"{statistics.median(receive_paths['buffered']):10.1f}")
    print(f"{'     raw TLS sink (recv_into, no framing), from (a)':<64} "
          f"{a.cpu_recv / (a.nbytes / CHUNK) * 1e6:10.1f}")
    print(f"\n{'connect + attest (ms)':<64} {'median':>10} {'p90':>8} {'min':>8} {'max':>8}")
    print(f"{f'(c)  warm spare, {len(warm)} connections':<64} {median:10.1f} {_p90(warm):8.1f} {min(warm):8.1f} "
          f"{max(warm):8.1f}   target median < 50 ms: {'PASS' if median < 50 else 'MISS'}")
    for key, values in parts.items():
        if key != "total":
            print(f"{f'       of which {key}':<64} {statistics.median(values):10.1f} {_p90(values):8.1f}")
    print(f"{f'(c`) back-to-back, {len(cold)} connections (spare starting)':<64} {statistics.median(cold):10.1f} "
          f"{_p90(cold):8.1f} {min(cold):8.1f} {max(cold):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
