"""Pure: the only msgpack call site. Strict decoding with size caps; canonical (sorted-key) encoding.

Invariants: decoding never allocates more than the input's size allows (msgpack's per-type limits are set
from the input length), rejects non-string map keys, extension types, and trailing bytes; encoding sorts map
keys so equal values encode to equal bytes.
"""

from __future__ import annotations

from typing import Any

import msgpack

from cc_kernel.errors import RemoteProtocolError

#: Default cap on one encoded value (frames, envelopes). Larger values are refused before decoding.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def packb(value: Any) -> bytes:
    """Encode ``value`` canonically (map keys sorted, bytes as bin, str as str, tuples as arrays)."""
    try:
        return msgpack.packb(_canonical(value), use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"value cannot be encoded: {exc}") from exc


def unpackb(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode exactly one msgpack value from ``data``.

    Raises:
        RemoteProtocolError: oversized, malformed, trailing bytes, non-str keys or extension types.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(f"encoded value of {len(data)} bytes exceeds the limit of {max_size}")
    n = len(data)
    try:
        return msgpack.unpackb(
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
        raise RemoteProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
