"""The socketpairs between our processes (cc_kernel.links) take a whole upload chunk in one send."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from cc_kernel.links import SEND_BUFFER, link_socketpair

CHUNK = 1024 * 1024  # kernel.upload's and the monitor's pieces


def accepted_at_once(ours: socket.socket) -> int:
    ours.setblocking(False)
    return ours.send(bytes(CHUNK + 4096))  # a chunk with its frame and message headers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket buffer limits")
def test_a_whole_chunk_leaves_in_one_send() -> None:
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    if wmem_max < 2 * CHUNK:
        pytest.skip(f"net.core.wmem_max is {wmem_max}: this system caps send buffers below a chunk's")
    ours, theirs = link_socketpair()
    with ours, theirs:
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= min(SEND_BUFFER, wmem_max)
        assert accepted_at_once(ours) == CHUNK + 4096
    plain, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with plain, other:  # the default buffer takes a part only: the reason for the module
        assert accepted_at_once(plain) < CHUNK
