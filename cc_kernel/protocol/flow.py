"""Pure: the cost of an output message for credit-based flow control (the same on both sides).

Invariant: ``output_cost`` depends only on the message's field values, so the enclave (charging) and the
kernel (crediting) compute the same number without exchanging frame sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cc_kernel.protocol.messages import Message


def _cost(value: Any) -> int:
    if isinstance(value, str | bytes | bytearray):
        return len(value) + 8
    if isinstance(value, dict):
        return 16 + sum(_cost(k) + _cost(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 16 + sum(_cost(v) for v in value)
    return 8


def output_cost(msg: Message) -> int:
    """Sum of the lengths of every str/bytes leaf of the message plus a small constant per item."""
    fields = dataclasses.fields(msg)  # type: ignore[arg-type]  # every Message is a dataclass
    return 32 + sum(_cost(getattr(msg, f.name)) for f in fields)
