"""Worker (I/O): ordered, coalescing delivery of cell output to an injected sink; stdout/stderr and fd capture.

Layer: runs inside the TEE, below :mod:`cc_kernel.worker.shell`. Knows nothing of the transport: every output
message goes to an :class:`OutputSink` supplied by the caller. Invariants:

* **One order.** Every message (stream text, rich display, errors, comm traffic) passes through one
  :class:`OutputRouter`, which holds a single emission lock. Pending stream text is always emitted before any
  other message, so the sink sees output in the order the user produced it.
* **Bounded buffering.** Stream text is coalesced: it is emitted ~50 ms after the first unflushed write, as
  soon as 1 Mi characters are pending (the writer then blocks in ``emit``: backpressure), or at once on
  ``flush()``. No single ``stream`` message carries more than ``max_chunk`` characters. stdout and stderr keep
  their relative order (one ordered buffer of runs).
* **Interrupt-atomic emission.** On the main thread, a SIGINT that arrives while a message is being handed to
  the sink is deferred until ``emit`` returns (:meth:`OutputRouter.defer_interrupt`), so a frame is never cut
  in half by ``KeyboardInterrupt``.
* The sink may block, may be called from the flusher thread or an fd-reader thread, and must never write to
  file descriptors 1 or 2 while they are captured (that output would loop back into the stream).
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import io
import os
import select
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, Protocol, TextIO

from cc_kernel.protocol.connection import OUTPUT_TYPES

__all__ = [
    "OUTPUT_KINDS",
    "FdCapture",
    "OutputRouter",
    "OutputSink",
    "SinkStream",
    "StreamName",
]

#: The ``kind`` values an :class:`OutputSink` receives: the protocol's output message types, each mirroring the
#: Jupyter IOPub message of that name.
OUTPUT_KINDS: Final = OUTPUT_TYPES

StreamName = Literal["stdout", "stderr"]

#: Coalescing window: pending text is emitted this long after the first unflushed write.
DEFAULT_FLUSH_INTERVAL: Final = 0.050
#: Pending text at which a writer flushes synchronously (and blocks on the sink: backpressure). Each message
#: costs every hop (worker, monitor, kernel, frontend) a fixed overhead, so a cell that prints a lot should
#: travel in few, large messages (the stock kernel sends a 20 MiB burst as one): 1 Mi characters, far inside
#: the frame and output-window limits.
DEFAULT_MAX_BUFFER: Final = 1024 * 1024
#: Upper bound on the ``text`` of one ``stream`` message.
DEFAULT_MAX_CHUNK: Final = 1024 * 1024


class OutputSink(Protocol):
    """Where the enclave's output messages go (the enclave server frames them onto the attested channel).

    ``kind`` is one of :data:`OUTPUT_KINDS`; ``content`` is the Jupyter message content of that type:

    * ``stream``: ``name`` ("stdout"/"stderr"), ``text``
    * ``display_data`` / ``update_display_data``: ``data``, ``metadata``, ``transient``
    * ``execute_result``: ``execution_count``, ``data``, ``metadata``
    * ``error``: ``ename``, ``evalue``, ``traceback`` (list of ANSI-coloured lines)
    * ``clear_output``: ``wait``
    * ``comm_open`` / ``comm_msg`` / ``comm_close``: ``comm_id``, ``data`` (and for ``comm_open``
      ``target_name``, ``target_module``), plus two out-of-band keys: ``metadata`` (the Jupyter *message*
      metadata) and ``buffers`` (``list[bytes]``).

    ``emit`` may block (backpressure). Calls are serialised by the router, so the sink sees one total order,
    but they may come from any thread. The content dicts are handed over: the sink may keep them.
    """

    def emit(self, kind: str, content: dict[str, Any]) -> None: ...


class OutputRouter:
    """The single ordered path from the interpreter to an :class:`OutputSink`.

    Stream text is buffered and coalesced (see the module docstring); everything else is emitted at once,
    after any pending stream text. A daemon flusher thread emits buffered text when its deadline passes.
    Thread-safe. ``close()`` flushes and stops the flusher; later ``write()`` calls return False.
    """

    def __init__(
        self,
        sink: OutputSink,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        if flush_interval <= 0 or max_buffer <= 0 or max_chunk <= 0:
            raise ValueError("flush_interval, max_buffer and max_chunk must be positive")
        self._sink = sink
        self._interval = flush_interval
        self._max_buffer = max_buffer
        self._max_chunk = max_chunk
        # Lock order: _emit_lock, then _cond. Writers take only _cond unless the buffer is full.
        self._emit_lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._runs: list[tuple[StreamName, list[str]]] = []
        self._pending = 0
        self._deadline: float | None = None
        self._closed = False
        self._sync_hooks: list[Callable[[], None]] = []
        self._main_ident = threading.main_thread().ident
        self._critical_depth = 0
        self._deferred_interrupt = False
        self.flusher_error: BaseException | None = None
        self._flusher = threading.Thread(target=self._flusher_main, name="cc-enclave-flusher", daemon=True)
        self._flusher.start()

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, name: StreamName, text: str) -> bool:
        """Buffer ``text`` for stream ``name``; flush synchronously (blocking) if the buffer is full.

        Returns False (the text is not emitted) once the router is closed.
        """
        if not text:
            return True
        with self._cond:
            if self._closed:
                return False
            if self._runs and self._runs[-1][0] == name:
                self._runs[-1][1].append(text)
            else:
                self._runs.append((name, [text]))
            self._pending += len(text)
            if self._deadline is None:
                self._deadline = time.monotonic() + self._interval
                self._cond.notify_all()
            full = self._pending >= self._max_buffer
        if full:
            self.flush(sync=False)
        return True

    def flush(self, *, sync: bool = True) -> None:
        """Emit all pending stream text now; with ``sync``, first collect what was written to captured fds."""
        with self._critical():
            if sync:
                self._run_sync_hooks()
            with self._emit_lock:
                self._flush_locked()

    def emit(self, kind: str, content: dict[str, Any]) -> None:
        """Emit a non-stream message, after all stream text written before this call."""
        if kind not in OUTPUT_KINDS or kind == "stream":
            raise ValueError(f"not a rich output kind: {kind!r}")
        with self._critical():
            self._run_sync_hooks()
            with self._emit_lock:
                self._flush_locked()
                self._sink.emit(kind, content)

    def _flush_locked(self) -> None:
        with self._cond:
            runs, self._runs = self._runs, []
            self._pending = 0
            self._deadline = None
        for name, parts in runs:
            text = "".join(parts)
            for start in range(0, len(text), self._max_chunk):
                self._sink.emit("stream", {"name": name, "text": text[start : start + self._max_chunk]})

    # -- fd capture integration ----------------------------------------------------------------------------

    def add_sync_hook(self, hook: Callable[[], None]) -> None:
        """Register ``hook`` to run before main-thread flushes (:class:`FdCapture` drains its pipes there)."""
        self._sync_hooks.append(hook)

    def remove_sync_hook(self, hook: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._sync_hooks.remove(hook)

    def _run_sync_hooks(self) -> None:
        if threading.get_ident() != self._main_ident:
            return
        for hook in list(self._sync_hooks):
            hook()

    # -- interrupt deferral --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _critical(self) -> Iterator[None]:
        if threading.get_ident() != self._main_ident:
            yield
            return
        self._critical_depth += 1
        try:
            yield
        finally:
            self._critical_depth -= 1
            if self._critical_depth == 0 and self._deferred_interrupt:
                self._deferred_interrupt = False
                raise KeyboardInterrupt

    def defer_interrupt(self) -> bool:
        """Called from a SIGINT handler (main thread): defer the interrupt if an emission is in progress.

        Returns True if deferred; ``KeyboardInterrupt`` is then raised when the emission completes.
        """
        if self._critical_depth > 0:
            self._deferred_interrupt = True
            return True
        return False

    # -- flusher thread ------------------------------------------------------------------------------------

    def _flusher_main(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._deadline is None:
                        self._cond.wait()
                        continue
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return
            try:
                with self._emit_lock:
                    self._flush_locked()
            except BaseException as exc:
                # The sink is broken: stop timed flushing; main-thread flushes will meet the error themselves.
                self.flusher_error = exc
                return

    def close(self) -> None:
        """Flush what is pending and stop the flusher thread. Idempotent."""
        with self._cond:
            if self._closed:
                return
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._flusher.join(timeout=5)

    @property
    def closed(self) -> bool:
        return self._closed


class SinkStream(io.TextIOBase):
    """A text stream (``sys.stdout``/``sys.stderr`` replacement) writing into an :class:`OutputRouter`.

    ``fileno()`` returns the captured OS fd when fd capture is active (so subprocesses given
    ``stdout=sys.stdout`` are captured too) and raises ``io.UnsupportedOperation`` otherwise. After the router
    is closed, writes go to ``fallback`` (the stream this one replaced), so late writers never fail.
    """

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, router: OutputRouter, name: StreamName, *, fallback: TextIO | None = None) -> None:
        super().__init__()
        self._router = router
        self._name: StreamName = name
        self._fallback = fallback
        self.fd: int | None = None

    @property
    def name(self) -> str:
        return f"<{self._name}>"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self.fd is None:
            raise io.UnsupportedOperation("fileno: this stream is not backed by a file descriptor")
        return self.fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not self._router.write(self._name, s) and self._fallback is not None and not self._fallback.closed:
            self._fallback.write(s)  # the shell is closed: behave like the stream we replaced
        return len(s)

    def flush(self) -> None:
        if not self._router.closed:
            self._router.flush()


_fflush: Any = None


def _libc_fflush() -> None:
    """Flush C stdio buffers (``fflush(NULL)``) so C-level output reaches the fds now. Best effort."""
    global _fflush
    try:
        if _fflush is None:
            import ctypes

            _fflush = ctypes.CDLL(None).fflush
        _fflush(None)
    except (OSError, AttributeError):
        pass


class _FdPump:
    """Redirects one OS fd into a pipe and a reader thread that feeds the router."""

    def __init__(self, router: OutputRouter, fd: int, name: StreamName) -> None:
        self._router = router
        self._fd = fd
        self._name: StreamName = name
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()  # held by the reader across read + hand-over
        self._progress = threading.Condition(threading.Lock())
        self._consumed = 0
        self._done = False
        self._saved = os.dup(fd)
        self._rfd, wfd = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_inheritable(self._saved, False)
        try:
            os.dup2(wfd, fd)  # fd stays inheritable: child processes write into the pipe
        finally:
            os.close(wfd)
        self._thread = threading.Thread(target=self._main, name=f"cc-enclave-fd{fd}", daemon=True)
        self._thread.start()

    def _read_available(self) -> bool:
        """Read what is in the pipe now; return False at EOF."""
        while True:
            with self._lock:
                try:
                    data = os.read(self._rfd, 65536)
                except BlockingIOError:
                    return True
                text = self._decoder.decode(data, final=not data)
                if text:
                    self._router.write(self._name, text)
                with self._progress:
                    self._consumed += len(data)
                    self._progress.notify_all()
                if not data:
                    return False

    def _main(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._rfd, self._wake_r], [], [])
                if self._rfd in ready and not self._read_available():
                    return
                if self._wake_r in ready:
                    self._read_available()
                    return
        finally:
            with self._progress:
                self._done = True
                self._progress.notify_all()

    def sync(self, timeout: float = 1.0) -> None:
        """Wait until everything written to the fd before this call has been handed to the router."""
        with self._lock:
            buf = fcntl.ioctl(self._rfd, termios.FIONREAD, struct.pack("i", 0))
            target = self._consumed + struct.unpack("i", buf)[0]
        with self._progress:
            self._progress.wait_for(lambda: self._done or self._consumed >= target, timeout)

    def restore(self) -> None:
        """Put the original fd back, drain the pipe and stop the reader. Idempotent."""
        if self._saved < 0:
            return
        os.dup2(self._saved, self._fd)
        os.close(self._saved)
        self._saved = -1
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._rfd, self._wake_r, self._wake_w):
            os.close(fd)


class FdCapture:
    """Capture OS-level fds 1 and 2 (C extensions, child processes) into an :class:`OutputRouter`.

    Each fd is ``dup2``'d onto a pipe read by a daemon thread; the originals are kept and restored by
    :meth:`restore`. Ordering between Python-level writes and fd-level writes is only guaranteed at flush
    points (every rich emission, explicit ``flush()``, the end of a request): there the main thread calls
    ``fflush(NULL)`` and waits until the pipes are drained. Children that outlive the capture keep writing
    into a pipe nobody reads once :meth:`restore` ran (they get EPIPE/SIGPIPE).
    """

    def __init__(
        self,
        router: OutputRouter,
        *,
        fds: tuple[tuple[int, StreamName], ...] = ((1, "stdout"), (2, "stderr")),
    ) -> None:
        self._router = router
        _libc_fflush()
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.flush()
        self._pumps: list[_FdPump] = []
        try:
            for fd, name in fds:
                self._pumps.append(_FdPump(router, fd, name))
        except BaseException:
            self.restore()
            raise
        router.add_sync_hook(self.sync)

    def sync(self) -> None:
        """Flush C stdio and wait until the pipes have been drained into the router."""
        _libc_fflush()
        for pump in self._pumps:
            pump.sync()

    def restore(self) -> None:
        """Restore the original fds (after a final drain). Idempotent."""
        self._router.remove_sync_hook(self.sync)
        _libc_fflush()
        for pump in self._pumps:
            pump.restore()
        self._pumps = []
