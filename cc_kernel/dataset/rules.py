"""Pure dataset layer: the owner's rules for one dataset, parsed strictly from TOML text (docs/dataset.md §4).

Schema (version 1; unknown keys, wrong types and contradictions are ``RulesError`` with check ``rules.schema``)::

    version = 1                                  # required
    mode = "inspect" | "approved-code"           # required
    approved_code_sha256 = ["<64 hex>", ...]     # required and non-empty for approved-code, forbidden for inspect
    not_after = 2027-01-01T00:00:00Z             # required: RFC 3339 date-time with a timezone (offset)
    max_sessions = 10                            # required: 1..1000000, releases counted by the broker

Invariants: no I/O, no clock (``check_release(now=...)``); ``sha256`` is ``tagged_hash(TAG_DATASET_RULES,
canonical)`` over the UTF-8 text with CRLF normalised to LF and no BOM, the digest the sealed header carries.
Code digests are ``audit.format.code_hash`` values, the digest every receipt records.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, NoReturn

from cc_kernel.crypto.hashing import TAG_DATASET_RULES, tagged_hash
from cc_kernel.errors import DatasetExpired, ReleaseRefused, RulesError

RULES_VERSION: Final = 1
MODES: Final = ("inspect", "approved-code")
Mode = Literal["inspect", "approved-code"]
MAX_SESSIONS_LIMIT: Final = 1_000_000
_KEYS: Final = frozenset({"version", "mode", "approved_code_sha256", "not_after", "max_sessions"})


@dataclass(frozen=True)
class Rules:
    """A loaded rules file. Build it with ``load_rules``."""

    mode: Mode
    not_after: datetime
    max_sessions: int
    approved_code_sha256: frozenset[bytes]
    sha256: bytes
    canonical: bytes = field(repr=False)
    source: str = "<rules>"

    def approves(self, code_sha256: bytes) -> bool:
        """True if ``mode`` is inspect, or the code digest is one the owner approved."""
        return self.mode == "inspect" or code_sha256 in self.approved_code_sha256

    def check_release(self, *, now: datetime, sessions_used: int) -> None:
        """Refuse a release the rules forbid at ``now`` after ``sessions_used`` earlier releases.

        Raises:
            DatasetExpired: ``rules.not_after``.
            ReleaseRefused: ``rules.max_sessions``.
            ValueError: ``now`` is naive.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        # 1. expiry
        if now > self.not_after:
            raise DatasetExpired(
                f"the dataset expired at {self.not_after.isoformat()}: its owner allows no release after that",
                check="rules.not_after", got=now.isoformat(), expected=f"<= {self.not_after.isoformat()}",
            )
        # 2. session count
        if sessions_used >= self.max_sessions:
            raise ReleaseRefused(
                f"the dataset was released {sessions_used} times, its owner allows {self.max_sessions}",
                check="rules.max_sessions", got=sessions_used + 1, expected=f"<= {self.max_sessions}",
            )


def _fail(source: str, message: str) -> NoReturn:
    raise RulesError(f"{source}: {message}", check="rules.schema")


def load_rules(text: str | bytes, *, source: str = "<rules>") -> Rules:
    """Parse and validate rules from TOML text (the caller reads the file).

    Raises:
        RulesError: ``rules.schema``: not UTF-8 or TOML, a missing, unknown or mistyped key, a contradiction.
    """
    if isinstance(text, bytes | bytearray):
        try:
            decoded = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(source, f"the rules are not UTF-8 text ({exc.reason} at byte {exc.start})")
    else:
        decoded = text
    decoded = decoded.removeprefix("\ufeff").replace("\r\n", "\n")
    try:
        raw: dict[str, Any] = tomllib.loads(decoded)
    except tomllib.TOMLDecodeError as exc:
        _fail(source, f"the rules are not valid TOML: {exc}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        _fail(source, f"unknown key(s) {unknown}; the rules know {sorted(_KEYS)}")
    for key in ("version", "mode", "not_after", "max_sessions"):
        if key not in raw:
            _fail(source, f'missing key "{key}"')
    version = raw["version"]
    if type(version) is not int or version != RULES_VERSION:
        _fail(source, f"version must be {RULES_VERSION}, not {version!r}")
    mode = raw["mode"]
    if mode not in MODES:
        _fail(source, f'mode must be one of {list(MODES)}, not {mode!r}')
    not_after = raw["not_after"]
    if not isinstance(not_after, datetime) or not_after.tzinfo is None:
        _fail(source, f"not_after must be an RFC 3339 date-time with a timezone (e.g. 2027-01-01T00:00:00Z), "
                      f"not {not_after!r}")
    sessions = raw["max_sessions"]
    if type(sessions) is not int or not 1 <= sessions <= MAX_SESSIONS_LIMIT:
        _fail(source, f"max_sessions must be an integer in 1..{MAX_SESSIONS_LIMIT}, not {sessions!r}")
    approved: set[bytes] = set()
    if mode == "inspect":
        if "approved_code_sha256" in raw:
            _fail(source, 'approved_code_sha256 is forbidden with mode = "inspect" (every cell may run there)')
    else:
        listed = raw.get("approved_code_sha256")
        if not isinstance(listed, list) or not listed:
            _fail(source, 'mode = "approved-code" requires a non-empty approved_code_sha256 list '
                          "(print the digests with `cc-kernel data approve NOTEBOOK.ipynb`)")
        for i, item in enumerate(listed):
            if not isinstance(item, str) or len(item) != 64:
                _fail(source, f"approved_code_sha256[{i}] must be 64 hex characters, not {item!r}")
            try:
                approved.add(bytes.fromhex(item))
            except ValueError:
                _fail(source, f"approved_code_sha256[{i}] is not hex: {item!r}")
    canonical = decoded.encode("utf-8")
    return Rules(
        mode=mode, not_after=not_after, max_sessions=sessions, approved_code_sha256=frozenset(approved),
        sha256=rules_digest(canonical), canonical=canonical, source=source,
    )


def rules_digest(canonical: bytes) -> bytes:
    """``tagged_hash(TAG_DATASET_RULES, canonical text)``."""
    return tagged_hash(TAG_DATASET_RULES, canonical)
