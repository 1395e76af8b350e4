"""The kernel's relay for the monitor's broker connection (``kernel.relay``) and the order in which
``%cc_dataset`` streams a sealed file (its first chunk, then the rest once the relay ended)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from cc_kernel.errors import ConfigError
from cc_kernel.kernel import upload
from cc_kernel.kernel.config import KernelSettings
from cc_kernel.kernel.relay import Relays
from cc_kernel.protocol import messages as m


class Enclave:
    def __init__(self) -> None:
        self.got: list[m.Message] = []
        self.changed = asyncio.Event()

    async def send(self, msg: m.Message) -> None:
        self.got.append(msg)
        self.changed.set()

    async def until(self, predicate: object) -> None:
        async with asyncio.timeout(30):
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


def test_a_relay_the_kernel_did_not_expect_is_refused() -> None:
    async def main() -> None:
        enclave = Enclave()
        relays = Relays(enclave.send)
        relays.handle(m.RelayOpen(req_id=5, address="127.0.0.1:9"))
        await enclave.until(lambda: enclave.got)
        (end,) = enclave.got
        assert isinstance(end, m.RelayEnd) and end.req_id == 5 and "no relay is expected" in end.reason

    asyncio.run(main())


def test_bytes_are_carried_both_ways_unchanged_and_the_end_releases_the_gate() -> None:
    async def main() -> None:
        handled = asyncio.Event()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data.upper())
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            handled.set()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        enclave = Enclave()
        relays = Relays(enclave.send)
        finished = relays.expect(3)
        relays.handle(m.RelayOpen(req_id=3, address=f"127.0.0.1:{port}"))
        relays.handle(m.RelayData(req_id=3, data=b"tls bytes"))  # before the connection is up: kept in order
        await enclave.until(lambda: b"".join(x.data for x in enclave.got if isinstance(x, m.RelayData))
                            == b"TLS BYTES")
        assert not finished.is_set()
        relays.handle(m.RelayEnd(req_id=3))
        assert finished.is_set()
        async with asyncio.timeout(30):
            await handled.wait()  # the kernel closed its connection to the broker
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()

    asyncio.run(main())


def test_an_unreachable_broker_ends_the_relay_with_the_reason() -> None:
    async def main() -> None:
        enclave = Enclave()
        relays = Relays(enclave.send)
        relays.expect(4)
        relays.handle(m.RelayOpen(req_id=4, address="127.0.0.1:9"))
        await enclave.until(lambda: enclave.got)
        (end,) = enclave.got
        assert isinstance(end, m.RelayEnd) and "cannot relay to the broker at 127.0.0.1:9" in end.reason

    asyncio.run(main())


def test_a_sealed_file_waits_after_its_first_chunk(tmp_path: Path) -> None:
    path = tmp_path / "d.ccdata"
    path.write_bytes(b"x" * (upload.UPLOAD_CHUNK * 2 + 10))

    async def main() -> None:
        sent: list[m.Message] = []
        gate, at_gate = asyncio.Event(), asyncio.Event()
        chunks_at_gate: list[int] = []

        class Link:
            queue: asyncio.Queue[m.Message | BaseException] = asyncio.Queue()

            def new_request(self) -> tuple[int, asyncio.Queue[m.Message | BaseException]]:
                return 1, self.queue

            def finish_request(self, req_id: int) -> None:
                pass

            async def send(self, msg: m.Message) -> None:
                sent.append(msg)
                if isinstance(msg, m.UploadEnd):
                    self.queue.put_nowait(m.UploadReply(req_id=1, status="ok", message="bound"))

        async def wait_gate() -> None:
            chunks_at_gate.append(sum(isinstance(x, m.UploadChunk) for x in sent))
            at_gate.set()
            await gate.wait()

        link = Link()
        file, size = upload.open_regular_file(path)
        task = asyncio.ensure_future(upload.send_file(
            link, file, size=size, request=upload.parse_upload_line(f"%cc_dataset {path} d", sealed=True),
            code="%cc_dataset d.ccdata d", execution_count=1, cell_id=None, allocated=link.new_request(),
            after_first=wait_gate))
        async with asyncio.timeout(30):
            await at_gate.wait()
        assert chunks_at_gate == [1] and sum(isinstance(x, m.UploadChunk) for x in sent) == 1
        assert isinstance(sent[0], m.UploadStart) and sent[0].fmt == "ccdata"
        gate.set()
        outcome = await task
        assert outcome.reply.status == "ok" and outcome.sent == size
        assert sum(isinstance(x, m.UploadChunk) for x in sent) == 3

    asyncio.run(main())


async def _listener() -> tuple[asyncio.Server, int, list[bytes]]:
    """A TCP server on a free port recording what each connection sent."""
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1024))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


@pytest.mark.parametrize("address", ["unix:/var/run/docker.sock", "vsock://1:5000", "127.0.0.1:0", "nonsense",
                                     ":4712", "tcp://:4712"])
def test_a_sealed_file_cannot_point_the_relay_at_a_local_socket_or_a_non_tcp_address(address: str) -> None:
    async def main() -> None:
        enclave = Enclave()
        relays = Relays(enclave.send)
        relays.expect(4)
        relays.handle(m.RelayOpen(req_id=4, address=address))
        relays.handle(m.RelayData(req_id=4, data=b"client hello"))
        await enclave.until(lambda: enclave.got)
        (end,) = enclave.got
        assert isinstance(end, m.RelayEnd)
        assert end.reason.startswith(f"the kernel does not relay there: the sealed file names {address!r} as its "
                                     "broker; ")
        assert "a broker is reached at HOST:PORT over TCP" in end.reason or "cannot parse address" in end.reason

    asyncio.run(main())


def test_with_a_list_of_brokers_the_relay_connects_to_those_only() -> None:
    async def main() -> None:
        server, port, received = await _listener()
        enclave = Enclave()
        relays = Relays(enclave.send, brokers=[f"tcp://LOCALHOST:{port}", "broker.example:4712"])
        relays.expect(1)
        relays.handle(m.RelayOpen(req_id=1, address=f"127.0.0.1:{port}"))  # the same port, another host name
        relays.handle(m.RelayData(req_id=1, data=b"client hello"))
        await enclave.until(lambda: enclave.got)
        (end,) = enclave.got
        assert isinstance(end, m.RelayEnd) and end.reason == (
            f"the kernel does not relay there: the sealed file names the broker at '127.0.0.1:{port}', which is not "
            f"one of the brokers this kernel may reach (broker.example:4712, tcp://LOCALHOST:{port}: setting "
            "brokers, CC_KERNEL_BROKERS)")
        assert received == []  # no connection was made

        relays.expect(2)
        relays.handle(m.RelayOpen(req_id=2, address=f"localhost:{port}"))  # a listed broker (host case ignored)
        relays.handle(m.RelayData(req_id=2, data=b"client hello"))
        await enclave.until(lambda: len(enclave.got) == 2)
        assert received == [b"client hello"]
        relays.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("entry", ["unix:/tmp/broker.sock", "broker.example", "broker.example:99999"])
def test_a_list_of_brokers_with_a_bad_entry_is_refused_at_start(entry: str) -> None:
    async def send(msg: m.Message) -> None:
        raise AssertionError(msg)

    with pytest.raises(ConfigError) as caught:
        Relays(send, brokers=["127.0.0.1:4712", entry])
    assert repr(entry) in str(caught.value)


def test_the_kernel_takes_its_brokers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_KERNEL_BROKERS", " hospital.example:4712 ,, 10.0.0.5:4712 ")
    assert KernelSettings().brokers == ["hospital.example:4712", "10.0.0.5:4712"]
    monkeypatch.delenv("CC_KERNEL_BROKERS")
    assert KernelSettings().brokers == []
