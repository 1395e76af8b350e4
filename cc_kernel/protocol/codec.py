"""Pure: the only msgpack call site. Strict decoding with size caps; canonical (sorted-key) encoding.

Invariants: decoding never allocates more than the input's size allows (msgpack's per-type limits are set
from the input length), rejects non-string map keys, extension types, trailing bytes and values nested deeper
than ``MAX_DEPTH`` (checked without recursion, so hostile nesting is a ``RemoteProtocolError``, never a
``RecursionError``); encoding sorts map keys so equal values encode to equal bytes.
"""

from __future__ import annotations

from typing import Any

import msgpack

from cc_kernel.errors import RemoteProtocolError

#: Default cap on one encoded value (frames, envelopes). Larger values are refused before decoding.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
#: Deepest nesting of arrays and maps a decoded value may have (the value itself is depth 1). Protocol
#: messages need 1 + ``messages.MAX_JSON_DEPTH``; envelopes and audit entries need 3.
MAX_DEPTH = 100


def nesting_depth(value: Any, *, limit: int) -> int:
    """How deeply arrays/maps nest in ``value`` (a scalar is 0), counting at most to ``limit + 1``.

    Iterative: any depth is measured without recursion.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def packb(value: Any) -> bytes:
    """Encode ``value`` canonically (map keys sorted, bytes as bin, str as str, tuples as arrays)."""
    if nesting_depth(value, limit=MAX_DEPTH) > MAX_DEPTH:
        raise ValueError(f"value cannot be encoded: nested deeper than {MAX_DEPTH} levels")
    try:
        return msgpack.packb(_canonical(value), use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"value cannot be encoded: {exc}") from exc


def unpackb(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode exactly one msgpack value from ``data``.

    Raises:
        RemoteProtocolError: oversized, malformed, trailing bytes, non-str keys, extension types, or nested
            deeper than ``MAX_DEPTH``.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(f"encoded value of {len(data)} bytes exceeds the limit of {max_size}")
    n = len(data)
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=n,
            max_str_len=n,
            max_array_len=n,
            max_map_len=n // 2 + 1,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise RemoteProtocolError("trailing bytes after the encoded value") from exc
    except (msgpack.UnpackException, ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, msgpack.StackError):  # msgpack's own limit (1024 levels), hit before ours
            raise RemoteProtocolError(f"malformed msgpack: nested deeper than {MAX_DEPTH} levels") from None
        raise RemoteProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    if nesting_depth(value, limit=MAX_DEPTH) > MAX_DEPTH:
        raise RemoteProtocolError(f"malformed msgpack: nested deeper than {MAX_DEPTH} levels")
    return value
