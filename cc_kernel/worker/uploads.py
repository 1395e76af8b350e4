"""Worker: assemble an upload's chunks into the value a cell gets, writing each byte once.

Layer: the worker process. Imports only the stdlib (and numpy, lazily, for ``.npy``). ``%cc_upload`` and
``%cc_dataset`` hand over up to 4 GiB in chunks of about 1 MiB; the value is built as they arrive, so the upload
costs one copy of the data in fresh memory (the value itself), not two (the chunks kept, then joined):

* ``bytes`` and ``text``: an ``io.BytesIO`` receives the chunks; its buffer grows by ``realloc`` (which moves
  pages instead of copying them once it is large) and ``getvalue()`` returns that buffer as the ``bytes`` object
  itself, without a copy; text is decoded from it once at the end.
* ``npy``: as soon as the header has arrived, the array is allocated with the header's dtype, shape and order,
  and every later byte is written straight into its memory (a writable array, as ``numpy.load`` returns).
  Headers (versions 1.0 and 2.0) are read by numpy's own reader with its size limit; nothing is allocated
  unless the array the header announces is exactly the data the file holds; object arrays are refused (no
  pickle). Anything else (a version 3.0 header, written only for field names outside Latin-1; a file that is
  not a .npy at all) is given whole to ``numpy.load`` at the end, which reads it or refuses it: that path holds
  the data twice.

Every way the data can be wrong ends in ``ValueError`` with the reason (the caller names the upload): too much
data, too little, a header numpy refuses (whatever numpy raised for it, named), a dtype holding Python objects
or a subarray, text that is not UTF-8. ``MemoryError`` passes through.
"""

from __future__ import annotations

import io
import math
from typing import Any

#: The longest ``.npy`` header read before it is refused (numpy's own default limit).
MAX_NPY_HEADER = 10_000
_NPY_MAGIC = b"\x93NUMPY"
_NPY_PREAMBLE = 8  # magic (6 bytes) + version (2 bytes)
#: The header versions read as the data arrives, and the size of their header-length field.
_NPY_LENGTH_SIZE = {(1, 0): 2, (2, 0): 4}


class Assembly:
    """One upload being received: ``add(chunk)`` for each chunk, then ``finish()`` for the value."""

    def __init__(self, size: int, fmt: str) -> None:
        self.size = size
        self.fmt = fmt
        self.received = 0
        self._buffer: io.BytesIO | None = io.BytesIO()  # bytes/text, a .npy until its header is known
        self._array: Any = None  # the .npy's array once its header is known
        self._into: memoryview | None = None  # its bytes, written in order
        self._filled = 0
        self._whole = fmt != "npy"  # .npy: read as the data arrives unless its preamble says otherwise

    def add(self, chunk: bytes) -> None:
        if self.received + len(chunk) > self.size:
            self.close()
            raise ValueError("more data than announced")
        self.received += len(chunk)
        try:
            if self._into is not None:
                self._write_array(chunk)
                return
            assert self._buffer is not None
            self._buffer.write(chunk)
            if not self._whole:
                self._try_header()
        except ValueError:
            self.close()
            raise

    def finish(self) -> Any:
        """The value; raises ValueError if the data is incomplete or does not decode as ``fmt``."""
        try:
            if self.received != self.size:
                raise ValueError(f"arrived incomplete ({self.received} of {self.size} bytes)")
            if self._into is not None:  # all received: the header announced exactly this many bytes
                return self._array
            assert self._buffer is not None
            data = self._buffer.getvalue()  # the buffer itself: no copy
            self._buffer.close()
            if self.fmt == "text":
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(str(exc)) from None
            if self.fmt == "npy":
                return _load_npy(data)
            return data
        finally:
            self.close()

    def close(self) -> None:
        """Release what this assembly holds (the value, once returned, belongs to the caller)."""
        if self._into is not None:
            self._into.release()
        self._into = None
        self._array = None
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

    # -- .npy: the array is allocated once the header is known --------------------------------------------

    def _try_header(self) -> None:
        assert self._buffer is not None
        buffered = self._buffer.getbuffer()
        try:
            if len(buffered) < _NPY_PREAMBLE + 4:
                return
            length_size = _NPY_LENGTH_SIZE.get((buffered[6], buffered[7]), 0)
            if bytes(buffered[:6]) != _NPY_MAGIC or not length_size:  # numpy.load reads it whole, or refuses it
                self._whole = True
                return
            length = int.from_bytes(buffered[_NPY_PREAMBLE : _NPY_PREAMBLE + length_size], "little")
            if length > MAX_NPY_HEADER:
                raise ValueError(f"the .npy header is {length} bytes long, over the limit of {MAX_NPY_HEADER}")
            start = _NPY_PREAMBLE + length_size + length
            if len(buffered) < start:
                return
            head = bytes(buffered[:start])
            rest = bytes(buffered[start:]) if len(buffered) > start else b""
        finally:
            buffered.release()
        self._array, self._into = _allocate_npy(head, self.size - start)
        self._buffer.close()
        self._buffer = None
        if rest:
            self._write_array(rest)

    def _write_array(self, chunk: bytes) -> None:
        assert self._into is not None  # never past its end: the array is the announced size minus the header
        end = self._filled + len(chunk)
        self._into[self._filled : end] = chunk
        self._filled = end


def _allocate_npy(head: bytes, data_size: int) -> tuple[Any, memoryview]:
    """An uninitialised array shaped as the ``.npy`` header ``head`` (magic, version, header) describes, and
    its memory as bytes in the file's order (C order, or Fortran order: the transpose's C order). Nothing is
    allocated unless the header's array is exactly the ``data_size`` bytes the file holds after it."""
    import numpy as np
    from numpy.lib import format as npy_format

    stream = io.BytesIO(head)
    try:
        version = npy_format.read_magic(stream)
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran_order, dtype = reader(stream, max_header_size=MAX_NPY_HEADER)
        if dtype.hasobject:
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
        if dtype.subdtype is not None:
            raise ValueError(f"the .npy's dtype {dtype} has a subarray shape, which numpy.load does not read")
        announced = math.prod(shape) * dtype.itemsize
        if announced != data_size:
            raise ValueError(f"the .npy header announces {announced} bytes of data, the file holds {data_size}")
        array = np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
    except MemoryError:
        raise
    except Exception as exc:  # a hostile header reaches numpy's parser: whatever it raises is a refusal
        raise _refusal(exc) from None
    flat = (array.T if fortran_order else array).reshape(-1)  # a view: the array is contiguous in that order
    return array, flat.view(np.uint8).data


def _load_npy(data: bytes) -> Any:
    import numpy as np

    try:
        return np.load(io.BytesIO(data), allow_pickle=False, max_header_size=MAX_NPY_HEADER)
    except MemoryError:
        raise
    except Exception as exc:  # as in _allocate_npy: numpy.load of hostile bytes may raise anything
        raise _refusal(exc) from None


def _refusal(exc: Exception) -> ValueError:
    """``exc`` (raised by numpy for a malformed file) as the ValueError an upload is refused with."""
    if type(exc) is ValueError:
        return exc
    return ValueError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
