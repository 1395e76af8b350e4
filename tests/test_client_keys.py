"""Client keys: the client certificate, the authorised-clients file (every rejection and its message), the user's
key store, and mutual TLS in process (authorised, unknown, none, expired, and a key the post-handshake check
refuses). Real servers are in tests/test_serve_clients.py."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.policy import default_hardware_policy
from cc_kernel.channel.client import connect_attested
from cc_kernel.channel.clients import (
    AuthorizedClient,
    AuthorizedClients,
    ClientIdentity,
    authorized_line,
    parse_authorized_clients,
)
from cc_kernel.channel.transport import (
    FramedChannel,
    accept_server,
    busy_line,
    open_client,
    parse_busy_line,
)
from cc_kernel.clientkey import CERT_FILE, KEY_FILE, load_or_create_client_identity
from cc_kernel.crypto.clientcert import client_certificate_info, make_client_identity, new_client_key
from cc_kernel.crypto.keys import TlsIdentity, make_tls_identity, new_tls_key, spki_der_of_key
from cc_kernel.errors import ClientNotAuthorized, ConfigError, RemoteProtocolError, ServerBusy
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.connection import Connection, Role

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _identity(name: str = "alice@laptop", *, now: dt.datetime = NOW) -> ClientIdentity:
    return ClientIdentity(make_client_identity(new_client_key(), now=now, name=name), name)


def _cert(
    *, ca: bool = False, eku: list[x509.ObjectIdentifier] | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None, issuer_name: str | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A certificate with the given properties (for the negative cases the project never makes itself)."""
    key = new_client_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]) if issuer_name else subject
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER), key


def _line(der: bytes, comment: str = "x") -> str:
    return f"cc-kernel-client {base64.b64encode(der).decode()} {comment}"


# --- the client certificate -----------------------------------------------------------------------------------


def test_client_certificate_is_a_self_signed_client_auth_leaf() -> None:
    identity = _identity()
    cert = x509.load_der_x509_certificate(identity.tls.cert_der)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    info = client_certificate_info(identity.tls.cert_der)
    assert info.common_name == "alice@laptop"
    assert info.spki_sha256 == hashlib.sha256(identity.tls.spki_der).digest() == identity.spki_sha256


def test_client_certificate_name_must_fit_a_common_name() -> None:
    with pytest.raises(ValueError, match=r"1\.\.64 characters"):
        make_client_identity(new_client_key(), now=NOW, name="x" * 65)


# --- the authorised-clients file ------------------------------------------------------------------------------


def test_parse_reads_lines_and_ignores_comments_blank_lines_and_repeats() -> None:
    a, b = _identity("a"), _identity("b")
    text = f"# owner: ops\n\n   \n{a.line}\n  # indented comment\n{b.line}\n{a.line} again\n"
    clients = parse_authorized_clients(text, source="f")
    assert [c.comment for c in clients.clients] == ["a", "b"]
    assert [c.line_number for c in clients.clients] == [4, 6]
    assert clients.is_authorized(a.spki_sha256) and clients.is_authorized(b.spki_sha256)
    assert not clients.is_authorized(_identity("c").spki_sha256)
    assert not clients.is_authorized(b"")
    assert clients.anchors_der() == a.tls.cert_der + b.tls.cert_der


def test_a_line_without_a_comment_is_valid() -> None:
    a = _identity("a")
    assert authorized_line(a.tls.cert_der, "") == a.line.rsplit(" ", 1)[0]
    clients = parse_authorized_clients(authorized_line(a.tls.cert_der, "  "))
    assert clients.clients[0].comment == ""


