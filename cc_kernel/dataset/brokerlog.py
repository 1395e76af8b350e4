"""Pure dataset layer: the broker's signed, hash-chained log (docs/dataset.md §5) — entries and the offline verifier.

Format: UTF-8 text, one JSON object per line (``\\n``-terminated)::

    {"data": {...}, "event": "request"|"verdict"|"release"|"start"|"owner-log", "prev": "<64 hex>", "seq": N,
     "sig": "<128 hex>", "time": "<RFC 3339 UTC>", "v": 1}

``body`` = the line's object without ``"sig"``, serialised as canonical JSON (``sort_keys``, separators ``,``
and ``:``, ASCII only); ``hash = tagged_hash(TAG_BROKER_LOG_ENTRY, body)``; ``prev`` is the previous entry's
hash (64 zero hex digits for seq 0); ``sig`` = Ed25519 by the broker's log key over
``lp(TAG_BROKER_LOG_SIGNATURE) ‖ lp(hash)``.

Invariants: no I/O, no clock (``time`` is a parameter); the verifier re-serialises every line and insists on
byte equality, so no changed byte verifies. Checks (``LogVerificationError.check``, ``index`` = line number
from 0): ``brokerlog.decode``, ``brokerlog.seq``, ``brokerlog.chain``, ``brokerlog.signature``,
``brokerlog.truncated`` (a last line without its newline).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cc_kernel.crypto.hashing import TAG_BROKER_LOG_ENTRY, TAG_BROKER_LOG_SIGNATURE, lp, tagged_hash
from cc_kernel.crypto.keys import verify_ed25519
from cc_kernel.errors import LogVerificationError

EVENTS: Final = ("start", "request", "verdict", "release", "owner-log")
GENESIS: Final = bytes(32)
_KEYS: Final = frozenset({"v", "seq", "prev", "time", "event", "data", "sig"})


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def entry_hash(body: bytes) -> bytes:
    """``tagged_hash(TAG_BROKER_LOG_ENTRY, body)``."""
    return tagged_hash(TAG_BROKER_LOG_ENTRY, body)


def signed_message(hash_: bytes) -> bytes:
    """What the log key signs: ``lp(TAG_BROKER_LOG_SIGNATURE) ‖ lp(hash)``."""
    return lp(TAG_BROKER_LOG_SIGNATURE) + lp(hash_)


@dataclass(frozen=True)
class BrokerLogEntry:
    """One verified entry."""

    seq: int
    time: str
    event: str
    data: Mapping[str, Any]
    hash: bytes


class BrokerLogWriter:
    """Builds the next line of a log; ``sign`` is the log key's signing function. Continue a log with ``seq``
    and ``prev`` from its last verified entry."""

    def __init__(self, sign: Any, *, seq: int = 0, prev: bytes = GENESIS) -> None:
        self._sign = sign
        self._seq = seq
        self._prev = prev

    def line(self, event: str, data: Mapping[str, Any], *, time: str) -> bytes:
        """The next entry's line (with its newline). ``data`` must be JSON-serialisable (str, int, bool...)."""
        if event not in EVENTS:
            raise ValueError(f"unknown broker log event {event!r}")
        body_obj = {"v": 1, "seq": self._seq, "prev": self._prev.hex(), "time": time, "event": event,
                    "data": dict(data)}
        body = _canonical(body_obj)
        h = entry_hash(body)
        sig: bytes = self._sign(signed_message(h))
        self._seq += 1
        self._prev = h
        return _canonical({**body_obj, "sig": sig.hex()}) + b"\n"


def _bad(check: str, message: str, index: int) -> LogVerificationError:
    return LogVerificationError(message, check=check, index=index)


def verify_broker_log(data: bytes, *, public_key: bytes) -> list[BrokerLogEntry]:
    """Verify a whole broker log against the broker's log key (32 raw Ed25519 bytes) and return its entries.

    Raises:
        LogVerificationError: the first bad line (``check`` and ``index`` say which and why).
    """
    entries: list[BrokerLogEntry] = []
    prev = GENESIS
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        raise _bad("brokerlog.truncated", f"line {len(lines) - 1} has no newline: the log was cut short",
                   len(lines) - 1)
    for i, line in enumerate(lines):
        # 1. a canonical JSON object with exactly the known keys
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise _bad("brokerlog.decode", f"line {i} is not JSON", i) from None
        if not isinstance(obj, dict) or set(obj) != _KEYS or _canonical(obj) != line:
            raise _bad("brokerlog.decode", f"line {i} is not a canonical broker log entry", i)
        if obj["v"] != 1 or obj["event"] not in EVENTS or not isinstance(obj["data"], dict):
            raise _bad("brokerlog.decode", f"line {i} has an unknown version or event", i)
        # 2. sequence and chain
        if obj["seq"] != i:
            raise _bad("brokerlog.seq", f"line {i} says seq {obj['seq']}: entries were removed or reordered", i)
        if obj["prev"] != prev.hex():
            raise _bad("brokerlog.chain", f"line {i} does not chain to the entry before it", i)
        # 3. signature
        body_obj = {k: v for k, v in obj.items() if k != "sig"}
        h = entry_hash(_canonical(body_obj))
        try:
            sig = bytes.fromhex(obj["sig"])
        except (TypeError, ValueError):
            raise _bad("brokerlog.decode", f"line {i} has a malformed signature", i) from None
        if not verify_ed25519(public_key, sig, signed_message(h)):
            raise _bad("brokerlog.signature", f"line {i} is not signed by this broker's log key", i)
        entries.append(BrokerLogEntry(seq=i, time=obj["time"], event=obj["event"], data=obj["data"], hash=h))
        prev = h
    return entries
