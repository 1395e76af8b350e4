"""The worker builds an upload's value as its chunks arrive (cc_kernel.worker.uploads): the same values as
numpy.load / bytes / str of the whole file, one copy of the data in fresh memory, and a clear refusal of every
malformed input."""

from __future__ import annotations

import io
import os
import resource
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cc_kernel.memory import tune_allocator
from cc_kernel.protocol import messages as m
from cc_kernel.worker.serve import WorkerServer
from cc_kernel.worker.uploads import MAX_NPY_HEADER, Assembly

ARRAYS = {
    "float grid": np.arange(12.0).reshape(3, 4),
    "fortran order": np.asfortranarray(np.arange(24).reshape(2, 3, 4)),
    "0-d": np.array(5.0),
    "empty": np.empty((0, 3)),
    "datetime64": np.array(["2020-01-01", "2021-02-03"], dtype="datetime64[D]"),
    "structured, mixed byte order": np.array([(1, 2.0, b"ab")], dtype=[("a", ">i4"), ("b", "<f8"), ("c", "S2")]),
    "unicode": np.array(["héllo", "x"], dtype="U5"),
    "bool": np.array([True, False]),
    "big-endian complex": np.arange(5, dtype=">c16"),
}


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, version=version)
    return out.getvalue()


def assemble(data: bytes, fmt: str, step: int, size: int | None = None) -> object:
    assembly = Assembly(len(data) if size is None else size, fmt)
    for i in range(0, len(data), step):
        assembly.add(data[i : i + step])
    return assembly.finish()


@pytest.mark.parametrize("name", list(ARRAYS))
@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_an_npy_arrives_as_numpy_load_reads_it(name: str, version: tuple[int, int], step: int) -> None:
    data = npy_bytes(ARRAYS[name], version)
    value = assemble(data, "npy", step)
    expected = np.load(io.BytesIO(data), allow_pickle=False)
    assert isinstance(value, np.ndarray)
    assert (value.dtype, value.shape) == (expected.dtype, expected.shape)
    assert value.tobytes(order="A") == expected.tobytes(order="A")
    assert (value.flags.f_contiguous, value.flags.c_contiguous) == (expected.flags.f_contiguous,
                                                                    expected.flags.c_contiguous)
    assert value.flags.writeable  # as numpy.load returns it: the cell may change it in place


def test_bytes_and_text_arrive_whole() -> None:
    blob = os.urandom(3 * 1024 * 1024 + 5)
    value = assemble(blob, "bytes", 1 << 20)
    assert type(value) is bytes and value == blob
    text = "naïve café — ünïcode\n" * 5000
    assert assemble(text.encode(), "text", 1000) == text
    assert assemble(b"", "bytes", 1) == b""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator settings are glibc's")
