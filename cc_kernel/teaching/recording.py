"""Teaching: recordings — what a man in the middle saw, with views (hex excerpts around a secret, TLS record
summaries); the lab's ``Relay`` and ``Wiretap`` (several relays as one recording).

Layer: I/O (relays run on the lab's loop), part of ``cc_kernel.teaching``; the forwarding, recording and
tampering are ``cc_kernel.labkit.relay``'s, the record walking ``cc_kernel.labkit.tls``'s (one of each, shared
with the test harness). Invariants: a view only reads what was recorded; directions are ``"c2s"`` (client ->
server: kernel -> enclave, frontend -> kernel) and ``"s2c"``, each labelled for the reader.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from cc_kernel.channel.transport import Address
from cc_kernel.labkit import relay as labkit
from cc_kernel.labkit.relay import DIRECTIONS, Chunk, Direction, Flip
from cc_kernel.labkit.tls import APPLICATION_DATA, TLS_CONTENT_TYPES, TlsRecord, tls_records
from cc_kernel.teaching.display import Shown, hexdump, pre

__all__ = ["Recording", "Relay", "Wiretap"]


class Recording(labkit.Recorded, Shown):
    """What a man in the middle saw: chunks of bytes in both directions (``data``), with views for teaching."""

    labels: tuple[str, str] = ("client → server", "server → client")

    def label(self, direction: Direction) -> str:
        return self.labels[0] if direction == "c2s" else self.labels[1]

    def contains(self, needle: str | bytes) -> bool:
        """Did the bytes the relay saw contain ``needle`` (UTF-8 encoded if text), in either direction?"""
        raw = needle.encode() if isinstance(needle, str) else needle
        streams = {(c.channel, c.conn, c.direction) for c in self.chunks}
        return any(raw in self.data(d, channel=ch, conn=n) for ch, n, d in streams)

    def tls_records(self, direction: Direction, *, conn: int = 0) -> list[TlsRecord]:
        """The TLS records of one direction of one connection."""
        return tls_records(self.data(direction, conn=conn))

    def excerpt(self, secret: str | bytes, direction: Direction = "c2s", *, size: int = 256) -> tuple[str, str]:
        """(title, hexdump) of what the relay saw around ``secret`` going ``direction``; if it never appears
        there, of a TLS application-data record (the largest going c2s: the cell) or of the stream's start."""
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
        app = [r for r in records if r.content_type == APPLICATION_DATA]
        if len(records) > 2 and app:
            # past the handshake: the largest record going c2s (the cell), or a later one coming back
            pick = max(app, key=lambda r: r.length) if direction == "c2s" else app[min(len(app) - 1, 2)]
            title = (f"{self.label(direction)}: TLS application_data record at byte {pick.offset} "
                     f"({pick.length} bytes of ciphertext; the secret does not appear {where})")
            return title, hexdump(stream[pick.offset : pick.offset + size], offset=pick.offset, max_lines=size // 16)
        title = f"{self.label(direction)} ({channel}): first {size} bytes (the secret does not appear {where})"
        return title, hexdump(stream[:size], max_lines=size // 16)

    def summary(self) -> str:
        """Bytes and TLS records per connection and direction (TLS is recognised by its record headers)."""
        lines = []
        for channel, conn in sorted({(c.channel, c.conn) for c in self.chunks}):
            for direction in DIRECTIONS:
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

    def text(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return pre(self.summary())


class Relay(Recording, labkit.Relay):
    """A recording TCP relay between a client and a server: a man in the middle, as an untrusted host is.

    It forwards every byte both ways and keeps a copy (``cc_kernel.labkit.relay.Relay``, with this module's
    views). ``flip=Flip.after_handshake()`` changes exactly one bit: the first byte of TLS record payload the
    server sends after the client's first application-data record (so after the handshake is over), in each
    connection, as an attacker altering the stream would.
    """

    def __init__(
        self,
        target: Address | str | socket.socket,
        *,
        flip: Flip | None = None,
        channel: str = "tcp",
        labels: tuple[str, str] = ("client → server", "server → client"),
    ) -> None:
        labkit.Relay.__init__(self, target, flip=flip, channel=channel)
        self.labels = labels

    def describe_tampering(self) -> str:
        """What was changed, in words."""
        if not self.tampered:
            return "nothing was changed" if self.flip else "this relay does not tamper"
        return "\n".join(
            f"connection #{t.conn}, {self.label(t.direction)}: TLS record #{t.record_index}, stream byte "
            f"{t.stream_offset}: 0x{t.before:02x} -> 0x{t.after:02x} (one bit flipped)"
            for t in self.tampered
        )

    def summary(self) -> str:
        head = f"relay {self.address} -> {self.target}, {self.connections} connection(s)"
        if self.flip:
            head += f"\ntampering: {self.describe_tampering()}"
        return head + "\n" + super().summary()


class Wiretap(Recording):
    """Several relays seen as one recording (e.g. the five ZMQ sockets of a Jupyter kernel)."""

    def __init__(self, relays: Mapping[str, Relay], labels: tuple[str, str]) -> None:
        self.relays = dict(relays)
        self.labels = labels

    @property
    def chunks(self) -> list[Chunk]:
        merged = [c for relay in self.relays.values() for c in relay.chunks]
        return sorted(merged, key=lambda c: c.at)
