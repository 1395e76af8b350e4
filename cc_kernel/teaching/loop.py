"""Teaching: the teaching lab's background event loop — relays, impostor servers and kernel clients run on it.

Layer: I/O (a daemon thread running an asyncio loop), part of ``cc_kernel.teaching``. Invariants: the caller's
thread never runs the lab's coroutines itself, so the lab works whether or not that thread runs an event loop
(ipykernel's does); ``run`` waits at most its timeout and cancels what it gave up on; ``close`` cancels every
task left and stops the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

_T = TypeVar("_T")


class LoopThread:
    """An asyncio loop on a daemon thread: relays and impostor servers live here, ``run`` waits for a result.

    Works whether or not the caller's thread runs an event loop of its own (ipykernel does, the enclave shell
    does not)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="cc-teaching-io", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(_cancel_all(), 5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()

