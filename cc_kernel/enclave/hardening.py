"""Monitor: hardening of the trusted monitor process, applied before any key exists.

Layer: runs inside the TEE, in the monitor only. ``prctl(PR_SET_DUMPABLE, 0)`` keeps same-uid processes
(the worker in local mode) from ptrace-attaching or reading ``/proc/PID/mem``; no core files; no ``.pyc``.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Final

_PR_SET_DUMPABLE: Final = 4


@dataclass(frozen=True)
class HardeningReport:
    """What :func:`harden_process` managed to apply (for the audit log)."""

    not_dumpable: bool
    core_dumps_disabled: bool
    bytecode_writing_disabled: bool


def harden_process() -> HardeningReport:
    """Best-effort hardening of the enclave process; returns what was applied, never raises.

    * ``prctl(PR_SET_DUMPABLE, 0)`` (Linux): no core dumps, no ptrace attach by same-uid processes, /proc/self
      files owned by root.
    * ``RLIMIT_CORE`` = 0 (soft and hard).
    * ``sys.dont_write_bytecode``: no ``.pyc`` written to the (host-visible) disk from now on.
    """
    not_dumpable = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            not_dumpable = libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
        except (OSError, AttributeError):
            not_dumpable = False
    core_disabled = False
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        core_disabled = resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
    except (ImportError, OSError, ValueError):
        core_disabled = False
    sys.dont_write_bytecode = True
    return HardeningReport(
        not_dumpable=not_dumpable,
        core_dumps_disabled=core_disabled,
        bytecode_writing_disabled=sys.dont_write_bytecode,
    )
