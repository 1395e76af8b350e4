"""cc_kernel.labkit: the one TLS-record walker, the relay's one tamper rule, and the one process stopper."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cc_kernel
from cc_kernel.labkit.processes import broker_address, serving_address, stop_process
from cc_kernel.labkit.relay import Flip, Relay
from cc_kernel.labkit.tls import RecordHeader, TlsRecordWalker, tls_records
from cc_kernel.measure import enclave_source_files


def _record(content_type: int, body: bytes) -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


STREAM = _record(22, b"hello") + _record(23, b"") + _record(23, b"x" * 300) + _record(21, b"\x02\x28")


def _walk(pieces: list[bytes]) -> tuple[list[RecordHeader], bytes]:
    walker = TlsRecordWalker()
    payload = bytearray()
    for piece in pieces:
        payload += b"".join(piece[lo:hi] for lo, hi, _header in walker.feed(piece))
    return walker.headers, bytes(payload)


def test_the_walker_sees_the_same_records_fed_whole_or_one_byte_at_a_time() -> None:
    whole = _walk([STREAM])
    assert whole == _walk([STREAM[i : i + 1] for i in range(len(STREAM))])
    headers, payload = whole
    assert [(h.index, h.kind, h.length, h.offset) for h in headers] == [
        (0, "handshake", 5, 0), (1, "application_data", 0, 10), (2, "application_data", 300, 15),
        (3, "alert", 2, 320),
    ]
    assert payload == b"hello" + b"x" * 300 + b"\x02\x28"  # headers are never payload


def test_tls_records_leaves_out_a_partial_tail() -> None:
    assert [r.offset for r in tls_records(STREAM + _record(23, b"partial")[:-1])] == [0, 10, 15, 320]


def _flipped(original: bytes, out: bytes) -> list[int]:
    assert len(out) == len(original)
    return [i for i in range(len(out)) if out[i] != original[i]]


def test_a_flip_aimed_at_a_header_hits_the_next_payload_byte_and_only_one_bit() -> None:
    relay = Relay("tcp://127.0.0.1:9", flip=Flip("c2s", at=1))
    out = relay.new_connection().feed("c2s", STREAM)
    assert _flipped(STREAM, out) == [5]  # the first byte of "hello", not the header at offset 1
    assert bin(out[5] ^ STREAM[5]).count("1") == 1
    assert relay.flipped_at == ("c2s", 5) and relay.tampered[0].record_index == 0


def test_a_flip_skips_an_empty_record() -> None:
    relay = Relay("tcp://127.0.0.1:9", flip=Flip("c2s", at=10))
    assert _flipped(STREAM, relay.new_connection().feed("c2s", STREAM)) == [20]  # record 1 is empty: record 2


def test_each_connection_gets_one_flip_and_only_in_its_direction() -> None:
    relay = Relay("tcp://127.0.0.1:9", flip=Flip("s2c", at=0))
    first, second = relay.new_connection(), relay.new_connection()
    assert first.feed("c2s", STREAM) == STREAM
    assert len(_flipped(STREAM, first.feed("s2c", STREAM))) == 1
    assert first.feed("s2c", STREAM) == STREAM  # only once per connection
    assert len(_flipped(STREAM, second.feed("s2c", STREAM))) == 1
    assert [(t.conn, t.direction, t.stream_offset) for t in relay.tampered] == [(0, "s2c", 5), (1, "s2c", 5)]


def test_a_flip_waits_for_the_clients_application_data_records() -> None:
    relay = Relay("tcp://127.0.0.1:9", flip=Flip.after_handshake())
    conn = relay.new_connection()
    conn.feed("c2s", _record(23, b"finished"))
    assert conn.feed("s2c", STREAM) == STREAM  # one client record is not enough
    conn.feed("c2s", _record(23, b"hello"))
    assert len(_flipped(STREAM, conn.feed("s2c", STREAM))) == 1


def test_arm_flip_counts_from_what_the_newest_connection_forwarded() -> None:
    relay = Relay("tcp://127.0.0.1:9")
    conn = relay.new_connection()
    assert conn.feed("s2c", STREAM) == STREAM and relay.flipped_at is None
    relay.arm_flip("s2c", after=3)
    out = conn.feed("s2c", STREAM)
    assert _flipped(STREAM, out) == [5] and relay.flipped_at == ("s2c", len(STREAM) + 5)


def test_serving_address_reads_the_servers_line() -> None:
    assert serving_address("INFO starting\nserving on tcp://127.0.0.1:4711 (2 sessions)\n") == "tcp://127.0.0.1:4711"
    assert serving_address("INFO starting\n") is None


def test_broker_address_reads_the_brokers_line() -> None:
    line = "cc-kernel broker listening on 127.0.0.1:4712, key sha256 00ff\n"
    assert broker_address(line) == "127.0.0.1:4712"
    assert broker_address("serving on tcp://127.0.0.1:4711\n") is None
    assert broker_address("cc-kernel: /x: the key store must be private (mode 0700), not 0755\n") is None


_WAITING = "print('ready', flush=True)\nimport signal\nsignal.pause()\n"
_STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + _WAITING


def _start(program: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_stop_process_stops_with_sigterm_and_closes_the_pipe() -> None:
    process = _start(_WAITING)
    assert stop_process(process, timeout=30.0) == -signal.SIGTERM
    assert process.stdout is not None and process.stdout.closed


@pytest.mark.slow
def test_stop_process_kills_the_group_of_a_process_that_ignores_sigterm() -> None:
    process = _start(_STUBBORN)
    assert stop_process(process, timeout=0.5) == -signal.SIGKILL
    assert stop_process(process) == -signal.SIGKILL  # already reaped: same status, no signal to anyone


def test_neither_labkit_nor_the_teaching_lab_is_part_of_the_enclave_measurement() -> None:
    parts = {p.relative_to(Path(cc_kernel.__file__).parent).parts[0] for p in enclave_source_files()}
    assert "enclave" in parts  # positive control
    assert not parts & {"labkit", "teaching"}
