"""I/O: the user's client key for enclave servers, created on first use in the Jupyter data directory.

Layout: ``<data dir>/cc_kernel/client/`` (mode 0700) holding ``client-key.pem`` (the private key, PKCS#8,
mode 0600) and ``client-cert.pem`` (its self-signed client certificate; the common name is the comment shown
in the owner's authorised-clients file, ``user@host`` by default). Creation is serialised with an exclusive lock,
so two kernels starting at once agree on one key. Only the kernel side (the kernel in remote mode,
``cc-kernel attest``, ``cc-kernel client-key``) reads it; nothing inside the enclave ever does.
"""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime
from pathlib import Path

from cc_kernel.channel.clients import ClientIdentity
from cc_kernel.crypto.clientcert import (
    client_certificate_info,
    load_client_identity,
    make_client_identity,
    new_client_key,
)
from cc_kernel.errors import ConfigError
from cc_kernel.simstore import default_data_dir, locked_private_dir, write_private

KEY_FILE = "client-key.pem"
CERT_FILE = "client-cert.pem"
_SUBDIR = ("cc_kernel", "client")


def client_key_dir(data_dir: Path | None = None) -> Path:
    """Where the user's client key lives."""
    return (data_dir or default_data_dir()).joinpath(*_SUBDIR)


def default_comment() -> str:
    """``user@host``, as ssh-keygen writes it (at most 64 characters: an X.509 common name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return f"{user}@{socket.gethostname()}"[:64] or "cc-kernel client"


def load_or_create_client_identity(directory: Path | None = None, *, comment: str | None = None) -> ClientIdentity:
    """The user's client key and certificate from ``directory`` (default ``client_key_dir()``), created there
    (key 0600, directory 0700) if absent. ``comment`` names a new key (default ``user@host``); an existing
    key keeps the name it was created with.

    Raises:
        ConfigError: the files exist but cannot be read or do not belong together, or cannot be written.
    """
    directory = directory or client_key_dir()
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    try:
        with locked_private_dir(directory):
            if key_path.exists() or cert_path.exists():
                return _load(key_path, cert_path)
            name = " ".join((comment or default_comment()).split())[:64] or "cc-kernel client"
            identity = make_client_identity(new_client_key(), now=datetime.now(UTC), name=name)
            write_private(key_path, identity.key_pem)
            write_private(cert_path, identity.cert_pem)
            return ClientIdentity(identity, name)
    except OSError as exc:
        raise ConfigError(f"cannot create or read the client key in {directory}: {exc.strerror or exc}") from exc


def _load(key_path: Path, cert_path: Path) -> ClientIdentity:
    try:
        key_pem, cert_pem = key_path.read_bytes(), cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the client key {exc.filename}: {exc.strerror or exc}") from exc
    try:
        identity = load_client_identity(key_pem, cert_pem)
    except ValueError as exc:
        raise ConfigError(f"the client key in {key_path.parent} is unusable: {exc}") from exc
    try:
        name = client_certificate_info(identity.cert_der).common_name
    except ValueError as exc:
        raise ConfigError(f"the client certificate {cert_path} is unusable: {exc}") from exc
    return ClientIdentity(identity, name)

