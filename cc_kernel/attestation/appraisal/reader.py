"""Pure attestation layer: strict readers of a parsed policy's TOML values (every failure is a ``PolicyError``).

Invariants: a reader either returns a value of the promised type and range or raises ``PolicyError`` naming
the key, its table and what it got; absent keys read as ``None`` (the caller applies the default); arrays may
not be empty where an empty array would accept nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NoReturn

from cc_kernel.errors import PolicyError

_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


class Reader:
    """Reads typed values out of a parsed TOML table; every failure is a PolicyError naming the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> NoReturn:
        raise PolicyError(f"{self.source}: {message}")

    def boolean(self, table: Mapping[str, Any], key: str, where: str) -> bool | None:
        value = table.get(key)
        if value is not None and not isinstance(value, bool):
            self.fail(f'key "{key}" in {where} must be true or false, got {describe(value)}')
        return value

    def integer(self, table: Mapping[str, Any], key: str, where: str, *, lo: int, hi: int) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(f'key "{key}" in {where} must be an integer from {lo} to {hi}, got {describe(value)}')
        return value

    def strings(
        self, table: Mapping[str, Any], key: str, where: str, *, choices: Sequence[str] | None
    ) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f'key "{key}" in {where} must be an array of strings, got {describe(value)}')
        if not value:
            self.fail(
                f'key "{key}" in {where} is an empty array, which would accept nothing; '
                "remove it or list values"
            )
        for v in value:
            if choices is not None and v not in choices:
                self.fail(f'key "{key}" in {where} must list values from {quoted(choices)}, got "{v}"')
        return tuple(dict.fromkeys(value))

    def hex_value(self, table: Mapping[str, Any], key: str, where: str, *, size: int) -> bytes | None:
        value = table.get(key)
        if value is None:
            return None
        return self.hex_text(value, f'key "{key}" in {where}', size)

    def hex_list(
        self, table: Mapping[str, Any], key: str, where: str, *, size: int
    ) -> tuple[bytes, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        name = f'key "{key}" in {where}'
        if isinstance(value, str):
            self.fail(f'{name} must be an array of hex strings (write {key} = ["..."]), got a single string')
        if not isinstance(value, list):
            self.fail(f"{name} must be an array of hex strings, got {describe(value)}")
        if not value:
            self.fail(f"{name} is an empty array, which would accept nothing; pin at least one value")
        return tuple(
            dict.fromkeys(self.hex_text(v, f"{name} (item {i})", size) for i, v in enumerate(value, 1))
        )

    def hex_map(
        self, table: Mapping[str, Any], key: str, where: str, *, size: int, max_index: int, what: str
    ) -> Mapping[int, bytes]:
        value = table.get(key)
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, dict):
            self.fail(f'key "{key}" in {where} must be a table like {{ 1 = "..." }}, got {describe(value)}')
        out: dict[int, bytes] = {}
        for index, item in value.items():
            if not index.isdigit() or not 0 <= int(index) <= max_index or str(int(index)) != index:
                self.fail(f'key "{index}" in {key} of {where} must be a {what} from 0 to {max_index}')
            out[int(index)] = self.hex_text(item, f'key "{index}" in {key} of {where}', size)
        return MappingProxyType(dict(sorted(out.items())))

    def hex_text(self, value: object, name: str, size: int) -> bytes:
        want = f"{size} bytes of hex ({2 * size} hex digits)"
        if not isinstance(value, str):
            self.fail(f"{name} must be {want}, got {describe(value)}")
        if value[:2].lower() == "0x":
            self.fail(f'{name} must be {want} without a "0x" prefix')
        if not all(c in _HEX_DIGITS for c in value):
            self.fail(f"{name} must be {want}, got a string that is not hex: {value[:24]!r}")
        if len(value) != 2 * size:
            self.fail(f"{name} must be {want}, got {len(value)} characters")
        return bytes.fromhex(value)


def type_name(value: object) -> str:
    """The TOML name of ``value``'s type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def describe(value: object) -> str:
    """``value``'s TOML type and a short repr, for messages."""
    try:
        text = repr(value)
    except RecursionError:
        text = "<nested too deeply to show>"
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type_name(value)} {text}"


def quoted(names: Sequence[str]) -> str:
    """``"a", "b"``: names as a message lists them."""
    return ", ".join(f'"{n}"' for n in names)


def close_match(key: str, allowed: Sequence[str] | frozenset[str]) -> str:
    """``; did you mean "k"?`` for the allowed key closest to a misspelt one, else an empty string."""
    match = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return f'; did you mean "{match[0]}"?' if match else ""


def toml_list(key: str, values: Sequence[str]) -> list[str]:
    """TOML lines of an array of plain strings, one item a line."""
    return [f"{key} = [", *(f"  {toml_str(v)}," for v in values), "]"]


def toml_str(value: str) -> str:
    """A TOML basic string of a plain value (letters, digits, ``-_.``).

    Raises:
        ValueError: the value holds anything else (nothing rendered needs escaping).
    """
    if not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"refusing to render an unusual string value {value!r}")
    return f'"{value}"'
