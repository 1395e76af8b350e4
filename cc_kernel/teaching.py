"""Teaching: a small, real lab for the teaching notebooks — enclaves with faults, attestation, wiretaps.

Layer: a user-facing helper above ``channel``, ``attestation``, ``simstore`` and the kernelspecs; it does I/O
(processes, sockets, temporary files) and is used by neither the kernel nor the enclave.

Invariants: nothing is mocked. Enclaves are real ``cc-kernel enclave serve`` processes (with the enclave's own
teaching faults, or launched from a modified copy of the package); verdicts come from ``connect_attested``, the
function the kernel itself calls; relays forward and record the real bytes; kernels are real Jupyter kernels
driven with jupyter_client. Everything a ``TeachingLab`` creates (a private simulated authority, Jupyter
directories, processes, sockets) lives under one temporary directory and is gone after ``close()``. Child
processes never inherit the caller's stdout/stderr (a notebook kernel captures them): their output is piped
into the lab's logs. The lab's enclave servers authorise only the lab's own client key (in its private data
directory), which its kernels and ``attest`` present, as a real deployment would.

Typical use in a notebook::

    from cc_kernel.teaching import TeachingLab
    lab = TeachingLab()
    policy = lab.policy(min_tcb=lab.tcb)        # pin the real measurement and today's TCB
    address = lab.start_enclave(fault="debug")  # a real enclave server with one fault switched on
    lab.attest(address, policy=policy)          # the refusal: exception, check, message, got/expected
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from cc_kernel import __version__
from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.binding import NONCE_SIZE, SESSION_ID_SIZE
from cc_kernel.attestation.envelope import parse_envelope_unverified
from cc_kernel.attestation.platforms.sev_snp import LAYOUT, decode_tcb, parse_report_unverified
from cc_kernel.attestation.policy import Policy, load_policy, render_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.channel.client import connect_attested
from cc_kernel.channel.transport import FramedChannel, accept_server, open_client, parse_address
from cc_kernel.clientkey import client_key_dir, load_or_create_client_identity
from cc_kernel.crypto.keys import make_tls_identity, new_tls_key
from cc_kernel.crypto.x509load import load_amd_certificate
from cc_kernel.errors import CCKernelError, EnclaveError, PolicyViolation, VerificationError
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.protocol.messages import PROTOCOL_VERSION, AttestRequest, AttestResponse, Fatal, Hello, negotiate
from cc_kernel.simstore import load_or_create_authority, load_simulation_anchors, simulation_dir

__all__ = [
    "ENCLAVE_FAULTS",
    "FAULTS",
    "MODIFIED_FILE",
    "MODIFIED_LINE",
    "AttestOutcome",
    "CellRun",
    "Chunk",
    "Diagram",
    "EvidenceExchange",
    "LabKernel",
    "Panels",
    "Recording",
    "Relay",
    "Table",
    "TeachingLab",
    "TlsRecord",
    "Wiretap",
    "attestation_diagram",
    "describe_chain",
    "describe_report",
    "hexdump",
    "side_by_side",
]

#: What ``TeachingLab.start_enclave(fault=...)`` can switch on (one at a time).
FAULTS: Final = ("debug", "old-tcb", "swapped-key", "replay", "modified-code")
#: The faults implemented by the enclave itself (``cc-kernel enclave serve --fault NAME``).
ENCLAVE_FAULTS: Final = ("debug", "old-tcb", "swapped-key")
#: The line appended to an enclave file by the "modified-code" fault.
MODIFIED_LINE: Final = (
    '\n_TEACHING_CHANGE = "added after the measurement was pinned"  # changes the bytes, not the behaviour\n'
)
#: The enclave file the "modified-code" fault changes (relative to the package root).
MODIFIED_FILE: Final = "enclave/shell.py"

#: TLS record content types (RFC 8446 §5.1).
TLS_CONTENT_TYPES: Final[Mapping[int, str]] = {
    20: "change_cipher_spec",
    21: "alert",
    22: "handshake",
    23: "application_data",
}

Direction = Literal["up", "down"]
_T = TypeVar("_T")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SERVING = re.compile(r"serving on (\S+)")
#: The enclave server, started with signals that stop it cleanly: SIGTERM (from the lab) and, on Linux, the
#: death of the lab's process (PR_SET_PDEATHSIG), so no enclave outlives the notebook that started it.
_SERVE_SNIPPET: Final = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGTERM, signal.default_int_handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
if os.getppid() != int(os.environ["CC_TEACHING_PARENT"]):
    sys.exit(0)
from cc_kernel.cli import main
sys.exit(main(["enclave", "serve", *sys.argv[1:]]))
"""


# --- small display helpers ----------------------------------------------------------------------------------


def hexdump(data: bytes, *, offset: int = 0, width: int = 16, max_lines: int | None = 16) -> str:
    """A classic hex dump: offset, hex bytes, printable ASCII (``.`` for the rest). ``offset`` labels the
    first byte; at most ``max_lines`` lines (None: all), then a line saying how much was left out."""
    lines = []
    total = len(data)
    shown = total if max_lines is None else min(total, max_lines * width)
    for start in range(0, shown, width):
        row = data[start : start + width]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{offset + start:08x}  {hexes:<{width * 3 - 1}}  {text}")
    if shown < total:
        lines.append(f"… {total - shown} more bytes")
    return "\n".join(lines)


def _show(value: object, limit: int = 48) -> str:
    if isinstance(value, bytes | bytearray):
        text = bytes(value).hex()
        return text if len(text) <= limit else f"{text[: limit - 8]}…({len(value)} bytes)"
    text = repr(value)
    return text if len(text) <= limit * 2 else text[: limit * 2] + "…"


def _pre(text: str) -> str:
    return (
        '<pre style="margin:0;padding:6px;background:#fafafa;border:1px solid #ddd;font-size:11px;'
        f'line-height:1.3;white-space:pre;overflow-x:auto">{html.escape(text)}</pre>'
    )


