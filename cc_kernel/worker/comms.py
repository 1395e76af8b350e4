"""Worker (comms): the ``comm`` package's ``create_comm``/``get_comm_manager``, backed by an output router.

Layer: runs inside the TEE, used by :mod:`cc_kernel.worker.shell`; never imports ipykernel. Invariants: comm
messages published by user code (ipywidgets 8, custom comms) go through the same ordered router as all other
output; incoming ``comm_open``/``comm_msg``/``comm_close`` are dispatched by :meth:`EnclaveCommManager.handle`
on the caller's thread (the shell runs them as user code). Installing replaces the two module-level hooks of
the ``comm`` package, uninstalling puts the previous ones back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import comm
from comm.base_comm import BaseComm, BuffersType, CommManager, MaybeDict

from cc_kernel.worker.streams import OutputRouter

__all__ = ["EnclaveComm", "EnclaveCommManager"]

_log = logging.getLogger(__name__)

_INCOMING = ("comm_open", "comm_msg", "comm_close")


def _as_bytes(buffer: Any) -> bytes:
    return buffer if isinstance(buffer, bytes) else bytes(memoryview(buffer))


class EnclaveComm(BaseComm):
    """A comm whose messages go to the enclave's output router (``comm_open``/``comm_msg``/``comm_close``)."""

    def __init__(self, *args: Any, comm_manager: EnclaveCommManager, **kwargs: Any) -> None:
        self._cc_manager = comm_manager  # set before BaseComm.__init__, which may publish comm_open
        super().__init__(*args, **kwargs)

    def publish_msg(
        self,
        msg_type: str,
        data: MaybeDict = None,
        metadata: MaybeDict = None,
        buffers: BuffersType = None,
        **keys: Any,
    ) -> None:
        content: dict[str, Any] = {"comm_id": self.comm_id, "data": {} if data is None else data, **keys}
        content["metadata"] = {} if metadata is None else metadata
        content["buffers"] = [_as_bytes(b) for b in buffers or ()]
        self._cc_manager.router.emit(msg_type, content)


class EnclaveCommManager(CommManager):
    """The comm manager of the enclave: owns the comms, their targets, and the ``comm`` package hooks."""

    def __init__(self, router: OutputRouter) -> None:
        super().__init__()
        self.router = router
        self._saved: tuple[Callable[..., BaseComm], Callable[[], CommManager]] | None = None

    def create_comm(self, *args: Any, **kwargs: Any) -> EnclaveComm:
        """The ``comm.create_comm`` replacement."""
        return EnclaveComm(*args, comm_manager=self, **kwargs)

    def install(self) -> None:
        """Point ``comm.create_comm`` and ``comm.get_comm_manager`` at this manager."""
        if self._saved is None:
            self._saved = (comm.create_comm, comm.get_comm_manager)
        comm.create_comm = self.create_comm
        comm.get_comm_manager = self._get_self

    def uninstall(self) -> None:
        """Restore the hooks found by :meth:`install` and forget every comm (without closing messages)."""
        if self._saved is not None:
            comm.create_comm, comm.get_comm_manager = self._saved
            self._saved = None
        for c in list(self.comms.values()):
            c._closed = True  # no comm_close may be published after the router is gone
        self.comms.clear()

    def _get_self(self) -> CommManager:
        return self

    def handle(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> None:
        """Dispatch an incoming comm message from the frontend to its comm or target.

        Raises ValueError for a ``msg_type`` that is not a comm message. Errors raised by handlers are
        logged by the ``comm`` package (they reach the user through stderr), as in ipykernel.
        """
        if msg_type not in _INCOMING:
            raise ValueError(f"not a comm message type: {msg_type!r}")
        msg = {
            "header": {"msg_type": msg_type},
            "parent_header": {},
            "content": content,
            "metadata": {} if metadata is None else metadata,
            "buffers": list(buffers or ()),
        }
        handler = getattr(self, msg_type)
        handler(None, None, msg)

    def info(self, target_name: str | None = None) -> dict[str, Any]:
        """Jupyter ``comm_info_reply`` content: open comms, optionally filtered by target name."""
        comms = {
            comm_id: {"target_name": c.target_name}
            for comm_id, c in self.comms.items()
            if target_name is None or c.target_name == target_name
        }
        return {"status": "ok", "comms": comms}
