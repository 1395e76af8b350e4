"""``%cc_upload`` on the kernel side (``cc_kernel.kernel.upload``), against a scripted enclave link.

Regular files only (a FIFO, /dev/zero, a directory are refused without blocking), reads off the event loop,
exactly the announced size even if the file grows, an early refusal stops the stream, a shrinking file fails,
cancelling stops the stream and tells the enclave to discard the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cc_kernel.errors import EnclaveError, UploadError
from cc_kernel.kernel import upload
from cc_kernel.protocol import messages as m

KIB = 1024


class FakeLink:
    """Records what is sent; ``on_send`` scripts the enclave (it may put replies on the request's queue)."""

    def __init__(self, on_send: Callable[[FakeLink, m.Message], object] | None = None) -> None:
        self.sent: list[m.Message] = []
        self.queues: dict[int, asyncio.Queue[m.Message | BaseException]] = {}
        self.finished: list[int] = []
        self.on_send = on_send or (lambda link, msg: None)
        self.next_id = 7

    def new_request(self) -> tuple[int, asyncio.Queue[m.Message | BaseException]]:
        req_id, self.next_id = self.next_id, self.next_id + 1
        self.queues[req_id] = asyncio.Queue()
        return req_id, self.queues[req_id]

    def finish_request(self, req_id: int) -> None:
        self.finished.append(req_id)

    async def send(self, msg: m.Message) -> None:
        self.sent.append(msg)
        result = self.on_send(self, msg)
        if asyncio.iscoroutine(result):
            await result

    def reply(self, req_id: int, status: str = "ok", message: str = "bound") -> None:
        self.queues[req_id].put_nowait(m.UploadReply(req_id=req_id, status=status, message=message))

    def chunks(self) -> list[bytes]:
        return [msg.data for msg in self.sent if isinstance(msg, m.UploadChunk)]


def enclave_accepting(link: FakeLink, msg: m.Message) -> None:
    if isinstance(msg, m.UploadEnd):
        link.reply(msg.req_id)


def request_for(path: Path, name: str = "data") -> upload.UploadRequest:
    return upload.UploadRequest(path=path, name=name, fmt="bytes")


async def send(link: FakeLink, path: Path, **kwargs: object) -> upload.UploadOutcome:
    file, size = upload.open_regular_file(path)
    return await upload.send_file(link, file, size=size, request=request_for(path), code="%cc_upload x",
                                  execution_count=3, cell_id=None, **kwargs)  # type: ignore[arg-type]


# --- what may be uploaded -----------------------------------------------------------------------------------------


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UploadError, match=r"is a FIFO \(named pipe\), not a regular file") as info:
        upload.open_regular_file(fifo)  # returns at once: O_NONBLOCK, then fstat
    assert info.value.ename == "NotARegularFile"
    assert "%cc_upload reads regular files only" in str(info.value)


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_devices_are_refused(path: str, kind: str) -> None:
    with pytest.raises(UploadError, match=f"{path} is {kind}, not a regular file"):
        upload.open_regular_file(Path(path))


def test_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="is a directory, not a regular file"):
        upload.open_regular_file(tmp_path)
    with pytest.raises(UploadError, match=r"cannot read .*nope\.bin: No such file or directory") as info:
        upload.open_regular_file(tmp_path / "nope.bin")
    assert info.value.ename == "FileNotFoundError"


@pytest.mark.parametrize(
    ("line", "message"),
    [("%cc_upload", upload.USAGE), ("%cc_upload a b c", upload.USAGE), ("%cc_upload 'unbalanced", "quotation")],
)
def test_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UploadError, match=re.escape(message)) as info:
        upload.parse_upload_line(line)
    assert info.value.ename == "UsageError"


def test_the_line_names_path_name_and_format() -> None:
    assert upload.parse_upload_line("%cc_upload ~/my-data.csv") == upload.UploadRequest(
        Path("~/my-data.csv").expanduser(), "my_data", "text")
    assert upload.parse_upload_line("%cc_upload '/x/2 grid.npy' grid").fmt == "npy"
    assert upload.parse_upload_line("%cc_upload /x/2.bin").name == "_2"


# --- streaming -----------------------------------------------------------------------------------------------------