@dataclass(frozen=True)
class Panels:
    """Two (or more) titled text panels shown side by side (HTML) or one after the other (text)."""

    panels: tuple[tuple[str, str], ...]

    def text(self) -> str:
        return "\n\n".join(f"== {title} ==\n{body}" for title, body in self.panels)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_html_(self) -> str:
        cols = "".join(
            f'<div style="flex:1;min-width:22em"><div style="font-weight:bold;margin:2px 0">{html.escape(t)}</div>'
            f"{_pre(body)}</div>"
            for t, body in self.panels
        )
        return f'<div style="display:flex;gap:12px;align-items:flex-start">{cols}</div>'


def side_by_side(left_title: str, left: str, right_title: str, right: str) -> Panels:
    """Two texts side by side (e.g. recorded ciphertext and the plaintext the notebook received)."""
    return Panels(((left_title, left), (right_title, right)))


@dataclass(frozen=True)
class Table:
    """A small table with a title; renders as HTML or aligned text."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def text(self) -> str:
        widths = [max([len(c)] + [len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        head = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))
        body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join([self.title, head, "-" * len(head), *body])

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_html_(self) -> str:
        th = "".join(f'<th style="text-align:left;padding:2px 8px">{html.escape(c)}</th>' for c in self.columns)
        trs = "".join(
            "<tr>"
            + "".join(
                f'<td style="text-align:left;padding:2px 8px;font-family:monospace;vertical-align:top">'
                f"{html.escape(v)}</td>"
                for v in r
            )
            + "</tr>"
            for r in self.rows
        )
        return (
            f'<div><div style="font-weight:bold">{html.escape(self.title)}</div>'
            f'<table style="border-collapse:collapse;font-size:12px"><tr>{th}</tr>{trs}</table></div>'
        )


# --- the background event loop --------------------------------------------------------------------------------


class _LoopThread:
    """An asyncio loop on a daemon thread: relays and impostor servers live here, ``run`` waits for a result.

    Works whether or not the caller's thread runs an event loop of its own (ipykernel does, the enclave shell
    does not)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="cc-teaching-io", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(_cancel_all(), 5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()


# --- recordings: relays and wiretaps -------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Bytes a relay forwarded: on which ``channel``, in which connection, which way, when (s after start)."""

    channel: str
    conn: int
    direction: Direction
    at: float
    data: bytes


@dataclass(frozen=True)
class TlsRecord:
    """One TLS record seen on the wire: its content type, length and where it starts in the stream."""

    content_type: int
    length: int
    offset: int
    body: bytes = field(repr=False)

    @property
    def kind(self) -> str:
        return TLS_CONTENT_TYPES.get(self.content_type, f"type {self.content_type}")


def tls_records(stream: bytes) -> list[TlsRecord]:
    """Split one direction of a TLS connection into records (a trailing partial record is left out)."""
    records = []
    pos = 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(stream):
            break
        records.append(TlsRecord(stream[pos], length, pos, stream[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return records


@dataclass(frozen=True)
class Tampering:
    """A byte the relay changed: in which connection and direction, where, from what to what."""

    conn: int
    direction: Direction
    stream_offset: int
    record_index: int
    before: int
    after: int


class Recording:
    """What a man in the middle saw: chunks of bytes in both directions, with views for teaching."""

    labels: tuple[str, str] = ("client → server", "server → client")

    @property
    def chunks(self) -> list[Chunk]:
        raise NotImplementedError

    def label(self, direction: Direction) -> str:
        return self.labels[0] if direction == "up" else self.labels[1]

    def data(self, direction: Direction | None = None, *, channel: str | None = None, conn: int | None = None) -> bytes:
        """Every recorded byte (optionally one direction, channel or connection), in order."""
        return b"".join(
            c.data
            for c in self.chunks
            if (direction is None or c.direction == direction)
            and (channel is None or c.channel == channel)
            and (conn is None or c.conn == conn)
        )

    def contains(self, needle: str | bytes) -> bool:
        """Did the bytes the relay saw contain ``needle`` (UTF-8 encoded if text), in either direction?"""
        raw = needle.encode() if isinstance(needle, str) else needle
        streams = {(c.channel, c.conn, c.direction) for c in self.chunks}
        return any(raw in self.data(d, channel=ch, conn=n) for ch, n, d in streams)

    def tls_records(self, direction: Direction, *, conn: int = 0) -> list[TlsRecord]:
        """The TLS records of one direction of one connection."""
        return tls_records(self.data(direction, conn=conn))

    def excerpt(self, secret: str | bytes, direction: Direction = "up", *, size: int = 256) -> tuple[str, str]:
        """(title, hexdump) of what the relay saw around ``secret`` going ``direction``; if it never appears
        there, of a TLS application-data record (the largest going up: the cell) or of the stream's start."""
        raw = secret.encode() if isinstance(secret, str) else secret
        streams = sorted({(c.channel, c.conn) for c in self.chunks if c.direction == direction})
        for channel, conn in streams:
            stream = self.data(direction, channel=channel, conn=conn)
            at = stream.find(raw)
            if at >= 0:
                start = max(0, at - size // 4) // 16 * 16
                title = f"{self.label(direction)} ({channel}): bytes {start}–{start + size} — the secret is at {at}"
                return title, hexdump(stream[start : start + size], offset=start, max_lines=size // 16)
        where = "anywhere in the recording" if not self.contains(raw) else "in this direction"
        if not streams:
            return f"{self.label(direction)}: nothing recorded", ""
        channel, conn = max(streams, key=lambda s: len(self.data(direction, channel=s[0], conn=s[1])))
        stream = self.data(direction, channel=channel, conn=conn)
        records = tls_records(stream)
        app = [r for r in records if r.content_type == 23]
        if len(records) > 2 and app:
            # past the handshake: the largest record going up (the cell), or a later one coming down
            pick = max(app, key=lambda r: r.length) if direction == "up" else app[min(len(app) - 1, 2)]
            title = (f"{self.label(direction)}: TLS application_data record at byte {pick.offset} "
                     f"({pick.length} bytes of ciphertext; the secret does not appear {where})")
            return title, hexdump(stream[pick.offset : pick.offset + size], offset=pick.offset, max_lines=size // 16)
        title = f"{self.label(direction)} ({channel}): first {size} bytes (the secret does not appear {where})"
        return title, hexdump(stream[:size], max_lines=size // 16)

    def summary(self) -> str:
        """Bytes and TLS records per connection and direction (TLS is recognised by its record headers)."""
        lines = []
        directions: tuple[Direction, Direction] = ("up", "down")
        for channel, conn in sorted({(c.channel, c.conn) for c in self.chunks}):
            for direction in directions:
                stream = self.data(direction, channel=channel, conn=conn)
                if not stream:
                    continue
                records = tls_records(stream)
                kinds = ""
                if records and all(r.content_type in TLS_CONTENT_TYPES for r in records):
                    counts: dict[str, int] = {}
                    for r in records:
                        counts[r.kind] = counts.get(r.kind, 0) + 1
                    kinds = "; TLS records: " + ", ".join(f"{n}× {k}" for k, n in counts.items())
                lines.append(f"[{channel} #{conn}] {self.label(direction)}: {len(stream)} bytes{kinds}")
        return "\n".join(lines) or "(nothing recorded yet)"

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.summary())

    def _repr_html_(self) -> str:
        return _pre(self.summary())


class Relay(Recording):
    """A recording TCP relay between a client and a server: a man in the middle, as an untrusted host is.

    It forwards every byte both ways and keeps a copy. With ``tamper=True`` it changes exactly one bit: in the
    first TLS application-data record the server sends after the client's first application-data record (so
    after the handshake is over), as an attacker altering the stream would.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        tamper: bool = False,
        channel: str = "tcp",
        labels: tuple[str, str] = ("client → server", "server → client"),
    ) -> None:
        self.target = (target_host, target_port)
        self.tamper = tamper
        self.channel = channel
        self.labels = labels
        self.port = 0
        self.connections = 0
        self.tampered: list[Tampering] = []
        self._chunks: list[Chunk] = []
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._t0 = time.monotonic()

    @property
    def address(self) -> str:
        """Where clients connect: ``tcp://127.0.0.1:PORT``."""
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def chunks(self) -> list[Chunk]:
        with self._lock:
            return list(self._chunks)

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        tamperer = _Tamperer(self, conn) if self.tamper else None
        await asyncio.gather(
            self._pump(reader, up_writer, conn, "up", tamperer),
            self._pump(up_reader, writer, conn, "down", tamperer),
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: int,
        direction: Direction,
        tamperer: _Tamperer | None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if tamperer is not None:
                    data = tamperer.feed(direction, data)
                if data:
                    with self._lock:
                        self._chunks.append(Chunk(self.channel, conn, direction, time.monotonic() - self._t0, data))
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def describe_tampering(self) -> str:
        """What was changed, in words."""
        if not self.tampered:
            return "nothing was changed" if self.tamper else "this relay does not tamper"
        return "\n".join(
            f"connection #{t.conn}, {self.label(t.direction)}: TLS record #{t.record_index}, stream byte "
            f"{t.stream_offset}: 0x{t.before:02x} -> 0x{t.after:02x} (one bit flipped)"
            for t in self.tampered
        )

    def summary(self) -> str:
        head = f"relay {self.address} -> {self.target[0]}:{self.target[1]}, {self.connections} connection(s)"
        if self.tamper:
            head += f"\ntampering: {self.describe_tampering()}"
        return head + "\n" + super().summary()


class _Tamperer:
    """Per connection: re-frames both directions into whole TLS records and flips one bit in the server's
    first application-data record after the client's first application-data record (the handshake is over)."""

    def __init__(self, relay: Relay, conn: int) -> None:
        self.relay = relay
        self.conn = conn
        self.buffers: dict[Direction, bytearray] = {"up": bytearray(), "down": bytearray()}
        self.offsets: dict[Direction, int] = {"up": 0, "down": 0}
        self.records: dict[Direction, int] = {"up": 0, "down": 0}
        self.app_records: dict[Direction, int] = {"up": 0, "down": 0}
        self.armed = False
        self.done = False

    def feed(self, direction: Direction, data: bytes) -> bytes:
        buf = self.buffers[direction]
        buf += data
        out = bytearray()
        while len(buf) >= 5:
            length = int.from_bytes(buf[3:5], "big")
            if len(buf) < 5 + length:
                break
            record = bytearray(buf[: 5 + length])
            del buf[: 5 + length]
            if record[0] == 23:
                self.app_records[direction] += 1
                # the client's first application_data record is its Finished; the second is application data
                if direction == "up" and self.app_records["up"] == 2:
                    self.armed = True
                elif direction == "down" and self.armed and not self.done and length > 0:
                    at = 5 + length // 2
                    before = record[at]
                    record[at] ^= 0x01
                    self.done = True
                    self.relay.tampered.append(Tampering(
                        self.conn, direction, self.offsets[direction] + at, self.records[direction], before,
                        record[at],
                    ))
            self.records[direction] += 1
            self.offsets[direction] += len(record)
            out += record
        return bytes(out)


class Wiretap(Recording):
    """Several relays seen as one recording (e.g. the five ZMQ sockets of a Jupyter kernel)."""

    def __init__(self, relays: Mapping[str, Relay], labels: tuple[str, str]) -> None:
        self.relays = dict(relays)
        self.labels = labels

    @property
    def chunks(self) -> list[Chunk]:
        merged = [c for relay in self.relays.values() for c in relay.chunks]
        return sorted(merged, key=lambda c: c.at)


# --- outcomes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class AttestOutcome:
    """The verdict of one attestation attempt: the verified result, or the refusal (the exception)."""

    address: str
    label: str
    result: AttestationResult | None = None
    error: BaseException | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.result is not None

    @property
    def error_class(self) -> str:
        return "" if self.error is None else type(self.error).__name__

    @property
    def message(self) -> str:
        """The message the kernel shows for this refusal (``str`` of the exception), or '' if verified."""
        return "" if self.error is None else str(self.error)

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
            return [(f.check, f.message, _show(f.got), _show(f.expected)) for f in err.failures]
        if isinstance(err, VerificationError):
            return [(err.check, err.message, _show(err.got), _show(err.expected))]
        return [("(channel)", str(err), "", "")]

    def text(self) -> str:
        where = f"{self.address} [{self.label}]"
        if self.result is not None:
            return f"VERIFIED ({self.result.status}) — {where}\n" + "\n".join(
                f"  {line}" for line in self.result.summary_lines()
            )
        lines = [f"REFUSED — {self.error_class} — {where}", "  no code would be sent; the kernel says:"]
        lines += [f"  {line}" for line in self.message.splitlines()]
        for check, _message, got, expected in self.failures:
            if got or expected:
                lines.append(f"  check {check}: got {got}, expected {expected}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_html_(self) -> str:
        if self.result is not None:
            colour, bg = ("#b26a00", "#fff8e1") if self.result.status == "simulation" else ("#1b5e20", "#e8f5e9")
            head = f"VERIFIED ({html.escape(self.result.status)})"
            body = _pre("\n".join(self.result.summary_lines()))
        else:
            colour, bg = "#b71c1c", "#ffebee"
            head = f"REFUSED — {html.escape(self.error_class)}"
            rows = "".join(
                "<tr>" + "".join(f'<td style="padding:2px 6px;font-family:monospace;vertical-align:top">'
                                 f"{html.escape(v)}</td>" for v in row) + "</tr>"
                for row in self.failures
            )
            body = (
                f"<div>the kernel's message:</div>{_pre(self.message)}"
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
class EvidenceExchange:
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

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())


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
        latest: Mapping[str, Any] | None = None
        for out in self.outputs:
            data = out.get("content", {}).get("data", {})
            for mime, value in data.items():
                if mime.startswith("application/vnd.cc-kernel.attestation") and isinstance(value, Mapping):
                    latest = value
        return latest

    @property
    def badge_text(self) -> str:
        """The text of the badge's latest version in this cell ("" without a badge)."""
        latest = ""
        for out in self.outputs:
            data = out.get("content", {}).get("data", {})
            if any(m.startswith("application/vnd.cc-kernel.attestation") for m in data):
                latest = str(data.get("text/plain", ""))
        return latest

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
                if any(m.startswith("application/vnd.cc-kernel.attestation") for m in data):
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
        return _pre(self.render())


class LabKernel:
    """A real Jupyter kernel started by ``TeachingLab.start_kernel`` that stays up for several requests: cells
    (also silent ones, as a variable viewer sends), completions and inspections — then a clean shutdown, as a
    frontend does it. A Confidential Python kernel's badge names its session log (``audit_log``).

    Use it as a context manager or call ``shutdown()``; the lab shuts it down at the latest in ``close()``.
    """

    _BADGE_PREFIX: Final = "application/vnd.cc-kernel.attestation"

    def __init__(self, loop: _LoopThread, kernel: str, log_path: Path) -> None:
        self.kernel = kernel
        #: Every cell run so far, in order (``CellRun``; ``connection_info`` and ``kernel_log`` left empty).
        self.cells: list[CellRun] = []
        self._loop = loop
        self._log_path = log_path
        self._log: Any = None
        self._km: Any = None
        self._kc: Any = None
        self._badge: Mapping[str, Any] | None = None
        self._badge_text = ""
        self.closed = False

    async def _start(self, kernels: Path, env: dict[str, str], connection_file: Path, timeout: float) -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager

        km = AsyncKernelManager(kernel_name=self.kernel,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
        km.connection_file = str(connection_file)
        self._km = km
        self._log = self._log_path.open("wb")
        await km.start_kernel(env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._kc = km.client()
        self._kc.start_channels()
        await self._kc.wait_for_ready(timeout=timeout)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"this {self.kernel} kernel has been shut down")

    def run(self, code: str, *, silent: bool = False, timeout: float = 30.0) -> CellRun:
        """Execute ``code`` (``silent=True``: as a variable viewer would — no history, no execution count) and
        return what came back.

        Raises:
            TimeoutError: no reply within ``timeout`` seconds.
        """
        self._check_open()
        outputs: list[dict[str, Any]] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] not in ("status", "execute_input"):
                outputs.append({"msg_type": msg["msg_type"], "content": msg["content"]})

        async def execute() -> tuple[dict[str, Any], float]:
            t0 = time.monotonic()
            reply = await self._kc.execute_interactive(code, silent=silent, timeout=timeout, output_hook=hook,
                                                       allow_stdin=False)
            return reply, time.monotonic() - t0

        reply, seconds = self._loop.run(execute(), timeout + 5.0)
        for out in outputs:  # the badge is shown once, then updated in place: keep its latest version
            data = out["content"].get("data", {})
            for mime, value in data.items():
                if mime.startswith(self._BADGE_PREFIX) and isinstance(value, Mapping):
                    self._badge, self._badge_text = value, str(data.get("text/plain", ""))
        run = CellRun(kernel=self.kernel, code=code, status=str(reply["content"]["status"]), outputs=tuple(outputs),
                      seconds=seconds, connection_info={}, kernel_log="")
        self.cells.append(run)
        return run

    def _request(self, method: str, *args: Any, timeout: float) -> dict[str, Any]:
        self._check_open()

        async def ask() -> dict[str, Any]:
            msg_id = getattr(self._kc, method)(*args)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = await self._kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"no {method}_reply within {timeout} s") from None
                if reply["parent_header"].get("msg_id") == msg_id:
                    return dict(reply["content"])

        return self._loop.run(ask(), timeout + 5.0)

    def complete(self, code: str, cursor_pos: int | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """A ``complete_request`` (what Tab sends); returns the reply content (``matches``, ...)."""
        return self._request("complete", code, len(code) if cursor_pos is None else cursor_pos, timeout=timeout)

    def inspect(self, code: str, cursor_pos: int | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """An ``inspect_request`` (what Shift+Tab sends); returns the reply content (``found``, ``data``)."""
        return self._request("inspect", code, len(code) if cursor_pos is None else cursor_pos, timeout=timeout)

    @property
    def badge(self) -> Mapping[str, Any] | None:
        """The latest machine-readable attestation badge this kernel showed (None before its first cell)."""
        return self._badge

    @property
    def badge_text(self) -> str:
        return self._badge_text

    @property
    def audit_log(self) -> Path | None:
        """The session log this kernel writes, as its badge names it (None: no log, or no cell run yet)."""
        path = self._badge.get("audit_log") if self._badge is not None else None
        return Path(path) if path else None

    @property
    def kernel_log(self) -> str:
        """What the kernel process printed (its log)."""
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def shutdown(self, *, timeout: float = 15.0) -> None:
        """Shut the kernel down as a frontend does (a shutdown_request); idempotent. A Confidential Python
        kernel's enclave signs the closing entry of its session log on the way out."""
        if self.closed:
            return
        self.closed = True

        async def stop() -> None:
            if self._kc is not None:
                self._kc.stop_channels()
            if self._km is not None:
                with contextlib.suppress(Exception):
                    await self._km.shutdown_kernel(now=False)
                if self._km.has_kernel:
                    await self._km.shutdown_kernel(now=True)

        try:
            self._loop.run(stop(), timeout)
        finally:
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> LabKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "shut down" if self.closed else "running"
        return f"<LabKernel {self.kernel}: {state}, {len(self.cells)} cells run, audit log {self.audit_log}>"


# --- report and chain descriptions (notebook 2) -----------------------------------------------------------

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
            value = "'CC-SIMULATION' + " + _show(raw[len(b"CC-SIMULATION") :], 24)
        elif f.kind == "int":
            value = str(int.from_bytes(raw, "little"))
            if name == "cpuid_fam_id":
                value = f"0x{int(value):02x}"
        else:
            value = _show(raw.rstrip(b"\0") if name.startswith("signature") else raw, 48)
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


# --- the attestation diagram (notebook 2) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Diagram:
    """An SVG picture (shown by Jupyter through ``_repr_svg_``)."""

    svg: str
    alt: str

    def _repr_svg_(self) -> str:
        return self.svg

    def __str__(self) -> str:
        return self.alt

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.alt)


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


# --- the lab ---------------------------------------------------------------------------------------------------


@dataclass
class _Server:
    fault: str
    address: str
    process: subprocess.Popen[bytes] | None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    package_root: Path | None = None


class _ReplayServer:
    """An impostor: a TLS server with its own key that answers every challenge with one recorded, genuine
    evidence envelope (evidence is not secret — anyone may connect to an enclave and ask for it)."""

    def __init__(self, envelope: bytes) -> None:
        self.envelope = envelope
        self.challenges: list[AttestRequest] = []
        self.port = 0
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._identity = make_tls_identity(new_tls_key(), now=datetime.now(UTC))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        task = asyncio.get_running_loop().create_task(self._accept())
        self._tasks.add(task)

    async def _accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _peer = await loop.sock_accept(self._sock)
            task = loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        channel: FramedChannel | None = None
        try:
            # an impostor accepts anyone: it wants the victim's attempt, not to check who makes it
            channel = await accept_server(conn, self._identity, Connection(Role.ENCLAVE), clients=None)
            hello = await channel.receive()
            if not isinstance(hello, Hello):
                return
            version = negotiate([PROTOCOL_VERSION], hello.versions)
            await channel.send(Hello(role="enclave", versions=[version], software=f"cc-kernel {__version__}"))
            request = await channel.receive()
            if not isinstance(request, AttestRequest):
                return
            self.challenges.append(request)
            await channel.send(AttestResponse(envelope=self.envelope))
            with contextlib.suppress(CCKernelError):
                await channel.receive()  # the client's Fatal (it refuses us), or the end of the connection
        except CCKernelError:
            pass
        finally:
            if channel is not None:
                await channel.aclose()
            else:
                conn.close()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()


class _Resources:
    """Everything a lab must release; closed by ``TeachingLab.close`` or, at the latest, at interpreter exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop: _LoopThread | None = None
        self.servers: list[_Server] = []
        self.relays: list[Relay] = []
        self.replayers: list[_ReplayServer] = []
        self.kernels: list[LabKernel] = []
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.loop is not None:
            for kernel in self.kernels:
                with contextlib.suppress(Exception):
                    kernel.shutdown()
            for relay in self.relays:
                with contextlib.suppress(Exception):
                    self.loop.run(relay.aclose(), 5.0)
            for replayer in self.replayers:
                with contextlib.suppress(Exception):
                    self.loop.run(replayer.aclose(), 5.0)
            self.loop.close()
        for server in self.servers:
            _stop_process(server.process)
        shutil.rmtree(self.root, ignore_errors=True)


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (the server then stops its enclaves), then SIGKILL to its process group if it lingers."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(8.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class TeachingLab:
    """A private, throw-away confidential-computing lab: a simulated authority, enclave servers with faults,
    attestation, relays and kernels — all real, all cleaned up by ``close()`` (or at exit).

    Use it as a context manager, or call ``close()`` when done. Call its methods from one thread (a notebook's
    cells); enclave servers stop when the lab is closed, or at the latest when the thread that started them
    exits (Linux). ``root``: where to create the lab's temporary directory (default: the system's).
    """

    def __init__(self, *, root: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cc-teaching-", dir=root))
        self._res = _Resources(self.root)
        self._finalizer = weakref.finalize(self, self._res.close)
        #: The lab's private Jupyter data directory (the simulated authority lives below it).
        self.data_dir = self.root / "jupyter-data"
        #: The simulated TEE authority's directory: its ARK/ASK/VCEK keys, made for this lab only.
        self.sim_dir = simulation_dir(self.data_dir)
        for sub in ("logs", "policies", "runtime", "prefix", "config", "ipython"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.authority = load_or_create_authority(self.sim_dir)
        #: The simulation trust anchors (ARK and ASK certificates) the lab verifies against.
        self.anchors: TrustAnchors = load_simulation_anchors(self.sim_dir)
        #: The lab's client key (in its data directory, so the lab's kernels present it too), and the
        #: authorised-clients file of the lab's enclave servers, which lists it.
        self.client_identity = load_or_create_client_identity(client_key_dir(self.data_dir), comment="teaching lab")
        self.authorized_clients = self.root / "authorized_clients"
        self.authorized_clients.write_text(f"# the teaching lab's client key\n{self.client_identity.line}\n")
        self._res.loop = _LoopThread()
        self._measurement: bytes | None = None
        self._policy_count = 0
        self._kernel_count = 0
        self._labels: dict[str, str] = {}
        self._kernelspecs_ready = False

    # -- lifecycle ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process and relay of this lab and delete its directory (idempotent)."""
        self._finalizer()

    def __enter__(self) -> TeachingLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _loop(self) -> _LoopThread:
        if self._res.closed or self._res.loop is None:
            raise RuntimeError("this TeachingLab is closed")
        return self._res.loop

    # -- what is pinned ---------------------------------------------------------------------------------------

    @property
    def measurement(self) -> bytes:
        """The measurement of the installed enclave code (SHA-384 over its files), as ``cc-kernel measure``."""
        if self._measurement is None:
            from cc_kernel.measure import enclave_measurement

            self._measurement = enclave_measurement()
        return self._measurement

    @property
    def tcb(self) -> dict[str, int]:
        """The TCB (firmware security versions) the lab's simulated platform reports today."""
        return dict(self.authority.tcb)

    def policy(self, *, min_tcb: Mapping[str, int] | None = None, measurement: bytes | None = None) -> Policy:
        """A verification policy pinning the real enclave measurement (or ``measurement``), accepting the
        simulated TEE (``unsafe_allow_simulation``), optionally with a minimum TCB. Rendered by the same code as
        ``cc-kernel policy init --simulation`` and written to a file in the lab (``Policy.source`` is its path)."""
        self._policy_count += 1
        path = self.root / "policies" / f"policy-{self._policy_count}.toml"
        text = render_policy(
            "simulation", [measurement or self.measurement], min_tcb=dict(min_tcb) if min_tcb else None,
            note="written by cc_kernel.teaching.TeachingLab.policy",
        )
        path.write_text(text)
        return load_policy(text, source=str(path))

    # -- enclaves -----------------------------------------------------------------------------------------------

    def start_enclave(self, fault: str | None = None, *, timeout: float = 30.0) -> str:
        """Start an enclave server (``cc-kernel enclave serve``) with at most one fault; return its address.

        Faults: ``debug``, ``old-tcb`` and ``swapped-key`` are the enclave's own teaching knobs (``--fault``);
        ``modified-code`` launches the server from a copy of the installed package with ``MODIFIED_LINE``
        appended to ``MODIFIED_FILE``, so the measurement it computes of its own files really changes;
        ``replay`` starts a genuine enclave, asks it once for evidence, and returns the address of an impostor
        server (own TLS key) that answers every challenge with that recorded, genuine evidence. (The enclave's
        own ``--fault replay`` knob, which answers with its start-up evidence, is not used: the impostor is the
        attack a network or host can actually mount.)

        Raises:
            ValueError: unknown fault.
            EnclaveError: the server did not start (its log is in the message).
        """
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)} (or None)")
        if fault == "replay":
            return self._start_replayer(timeout)
        package_root = self._modified_package() if fault == "modified-code" else None
        argv = [sys.executable, "-c", _SERVE_SNIPPET, "--listen", "127.0.0.1:0", "--sim-dir", str(self.sim_dir),
                "--log-level", "INFO", "--authorized-clients", str(self.authorized_clients)]
        if fault in ENCLAVE_FAULTS:
            argv += ["--fault", fault]
        env = self._child_env()
        env["CC_TEACHING_PARENT"] = str(os.getpid())
        if package_root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            cwd=self.root, start_new_session=True,
        )
        server = _Server(fault=fault or "no fault", address="", process=proc, package_root=package_root)
        self._res.servers.append(server)
        found = threading.Event()
        threading.Thread(target=self._pump, args=(server, found), daemon=True, name="cc-teaching-log").start()
        if not found.wait(timeout) or not server.address:
            _stop_process(proc)
            tail = "\n".join(server.lines) or "(no output)"
            raise EnclaveError(f"the enclave server did not start within {timeout} s:\n{tail}")
        self._labels[server.address] = server.fault
        return server.address

    @staticmethod
    def _pump(server: _Server, found: threading.Event) -> None:
        proc = server.process
        assert proc is not None and proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                server.lines.append(line)
                match = _SERVING.search(line)
                if match and not server.address:
                    server.address = match.group(1)
                    found.set()
        except (OSError, ValueError):
            pass
        finally:
            found.set()

    def _modified_package(self) -> Path:
        import cc_kernel

        source = Path(cc_kernel.__file__).resolve().parent
        root = Path(tempfile.mkdtemp(prefix="modified-code-", dir=self.root))
        shutil.copytree(source, root / "cc_kernel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with (root / "cc_kernel" / MODIFIED_FILE).open("a", encoding="utf-8") as fh:
            fh.write(MODIFIED_LINE)
        return root

    def _start_replayer(self, timeout: float) -> str:
        genuine = self.start_enclave(None, timeout=timeout)
        recorded = self.fetch_evidence(genuine, timeout=timeout)
        replayer = _ReplayServer(recorded.envelope_bytes)
        self._loop.run(replayer.start(), timeout)
        self._res.replayers.append(replayer)
        address = f"tcp://127.0.0.1:{replayer.port}"
        self._res.servers.append(_Server(fault="replay", address=address, process=None))
        self._labels[address] = "replay"
        return address

    def enclave_log(self, address: str) -> str:
        """The output of the enclave server at ``address`` (its own log and its enclave processes')."""
        for server in self._res.servers:
            if server.address == address:
                return "\n".join(server.lines)
        raise KeyError(address)

    def stop_enclave(self, address: str) -> None:
        """Stop the enclave server at ``address`` (and every enclave process it started)."""
        for server in self._res.servers:
            if server.address == address:
                _stop_process(server.process)

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CC_KERNEL_") and k != "JPY_PARENT_PID"}
        env.update(
            JUPYTER_DATA_DIR=str(self.data_dir),
            JUPYTER_RUNTIME_DIR=str(self.root / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.root / "config"),
            JUPYTER_PATH=str(self.root / "prefix" / "share" / "jupyter"),
            JUPYTER_PLATFORM_DIRS="1",
            IPYTHONDIR=str(self.root / "ipython"),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
            PYTHONDONTWRITEBYTECODE="1",
            CC_KERNEL_SIM_DIR=str(self.sim_dir),
        )
        return env

    # -- attestation ------------------------------------------------------------------------------------------

    def attest(self, address: str, *, policy: Policy | None = None, timeout: float = 20.0) -> AttestOutcome:
        """Connect to ``address`` and verify it exactly as the kernel does (``connect_attested``): TLS 1.3,
        challenge, authenticity, freshness, binding, policy. Returns the verified result or the refusal.

        ``policy`` defaults to ``self.policy()`` (the real measurement, simulation accepted).
        """
        policy = policy if policy is not None else self.policy()
        label = self._labels.get(address, "")

        async def attempt() -> AttestOutcome:
            attested = await connect_attested(
                parse_address(address), policy=policy, anchors=hardware_anchors(), simulation_anchors=self.anchors,
                timeout=timeout, client_identity=self.client_identity,
            )
            await attested.channel.aclose()
            return AttestOutcome(address, label, result=attested.peer.result, timings_ms=dict(attested.timings_ms))

        try:
            return self._loop.run(attempt(), timeout + 5.0)
        except CCKernelError as exc:
            return AttestOutcome(address, label, error=exc)

    def fetch_evidence(self, address: str, *, timeout: float = 20.0) -> EvidenceExchange:
        """Do the first half of the kernel's exchange by hand — TLS 1.3 handshake, Hello, AttestRequest with a
        fresh nonce and session id — and return what came back WITHOUT verifying anything.

        Raises:
            ConnectError / BrokenChannelError / RemoteProtocolError: the exchange failed.
        """
        nonce, session_id = os.urandom(NONCE_SIZE), os.urandom(SESSION_ID_SIZE)

        async def exchange() -> EvidenceExchange:
            channel = await open_client(parse_address(address), Connection(Role.KERNEL), timeout=timeout,
                                        client_identity=self.client_identity)
            try:
                await channel.send(Hello(role="kernel", versions=[PROTOCOL_VERSION],
                                         software=f"cc-kernel {__version__} (teaching)"))
                hello = await channel.receive()
                await channel.send(AttestRequest(nonce=nonce, session_id=session_id))
                response = await channel.receive()
                if not isinstance(hello, Hello) or not isinstance(response, AttestResponse):
                    raise EnclaveError(f"unexpected answer from {address}: {type(response).__name__}")
                with contextlib.suppress(CCKernelError):
                    await channel.send(Fatal(reason="teaching: evidence fetched for manual verification"))
                return EvidenceExchange(
                    address=address, nonce=nonce, session_id=session_id,
                    peer_cert_der=channel.peer_cert_der or b"", envelope_bytes=response.envelope,
                    enclave_software=hello.software,
                )
            finally:
                await channel.aclose()

        return self._loop.run(exchange(), timeout + 5.0)

    def relay(self, address: str, *, tamper: bool = False) -> Relay:
        """A recording relay in front of the enclave server at ``address``; connect to ``relay.address``.

        With ``tamper=True`` it flips one bit of the first record the enclave sends after the handshake.
        """
        target = parse_address(address)
        if target.kind != "tcp":
            raise ValueError("relays forward TCP addresses only")
        relay = Relay(target.host, target.port, tamper=tamper, channel="tls",
                      labels=("kernel → enclave", "enclave → kernel"))
        self._loop.run(relay.start(), 10.0)
        self._res.relays.append(relay)
        kind = "tampering relay" if tamper else "relay"
        self._labels[relay.address] = f"{kind} to {self._labels.get(address, address)}"
        return relay

    # -- kernels ------------------------------------------------------------------------------------------------

    def _ensure_kernelspecs(self) -> Path:
        kernels = self.root / "prefix" / "share" / "jupyter" / "kernels"
        if not self._kernelspecs_ready:
            import ipykernel.kernelspec

            from cc_kernel.kernel.install import install

            install(prefix=str(self.root / "prefix"))
            ipykernel.kernelspec.install(prefix=str(self.root / "prefix"))
            self._kernelspecs_ready = True
        return kernels

    def start_kernel(
        self,
        kernel: str = "confidential-python-sim",
        *,
        enclave: str | None = None,
        policy: Policy | None = None,
        audit_dir: str | Path | None = None,
        redact_code: bool = False,
        timeout: float = 60.0,
    ) -> LabKernel:
        """Start a real Jupyter kernel that stays up: run several cells in it with ``LabKernel.run``, then
        ``shutdown()``.

        For ``confidential-python-sim``: it connects to ``enclave`` (else starts its own local enclave),
        verified with ``policy`` (default ``self.policy()``), and keeps its session log in ``audit_dir``
        (``CC_KERNEL_AUDIT_DIR``; default: the lab's Jupyter data directory), with code redacted if
        ``redact_code``. The caller's own ``CC_KERNEL_*`` settings are never passed on.

        Raises:
            TimeoutError: the kernel did not become ready in time.
        """
        kernels = self._ensure_kernelspecs()
        env = self._child_env()
        if kernel != "python3":
            env["CC_KERNEL_POLICY"] = (policy if policy is not None else self.policy()).source
            if enclave is not None:
                env["CC_KERNEL_ENCLAVE"] = enclave
            if audit_dir is not None:
                env["CC_KERNEL_AUDIT_DIR"] = str(audit_dir)
            if redact_code:
                env["CC_KERNEL_AUDIT_REDACT"] = "1"
        self._kernel_count += 1
        n = self._kernel_count
        started = LabKernel(self._loop, kernel, self.root / "logs" / f"kernel-{n}-{kernel}.log")
        self._res.kernels.append(started)
        try:
            self._loop.run(started._start(kernels, env, self.root / "runtime" / f"kernel-{n}.json", timeout),
                           timeout + 30.0)
        except BaseException:
            started.shutdown()
            raise
        return started

    def run_cell(
        self,
        code: str,
        *,
        kernel: str = "confidential-python-sim",
        enclave: str | None = None,
        policy: Policy | None = None,
        wiretap: bool = False,
        timeout: float = 60.0,
    ) -> CellRun:
        """Start a real Jupyter kernel, run ``code`` as its first cell, collect every output, shut it down.

        ``kernel``: ``confidential-python-sim`` (connects to ``enclave`` — an address from ``start_enclave``
        or ``relay`` — verified with ``policy``; without ``enclave`` it starts its own local enclave) or
        ``python3`` (the stock IPython kernel). ``wiretap=True``: a relay records the traffic between the
        kernel and the untrusted side — for the confidential kernel the kernel ↔ enclave TLS stream (requires
        ``enclave``), for python3 its five ZMQ sockets (frontend ↔ kernel).

        Raises:
            ValueError: ``wiretap`` for the confidential kernel without ``enclave``.
            TimeoutError: the kernel did not answer in time.
        """
        if wiretap and kernel != "python3" and enclave is None:
            raise ValueError("wiretap on the Confidential Python kernel needs an enclave address to relay to")
        kernels = self._ensure_kernelspecs()
        tap: Recording | None = None
        env = self._child_env()
        if kernel != "python3":
            if wiretap and enclave is not None:
                relay = self.relay(enclave)
                tap, enclave = relay, relay.address
            env["CC_KERNEL_POLICY"] = (policy if policy is not None else self.policy()).source
            if enclave is not None:
                env["CC_KERNEL_ENCLAVE"] = enclave
        self._kernel_count += 1
        n = self._kernel_count
        run, zmq_tap = self._loop.run(
            self._run_in_kernel(code, kernel, kernels, env, n, wiretap and kernel == "python3", timeout),
            timeout + 60.0,
        )
        return CellRun(
            kernel=kernel, code=code, status=run["status"], outputs=tuple(run["outputs"]), seconds=run["seconds"],
            connection_info=run["connection_info"], kernel_log=run["log"], enclave=enclave,
            wiretap=tap if tap is not None else zmq_tap,
        )

    async def _run_in_kernel(
        self, code: str, kernel: str, kernels: Path, env: dict[str, str], n: int, tap_zmq: bool, timeout: float
    ) -> tuple[dict[str, Any], Wiretap | None]:
        """On the lab's loop: start the kernel (output to a log file), optionally relay its sockets, run
        ``code``, shut the kernel down."""
        from jupyter_client.asynchronous.client import AsyncKernelClient
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager

        log_path = self.root / "logs" / f"kernel-{n}-{kernel}.log"
        km = AsyncKernelManager(kernel_name=kernel, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
        km.connection_file = str(self.root / "runtime" / f"kernel-{n}.json")
        outputs: list[dict[str, Any]] = []
        tap: Wiretap | None = None
        kc: Any = None
        with log_path.open("wb") as log:
            await km.start_kernel(env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                info: dict[str, Any] = dict(km.get_connection_info())
                if tap_zmq:
                    relays = {}
                    for name in ("shell", "iopub", "stdin", "control", "hb"):
                        relay = Relay(str(info["ip"]), int(info[f"{name}_port"]), channel=name,
                                      labels=("frontend → kernel", "kernel → frontend"))
                        await relay.start()
                        self._res.relays.append(relay)
                        relays[name] = relay
                    tap = Wiretap(relays, labels=("frontend → kernel", "kernel → frontend"))
                    kc = AsyncKernelClient()
                    kc.load_connection_info({**info, **{f"{k}_port": r.port for k, r in relays.items()}})
                else:
                    kc = km.client()
                kc.start_channels()
                await kc.wait_for_ready(timeout=timeout)

                def hook(msg: dict[str, Any]) -> None:
                    if msg["msg_type"] not in ("status", "execute_input"):
                        outputs.append({"msg_type": msg["msg_type"], "content": msg["content"]})

                t0 = time.monotonic()
                reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)
                seconds = time.monotonic() - t0
            finally:
                if kc is not None:
                    kc.stop_channels()
                with contextlib.suppress(Exception):
                    await km.shutdown_kernel(now=False)
                if km.has_kernel:
                    await km.shutdown_kernel(now=True)
        info["key"] = info["key"].decode() if isinstance(info.get("key"), bytes) else info.get("key")
        run = {
            "status": reply["content"]["status"], "outputs": outputs, "seconds": seconds,
            "connection_info": info, "log": log_path.read_text(errors="replace"),
        }
        return run, tap

    # -- summaries ------------------------------------------------------------------------------------------------

    @staticmethod
    def verdicts(outcomes: Mapping[str, AttestOutcome]) -> Table:
        """One line per attempt: what was switched on, verified or refused, the exception and the check."""
        rows = tuple(
            (name, "verified" if o.verified else "REFUSED", o.error_class or (o.result.status if o.result else ""),
             o.check)
            for name, o in outcomes.items()
        )
        return Table("what attestation caught", ("fault", "verdict", "exception / status", "check"), rows)

