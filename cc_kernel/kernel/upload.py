"""Kernel side: ``%cc_upload LOCAL_PATH [NAME]`` reads a local file on the trusted side and streams it into the
enclave over the attested channel.

Invariants:

* only regular files: the path is opened with ``O_NONBLOCK`` (so opening a FIFO cannot wait for a writer) and
  then checked with ``fstat`` on the open descriptor (no race with a rename); a FIFO, a character or block
  device (``/dev/zero``), a socket or a directory is refused before a byte is read;
* the event loop never waits on the file: opening and every read run in a worker thread
  (``asyncio.to_thread``);
* exactly the size announced in ``UploadStart`` (the ``fstat`` size) is sent, even if the file grows while it
  is read; a file that shrinks fails the upload (``UploadError``);
* the enclave's verdict is watched while sending: an early ``UploadReply`` (e.g. refused at the start: too large,
  bad name) stops the stream at once;
* cancelling the sending task (the kernel does so on an interrupt) stops the stream after at most the read in
  progress, and tells the enclave the upload ended incomplete, so it discards what it buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from cc_kernel.errors import CCKernelError, EnclaveError, UploadError
from cc_kernel.protocol import messages as m

#: Bytes per UploadChunk message (well below the frame limit).
UPLOAD_CHUNK = 1024 * 1024
USAGE = "usage: %cc_upload LOCAL_PATH [NAME]"
DATASET_USAGE = "usage: %cc_dataset FILE.ccdata [NAME]"
TEXT_SUFFIXES = frozenset({".txt", ".csv", ".json", ".md", ".tsv"})
#: The digest an abandoned upload ends with: no content hashes to it in practice, so the enclave (which
#: compares it with the SHA-256 of what arrived) discards the upload even if every byte had been sent.
ABANDONED = bytes(32)

Format = Literal["bytes", "text", "npy", "ccdata"]


class UploadLink(Protocol):
    """What an upload needs of the enclave link (``kernel.link.EnclaveLink`` provides it)."""

    def new_request(self) -> tuple[int, asyncio.Queue[m.Message | BaseException]]: ...

    def finish_request(self, req_id: int) -> None: ...

    async def send(self, msg: m.Message) -> None: ...


@dataclass(frozen=True)
class UploadRequest:
    """A parsed ``%cc_upload`` line: the local path, the name to bind in the enclave and the format."""

    path: Path
    name: str
    fmt: Format


@dataclass(frozen=True)
class UploadOutcome:
    """The enclave's verdict (``reply``), how many bytes were sent and the SHA-256 of exactly those bytes."""

    reply: m.UploadReply
    sent: int
    sha256: bytes


def parse_upload_line(line: str, *, sealed: bool = False) -> UploadRequest:
    """Parse ``%cc_upload LOCAL_PATH [NAME]`` (``sealed``: ``%cc_dataset FILE.ccdata [NAME]``, format
    ``ccdata``); NAME defaults to an identifier made from the file name.

    Raises:
        UploadError: (``ename`` ``UsageError``) unbalanced quotes or the wrong number of arguments.
    """
    try:
        args = shlex.split(line)[1:]
    except ValueError as exc:
        raise UploadError(str(exc), ename="UsageError") from None
    if not 1 <= len(args) <= 2:
        raise UploadError(DATASET_USAGE if sealed else USAGE, ename="UsageError")
    path = Path(args[0]).expanduser()
    name = args[1] if len(args) == 2 else identifier_for(path)
    fmt: Format = "npy" if path.suffix == ".npy" else ("text" if path.suffix in TEXT_SUFFIXES else "bytes")
    return UploadRequest(path=path, name=name, fmt="ccdata" if sealed else fmt)


def identifier_for(path: Path) -> str:
    """A Python identifier from a file name: ``my-data.csv`` -> ``my_data``."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem) or "data"
    return stem if stem[0].isalpha() or stem[0] == "_" else f"_{stem}"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular_file(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading without blocking, check on the descriptor that it is a regular file, and return
    the file and its size. Blocking I/O: call it through ``asyncio.to_thread``.

    Raises:
        UploadError: cannot be opened (``ename`` ``FileNotFoundError`` or ``PermissionError`` ...), or is not a
            regular file (``ename`` ``NotARegularFile``).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UploadError(f"cannot read {path}: {exc.strerror}", ename=type(exc).__name__) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UploadError(
                f"{path} is {_kind(info.st_mode)}, not a regular file: %cc_upload reads regular files only "
                "(a FIFO, a device such as /dev/zero or a socket may never end or block the kernel)",
                ename="NotARegularFile",
            )
        file = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    return file, info.st_size


def _early_reply(queue: asyncio.Queue[m.Message | BaseException]) -> m.UploadReply | None:
    """The enclave's verdict if it already arrived (it only answers early to refuse); raises what the link put."""
    if queue.empty():
        return None
    item = queue.get_nowait()
    if isinstance(item, BaseException):
        raise item
    if isinstance(item, m.UploadReply):
        return item
    raise EnclaveError(f"the enclave answered an upload with {type(item).__name__}")


