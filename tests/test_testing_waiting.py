"""cc_kernel.testing.waiting: the one way tests wait for a condition."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cc_kernel.testing.waiting import wait_until, wait_until_async


def test_wait_until_returns_once_the_condition_holds() -> None:
    done = threading.Event()
    threading.Thread(target=done.set).start()
    wait_until(done.is_set, timeout=10, what="the thread")
    assert done.is_set()


def test_wait_until_names_what_did_not_happen() -> None:
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    with pytest.raises(TimeoutError, match=r"^the door opening: not within 0\.05 s$"):
        wait_until(never, timeout=0.05, what="the door opening")
    assert len(calls) >= 2  # it polled, then gave up


def test_wait_until_async_lets_the_loop_run_and_times_out_alike() -> None:
    async def main() -> None:
        flag: list[bool] = []
        asyncio.get_running_loop().call_soon(flag.append, True)
        await wait_until_async(lambda: bool(flag), timeout=10, what="the callback")
        with pytest.raises(TimeoutError, match=r"^nothing: not within 0\.05 s$"):
            await wait_until_async(lambda: False, timeout=0.05, what="nothing")

    asyncio.run(main())
