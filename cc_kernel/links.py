"""Process set-up (stdlib only): the private socketpairs between our processes, sized for the data path.

Layer: used where one of our processes starts another on a socketpair (the kernel its local enclave, the
monitor its worker); imports only the standard library, so the start-up paths that avoid every other import
(``kernel.early``, ``enclave.workerproc``) may use it. Invariant: it changes how many bytes a send may leave
in flight, never what is sent; if the system refuses the size, the pair keeps its default.

Why: a Unix stream socket's default send buffer (``net.core.wmem_default``, 208 KiB on Linux) is smaller than
one upload chunk (1 MiB), so every chunk was sent in pieces, each a wake-up of the reader and, in the asyncio
sender, a copy into its own buffer first. With 4 MiB, the 1 GiB ``%cc_dataset`` went from 214 to about 290
MiB/s (docs/architecture.md, "Decisions").
"""

from __future__ import annotations

import contextlib
import socket

#: The send buffer asked for on each end. Linux caps it at ``net.core.wmem_max`` (212,992 bytes unless the system
#: raised it, as many servers and this project's test machines do): below a chunk, the gain is lost, nothing else.
SEND_BUFFER = 4 * 1024 * 1024


def link_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of Unix stream sockets with send buffers of ``SEND_BUFFER`` bytes where allowed."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (ours, theirs):
        with contextlib.suppress(OSError):  # a smaller buffer costs speed only
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return ours, theirs
