"""Test helpers: waiting in tests — poll a condition until it holds, with a deadline; never a bare sleep to synchronise.

Layer: testing (may import any part of cc_kernel; nothing in cc_kernel imports it; it is not measured).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until", "wait_until_async"]


def _expired(deadline: float, timeout: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{what}: not within {timeout} s")


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true.

    Raises:
        TimeoutError: ``"<what>: not within <timeout> s"``, when it is still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        _expired(deadline, timeout, what)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.01
) -> None:
    """``wait_until`` for a test running on an event loop: the loop keeps running between polls.

    Raises:
        TimeoutError: as ``wait_until``.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        _expired(deadline, timeout, what)
        await asyncio.sleep(interval)
