"""The sealed-file format: round trips whole and incrementally, and every tamper refused with its chunk index."""

from __future__ import annotations

import os

import pytest

from cc_kernel.crypto.sealing import TAG_SIZE
from cc_kernel.dataset.format import (
    MAGIC,
    NEED_DATA,
    ChunkData,
    DatasetHeader,
    Sealer,
    Unsealer,
    decode_header,
    encode_header,
    seal_bytes,
    unseal_bytes,
)
from cc_kernel.errors import TamperedDataset

KEY = bytes(range(32))
CHUNK = 1024


def header(size: int, *, chunk: int = CHUNK, fmt: str = "bytes") -> DatasetHeader:
    return DatasetHeader(
        owner="St Example Hospital", dataset_id=bytes(range(16)), broker="broker.example:7900",
        broker_spki_sha256=b"\x01" * 32, policy_sha256=b"\x02" * 32, rules_sha256=b"\x03" * 32,
        format=fmt, plaintext_size=size, chunk_size=chunk,  # type: ignore[arg-type]
    )


def unseal_fed(sealed: bytes, step: int, key: bytes = KEY) -> bytes:
    u = Unsealer()
    out: list[bytes] = []
    for i in range(0, len(sealed), step):
        u.feed(sealed[i : i + step])
        while (event := u.next_event()) is not NEED_DATA:
            if isinstance(event, DatasetHeader):
                u.set_key(key)
            else:
                assert isinstance(event, ChunkData)
                out.append(event.data)
    u.end()
    return b"".join(out)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 17])
def test_round_trip_whole(size: int) -> None:
    data = os.urandom(size)
    sealed = seal_bytes(header(size), KEY, data)
    assert sealed.startswith(MAGIC)
    assert len(sealed) == header(size).sealed_size
    got_header, plain = unseal_bytes(sealed, KEY)
    assert plain == data
    assert got_header == header(size)


@pytest.mark.parametrize("step", [1, 7, 1000, CHUNK, CHUNK + TAG_SIZE, 2 * CHUNK + 3, 4099])  # CHUNK: the kernel's
def test_round_trip_fed_in_pieces(step: int) -> None:
    size = 3 * CHUNK + 5
    data = os.urandom(size)
    sealer = Sealer(header(size), KEY)
    parts = [sealer.header_bytes]
    for i in range(0, size, step):  # the sealer is fed in the same odd pieces
        parts.append(sealer.feed(data[i : i + step]))
    parts.append(sealer.finish())
    sealed = b"".join(parts)
    assert sealed == seal_bytes(header(size), KEY, data)
    assert unseal_fed(sealed, step) == data


def test_events_in_order_and_final_flag() -> None:
    sealed = seal_bytes(header(2 * CHUNK + 1), KEY, b"x" * (2 * CHUNK + 1))
    u = Unsealer(KEY)
    u.feed(sealed)
    events = []
    while (event := u.next_event()) is not NEED_DATA:
        events.append(event)
    assert isinstance(events[0], DatasetHeader)
    assert [(e.index, e.final, len(e.data)) for e in events[1:]] == [(0, False, CHUNK), (1, False, CHUNK),
                                                                      (2, True, 1)]
    assert u.end().plaintext_size == 2 * CHUNK + 1


def test_no_plaintext_before_the_key() -> None:
    sealed = seal_bytes(header(10), KEY, b"0123456789")
    u = Unsealer()
    u.feed(sealed)
    assert isinstance(u.next_event(), DatasetHeader)
    assert u.next_event() is NEED_DATA


SIZE = 3 * CHUNK + 100
SEALED = seal_bytes(header(SIZE), KEY, os.urandom(SIZE))
HLEN = len(encode_header(header(SIZE)))


def chunk_offset(i: int) -> int:
    return HLEN + i * (CHUNK + TAG_SIZE)


def refused(sealed: bytes, key: bytes = KEY) -> TamperedDataset:
    with pytest.raises(TamperedDataset) as info:
        unseal_bytes(sealed, key)
    return info.value


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_each_chunk_tampered(index: int) -> None:
    data = bytearray(SEALED)
    data[chunk_offset(index) + 5] ^= 1
    exc = refused(bytes(data))
    assert exc.check == "dataset.chunk"
    assert exc.index == index
    assert f"chunk {index} of 4 does not authenticate" in str(exc)


@pytest.mark.parametrize("offset", [len(MAGIC) + 6 + 5, HLEN - 1, HLEN - 5])
def test_header_tampered(offset: int) -> None:
    """A changed header byte (owner name, chunk size, plaintext size) fails chunk 0 or the header's own parse."""
    data = bytearray(SEALED)
    data[offset] ^= 0x01
    exc = refused(bytes(data))
    assert exc.check in {"dataset.chunk", "dataset.header", "dataset.truncated"}
    if exc.check == "dataset.chunk":
        assert exc.index == 0


def test_header_owner_changed_fails_chunk_zero() -> None:
    forged = header(SIZE)
    forged = DatasetHeader(**{**forged.__dict__, "owner": "St Example Hospitam"})
    data = encode_header(forged) + SEALED[HLEN:]
    exc = refused(data)
    assert (exc.check, exc.index) == ("dataset.chunk", 0)
    assert "chunk 0 of 4 does not authenticate" in str(exc)


def test_not_a_sealed_file() -> None:
    exc = refused(b"PK\x03\x04" + SEALED[4:])
    assert exc.check == "dataset.magic"
    assert "not a sealed dataset" in str(exc)


