"""Pure dataset layer: the sealed-file format (docs/dataset.md §2) — header, chunk nonces and AAD, sealer, unsealer.

Invariants:

* no I/O, no clock, no randomness: the data key and dataset id are parameters (the shell draws them);
* every chunk's nonce and AAD bind the header hash, the chunk index and the final-chunk flag, so a changed
  header, a changed, swapped, dropped or appended chunk, a cut file and a wrong key are all refused with
  ``TamperedDataset`` naming the chunk index (checks ``dataset.magic``, ``dataset.version``, ``dataset.header``,
  ``dataset.chunk``, ``dataset.truncated``, ``dataset.extended``);
* the sealer and the unsealer are incremental (``feed`` / ``next_event`` returning ``NEED_DATA``) and hold at
  most one chunk plus one ``feed`` in memory, so a multi-GB file never sits whole in memory;
* plaintext leaves the unsealer only after its chunk authenticated.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from cc_kernel.crypto.hashing import TAG_DATASET_CHUNK, TAG_DATASET_HEADER, lp, tagged_hash
from cc_kernel.crypto.sealing import DATA_KEY_SIZE, TAG_SIZE, ChunkCipher, InvalidCiphertext
from cc_kernel.errors import TamperedDataset
from cc_kernel.protocol.framing import NEED_DATA, NeedData

__all__ = [
    "DATASET_ID_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "FORMATS",
    "MAGIC",
    "NEED_DATA",
    "VERSION",
    "ChunkData",
    "DatasetEnd",
    "DatasetHeader",
    "Sealer",
    "Unsealer",
    "chunk_aad",
    "chunk_count",
    "chunk_nonce",
    "decode_header",
    "encode_header",
    "header_hash",
    "seal_bytes",
    "unseal_bytes",
]

#: The first 16 bytes of every sealed file (ASCII, so ``head -c 15`` names it).
MAGIC: Final = b"cc-sealed-data\n\x00"
VERSION: Final = 1
#: ``format`` byte values, in order: 0 bytes, 1 text (UTF-8), 2 numpy ``.npy``.
FORMATS: Final = ("bytes", "text", "npy")
Format = Literal["bytes", "text", "npy"]
DATASET_ID_SIZE: Final = 16
HASH_SIZE: Final = 32
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
MIN_CHUNK_SIZE: Final = 1024
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
MAX_HEADER_BODY: Final = 4096
MAX_NAME: Final = 256
_PREFIX: Final = len(MAGIC) + 2 + 4  # magic ‖ u16be version ‖ u32be body length


@dataclass(frozen=True)
class DatasetHeader:
    """What a sealed file says about itself (authenticated only once its first chunk opened)."""

    owner: str
    dataset_id: bytes
    broker: str
    broker_spki_sha256: bytes
    policy_sha256: bytes
    rules_sha256: bytes
    format: Format
    plaintext_size: int
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        for name in ("owner", "broker"):
            value = getattr(self, name)
            if not 1 <= len(value.encode("utf-8")) <= MAX_NAME:
                raise ValueError(f"{name} must be 1..{MAX_NAME} bytes of UTF-8")
        if len(self.dataset_id) != DATASET_ID_SIZE:
            raise ValueError(f"dataset_id must be {DATASET_ID_SIZE} bytes")
        for name in ("broker_spki_sha256", "policy_sha256", "rules_sha256"):
            if len(getattr(self, name)) != HASH_SIZE:
                raise ValueError(f"{name} must be {HASH_SIZE} bytes")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        if not 0 <= self.plaintext_size < 2**64:
            raise ValueError("plaintext_size must fit in 64 bits")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")

    @property
    def chunks(self) -> int:
        """How many chunks the file holds (at least one: an empty dataset has one empty final chunk)."""
        return chunk_count(self.plaintext_size, self.chunk_size)

    def chunk_plaintext_size(self, index: int) -> int:
        """Plaintext bytes in chunk ``index``: ``chunk_size`` except for the final chunk."""
        if index < self.chunks - 1:
            return self.chunk_size
        return self.plaintext_size - (self.chunks - 1) * self.chunk_size

    @property
    def sealed_size(self) -> int:
        """Size of the whole sealed file in bytes."""
        return len(encode_header(self)) + self.plaintext_size + TAG_SIZE * self.chunks


def chunk_count(plaintext_size: int, chunk_size: int) -> int:
    """``max(1, ceil(plaintext_size / chunk_size))``."""
    return max(1, -(-plaintext_size // chunk_size))


def encode_header(header: DatasetHeader) -> bytes:
    """The header's exact bytes: ``MAGIC ‖ u16be(1) ‖ u32be(len(body)) ‖ body`` (layout in docs/dataset.md)."""
    body = b"".join(
        [
            lp(header.owner.encode("utf-8")),
            header.dataset_id,
            lp(header.broker.encode("utf-8")),
            header.broker_spki_sha256,
            header.policy_sha256,
            header.rules_sha256,
            bytes([FORMATS.index(header.format)]),
            header.plaintext_size.to_bytes(8, "big"),
            header.chunk_size.to_bytes(4, "big"),
        ]
    )
    return MAGIC + VERSION.to_bytes(2, "big") + len(body).to_bytes(4, "big") + body


