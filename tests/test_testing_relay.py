"""testing.enclaves.Relay and raw_tls_client dial only what they can: unix and TCP addresses (as ``Address`` or
text for ``parse_address``) or a connected socket; a vsock address is refused up front, not dialled as TCP."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from cc_kernel.channel.transport import Address
from cc_kernel.errors import ConfigError
from cc_kernel.testing.enclaves import Relay, raw_tls_client

VSOCK_REFUSED = "cannot dial vsock://16:5005: only unix and tcp addresses are supported, not vsock"


@pytest.mark.parametrize("target", ["vsock://16:5005", Address("vsock", cid=16, port=5005)], ids=["text", "address"])
def test_the_relay_refuses_a_vsock_target(target: Address | str) -> None:
    with pytest.raises(ValueError, match="^the relay " + VSOCK_REFUSED + "$"):
        Relay(target)


def test_raw_tls_client_refuses_a_vsock_target() -> None:
    with pytest.raises(ValueError, match="^raw_tls_client " + VSOCK_REFUSED + "$"):
        raw_tls_client("vsock://16:5005")


def test_the_relay_refuses_text_that_is_not_an_address() -> None:
    with pytest.raises(ConfigError, match="cannot parse address 'nowhere'"):
        Relay("nowhere")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # everything up to EOF, then back
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _through(relay: Relay, payload: bytes) -> bytes:
    async with relay:
        assert relay.address is not None and relay.address.kind == "tcp"
        reader, writer = await asyncio.open_connection(relay.address.host, relay.address.port)
        writer.write(payload)
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        await writer.wait_closed()
        return echoed


def test_the_relay_forwards_to_a_unix_address_given_as_text() -> None:
    async def main() -> tuple[bytes, Relay]:
        with tempfile.TemporaryDirectory(prefix="ccrelay") as tmp:
            path = Path(tmp) / "echo.sock"
            server = await asyncio.start_unix_server(_echo, path=str(path))
            async with server, asyncio.timeout(10):
                relay = Relay(f"unix:{path}")
                assert relay.target == Address("unix", path=str(path))
                return await _through(relay, b"to the enclave"), relay

    echoed, relay = asyncio.run(main())
    assert echoed == b"to the enclave"
    assert relay.data("c2s") == relay.data("s2c") == b"to the enclave"
    assert relay.connections == 1


def test_the_relay_forwards_to_a_tcp_address_given_as_text() -> None:
    async def main() -> tuple[bytes, Relay]:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, asyncio.timeout(10):
            relay = Relay(f"tcp://127.0.0.1:{port}")
            assert relay.target == Address("tcp", host="127.0.0.1", port=port)
            return await _through(relay, b"over tcp"), relay

    echoed, relay = asyncio.run(main())
    assert echoed == b"over tcp"
    assert relay.data("c2s") == relay.data("s2c") == b"over tcp"