def test_an_empty_file_lists_nobody() -> None:
    assert len(parse_authorized_clients("# nobody yet\n\n")) == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ssh-ed25519 AAAA user@host",
         "line 3: expected 'cc-kernel-client <base64 certificate> [comment]', got 'ssh-ed25519'"),
        ("cc-kernel-client", "line 3: 'cc-kernel-client' is not followed by a base64 certificate"),
        ("cc-kernel-client not*base64! c", "line 3: the certificate is not valid base64"),
        ("cc-kernel-client " + base64.b64encode(b"not a certificate").decode(),
         "line 3: the certificate does not parse"),
    ],
)
def test_malformed_lines_are_errors_naming_the_line(line: str, message: str) -> None:
    text = f"# header\n{_identity().line}\n{line}\n"
    with pytest.raises(ConfigError) as info:
        parse_authorized_clients(text, source="/etc/cc-kernel/authorized_clients")
    assert str(info.value).startswith("/etc/cc-kernel/authorized_clients " + message.split(":")[0])
    assert message in str(info.value)


def test_a_ca_certificate_is_refused() -> None:
    der, _ = _cert(ca=True, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(ConfigError, match=r"line 1: the certificate is a CA certificate \(basicConstraints CA:TRUE"):
        parse_authorized_clients(_line(der), source="f")


def test_a_certificate_without_client_auth_is_refused() -> None:
    none, _ = _cert(eku=None)
    with pytest.raises(ConfigError, match="line 1: the certificate has no extendedKeyUsage clientAuth"):
        parse_authorized_clients(_line(none), source="f")
    server_only, _ = _cert(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(ConfigError, match="line 1: the certificate's extendedKeyUsage does not include clientAuth"):
        parse_authorized_clients(_line(server_only), source="f")


def test_a_certificate_issued_by_someone_else_is_refused() -> None:
    other = new_client_key()
    issued, _ = _cert(eku=[ExtendedKeyUsageOID.CLIENT_AUTH], issuer_key=other, issuer_name="someone")
    with pytest.raises(ConfigError, match="line 1: the certificate is not self-signed"):
        parse_authorized_clients(_line(issued), source="f")
    forged, _ = _cert(eku=[ExtendedKeyUsageOID.CLIENT_AUTH], issuer_key=other)  # issuer = subject, wrong key
    with pytest.raises(ConfigError, match="line 1: the certificate's self-signature does not verify"):
        parse_authorized_clients(_line(forged), source="f")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read the authorised-clients file {tmp_path / 'nope'}"):
        AuthorizedClients.load(tmp_path / "nope")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=f"the authorised-clients file {binary} is not UTF-8 text"):
        AuthorizedClients.load(binary)
    good = tmp_path / "good"
    good.write_text(_identity("a").line + "\n")
    assert AuthorizedClients.load(good).source == str(good)


# --- the user's client key --------------------------------------------------------------------------------------


def test_client_key_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    directory = tmp_path / "cc_kernel" / "client"
    first = load_or_create_client_identity(directory, comment="bob@desk")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    again = load_or_create_client_identity(directory, comment="ignored for an existing key")
    assert again.tls.cert_der == first.tls.cert_der and again.comment == "bob@desk"
    assert again.line.endswith(" bob@desk")
    assert parse_authorized_clients(again.line).is_authorized(first.spki_sha256)


def test_client_key_files_that_do_not_belong_together_are_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "client"
    load_or_create_client_identity(directory)
    other = _identity("other")
    (directory / CERT_FILE).write_bytes(other.tls.cert_pem)
    with pytest.raises(ConfigError, match="is unusable: the client certificate is not for the client key"):
        load_or_create_client_identity(directory)


# --- busy line ------------------------------------------------------------------------------------------------


def test_busy_line_round_trips_and_nothing_else_parses() -> None:
    assert busy_line(8, 8) == b"CC-KERNEL-BUSY active=8 max=8\n"
    assert parse_busy_line(busy_line(3, 8) + b"trailing") == (3, 8)
    assert parse_busy_line(b"CC-KERNEL-BUSY active=x max=8\n") is None
    assert parse_busy_line(b"\x16\x03\x03") is None


def test_a_busy_line_instead_of_a_handshake_is_server_busy() -> None:
    async def main() -> ServerBusy:
        ours, theirs = socket.socketpair()
        with theirs:
            theirs.sendall(busy_line(2, 2))
            theirs.shutdown(socket.SHUT_WR)
            with pytest.raises(ServerBusy) as info:
                await open_client(ours, Connection(Role.KERNEL), timeout=10)
        return info.value

    error = asyncio.run(main())
    assert str(error).endswith("is busy: 2 of 2 sessions are active; try again later")
    assert (error.active, error.maximum) == (2, 2)


# --- mutual TLS in process ------------------------------------------------------------------------------------


async def _handshake(
    clients: AuthorizedClients | None, client: ClientIdentity | None
) -> tuple[FramedChannel | BaseException, BaseException | None]:
    """Server and client over a socketpair; the client sends Hello and reads. (server outcome, client error)."""
    server_sock, client_sock = socket.socketpair()
    identity = make_tls_identity(new_tls_key(), now=dt.datetime.now(dt.UTC))

    async def serve() -> FramedChannel | BaseException:
        try:
            channel = await accept_server(server_sock, identity, Connection(Role.ENCLAVE), clients=clients,
                                          timeout=10)
        except Exception as exc:
            return exc
        await channel.receive()
        await channel.aclose()
        return channel

    server = asyncio.ensure_future(serve())
    error: BaseException | None = None
    try:  # the kernel's own client: Hello, then (never answered here) the attestation request
        await connect_attested(client_sock, policy=default_hardware_policy(), anchors=hardware_anchors(),
                               timeout=10, client_identity=client)
    except Exception as exc:
        error = exc
    return await server, error


def test_an_authorised_client_is_served_and_named() -> None:
    alice = _identity()
    outcome, _ = asyncio.run(_handshake(parse_authorized_clients(alice.line), alice))
    assert isinstance(outcome, FramedChannel)
    assert outcome.client_key_sha256 == alice.spki_sha256


def test_a_server_without_clients_serves_anyone_and_names_nobody() -> None:
    outcome, _ = asyncio.run(_handshake(None, _identity()))
    assert isinstance(outcome, FramedChannel) and outcome.client_key_sha256 is None


@pytest.mark.parametrize("who", ["unknown", "none", "expired"])
def test_unauthorised_clients_are_refused_at_the_handshake(who: str) -> None:
    alice = _identity()
    expired = _identity("old", now=NOW - dt.timedelta(days=4000))
    clients = parse_authorized_clients(f"{alice.line}\n{expired.line}\n")
    client = {"unknown": _identity("mallory"), "none": None, "expired": expired}[who]
    outcome, error = asyncio.run(_handshake(clients, client))
    assert isinstance(outcome, ClientNotAuthorized)
    assert str(outcome).startswith("client refused at the TLS handshake: ")
    assert {"unknown": "self-signed certificate", "none": "peer did not return a certificate",
            "expired": "certificate has expired"}[who] in str(outcome)
    assert isinstance(error, ClientNotAuthorized)
    if client is None:
        assert str(error) == ("the enclave server requires a client key and none was presented; create yours and "
                              "print the line its owner must add with `cc-kernel client-key`")
    else:
        assert str(error) == f"the enclave server did not accept this client key; ask its owner to add:\n{client.line}"
        assert error.line == client.line


def test_a_key_that_only_chains_to_an_anchor_is_refused_after_the_handshake() -> None:
    """Defence in depth: were an anchor ever a CA (the parser refuses them), a certificate it issued would pass
    OpenSSL's check; the SPKI check after the handshake still refuses it."""
    ca_key = new_client_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = new_client_key()
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issued")]))
        .issuer_name(ca_cert.subject).public_key(leaf_key.public_key()).serial_number(2)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_cert_der = ca_cert.public_bytes(serialization.Encoding.DER)
    ca_spki = hashlib.sha256(spki_der_of_key(ca_key)).digest()
    clients = AuthorizedClients((AuthorizedClient(ca_cert_der, ca_spki, "a CA", 1),), "constructed")
    leaf_identity = ClientIdentity(
        TlsIdentity(
            key_pem=leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()),
            cert_der=leaf.public_bytes(serialization.Encoding.DER), spki_der=spki_der_of_key(leaf_key),
        ),
        "issued",
    )
    outcome, error = asyncio.run(_handshake(clients, leaf_identity))
    leaf_spki = hashlib.sha256(spki_der_of_key(leaf_key)).hexdigest()
    assert isinstance(outcome, ClientNotAuthorized)
    assert str(outcome) == (f"client refused after the TLS handshake: its key (SPKI SHA-256 {leaf_spki}) is not in "
                            "constructed")
    assert isinstance(error, ClientNotAuthorized) and error.line == leaf_identity.line


