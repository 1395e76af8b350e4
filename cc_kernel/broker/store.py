"""I/O (key broker): the key store directory (``--datasets DIR``) — the broker's keys, dataset records, counts, log.

Layout (docs/dataset.md §5): the directory is mode 0700, every file 0600::

    tls-key.pem          the broker's TLS key (P-256, PKCS#8); its SPKI SHA-256 is pinned in every sealed header
    log-key              the broker log's Ed25519 key (32 raw bytes); log-key.pub holds its public half in hex
    <id>.record          one dataset: canonical msgpack DatasetRecord (the data key is only ever here)
    <id>.count           how many releases of that dataset the broker made (ASCII decimal)
    broker.log           the signed, hash-chained log (cc_kernel.dataset.brokerlog)
    <id>-<n>.cclog       the owner's log of release n of that dataset: a session log (docs/audit-log.md) of
                         every request the enclave ran while the dataset was open, signed by the enclave

Invariants: files are created with O_EXCL at 0600 and renamed into place (never a readable half-written key); a
store whose directory others may read is refused; the log is verified before it is continued.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cc_kernel.crypto.keys import TlsIdentity, make_tls_identity, new_tls_key, spki_der_of_key, spki_sha256
from cc_kernel.crypto.sealing import SigningKey, load_tls_key, tls_key_pem
from cc_kernel.dataset.brokerlog import GENESIS, BrokerLogWriter, verify_broker_log
from cc_kernel.dataset.release import DatasetRecord
from cc_kernel.errors import ConfigError, RemoteProtocolError
from cc_kernel.simstore import write_private

TLS_KEY = "tls-key.pem"
LOG_KEY = "log-key"
LOG_PUB = "log-key.pub"
LOG = "broker.log"


def iso_now() -> str:
    """The current UTC time, RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BrokerStore:
    """A broker's store directory. Opening it creates the directory and the broker's keys when missing.

    Raises (constructor):
        ConfigError: the directory exists with group/other permissions, or a key or the log is unusable.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not self.directory.exists():
            self.directory.mkdir(mode=0o700, parents=True)
        mode = stat.S_IMODE(self.directory.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{self.directory}: the key store must be private (mode 0700), not {mode:04o}")
        tls_path = self.directory / TLS_KEY
        if not tls_path.exists():
            write_private(tls_path, tls_key_pem(new_tls_key()))
        try:
            self._tls_key = load_tls_key(tls_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{tls_path}: not the broker's TLS key: {exc}") from exc
        log_path = self.directory / LOG_KEY
        if not log_path.exists():
            key = SigningKey()
            write_private(log_path, key.private_bytes())
            write_private(self.directory / LOG_PUB, key.public_bytes.hex().encode() + b"\n")
        raw = log_path.read_bytes()
        if len(raw) != 32:
            raise ConfigError(f"{log_path}: not a broker log key (32 bytes)")
        self._log_key = SigningKey(raw)
        self._writer: BrokerLogWriter | None = None

    # --- identity -------------------------------------------------------------------------------------------

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the broker's TLS SubjectPublicKeyInfo (what a sealed header pins)."""
        return spki_sha256(spki_der_of_key(self._tls_key))

    def tls_identity(self) -> TlsIdentity:
        """A certificate for the broker's persistent key, valid from now (the key, not the certificate, is pinned)."""
        return make_tls_identity(self._tls_key, now=datetime.now(UTC))

    @property
    def log_public_key(self) -> bytes:
        """The broker log's Ed25519 public key (32 raw bytes)."""
        return self._log_key.public_bytes

    # --- datasets -------------------------------------------------------------------------------------------

    def _path(self, dataset_id: bytes, suffix: str) -> Path:
        return self.directory / f"{dataset_id.hex()}.{suffix}"

    def put(self, record: DatasetRecord) -> None:
        """Store a new dataset record. Raises ConfigError if the id exists already."""
        path = self._path(record.dataset_id, "record")
        if path.exists():
            raise ConfigError(f"{path}: a dataset with this id exists already")
        write_private(path, record.encode())
        write_private(self._path(record.dataset_id, "count"), b"0\n")

    def get(self, dataset_id: bytes) -> DatasetRecord | None:
        """The record of ``dataset_id``, or None."""
        path = self._path(dataset_id, "record")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return DatasetRecord.decode(data)
        except RemoteProtocolError as exc:
            raise ConfigError(f"{path}: not a dataset record: {exc}") from exc

    def sessions_used(self, dataset_id: bytes) -> int:
        """How many releases of ``dataset_id`` were made."""
        try:
            return int(self._path(dataset_id, "count").read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def count_release(self, dataset_id: bytes) -> int:
        """Record one more release (durably, before the key is sent) and return the new count."""
        n = self.sessions_used(dataset_id) + 1
        write_private(self._path(dataset_id, "count"), f"{n}\n".encode())
        return n

    def owner_log(self, dataset_id: bytes, session: int) -> tuple[Path, Callable[[bytes], None]]:
        """The owner's log file of release ``session`` of ``dataset_id`` (created 0600, never overwritten) and a
        sink that appends to it and fsyncs before returning.

        Raises:
            ConfigError: the file exists already.
        """
        path = self._path(dataset_id, "").with_name(f"{dataset_id.hex()}-{session}.cclog")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except FileExistsError as exc:
            raise ConfigError(f"{path}: the owner's log of this release exists already") from exc
        os.close(fd)

        def sink(data: bytes) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

        return path, sink

    # --- log ------------------------------------------------------------------------------------------------

    def log(self, event: str, data: dict[str, Any]) -> None:
        """Append one signed entry to the broker log (fsynced before returning).

        Raises:
            LogVerificationError: the existing log does not verify (it is never continued then).
        """
        path = self.directory / LOG
        if self._writer is None:
            seq, prev = 0, GENESIS
            with contextlib.suppress(FileNotFoundError):
                entries = verify_broker_log(path.read_bytes(), public_key=self.log_public_key)
                if entries:
                    seq, prev = len(entries), entries[-1].hash
            self._writer = BrokerLogWriter(self._log_key.sign, seq=seq, prev=prev)
        line = self._writer.line(event, data, time=iso_now())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
