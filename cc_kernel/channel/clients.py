"""I/O: the authorised-clients file of an enclave server (``authorized_keys`` style) and the client's own key.

File format, one client per line::

    cc-kernel-client <base64 of the DER client certificate> [comment]

Blank lines and lines whose first non-blank character is ``#`` are ignored; anything else that does not parse
is an error naming its line number (a server never starts with a half-read list). Each certificate must be a
self-signed, non-CA certificate with extendedKeyUsage clientAuth (``crypto.clientcert``), as
``cc-kernel client-key`` makes. The comment (the rest of the line) is for people; it is never trusted.

Invariants: ``parse_authorized_clients`` is pure (text in, value out); ``AuthorizedClients.is_authorized``
compares fingerprints in constant time with every listed key; only ``AuthorizedClients.load`` touches a file.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from pathlib import Path

from cc_kernel.crypto.clientcert import certificate_spki_sha256, client_certificate_info
from cc_kernel.crypto.keys import TlsIdentity
from cc_kernel.errors import ConfigError

#: The first word of every line of an authorised-clients file.
LINE_KEYWORD = "cc-kernel-client"
#: Where ``cc-kernel enclave serve`` looks for the authorised clients when ``--authorized-clients`` is not given.
DEFAULT_AUTHORIZED_CLIENTS = Path("/etc/cc-kernel/authorized_clients")
#: The command that prints a client's line (named in every message that asks for one).
CLIENT_KEY_COMMAND = "cc-kernel client-key"
#: Largest authorised-clients file read (a few thousand clients).
MAX_FILE_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class AuthorizedClient:
    """One authorised client key: its certificate, the key's SPKI SHA-256, the comment and where it was listed."""

    cert_der: bytes
    spki_sha256: bytes
    comment: str
    line_number: int


@dataclass(frozen=True)
class AuthorizedClients:
    """The client keys an enclave server accepts. Empty means nobody (a server refuses to start with it)."""

    clients: tuple[AuthorizedClient, ...]
    source: str = "<text>"

    @classmethod
    def load(cls, path: Path | str) -> AuthorizedClients:
        """Read and parse an authorised-clients file.

        Raises:
            ConfigError: the file cannot be read, is larger than MAX_FILE_SIZE, is not UTF-8, or a line is
                malformed (the message names the file and the line number).
        """
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the authorised-clients file {path}: {exc.strerror or exc}") from exc
        if len(data) > MAX_FILE_SIZE:
            raise ConfigError(f"the authorised-clients file {path} is larger than {MAX_FILE_SIZE} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"the authorised-clients file {path} is not UTF-8 text: {exc}") from None
        return parse_authorized_clients(text, source=str(path))

    def is_authorized(self, spki_sha256: bytes) -> bool:
        """Whether a key with this SPKI SHA-256 is listed. Compares with every entry, in constant time each."""
        found = False
        for client in self.clients:
            found |= hmac.compare_digest(client.spki_sha256, spki_sha256)
        return found

    def anchors_der(self) -> bytes:
        """Every listed certificate, DER, concatenated: the server context's only trust anchors."""
        return b"".join(client.cert_der for client in self.clients)

    def __len__(self) -> int:
        return len(self.clients)


def parse_authorized_clients(text: str, *, source: str = "<text>") -> AuthorizedClients:
    """Parse the text of an authorised-clients file (format in the module docstring).

    A key listed twice is kept once (the first line). An empty result (no client lines) is valid here; the
    server decides what it means.

    Raises:
        ConfigError: a line that is neither blank, a comment nor a valid client line; the message names
            ``source`` and the 1-based line number, and says what is wrong.
    """
    clients: list[AuthorizedClient] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = line.split(None, 2)
        if parts[0] != LINE_KEYWORD:
            raise ConfigError(
                f"{where}: expected '{LINE_KEYWORD} <base64 certificate> [comment]', got {parts[0][:40]!r}"
            )
        if len(parts) < 2:
            raise ConfigError(f"{where}: '{LINE_KEYWORD}' is not followed by a base64 certificate")
        try:
            der = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: the certificate is not valid base64") from None
        try:
            info = client_certificate_info(der)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if info.spki_sha256 in seen:
            continue
        seen.add(info.spki_sha256)
        comment = parts[2] if len(parts) > 2 else ""
        clients.append(AuthorizedClient(der, info.spki_sha256, comment, number))
    return AuthorizedClients(tuple(clients), source)


def authorized_line(cert_der: bytes, comment: str) -> str:
    """The authorised-clients line for a client certificate: what ``cc-kernel client-key`` prints."""
    line = f"{LINE_KEYWORD} {base64.b64encode(cert_der).decode('ascii')}"
    comment = " ".join(comment.split())  # one line, whatever the comment holds
    return f"{line} {comment}" if comment else line


@dataclass(frozen=True)
class ClientIdentity:
    """A client key and its self-signed certificate (in memory), presented to enclave servers."""

    tls: TlsIdentity
    comment: str = ""

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the client key's SubjectPublicKeyInfo: what servers check and session logs record."""
        return certificate_spki_sha256(self.tls.cert_der)

    @property
    def line(self) -> str:
        """The line the owner of an enclave server adds to its authorised-clients file for this key."""
        return authorized_line(self.tls.cert_der, self.comment)


def refusal_message(identity: ClientIdentity | None) -> str:
    """What a client prints when a server refused it at the handshake (one owner for that text)."""
    if identity is None:
        return (
            "the enclave server requires a client key and none was presented; create yours and print the line "
            f"its owner must add with `{CLIENT_KEY_COMMAND}`"
        )
    return f"the enclave server did not accept this client key; ask its owner to add:\n{identity.line}"