def test_truncated_mid_chunk() -> None:
    exc = refused(SEALED[: chunk_offset(2) + 10])
    assert (exc.check, exc.index) == ("dataset.truncated", 2)
    assert "the file ends in chunk 2 of 4" in str(exc)


def test_truncated_at_chunk_boundary() -> None:
    """Dropping whole trailing chunks is a truncation: the final chunk never arrived."""
    exc = refused(SEALED[: chunk_offset(3)])
    assert (exc.check, exc.index) == ("dataset.truncated", 3)


def test_truncated_in_header() -> None:
    exc = refused(SEALED[:20])
    assert exc.check == "dataset.truncated"
    assert "inside its header" in str(exc)


def test_extended() -> None:
    exc = refused(SEALED + b"\x00")
    assert (exc.check, exc.index) == ("dataset.extended", 4)
    assert "1 bytes follow the final chunk 3" in str(exc)


def test_extended_after_end_fed_separately() -> None:
    u = Unsealer(KEY)
    u.feed(SEALED)
    while u.next_event() is not NEED_DATA:
        pass
    with pytest.raises(TamperedDataset, match="follow the final chunk 3"):
        u.feed(b"more")


def test_final_chunk_dropped_and_last_full_chunk_promoted() -> None:
    """A file whose last chunk is removed can't pass off chunk 2 as final: its nonce and AAD say not final."""
    size = 3 * CHUNK
    sealed = seal_bytes(header(size), KEY, bytes(size))
    forged = encode_header(header(2 * CHUNK)) + sealed[len(encode_header(header(size))) : chunk_offset(2)]
    exc = refused(forged)
    assert (exc.check, exc.index) == ("dataset.chunk", 0)  # the header hash differs, so chunk 0 fails


def test_reordered_chunks() -> None:
    c0 = SEALED[chunk_offset(0) : chunk_offset(1)]
    c1 = SEALED[chunk_offset(1) : chunk_offset(2)]
    swapped = SEALED[:HLEN] + c1 + c0 + SEALED[chunk_offset(2) :]
    exc = refused(swapped)
    assert (exc.check, exc.index) == ("dataset.chunk", 0)


def test_chunk_from_another_file() -> None:
    """A chunk spliced from another dataset sealed under the same key fails: the header hash is in its AAD."""
    other_header = DatasetHeader(**{**header(SIZE).__dict__, "dataset_id": b"\xff" * 16})
    other = seal_bytes(other_header, KEY, os.urandom(SIZE))
    spliced = SEALED[: chunk_offset(1)] + other[chunk_offset(1) : chunk_offset(2)] + SEALED[chunk_offset(2) :]
    exc = refused(spliced)
    assert (exc.check, exc.index) == ("dataset.chunk", 1)


def test_wrong_key() -> None:
    exc = refused(SEALED, key=b"\x00" * 32)
    assert (exc.check, exc.index) == ("dataset.chunk", 0)
    assert "or the key is not this dataset's" in str(exc)


def test_unsealer_stays_failed() -> None:
    data = bytearray(SEALED)
    data[chunk_offset(1)] ^= 1
    u = Unsealer(KEY)
    u.feed(bytes(data))
    with pytest.raises(TamperedDataset):
        while u.next_event() is not NEED_DATA:
            pass
    with pytest.raises(TamperedDataset, match="chunk 1 of 4"):
        u.next_event()


def test_header_version_and_size_caps() -> None:
    raw = bytearray(encode_header(header(1)))
    raw[len(MAGIC) + 1] = 2
    with pytest.raises(TamperedDataset, match="version 2 is not supported"):
        decode_header(bytes(raw))
    raw = bytearray(encode_header(header(1)))
    raw[len(MAGIC) + 2 : len(MAGIC) + 6] = (5000).to_bytes(4, "big")
    with pytest.raises(TamperedDataset, match="more than 4096"):
        decode_header(bytes(raw))
    assert decode_header(encode_header(header(1))[:10]) is None


def test_sealer_refuses_wrong_amount() -> None:
    s = Sealer(header(10), KEY)
    with pytest.raises(ValueError, match="more plaintext"):
        s.feed(b"x" * 11)
    s = Sealer(header(10), KEY)
    s.feed(b"x" * 9)
    with pytest.raises(ValueError, match="9 bytes fed"):
        s.finish()


def test_header_not_canonical() -> None:
    """A header whose body has trailing bytes inside its declared length is refused."""
    raw = encode_header(header(1))
    body_len = int.from_bytes(raw[len(MAGIC) + 2 : len(MAGIC) + 6], "big")
    padded = raw[: len(MAGIC) + 2] + (body_len + 1).to_bytes(4, "big") + raw[len(MAGIC) + 6 :] + b"\x00"
    with pytest.raises(TamperedDataset, match="1 unexpected bytes at the end of the header") as info:
        decode_header(padded)
    assert info.value.check == "dataset.header"


def test_unsealer_does_not_keep_a_mutable_caller_buffer() -> None:
    """A bytearray the caller reuses after ``feed`` must not change what the unsealer authenticates."""
    buf = bytearray(SEALED)
    u = Unsealer(KEY)
    u.feed(buf)
    buf[:] = bytes(len(buf))
    out = []
    while (event := u.next_event()) is not NEED_DATA:
        if isinstance(event, ChunkData):
            out.append(event.data)
    assert u.end().plaintext_size == SIZE
    assert len(b"".join(out)) == SIZE