async def send_file(
    link: UploadLink,
    file: BinaryIO,
    *,
    size: int,
    request: UploadRequest,
    code: str,
    execution_count: int,
    cell_id: str | None,
    progress: Callable[[int], None] = lambda sent: None,
    allocated: tuple[int, asyncio.Queue[m.Message | BaseException]] | None = None,
    after_first: Callable[[], Awaitable[object]] | None = None,
) -> UploadOutcome:
    """Stream ``size`` bytes of ``file`` into the enclave as upload ``request`` and return the enclave's verdict.

    ``progress(sent)`` is called after every chunk. The file is closed when this returns or raises.
    ``allocated``: the request id and reply queue (``link.new_request()``) when the caller allocated them.
    ``after_first``: awaited after the first chunk was sent, before the rest (a sealed dataset's key exchange).

    Raises:
        UploadError: the file shrank while it was read (the enclave is told; it discards the partial upload).
        EnclaveError: the enclave connection failed.
        MessageTooLarge: a chunk did not fit one frame (cannot happen with ``UPLOAD_CHUNK``).
        asyncio.CancelledError: cancelled (an interrupt): sending stopped, the enclave was told.
    """
    req_id, queue = allocated if allocated is not None else link.new_request()
    digest = hashlib.sha256()
    sent = 0
    ended = False
    reading: asyncio.Future[bytes] | None = None
    try:
        # 1. announce: the enclave may refuse at once (too large, bad name or format)
        await link.send(m.UploadStart(req_id=req_id, name=request.name, size=size, fmt=request.fmt, code=code,
                                      execution_count=execution_count, cell_id=cell_id))
        # 2. stream exactly `size` bytes, stopping as soon as the enclave has answered. The next chunk is read
        # and hashed in a worker thread while this one is sent (hashlib releases the GIL), one read at a time,
        # so the digest sees the chunks in order.
        def read_hashed(count: int) -> bytes:
            chunk = file.read(count)
            digest.update(chunk)
            return chunk

        if size:
            reading = asyncio.ensure_future(asyncio.to_thread(read_hashed, min(UPLOAD_CHUNK, size)))
        while sent < size:
            early = _early_reply(queue)
            if early is not None:
                return UploadOutcome(early, sent, digest.digest())
            assert reading is not None
            chunk = await asyncio.shield(reading)
            reading = None
            if chunk and sent + len(chunk) < size:
                reading = asyncio.ensure_future(
                    asyncio.to_thread(read_hashed, min(UPLOAD_CHUNK, size - sent - len(chunk))))
            if not chunk:
                ended = True
                await link.send(m.UploadEnd(req_id=req_id, sha256=ABANDONED))  # the enclave discards it
                raise UploadError(
                    f"{request.path} shrank while it was read ({sent} of the {size} bytes it had when the upload "
                    "started); nothing was bound in the enclave"
                )
            await link.send(m.UploadChunk(req_id=req_id, data=chunk))
            if after_first is not None and sent == 0 and len(chunk) < size:
                await after_first()
            sent += len(chunk)
            progress(sent)
        # 3. the end and the verdict
        early = _early_reply(queue)
        if early is not None:
            return UploadOutcome(early, sent, digest.digest())
        ended = True
        await link.send(m.UploadEnd(req_id=req_id, sha256=digest.digest()))
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, m.UploadReply):
            raise EnclaveError(f"the enclave answered an upload with {type(item).__name__}")
        return UploadOutcome(item, sent, digest.digest())
    except asyncio.CancelledError:
        if reading is not None and not reading.done():
            await asyncio.wait({reading})  # let the read in the worker thread end before the file is closed
        if not ended:
            with contextlib.suppress(CCKernelError):  # the enclave discards what it buffered, binds nothing
                await link.send(m.UploadEnd(req_id=req_id, sha256=ABANDONED))
        raise
    finally:
        if reading is not None and not reading.done():  # a read ahead still runs: let it end before the close
            await asyncio.wait({reading})
        link.finish_request(req_id)
        file.close()