def test_the_value_is_the_only_copy_of_the_data() -> None:
    """64 MiB arriving as 64 freshly decoded 1 MiB chunks fault in about 64 MiB of memory (keeping the chunks
    and joining them at the end, as the worker did, faulted in twice that)."""
    tune_allocator()
    source = memoryview(os.urandom(64 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    assembly = Assembly(64 << 20, "bytes")
    for i in range(0, len(source), 1 << 20):
        assembly.add(bytes(source[i : i + (1 << 20)]))  # a new bytes object, as the link's decoder makes
    value = assembly.finish()
    faulted_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize() / (1 << 20)
    assert len(value) == 64 << 20  # type: ignore[arg-type]
    assert faulted_mib < 1.25 * 64, f"{faulted_mib:.0f} MiB of fresh memory for a 64 MiB upload"


def refusal(data: bytes, fmt: str, size: int | None = None, step: int = 1 << 20) -> str:
    with pytest.raises(ValueError) as caught:
        assemble(data, fmt, step, size)
    return str(caught.value)


def test_every_malformed_upload_is_refused_with_its_reason() -> None:
    grid = npy_bytes(np.arange(10))
    assert refusal(grid + b"x", "npy", size=len(grid)) == "more data than announced"
    assert refusal(grid[:-3], "npy", size=len(grid)) == f"arrived incomplete ({len(grid) - 3} of {len(grid)} bytes)"
    assert refusal(grid[:-8], "npy") == "the .npy header announces 80 bytes of data, the file holds 72"
    assert refusal(grid + b"12345678", "npy") == "the .npy header announces 80 bytes of data, the file holds 88"
    huge = io.BytesIO()  # a header announcing 8 TiB, and 80 bytes: refused before anything is allocated
    np.lib.format.write_array_header_1_0(huge, {"descr": "<i8", "fortran_order": False, "shape": (2**40,)})
    assert refusal(huge.getvalue() + bytes(80), "npy") == (
        "the .npy header announces 8796093022208 bytes of data, the file holds 80")
    long_header = b"\x93NUMPY\x01\x00" + (MAX_NPY_HEADER + 1).to_bytes(2, "little") + b" " * 64
    assert refusal(long_header, "npy") == (
        f"the .npy header is {MAX_NPY_HEADER + 1} bytes long, over the limit of {MAX_NPY_HEADER}")
    bad_dict = b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': 'nope'}  \n"
    assert "descr" in refusal(bad_dict, "npy")
    assert "pickled" in refusal(b"\x93NUMPX\x01\x00" + grid[8:], "npy")  # not a .npy: numpy.load's verdict
    objects = io.BytesIO()
    np.save(objects, np.array([1, None], dtype=object), allow_pickle=True)
    assert refusal(objects.getvalue(), "npy") == "Object arrays cannot be loaded when allow_pickle=False"
    assert "pickled" in refusal(b"not an array at all", "npy")  # numpy.load's own verdict on a non-.npy file
    assert "can't decode byte 0xff" in refusal(b"ok \xff", "text")


def test_a_refused_assembly_holds_nothing() -> None:
    assembly = Assembly(4, "bytes")
    assembly.add(b"ab")
    with pytest.raises(ValueError, match="more data than announced"):
        assembly.add(b"cde")
    with pytest.raises(ValueError, match="arrived incomplete"):
        assembly.finish()


class _Link:
    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    def send(self, msg: m.Message) -> None:
        self.sent.append(msg)


def _server() -> tuple[WorkerServer, _Link, dict[str, object]]:
    link = _Link()
    server = WorkerServer(link)  # type: ignore[arg-type]
    namespace: dict[str, object] = {}
    server.shell = SimpleNamespace(ipython=SimpleNamespace(user_ns=namespace))
    return server, link, namespace


def _upload(server: WorkerServer, name: str, data: bytes, fmt: str) -> None:
    server._upload(m.UploadStart(req_id=7, name=name, size=len(data), fmt=fmt, code="", execution_count=1,
                                 cell_id=None))
    server._upload(m.UploadChunk(req_id=7, data=data))
    server._upload(m.UploadEnd(req_id=7, sha256=bytes(32)))


def test_the_worker_binds_an_upload_and_refuses_a_malformed_one_without_binding() -> None:
    server, link, namespace = _server()
    _upload(server, "grid", npy_bytes(np.arange(3)), "npy")
    _upload(server, "bad", b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': 'nope'}  \n", "npy")
    ok, bad = link.sent
    assert isinstance(ok, m.UploadReply) and (ok.status, ok.message) == ("ok", "grid = numpy array (3,) int64")
    assert isinstance(bad, m.UploadReply) and bad.status == "error"
    assert bad.message.startswith("cannot bind 'bad' as npy: ") and "descr" in bad.message
    assert list(namespace) == ["grid"]


def test_the_worker_survives_an_upload_it_has_no_memory_for(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(self: Assembly, chunk: bytes) -> None:
        raise MemoryError

    server, link, namespace = _server()
    monkeypatch.setattr(Assembly, "add", no_memory)
    _upload(server, "big", b"x" * 10, "bytes")
    (reply,) = link.sent
    assert isinstance(reply, m.UploadReply) and reply.status == "error"
    assert reply.message == "cannot bind 'big' as bytes: not enough memory in the enclave's worker"
    assert namespace == {}


def npy_with_header(header: str, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    """A .npy preamble and ``header`` as written (no check that it makes sense), then ``data``."""
    body = header.encode("latin1") + b"\n"
    length = len(body).to_bytes(2 if version == b"\x01\x00" else 4, "little")
    return b"\x93NUMPY" + version + length + body + data


HOSTILE = {
    "a bool in the shape": (npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (True, 4), }",
                                            b"abcd"), "TypeError: "),
    "an unbalanced header": (npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': ((( }"),
                             "TokenError: "),
    "a deeply nested shape": (npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (" + "-" * 5000
                                              + "1,), }"), "RecursionError: "),
    "a zip that is not one": (b"PK\x03\x04" + bytes(40), "BadZipFile: "),
    "a subarray dtype": (npy_with_header("{'descr': ('<f8', (2, 3)), 'fortran_order': False, 'shape': (4,), }",
                                         bytes(192)), "has a subarray shape, which numpy.load does not read"),
    "an unknown version": (npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", b"abcd",
                                           version=b"\x02\x05"), "we only support format version"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_npy_is_refused_wherever_its_chunks_are_cut(name: str) -> None:
    """Whatever numpy raises for it becomes the refusal (a worker that let it escape would end the session)."""
    data, expected = HOSTILE[name]
    for cut in range(1, len(data), 7):
        assembly = Assembly(len(data), "npy")
        with pytest.raises(ValueError) as caught:
            assembly.add(data[:cut])
            assembly.add(data[cut:])
            assembly.finish()
        assert expected in str(caught.value), (cut, str(caught.value))


def test_a_fault_of_ours_while_binding_is_an_error_reply_not_the_end_of_the_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Assembly) -> object:
        raise RuntimeError("a bug")

    server, link, namespace = _server()
    monkeypatch.setattr(Assembly, "finish", broken)
    _upload(server, "v", b"abc", "bytes")
    (reply,) = link.sent
    assert isinstance(reply, m.UploadReply) and reply.status == "error"
    assert reply.message == "cannot bind 'v' as bytes: internal error RuntimeError: a bug"
    assert namespace == {}
