"""The release exchange in-process against a simulated enclave's evidence, under the owner's policy."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, create_authority
from cc_kernel.attestation.policy import load_policy
from cc_kernel.audit.format import OpeningEntry
from cc_kernel.crypto.keys import AuditKey, new_tls_key, spki_der_of_key
from cc_kernel.crypto.sealing import ReleaseKey
from cc_kernel.dataset.format import DatasetHeader, encode_header, header_hash, seal_bytes, unseal_bytes
from cc_kernel.dataset.release import (
    DatasetRecord,
    LogOpen,
    ReleaseAttestation,
    ReleaseChallenge,
    ReleaseClient,
    ReleaseGrant,
    ReleaseRefusal,
    ReleaseRequest,
    ReleaseResponse,
    appraise_release,
    check_broker,
    decode_release,
    encode_release,
    new_challenge,
    open_owner_log,
    refusal_of,
    release_response,
)
from cc_kernel.dataset.rules import load_rules
from cc_kernel.enclave.evidence import SimulatedSource
from cc_kernel.errors import DatasetExpired, ReleaseRefused, RemoteProtocolError, TamperedDataset, WrongBroker
from cc_kernel.measure import enclave_measurement
from cc_kernel.testing.enclaves import simulation_policy_text

MEASUREMENT = enclave_measurement()
RULES = 'version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\nmax_sessions = 2\n'
REQUESTER = b"\x07" * 32
DATA = b"patient,age\n1,42\n2,57\n" * 100


def owner_policy(*, allow_debug: bool = False) -> bytes:
    return simulation_policy_text([MEASUREMENT], allow_debug=allow_debug).encode()


def make_dataset(rules: str = RULES, policy: bytes | None = None) -> tuple[DatasetRecord, DatasetHeader, bytes]:
    policy = policy if policy is not None else owner_policy()
    key = os.urandom(32)
    header = DatasetHeader(
        owner="St Example Hospital", dataset_id=os.urandom(16), broker="127.0.0.1:7900",
        broker_spki_sha256=b"\x05" * 32, policy_sha256=load_policy(policy).sha256,
        rules_sha256=load_rules(rules).sha256, format="text", plaintext_size=len(DATA), chunk_size=1024,
    )
    sealed = seal_bytes(header, key, DATA)
    record = DatasetRecord(dataset_id=header.dataset_id, owner=header.owner,
                           header_sha256=header_hash(encode_header(header)), data_key=key, policy=policy,
                           rules=rules.encode())
    return record, header, sealed


class Exchange:
    """One exchange, each message through the codec as it would travel."""

    def __init__(self, record: DatasetRecord, header: DatasetHeader, source: SimulatedSource,
                 anchors: TrustAnchors, *, sessions_used: int = 0, now: datetime | None = None) -> None:
        self.record, self.header, self.source, self.anchors = record, header, source, anchors
        self.client = ReleaseClient(header, header_hash(encode_header(header)), requester_spki_sha256=REQUESTER)
        self.sessions_used = sessions_used
        self.now = now or datetime.now(UTC)

    def wire(self, msg: object) -> object:
        return decode_release(encode_release(msg))  # type: ignore[arg-type]

    def challenge(self) -> tuple[ReleaseRequest, ReleaseChallenge]:
        request = self.wire(self.client.request())
        assert isinstance(request, ReleaseRequest)
        challenge = self.wire(new_challenge(request, self.record, nonce=os.urandom(32)))
        assert isinstance(challenge, ReleaseChallenge)
        return request, challenge

    def attest(self, challenge: ReleaseChallenge, client: ReleaseClient | None = None) -> ReleaseAttestation:
        client = client or self.client
        report_data = client.report_data(challenge)
        env = self.source.collect(report_data, audit_pub=client.release_key.public_bytes,
                                  session_id=self.header.dataset_id, nonce=challenge.nonce)
        att = self.wire(client.attestation(encode_envelope(env)))
        assert isinstance(att, ReleaseAttestation)
        return att

    def decide(self, request: ReleaseRequest, challenge: ReleaseChallenge,
               att: ReleaseAttestation) -> ReleaseResponse | ReleaseRefusal:
        try:
            grant = appraise_release(self.record, request, challenge, att, anchors=hardware_anchors(),
                                     simulation_anchors=self.anchors, now=self.now,
                                     sessions_used=self.sessions_used)
        except ReleaseRefused as exc:
            reply: ReleaseResponse | ReleaseRefusal = refusal_of(exc)
        else:
            reply = release_response(grant, self.record)
        out = self.wire(reply)
        assert isinstance(out, ReleaseResponse | ReleaseRefusal)
        return out

    def run(self) -> bytes:
        request, challenge = self.challenge()
        reply = self.decide(request, challenge, self.attest(challenge))
        return self.client.open(reply).data_key


@pytest.fixture
def source(sim_authority: SimulationAuthority) -> SimulatedSource:
    return SimulatedSource(sim_authority, MEASUREMENT)


def test_release_accepted_and_unseals(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, sealed = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    reply = ex.decide(request, challenge, ex.attest(challenge))
    assert isinstance(reply, ReleaseResponse)
    assert reply.session == 1
    assert reply.suite == "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
    assert record.data_key not in encode_release(reply)  # only wrapped
    released = ex.client.open(reply)
    assert released.rules.mode == "inspect"
    assert unseal_bytes(sealed, released.data_key)[1] == DATA


def test_grant_only_from_appraisal(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    with pytest.raises(TypeError, match="only produced by appraise_release"):
        ReleaseGrant(dataset_id=b"", nonce=b"", release_pub=b"", session=1, result=None,  # type: ignore[arg-type]
                     rules=load_rules(RULES))


def test_a_changed_grant_is_not_a_grant(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    """A grant copied with another release key would wrap the data key to that key: it is refused."""
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    grant = appraise_release(record, request, challenge, ex.attest(challenge), anchors=hardware_anchors(),
                             simulation_anchors=sim_anchors, now=ex.now, sessions_used=0)
    attacker = ReleaseKey().public_bytes
    with pytest.raises(TypeError, match="ReleaseGrant is only produced by appraise_release"):
        replace(grant, release_pub=attacker)
    forged = object.__new__(ReleaseGrant)
    for name in ("dataset_id", "nonce", "session", "result", "rules"):
        object.__setattr__(forged, name, getattr(grant, name))
    object.__setattr__(forged, "release_pub", attacker)
    with pytest.raises(TypeError, match="this ReleaseGrant was not sealed by appraise_release"):
        release_response(forged, record)
    assert release_response(grant, record).session == 1


def refused(ex: Exchange, request: ReleaseRequest, challenge: ReleaseChallenge,
            att: ReleaseAttestation) -> ReleaseRefused:
    reply = ex.decide(request, challenge, att)
    assert isinstance(reply, ReleaseRefusal)
    with pytest.raises(ReleaseRefused) as info:
        ex.client.open(reply)
    assert info.value.check == reply.check
    return info.value


def test_debug_enclave_refused(sim_authority: SimulationAuthority, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    ex = Exchange(record, header, SimulatedSource(sim_authority, MEASUREMENT, faults=frozenset({"debug"})),
                  sim_anchors)
    request, challenge = ex.challenge()
    exc = refused(ex, request, challenge, ex.attest(challenge))
    assert exc.check == "release.policy"
    assert "does not meet the owner's policy" in str(exc)
    assert "debug" in str(exc).lower()


def test_debug_allowed_only_if_the_owner_says_so(sim_authority: SimulationAuthority,
                                                 sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset(policy=owner_policy(allow_debug=True))
    ex = Exchange(record, header, SimulatedSource(sim_authority, MEASUREMENT, faults=frozenset({"debug"})),
                  sim_anchors)
    assert len(ex.run()) == 32


def test_modified_measurement_refused(sim_authority: SimulationAuthority, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    changed = bytes([MEASUREMENT[0] ^ 1]) + MEASUREMENT[1:]
    ex = Exchange(record, header, SimulatedSource(sim_authority, changed), sim_anchors)
    request, challenge = ex.challenge()
    exc = refused(ex, request, challenge, ex.attest(challenge))
    assert exc.check == "release.policy"
    assert "[policy.measurement]" in str(exc)


def test_other_enclave_authority_refused(sim_anchors: TrustAnchors) -> None:
    """Evidence from a TEE whose root the owner's broker does not pin."""
    other = create_authority(now=datetime(2025, 6, 1, tzinfo=UTC))
    record, header, _ = make_dataset()
    ex = Exchange(record, header, SimulatedSource(other, MEASUREMENT), sim_anchors)
    request, challenge = ex.challenge()
    exc = refused(ex, request, challenge, ex.attest(challenge))
    assert exc.check == "release.evidence"
    assert "not authentic" in str(exc)


