"""Teaching: the teaching lab's enclaves — what faults it can switch on, how it starts a real enclave server, and the
impostor that replays recorded evidence.

Layer: I/O (processes, sockets), part of ``cc_kernel.teaching``. Invariants: an enclave server is a real
``cc-kernel enclave serve`` process in a session of its own, stopped by SIGTERM from the lab (``labkit``'s
stopper) or, on Linux, by the death of the lab's process; its output is read into ``EnclaveServer.lines``,
never into the caller's stdout. The impostor has its own TLS key and answers every challenge with one recorded,
genuine evidence envelope (evidence is not secret): the replay a network or host can actually mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cc_kernel import __version__
from cc_kernel.channel.transport import FramedChannel, accept_server
from cc_kernel.crypto.keys import make_tls_identity, new_tls_key
from cc_kernel.enclave.evidence import FAULTS as SIMULATED_FAULTS
from cc_kernel.errors import CCKernelError
from cc_kernel.labkit.processes import serving_address
from cc_kernel.protocol.connection import Connection, Role
from cc_kernel.protocol.messages import PROTOCOL_VERSION, AttestRequest, AttestResponse, Hello, negotiate

__all__ = ["ENCLAVE_FAULTS", "FAULTS", "MODIFIED_FILE", "MODIFIED_LINE", "SERVE_SNIPPET", "EnclaveServer",
           "ReplayServer"]

#: What ``TeachingLab.start_enclave(fault=...)`` can switch on (one at a time): the simulated enclave's own
#: faults, and a modified copy of the enclave code.
FAULTS: Final = (*SIMULATED_FAULTS, "modified-code")
#: The faults the lab asks the enclave server for (``cc-kernel enclave serve --fault NAME``); the lab mounts
#: ``replay`` itself, with an impostor server (``ReplayServer``).
ENCLAVE_FAULTS: Final = tuple(fault for fault in SIMULATED_FAULTS if fault != "replay")
#: The line appended to an enclave file by the "modified-code" fault.
MODIFIED_LINE: Final = (
    '\n_TEACHING_CHANGE = "added after the measurement was pinned"  # changes the bytes, not the behaviour\n'
)
#: The enclave file the "modified-code" fault changes (relative to the package root).
MODIFIED_FILE: Final = "enclave/shell.py"
#: A lab server (``cc-kernel enclave serve`` or ``cc-kernel broker serve``: the command follows ``-c``), started
#: with signals that stop it cleanly: SIGTERM (from the lab) and, on Linux, the death of the lab's process
#: (PR_SET_PDEATHSIG), so no server outlives the notebook that started it.
SERVE_SNIPPET: Final = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGTERM, signal.default_int_handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
if os.getppid() != int(os.environ["CC_TEACHING_PARENT"]):
    sys.exit(0)
from cc_kernel.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class EnclaveServer:
    """One server process of the lab: an enclave server, or the data owner's broker (``process`` None: the replay
    impostor, which runs on the lab's loop)."""

    fault: str
    address: str
    process: subprocess.Popen[bytes] | None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    package_root: Path | None = None
    #: Finds the address the server listens on in a line of its output (None: not in this line).
    address_of: Callable[[str], str | None] = serving_address

    def read_output(self, found: threading.Event) -> None:
        """Read the server's output into ``lines`` until it ends (on a thread of its own); set ``address`` and
        ``found`` at its "serving on" line (``found`` also when the output ends without one)."""
        proc = self.process
        assert proc is not None and proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self.lines.append(line)
                address = self.address_of(line)
                if address and not self.address:
                    self.address = address
                    found.set()
        except (OSError, ValueError):
            pass
        finally:
            found.set()


class ReplayServer:
    """An impostor: a TLS server with its own key that answers every challenge with one recorded, genuine
    evidence envelope (evidence is not secret — anyone may connect to an enclave and ask for it)."""

    def __init__(self, envelope: bytes) -> None:
        self.envelope = envelope
        self.challenges: list[AttestRequest] = []
        self.port = 0
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._identity = make_tls_identity(new_tls_key(), now=datetime.now(UTC))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        task = asyncio.get_running_loop().create_task(self._accept())
        self._tasks.add(task)

    async def _accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _peer = await loop.sock_accept(self._sock)
            task = loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        channel: FramedChannel | None = None
        try:
            # an impostor accepts anyone: it wants the victim's attempt, not to check who makes it
            channel = await accept_server(conn, self._identity, Connection(Role.ENCLAVE), clients=None)
            hello = await channel.receive()
            if not isinstance(hello, Hello):
                return
            version = negotiate([PROTOCOL_VERSION], hello.versions)
            await channel.send(Hello(role="enclave", versions=[version], software=f"cc-kernel {__version__}"))
            request = await channel.receive()
            if not isinstance(request, AttestRequest):
                return
            self.challenges.append(request)
            await channel.send(AttestResponse(envelope=self.envelope))
            with contextlib.suppress(CCKernelError):
                await channel.receive()  # the client's Fatal (it refuses us), or the end of the connection
        except CCKernelError:
            pass
        finally:
            if channel is not None:
                await channel.aclose()
            else:
                conn.close()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