def header_hash(header_bytes: bytes) -> bytes:
    """``tagged_hash(TAG_DATASET_HEADER, header_bytes)``: bound into every chunk and recorded by the broker."""
    return tagged_hash(TAG_DATASET_HEADER, header_bytes)


def chunk_nonce(index: int, final: bool) -> bytes:
    """The 12-byte AES-GCM nonce of chunk ``index``: ``u32be(final) ‖ u64be(index)``."""
    return int(final).to_bytes(4, "big") + index.to_bytes(8, "big")


def chunk_aad(header_sha256: bytes, index: int, final: bool) -> bytes:
    """``lp(TAG_DATASET_CHUNK) ‖ lp(header hash) ‖ lp(u64be(index)) ‖ lp(u8(final))``."""
    return lp(TAG_DATASET_CHUNK) + lp(header_sha256) + lp(index.to_bytes(8, "big")) + lp(bytes([int(final)]))


def _bad(check: str, message: str, *, index: int | None = None, got: object = None,
         expected: object = None) -> TamperedDataset:
    return TamperedDataset(message, check=check, index=index, got=got, expected=expected)


class _HeaderReader:
    """Parses a header body field by field; every failure is ``dataset.header``."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self._pos + n > len(self._body):
            raise _bad("dataset.header", f"the header ends inside its {what}")
        out = self._body[self._pos : self._pos + n]
        self._pos += n
        return out

    def text(self, what: str) -> str:
        n = int.from_bytes(self.take(4, what), "big")
        if not 1 <= n <= MAX_NAME:
            raise _bad("dataset.header", f"the header's {what} has length {n}, outside 1..{MAX_NAME}")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("dataset.header", f"the header's {what} is not UTF-8") from None

    def done(self) -> None:
        if self._pos != len(self._body):
            raise _bad("dataset.header", f"{len(self._body) - self._pos} unexpected bytes at the end of the header")


def decode_header(data: bytes) -> tuple[DatasetHeader, int] | None:
    """Parse a header from the start of ``data``: (header, its length), or None if more bytes are needed.

    Nothing is authenticated here: the header counts only once chunk 0 opened under the released key (and the
    broker's record of its hash matched).

    Raises:
        TamperedDataset: ``dataset.magic`` (not a sealed file), ``dataset.version``, ``dataset.header``.
    """
    head = data[: len(MAGIC)]
    if not MAGIC.startswith(head):
        raise _bad("dataset.magic", "not a sealed dataset: the file does not start with the sealed-file magic",
                   got=bytes(head), expected=MAGIC)
    if len(data) < _PREFIX:
        return None
    version = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 2], "big")
    if version != VERSION:
        raise _bad("dataset.version", f"sealed-file version {version} is not supported", got=version,
                   expected=VERSION)
    n = int.from_bytes(data[len(MAGIC) + 2 : _PREFIX], "big")
    if n > MAX_HEADER_BODY:
        raise _bad("dataset.header", f"the header claims {n} bytes, more than {MAX_HEADER_BODY}")
    if len(data) < _PREFIX + n:
        return None
    r = _HeaderReader(bytes(data[_PREFIX : _PREFIX + n]))
    owner = r.text("owner")
    dataset_id = r.take(DATASET_ID_SIZE, "dataset id")
    broker = r.text("broker address")
    broker_spki = r.take(HASH_SIZE, "broker key digest")
    policy = r.take(HASH_SIZE, "policy digest")
    rules = r.take(HASH_SIZE, "rules digest")
    fmt = r.take(1, "format")[0]
    size = int.from_bytes(r.take(8, "plaintext size"), "big")
    chunk = int.from_bytes(r.take(4, "chunk size"), "big")
    r.done()
    if fmt >= len(FORMATS):
        raise _bad("dataset.header", f"unknown format byte {fmt}", got=fmt, expected=list(range(len(FORMATS))))
    try:
        header = DatasetHeader(owner=owner, dataset_id=dataset_id, broker=broker, broker_spki_sha256=broker_spki,
                               policy_sha256=policy, rules_sha256=rules, format=FORMATS[fmt],
                               plaintext_size=size, chunk_size=chunk)
    except ValueError as exc:
        raise _bad("dataset.header", f"the header is not valid: {exc}") from None
    if encode_header(header) != bytes(data[: _PREFIX + n]):
        raise _bad("dataset.header", "the header is not canonically encoded")
    return header, _PREFIX + n


class Sealer:
    """Incremental sealer: ``header_bytes`` first, then ``feed(plaintext)`` returns whole sealed chunks and
    ``finish()`` the rest. The plaintext must be exactly ``header.plaintext_size`` bytes.

    Raises (``feed``/``finish``): ValueError if more or fewer bytes arrive than the header announced.
    """

    def __init__(self, header: DatasetHeader, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
        self.header = header
        self.header_bytes = encode_header(header)
        self.header_sha256 = header_hash(self.header_bytes)
        self._cipher = ChunkCipher(data_key)
        self._buf = bytearray()
        self._index = 0
        self._fed = 0
        self._done = False

    def _seal(self, plaintext: bytes | memoryview) -> bytes:
        final = self._index == self.header.chunks - 1
        out = self._cipher.encrypt(
            chunk_nonce(self._index, final), plaintext, chunk_aad(self.header_sha256, self._index, final)
        )
        self._index += 1
        return out

    def feed(self, data: bytes | memoryview) -> bytes:
        """Sealed bytes of every chunk completed by ``data`` (possibly empty)."""
        if self._done:
            raise ValueError("the sealer has finished")
        self._fed += len(data)
        if self._fed > self.header.plaintext_size:
            raise ValueError(f"more plaintext than the header's {self.header.plaintext_size} bytes")
        out: list[bytes] = []
        view = memoryview(data)
        size = self.header.chunk_size
        while view:
            want = self.header.chunk_plaintext_size(self._index) - len(self._buf)
            last = self._index == self.header.chunks - 1
            if not self._buf and len(view) >= want and want == size and not last:  # a whole chunk: no copy
                out.append(self._seal(view[:want]))
                view = view[want:]
                continue
            take = min(want, len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self.header.chunk_plaintext_size(self._index) and self._index < self.header.chunks - 1:
                out.append(self._seal(bytes(self._buf)))
                self._buf.clear()
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """The final chunk. Raises ValueError if fewer bytes were fed than the header announced."""
        if self._done:
            raise ValueError("the sealer has finished")
        if self._fed != self.header.plaintext_size:
            raise ValueError(f"{self._fed} bytes fed, the header announced {self.header.plaintext_size}")
        self._done = True
        out = self._seal(bytes(self._buf))
        self._buf.clear()
        return out


@dataclass(frozen=True)
class ChunkData:
    """Authenticated plaintext of chunk ``index`` (``final`` for the last one)."""

    index: int
    data: bytes
    final: bool


@dataclass(frozen=True)
class DatasetEnd:
    """Every chunk authenticated and nothing follows the final one (reported after ``end()``)."""

    plaintext_size: int


class Unsealer:
    """Incremental unsealer. ``feed(bytes)``, then ``next_event()`` until it returns ``NEED_DATA``:

    * first the ``DatasetHeader`` (unauthenticated until chunk 0 opens); the caller then obtains the key and
      calls ``set_key(data_key)`` (until then ``next_event`` returns ``NEED_DATA``);
    * then ``ChunkData`` for each chunk in order, once it authenticated (a chunk within one ``feed`` is
      decrypted from the caller's bytes without a copy; one that straddles feeds is joined once);
    * ``end()`` at end of input returns ``DatasetEnd`` or raises.

    Raises (``feed``/``next_event``/``end``): TamperedDataset with the chunk index. The unsealer stays failed.
    """

    def __init__(self, data_key: bytes | None = None) -> None:
        #: The caller's bytes not consumed yet, in order (the first one from ``_pos`` on), ``_have`` bytes in all.
        self._pieces: deque[bytes] = deque()
        self._pos = 0
        self._have = 0
        self._header: DatasetHeader | None = None
        self._header_sha256 = b""
        self._cipher: ChunkCipher | None = ChunkCipher(data_key) if data_key is not None else None
        self._index = 0
        self._done = False
        self._error: TamperedDataset | None = None

    @property
    def header(self) -> DatasetHeader | None:
        """The header once parsed."""
        return self._header

    @property
    def header_sha256(self) -> bytes:
        """``header_hash`` of the parsed header's bytes (empty before)."""
        return self._header_sha256

    def set_key(self, data_key: bytes) -> None:
        """Provide the released data key (after the header was read)."""
        self._cipher = ChunkCipher(data_key)

    def feed(self, data: bytes) -> None:
        """Add input bytes."""
        if self._error is not None:
            raise self._error
        if self._done and data:
            self._fail(_bad("dataset.extended", f"{len(data)} bytes follow the final chunk {self._index - 1}",
                            index=self._index))
        if data:
            self._pieces.append(bytes(data))  # no copy of bytes; a copy of a buffer the caller may change
            self._have += len(data)

    def _peek(self, n: int) -> bytes | memoryview:
        """The first ``n`` unconsumed bytes (``n <= self._have``): a view of the caller's bytes if they lie in one
        piece, else those pieces joined (the one copy)."""
        if n == 0:
            return b""
        first = self._pieces[0]
        if len(first) - self._pos >= n:
            return memoryview(first)[self._pos : self._pos + n]
        parts: list[bytes | memoryview] = []
        want, pos = n, self._pos
        for piece in self._pieces:
            part = memoryview(piece)[pos : pos + want]
            parts.append(part)
            want -= len(part)
            pos = 0
            if want == 0:
                break
        return b"".join(parts)

    def _consume(self, n: int) -> None:
        """Drop the first ``n`` unconsumed bytes (``n <= self._have``)."""
        self._have -= n
        n += self._pos
        while self._pieces and n >= len(self._pieces[0]):
            n -= len(self._pieces.popleft())
        self._pos = n

    def _fail(self, exc: TamperedDataset) -> None:
        self._error = exc
        raise exc

    def next_event(self) -> DatasetHeader | ChunkData | NeedData:
        """The next event, or ``NEED_DATA``."""
        if self._error is not None:
            raise self._error
        if self._header is None:
            try:
                parsed = decode_header(bytes(self._peek(min(self._have, _PREFIX + MAX_HEADER_BODY))))
            except TamperedDataset as exc:
                self._fail(exc)
                raise  # pragma: no cover - _fail raised
            if parsed is None:
                return NEED_DATA
            self._header, n = parsed
            self._header_sha256 = header_hash(bytes(self._peek(n)))
            self._consume(n)
            return self._header
        if self._done or self._cipher is None:
            if self._done and self._have:
                self._fail(_bad("dataset.extended",
                                f"{self._have} bytes follow the final chunk {self._index - 1}",
                                index=self._index))
            return NEED_DATA
        header = self._header
        final = self._index == header.chunks - 1
        need = header.chunk_plaintext_size(self._index) + TAG_SIZE
        if self._have < need:
            return NEED_DATA
        try:
            plain = self._cipher.decrypt(
                chunk_nonce(self._index, final), self._peek(need), chunk_aad(self._header_sha256, self._index, final))
        except InvalidCiphertext:
            self._fail(_bad(
                "dataset.chunk",
                f"chunk {self._index} of {header.chunks} does not authenticate: the chunk or the header was "
                "changed, chunks were reordered, or the key is not this dataset's",
                index=self._index,
            ))
            raise  # pragma: no cover - _fail raised
        self._consume(need)
        event = ChunkData(index=self._index, data=plain, final=final)
        self._index += 1
        self._done = final
        if final and self._have:
            self._fail(_bad("dataset.extended",
                            f"{self._have} bytes follow the final chunk {self._index - 1}",
                            index=self._index))
        return event

    def end(self) -> DatasetEnd:
        """At end of input: ``DatasetEnd`` if every chunk authenticated and nothing followed.

        Raises:
            TamperedDataset: ``dataset.truncated`` naming the chunk the file ends in (or the header).
        """
        if self._error is not None:
            raise self._error
        if self._header is None:
            self._fail(_bad("dataset.truncated", f"the file ends inside its header ({self._have} bytes)"))
            raise AssertionError("unreachable")  # pragma: no cover
        if not self._done:
            have = self._have
            self._fail(_bad(
                "dataset.truncated",
                f"the file ends in chunk {self._index} of {self._header.chunks} ({have} of "
                f"{self._header.chunk_plaintext_size(self._index) + TAG_SIZE} bytes): it was cut short",
                index=self._index,
            ))
        return DatasetEnd(plaintext_size=self._header.plaintext_size)


def seal_bytes(header: DatasetHeader, data_key: bytes, plaintext: bytes) -> bytes:
    """The whole sealed file for ``plaintext`` (small inputs, tests; the CLI streams with ``Sealer``)."""
    sealer = Sealer(header, data_key)
    return sealer.header_bytes + sealer.feed(plaintext) + sealer.finish()


def unseal_bytes(sealed: bytes, data_key: bytes) -> tuple[DatasetHeader, bytes]:
    """Header and plaintext of a whole sealed file.

    Raises:
        TamperedDataset: as ``Unsealer``.
    """
    u = Unsealer(data_key)
    u.feed(sealed)
    parts: list[bytes] = []
    header: DatasetHeader | None = None
    while True:
        event = u.next_event()
        if isinstance(event, NeedData):
            break
        if isinstance(event, DatasetHeader):
            header = event
        else:
            parts.append(event.data)
    u.end()
    if header is None:  # pragma: no cover - end() raised
        raise TamperedDataset("no header", check="dataset.truncated")
    return header, b"".join(parts)