def test_replayed_exchange_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, old_challenge = ex.challenge()
    old = ex.attest(old_challenge)
    assert isinstance(ex.decide(request, old_challenge, old), ReleaseResponse)
    _, challenge = ex.challenge()  # a fresh exchange: the recorded attestation is sent again
    exc = refused(ex, request, challenge, old)
    assert exc.check == "release.nonce"
    assert "replayed release exchange" in str(exc)


def test_replayed_evidence_under_the_new_nonce_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    """The attacker relabels the old evidence with the new nonce: the evidence itself answers the old one."""
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, old_challenge = ex.challenge()
    old = ex.attest(old_challenge)
    _, challenge = ex.challenge()
    exc = refused(ex, request, challenge, replace(old, nonce=challenge.nonce))
    assert exc.check == "release.nonce"
    assert "replayed" in str(exc)


def test_evidence_binding_another_release_key_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    """Genuine evidence for the enclave's release key, presented with the attacker's key to wrap to."""
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    att = ex.attest(challenge)
    attacker = ReleaseKey()
    exc = refused(ex, request, challenge, replace(att, release_pub=attacker.public_bytes))
    assert exc.check == "release.binding"
    assert "does not bind this release" in str(exc)


def test_channel_evidence_is_not_release_evidence(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    """Evidence made for the session channel (another domain tag) never releases a key."""
    from cc_kernel.attestation.binding import expected_report_data

    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    ex.client.report_data(challenge)
    rd = expected_report_data(tls_spki=REQUESTER, audit_pub=ex.client.release_key.public_bytes,
                              nonce=challenge.nonce, session_id=header.dataset_id)
    env = source.collect(rd, audit_pub=ex.client.release_key.public_bytes, session_id=header.dataset_id,
                         nonce=challenge.nonce)
    exc = refused(ex, request, challenge, ex.client.attestation(encode_envelope(env)))
    assert exc.check == "release.binding"


def test_expired_dataset_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset(RULES.replace("2099", "2025"))
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    reply = ex.decide(request, challenge, ex.attest(challenge))
    assert isinstance(reply, ReleaseRefusal)
    with pytest.raises(DatasetExpired, match="expired at 2025-01-01") as info:
        ex.client.open(reply)
    assert info.value.check == "rules.not_after"


def test_max_sessions_exceeded(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    assert len(Exchange(record, header, source, sim_anchors, sessions_used=1).run()) == 32
    ex = Exchange(record, header, source, sim_anchors, sessions_used=2)
    request, challenge = ex.challenge()
    exc = refused(ex, request, challenge, ex.attest(challenge))
    assert exc.check == "rules.max_sessions"
    assert "released 2 times, its owner allows 2" in str(exc)


def test_simulation_refused_by_a_hardware_policy(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    hardware = b'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["' + MEASUREMENT.hex().encode() + b'"]\n'
    record, header, _ = make_dataset(policy=hardware)
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    exc = refused(ex, request, challenge, ex.attest(challenge))
    assert exc.check == "release.evidence"
    assert "SIMULATED TEE" in str(exc)


def test_unknown_dataset_refused(sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    with pytest.raises(ReleaseRefused, match="holds no such dataset") as info:
        new_challenge(ReleaseRequest(dataset_id=b"\x00" * 16, requester_spki_sha256=REQUESTER), record,
                      nonce=os.urandom(32))
    assert info.value.check == "release.dataset"
    with pytest.raises(ReleaseRefused, match="holds no such dataset"):
        new_challenge(ReleaseRequest(dataset_id=header.dataset_id, requester_spki_sha256=REQUESTER), None,
                      nonce=os.urandom(32))


def test_tampered_header_named_by_the_response(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    """A header changed on the way (here: its format) is named by the broker's record of its hash."""
    record, header, _ = make_dataset()
    forged = replace(header, format="bytes")
    ex = Exchange(record, forged, source, sim_anchors)
    with pytest.raises(TamperedDataset, match="not the one its owner sealed") as info:
        ex.run()
    assert info.value.check == "dataset.header"


def test_rules_swapped_by_the_broker_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    looser = replace(record, rules=RULES.replace("max_sessions = 2", "max_sessions = 99").encode())
    ex = Exchange(looser, header, source, sim_anchors)
    with pytest.raises(ReleaseRefused, match="not the ones the sealed file names") as info:
        ex.run()
    assert info.value.check == "release.rules"


def test_wrapped_key_to_another_key_does_not_open(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    """A kernel relaying the exchange sees only the wrapped key; it cannot open it, nor can another client."""
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    reply = ex.decide(request, challenge, ex.attest(challenge))
    assert isinstance(reply, ReleaseResponse)
    eavesdropper = ReleaseClient(header, ex.client.header_sha256, requester_spki_sha256=REQUESTER)
    eavesdropper.report_data(challenge)
    with pytest.raises(ReleaseRefused, match="does not open") as info:
        eavesdropper.open(reply)
    assert info.value.check == "release.wrap"



def test_wrong_broker() -> None:
    _, header, _ = make_dataset()
    check_broker(header, spki_sha256=b"\x05" * 32)
    check_broker(header, spki_sha256=b"\x05" * 32, address="127.0.0.1:7900")
    with pytest.raises(WrongBroker, match="its TLS key differs") as info:
        check_broker(header, spki_sha256=b"\x06" * 32)
    assert info.value.check == "broker.key"
    with pytest.raises(WrongBroker, match=r"names the broker 127\.0\.0\.1:7900") as info:
        check_broker(header, spki_sha256=b"\x05" * 32, address="10.0.0.1:7900")
    assert info.value.check == "broker.address"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x81\xa1t\xa4nope", "not a release message"),
        (encode_release(ReleaseRequest(dataset_id=b"\x00" * 15, requester_spki_sha256=REQUESTER)), "16 bytes"),
        (b"\xc1", "malformed msgpack"),
    ],
)
def test_codec_rejects(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_release(data)


def test_attestation_for_another_dataset_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    att = ex.attest(challenge)
    exc = refused(ex, request, challenge, replace(att, dataset_id=b"\x00" * 16))
    assert exc.check == "release.dataset"
    assert "for another dataset" in str(exc)


def test_challenge_for_another_dataset_refused_by_the_client(source: SimulatedSource,
                                                             sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    _, challenge = ex.challenge()
    with pytest.raises(ReleaseRefused, match="challenged for another dataset") as info:
        ex.client.report_data(replace(challenge, dataset_id=b"\x00" * 16))
    assert info.value.check == "release.challenge"


def test_response_for_another_dataset_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    reply = ex.decide(request, challenge, ex.attest(challenge))
    assert isinstance(reply, ReleaseResponse)
    with pytest.raises(ReleaseRefused, match="the response is for another dataset") as info:
        ex.client.open(replace(reply, dataset_id=b"\x00" * 16))
    assert info.value.check == "release.response"


def test_wrapped_key_changed_in_transit(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    record, header, _ = make_dataset()
    ex = Exchange(record, header, source, sim_anchors)
    request, challenge = ex.challenge()
    reply = ex.decide(request, challenge, ex.attest(challenge))
    assert isinstance(reply, ReleaseResponse)
    flipped = reply.wrapped_key[:-1] + bytes([reply.wrapped_key[-1] ^ 1])
    with pytest.raises(ReleaseRefused, match="does not open") as info:
        ex.client.open(replace(reply, wrapped_key=flipped))
    assert info.value.check == "release.wrap"


# --- the owner's log, opened on the release connection ---------------------------------------------------------


class LogSetup:
    """A granted release to a monitor with a real TLS key, and what it would send to open the owner's log."""

    def __init__(self, source: SimulatedSource, anchors: TrustAnchors) -> None:
        self.record, header, _ = make_dataset()
        self.spki = spki_der_of_key(new_tls_key())
        self.audit = AuditKey()
        self.anchors = anchors
        ex = Exchange(self.record, header, source, anchors)
        ex.client = ReleaseClient(header, header_hash(encode_header(header)),
                                  requester_spki_sha256=hashlib.sha256(self.spki).digest())
        self.request, self.challenge = ex.challenge()
        self.grant = appraise_release(self.record, self.request, self.challenge, ex.attest(self.challenge),
                                      anchors=hardware_anchors(), simulation_anchors=anchors,
                                      now=datetime.now(UTC), sessions_used=0)

    def log_open(self, source: SimulatedSource, *, spki: bytes | None = None, nonce: bytes | None = None) -> LogOpen:
        session_id, nonce = b"L" * 16, nonce or self.challenge.nonce
        env = source.collect(expected_report_data(tls_spki=self.spki, audit_pub=self.audit.public_bytes, nonce=nonce,
                                                  session_id=session_id),
                             audit_pub=self.audit.public_bytes, session_id=session_id, nonce=nonce)
        msg = decode_release(encode_release(LogOpen(session_id=session_id, tls_spki=spki or self.spki,
                                                    audit_pub=self.audit.public_bytes, evidence=encode_envelope(env))))
        assert isinstance(msg, LogOpen)
        return msg

    def open(self, msg: LogOpen) -> OpeningEntry:
        return open_owner_log(self.record, self.grant, self.request, msg, anchors=hardware_anchors(),
                              simulation_anchors=self.anchors, now=datetime.now(UTC), opened_ms=1, versions={})


def test_the_owners_log_opens_like_a_session_log(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    setup = LogSetup(source, sim_anchors)
    opening = setup.open(setup.log_open(source))
    assert (opening.session_id, opening.tls_spki, opening.nonce) == (b"L" * 16, setup.spki, setup.challenge.nonce)
    assert opening.audit_pub == setup.audit.public_bytes and opening.policy == setup.record.policy.decode()
    assert opening.settings == {"dataset": setup.record.dataset_id.hex(), "release": 1}


def test_the_owners_log_of_another_tls_key_is_refused(source: SimulatedSource, sim_anchors: TrustAnchors) -> None:
    setup = LogSetup(source, sim_anchors)
    other = spki_der_of_key(new_tls_key())
    with pytest.raises(ReleaseRefused, match="another TLS key than the release was asked for") as info:
        setup.open(setup.log_open(source, spki=other))
    assert info.value.check == "log.key"


def test_the_owners_log_with_evidence_for_another_nonce_is_refused(source: SimulatedSource,
                                                                  sim_anchors: TrustAnchors) -> None:
    setup = LogSetup(source, sim_anchors)
    with pytest.raises(ReleaseRefused) as info:
        setup.open(setup.log_open(source, nonce=os.urandom(32)))  # replayed from another exchange
    assert info.value.check == "log.binding"


def test_the_owners_log_from_a_debug_enclave_is_refused(sim_authority: SimulationAuthority, source: SimulatedSource,
                                                       sim_anchors: TrustAnchors) -> None:
    setup = LogSetup(source, sim_anchors)
    debug = SimulatedSource(sim_authority, MEASUREMENT, faults=frozenset({"debug"}))
    with pytest.raises(ReleaseRefused, match="does not meet the owner's policy") as info:
        setup.open(setup.log_open(debug))
    assert info.value.check == "log.policy"