def test_a_file_is_sent_in_chunks_read_off_the_event_loop(tmp_path: Path) -> None:
    data = os.urandom(2 * upload.UPLOAD_CHUNK + 5)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    readers: set[int] = set()

    async def main() -> upload.UploadOutcome:
        link = FakeLink(enclave_accepting)
        file, size = upload.open_regular_file(path)
        real_read = file.read

        def read(n: int) -> bytes:
            readers.add(threading.get_ident())
            return real_read(n)

        file.read = read  # type: ignore[method-assign]
        loop_thread = threading.get_ident()
        outcome = await upload.send_file(link, file, size=size, request=request_for(path), code="c",
                                         execution_count=1, cell_id="cell-1")
        assert loop_thread not in readers  # every read ran in a worker thread
        assert b"".join(link.chunks()) == data and len(link.chunks()) == 3
        start = link.sent[0]
        assert isinstance(start, m.UploadStart) and (start.size, start.cell_id) == (len(data), "cell-1")
        assert isinstance(link.sent[-1], m.UploadEnd) and link.sent[-1].sha256 == hashlib.sha256(data).digest()
        assert link.finished == [start.req_id] and file.closed
        return outcome

    outcome = asyncio.run(main())
    assert (outcome.reply.status, outcome.sent, outcome.sha256) == ("ok", len(data), hashlib.sha256(data).digest())
    assert readers


def test_an_early_refusal_stops_the_stream_at_once(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(8 * upload.UPLOAD_CHUNK))

    def refuse_at_start(link: FakeLink, msg: m.Message) -> None:
        if isinstance(msg, m.UploadStart):
            link.reply(msg.req_id, "error", "refused upload 'data': size at most 4 bytes")

    link = FakeLink(refuse_at_start)
    outcome = asyncio.run(send(link, path))
    assert outcome.reply.status == "error" and "refused upload" in outcome.reply.message
    assert link.chunks() == [] and outcome.sent == 0
    assert not any(isinstance(msg, m.UploadEnd) for msg in link.sent)


def test_a_refusal_mid_stream_stops_before_the_next_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(8 * upload.UPLOAD_CHUNK))

    def refuse_after_two_chunks(link: FakeLink, msg: m.Message) -> None:
        if isinstance(msg, m.UploadChunk) and len(link.chunks()) == 2:
            link.reply(msg.req_id, "error", "out of memory")

    link = FakeLink(refuse_after_two_chunks)
    outcome = asyncio.run(send(link, path))
    assert (outcome.reply.message, outcome.sent, len(link.chunks())) == ("out of memory", 2 * upload.UPLOAD_CHUNK, 2)


def test_a_growing_file_is_sent_up_to_the_size_announced(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"a" * (upload.UPLOAD_CHUNK + 10))

    def grow(link: FakeLink, msg: m.Message) -> None:
        if isinstance(msg, m.UploadStart | m.UploadChunk):
            with path.open("ab") as f:
                f.write(b"b" * upload.UPLOAD_CHUNK)  # the file keeps growing while it is read
        enclave_accepting(link, msg)

    link = FakeLink(grow)
    outcome = asyncio.run(send(link, path))
    sent = b"".join(link.chunks())
    assert sent == b"a" * (upload.UPLOAD_CHUNK + 10) and outcome.sent == len(sent)
    start = link.sent[0]
    assert isinstance(start, m.UploadStart) and start.size == len(sent)
    assert path.stat().st_size > len(sent)


def test_a_shrinking_file_fails_and_the_enclave_discards_it(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * (3 * upload.UPLOAD_CHUNK))

    def shrink(link: FakeLink, msg: m.Message) -> None:
        if isinstance(msg, m.UploadChunk):
            os.truncate(path, upload.UPLOAD_CHUNK)

    link = FakeLink(shrink)
    with pytest.raises(UploadError, match=r"data.bin shrank while it was read \(1048576 of the 3145728 bytes"):
        asyncio.run(send(link, path))
    end = link.sent[-1]
    assert isinstance(end, m.UploadEnd) and end.sha256 == upload.ABANDONED


def test_cancelling_stops_the_stream_and_tells_the_enclave(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(16 * upload.UPLOAD_CHUNK))

    async def main() -> FakeLink:
        second_chunk = asyncio.Event()
        release = asyncio.Event()

        async def slow_enclave(link: FakeLink, msg: m.Message) -> None:
            if isinstance(msg, m.UploadChunk) and len(link.chunks()) == 2:
                second_chunk.set()
                await release.wait()  # the enclave reads slowly: sending waits here

        link = FakeLink(slow_enclave)
        task = asyncio.ensure_future(send(link, path))
        await second_chunk.wait()
        task.cancel()  # what the kernel does on an interrupt
        with pytest.raises(asyncio.CancelledError):
            await task
        return link

    link = asyncio.run(main())
    assert len(link.chunks()) == 2  # nothing more was sent after the interrupt
    end = link.sent[-1]
    assert isinstance(end, m.UploadEnd) and end.sha256 == upload.ABANDONED
    assert link.finished == [7]


def test_the_link_failing_is_an_enclave_error(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")

    def broken(link: FakeLink, msg: m.Message) -> None:
        if isinstance(msg, m.UploadEnd):
            link.queues[msg.req_id].put_nowait(EnclaveError("the enclave stopped"))

    with pytest.raises(EnclaveError, match="the enclave stopped"):
        asyncio.run(send(FakeLink(broken), path))
