"""A monitor past attestation with its worker ready, wired to stand-ins for the kernel and the worker: the one
set-up of test_monitor.py's and test_dataset_monitor.py's harnesses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.audit.receipts import ReceiptSigner
from cc_kernel.enclave.evidence import SimulatedSource
from cc_kernel.enclave.monitor import Monitor, WorkerSpec
from cc_kernel.protocol import messages as m

SESSION = b"s" * 16


def attested_monitor(authority: SimulationAuthority, *, measurement: bytes, channel: Any,
                     to_worker: Callable[[m.Message], Awaitable[None]]) -> Monitor:
    """A ``Monitor`` (in the running loop) whose worker reported ready and whose receipts are signed for
    ``SESSION``; ``channel`` stands for the attested channel to the kernel (its ``send`` gets what the monitor
    sends the kernel) and ``to_worker`` gets what it hands the worker."""
    monitor = Monitor(source=SimulatedSource(authority=authority, measurement=measurement), worker=WorkerSpec())
    mon: Any = monitor
    mon._ready = asyncio.get_running_loop().create_future()
    mon._ready.set_result(m.WorkerReady(pid=1, protections={}))
    mon._shutdown_due = asyncio.Event()
    mon._worker_done = asyncio.Event()
    mon._channel = channel
    mon._signer = ReceiptSigner(mon._audit_key, SESSION)
    mon._to_worker = to_worker
    return monitor