# --- the pre-READY frame limit ------------------------------------------------------------------------------


def test_the_enclave_accepts_large_frames_only_once_ready() -> None:
    """Before READY the enclave refuses a frame over 64 KiB as soon as its header arrives; from READY on its
    full limit applies. The kernel never had the lower limit (the enclave's evidence can be large)."""
    refused = Connection(Role.ENCLAVE)
    assert refused.receive_frame_limit == 64 * 1024
    refused.receive_data((64 * 1024 + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="frame length 65537 exceeds the limit of 65536"):
        refused.next_event()

    kernel, enclave = Connection(Role.KERNEL), Connection(Role.ENCLAVE)
    assert kernel.receive_frame_limit == 64 * 1024 * 1024
    enclave.receive_data(kernel.send(m.Hello(role="kernel", versions=[m.PROTOCOL_VERSION], software="k")))
    assert isinstance(enclave.next_event(), m.Hello)
    kernel.receive_data(enclave.send(m.Hello(role="enclave", versions=[m.PROTOCOL_VERSION], software="e")))
    assert isinstance(kernel.next_event(), m.Hello)
    enclave.receive_data(kernel.send(m.AttestRequest(nonce=bytes(32), session_id=bytes(16))))
    assert isinstance(enclave.next_event(), m.AttestRequest)
    assert enclave.receive_frame_limit == 64 * 1024
    kernel.receive_data(enclave.send(m.AttestResponse(envelope=b"e")))
    assert isinstance(kernel.next_event(), m.AttestResponse)
    kernel.attestation_verified()
    assert enclave.receive_frame_limit == 64 * 1024 * 1024
    big = kernel.send(m.ExecuteRequest(
        req_id=1, code="#" * (1024 * 1024), silent=False, store_history=True, user_expressions={},
        allow_stdin=False, execution_count=1, cell_id=None, kind="cell"))
    enclave.receive_data(big)
    assert isinstance(enclave.next_event(), m.ExecuteRequest)


def test_a_supervisor_serves_nobody_unless_told_whom() -> None:
    """The enclave processes get the authorised-clients file, or the unsafe option only when asked for."""
    from cc_kernel.channel.transport import parse_address
    from cc_kernel.enclave.server import Supervisor

    address = parse_address("127.0.0.1:0")
    with pytest.raises(ValueError, match="a Supervisor needs authorized_clients, or unsafe_serve_any_client=True"):
        Supervisor(address).worker_argv(5)
    listed = Supervisor(address, authorized_clients=Path("/etc/cc-kernel/authorized_clients")).worker_argv(5)
    assert listed[listed.index("--authorized-clients") + 1] == "/etc/cc-kernel/authorized_clients"
    assert "--unsafe-serve-any-client" not in listed
    anyone = Supervisor(address, unsafe_serve_any_client=True, pre_attestation_timeout=2.5).worker_argv(5)
    assert "--unsafe-serve-any-client" in anyone and "--authorized-clients" not in anyone
    assert anyone[anyone.index("--pre-attestation-timeout") + 1] == "2.5"
