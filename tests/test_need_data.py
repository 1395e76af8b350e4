"""One ``NEED_DATA`` sentinel: every incremental decoder answers "feed me more" with the same object.

A loop such as ``while (event := decoder.next_event()) is not NEED_DATA`` never ends if the decoder returns a
look-alike from another module, so each decoder is asked here, with nothing fed, and must return the one
sentinel defined in ``cc_kernel.protocol.framing``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cc_kernel.audit import format as audit_format
from cc_kernel.dataset import format as dataset_format
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.protocol.framing import NEED_DATA, FrameDecoder, NeedData

DECODERS: dict[str, Callable[[], object]] = {
    "FrameDecoder.next_frame": lambda: FrameDecoder().next_frame(),
    "Connection.next_event": lambda: Connection(Role.KERNEL).next_event(),
    "LogDecoder.next_record": lambda: audit_format.LogDecoder().next_record(),
    "Unsealer.next_event": lambda: dataset_format.Unsealer().next_event(),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_decoder_answers_with_the_one_sentinel(name: str) -> None:
    answer = DECODERS[name]()
    assert answer is NEED_DATA, f"{name} returned {answer!r} ({type(answer).__qualname__}), not framing.NEED_DATA"


def test_every_module_exports_the_same_object() -> None:
    assert audit_format.NEED_DATA is dataset_format.NEED_DATA is NEED_DATA
    assert list(NeedData) == [NEED_DATA]  # a single member: no second sentinel can be made of this type

