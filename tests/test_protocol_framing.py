"""Framing: length-prefixed frames, incremental decoding, limits enforced before allocation, EOF mid-frame."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_kernel.errors import LocalProtocolError, RemoteProtocolError
from cc_kernel.protocol import codec
from cc_kernel.protocol.framing import DEFAULT_MAX_FRAME_SIZE, NEED_DATA, FrameDecoder, encode_frame
from cc_kernel.protocol.messages import decode_message, encode_message

FAST = settings(deadline=None, database=None, max_examples=60)


def _frames(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        out.append(frame)
    return out


def test_frame_layout_is_big_endian_length_then_codec_body() -> None:
    obj = {"t": "ping", "seq": 300}
    frame = encode_frame(obj)
    body = codec.packb(obj)
    assert frame == len(body).to_bytes(4, "big") + body
    assert DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024


def test_need_data_until_a_whole_frame_arrived() -> None:
    frame = encode_frame({"a": "b" * 300})
    decoder = FrameDecoder()
    assert decoder.next_frame() is NEED_DATA
    decoder.feed(frame[:3])
    assert decoder.next_frame() is NEED_DATA
    decoder.feed(frame[3:-1])
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == len(frame) - 1
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == frame[4:]
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"


@FAST
@given(
    objs=st.lists(
        st.dictionaries(st.text(max_size=5), st.binary(max_size=50) | st.integers(-(2**63), 2**64 - 1)), max_size=8
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_any_chunking_yields_the_same_frames(objs: list[dict[str, object]], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(o) for o in objs)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})

    def run(chunks: list[bytes]) -> list[bytes]:
        decoder, out = FrameDecoder(), []
        for chunk in chunks:
            decoder.feed(chunk)
            out.extend(_frames(decoder))
        decoder.eof()
        return out

    whole = run([stream])
    assert [codec.unpackb(f) for f in whole] == objs
    assert run([stream[i : i + 1] for i in range(len(stream))]) == whole
    assert run([stream[a:b] for a, b in itertools.pairwise(bounds)]) == whole


def test_header_over_the_limit_is_refused_without_allocating() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed((2**31).to_bytes(4, "big") + b"x" * 10)
        with pytest.raises(RemoteProtocolError, match=r"frame length 2147483648 exceeds the limit of 67108864"):
            decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_huge_allowed_header_waits_for_data_without_allocating() -> None:
    decoder = FrameDecoder(max_frame_size=2**32 - 1)
    tracemalloc.start()
    try:
        decoder.feed((2**31).to_bytes(4, "big") + b"x" * 1000)
        assert decoder.next_frame() is NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_limit_is_inclusive() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed((10).to_bytes(4, "big") + b"0123456789")
    assert decoder.next_frame() == b"0123456789"
    decoder.feed((11).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 10"):
        decoder.next_frame()


def test_zero_length_frame_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\0\0\0\0")
    with pytest.raises(RemoteProtocolError, match="zero-length frame"):
        decoder.next_frame()


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9])
def test_eof_mid_frame(cut: int) -> None:
    frame = encode_frame({"k": "v" * 5})
    decoder = FrameDecoder()
    decoder.feed(frame + frame[:cut])
    with pytest.raises(RemoteProtocolError, match=rf"peer closed mid-frame \({cut} bytes"):
        decoder.eof()


def test_eof_at_a_boundary_keeps_buffered_frames() -> None:
    frame = encode_frame({"k": 1})
    decoder = FrameDecoder()
    decoder.feed(frame * 2)
    decoder.close()  # alias of eof()
    assert decoder.at_eof
    assert _frames(decoder) == [frame[4:], frame[4:]]
    with pytest.raises(ValueError, match="after eof"):
        decoder.feed(b"x")


def test_eof_with_an_invalid_buffered_header_is_an_error() -> None:
    decoder = FrameDecoder(max_frame_size=8)
    decoder.feed((9).to_bytes(4, "big") + b"x" * 9)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decoder.eof()


def test_buffer_is_compacted_so_it_stays_bounded() -> None:
    frame = encode_frame({"pad": b"x" * 1000})
    decoder = FrameDecoder()
    high_water = 0
    for _ in range(2000):
        # feed one and a half frames at a time so the buffer never empties completely
        decoder.feed(frame + frame[: len(frame) // 2])
        assert _frames(decoder)
        decoder.feed(frame[len(frame) // 2 :])
        high_water = max(high_water, len(decoder._buf))
    assert _frames(decoder) == [frame[4:]]
    assert decoder.buffered == 0
    # without compaction the buffer would hold all ~2 MB ever fed
    assert high_water < 4 * 64 * 1024


def test_encode_frame_refuses_oversized_and_unencodable_values() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds the limit of 10"):
        encode_frame({"x": "y" * 20}, max_size=10)
    with pytest.raises(LocalProtocolError, match="cannot encode frame"):
        encode_frame({"x": "\ud800"})
    with pytest.raises(LocalProtocolError, match="cannot encode frame"):
        encode_frame({"x": object()})


@pytest.mark.parametrize("bad", [0, -1, 2**32])
def test_invalid_limits_are_programmer_errors(bad: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(max_frame_size=bad)
    with pytest.raises(ValueError, match="max_frame_size"):
        encode_frame({"x": 1}, max_size=bad)


def test_non_int_limit_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_frame_size"):
        FrameDecoder(max_frame_size=True)


@FAST
@given(chunks=st.lists(st.binary(max_size=64), max_size=8), small=st.booleans())
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(chunks: list[bytes], small: bool) -> None:
    decoder = FrameDecoder(max_frame_size=64 if small else DEFAULT_MAX_FRAME_SIZE)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            for frame in _frames(decoder):
                decode_message(codec.unpackb(frame))
        decoder.eof()
    except RemoteProtocolError:
        pass


@FAST
@given(body=st.binary(min_size=1, max_size=64))
def test_arbitrary_frame_bodies_only_ever_raise_remote_protocol_error(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(len(body).to_bytes(4, "big") + body)
    frame = decoder.next_frame()
    assert frame == body
    try:
        msg = decode_message(codec.unpackb(body))
    except RemoteProtocolError:
        return
    assert codec.unpackb(codec.packb(encode_message(msg))) == codec.unpackb(body)
