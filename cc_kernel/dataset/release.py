"""Pure dataset layer: the key-release exchange (docs/dataset.md §3), sans-IO, shaped like Trustee's KBS.

    monitor                                        broker (the data owner's)
    ReleaseRequest(dataset_id, requester)   ->
                                            <-     ReleaseChallenge(dataset_id, nonce)        fresh 32 bytes
    ReleaseAttestation(nonce, release_pub,  ->     evidence: report_data = expected_release_report_data(...)
                       evidence)
                                            <-     ReleaseResponse(wrapped_key, header hash, rules) | ReleaseRefusal
    LogOpen(session_id, tls_spki, audit_pub, ->     evidence: report_data = expected_report_data(...), the nonce above
            evidence)
                                            <-     LogOpened(opening_hash)                    the owner's log opened
    LogEntry(receipt)                        ->     (each request while the dataset is open, then the closing entry)
                                            <-     LogAck(count)

Invariants: no I/O, no clock, no randomness (``now``, the nonce and the trust anchors are parameters); the broker
side releases only through ``appraise_release`` -> ``ReleaseGrant`` (nothing else can build one), whose steps are
numbered and each refusal names its check: ``release.dataset``, ``release.challenge``, ``rules.not_after``,
``rules.max_sessions``, ``release.evidence``, ``release.nonce``, ``release.binding``, ``release.policy``; the
client side names ``release.response``, ``release.rules``, ``release.wrap`` and ``dataset.header``. The data key
travels only inside an RFC 9180 HPKE base-mode ciphertext to the release key bound in the evidence.
Messages are canonical msgpack maps (``protocol.codec``) with a strict schema.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.binding import check_binding, check_release_binding, expected_release_report_data
from cc_kernel.attestation.envelope import parse_envelope_unverified
from cc_kernel.attestation.evidence import Sealed, require_sealed, seal
from cc_kernel.attestation.policy import load_policy
from cc_kernel.attestation.result import AttestationResult
from cc_kernel.attestation.verify import answered_nonce, verify_evidence
from cc_kernel.audit.format import OpeningEntry
from cc_kernel.audit.receipts import make_opening
from cc_kernel.crypto.hashing import TAG_DATASET_WRAP, constant_time_equal, tagged_hash
from cc_kernel.crypto.sealing import HPKE_SUITE_NAME, InvalidCiphertext, ReleaseKey, wrap_key
from cc_kernel.dataset.format import DATASET_ID_SIZE, DatasetHeader
from cc_kernel.dataset.rules import Rules, load_rules
from cc_kernel.errors import (
    DatasetExpired,
    PolicyError,
    PolicyViolation,
    ReleaseRefused,
    RemoteProtocolError,
    RulesError,
    TamperedDataset,
    VerificationError,
    WrongBroker,
)
from cc_kernel.protocol import codec

NONCE_SIZE: Final = 32
#: Largest release message (the attestation carries an evidence envelope of at most 64 KiB).
MAX_MESSAGE_SIZE: Final = 256 * 1024


# --- messages -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseRequest:
    """1. The monitor asks for a dataset's key; ``requester_spki_sha256`` is its TLS key's digest."""

    dataset_id: bytes
    requester_spki_sha256: bytes


@dataclass(frozen=True)
class ReleaseChallenge:
    """2. The broker's fresh nonce for this exchange."""

    dataset_id: bytes
    nonce: bytes


@dataclass(frozen=True)
class ReleaseAttestation:
    """3. Evidence (an encoded ``EvidenceEnvelope``) binding the nonce, the dataset and ``release_pub``."""

    dataset_id: bytes
    nonce: bytes
    release_pub: bytes
    evidence: bytes


@dataclass(frozen=True)
class ReleaseResponse:
    """4. The data key wrapped to ``release_pub`` (HPKE), the header hash and rules the owner sealed."""

    dataset_id: bytes
    header_sha256: bytes
    rules: bytes
    session: int
    suite: str
    wrapped_key: bytes


@dataclass(frozen=True)
class ReleaseRefusal:
    """4'. The broker refused; ``check`` names the failed step, ``message`` says why (untrusted text)."""

    check: str
    message: str


@dataclass(frozen=True)
class LogOpen:
    """5. After a release, on the same connection: open the owner's log of this session. ``evidence`` binds
    ``tls_spki`` (whose SHA-256 is the request's requester), ``audit_pub``, the challenge's nonce and
    ``session_id`` exactly as a session's start-up evidence does (``expected_report_data``), so the log verifies
    like a session log."""

    session_id: bytes
    tls_spki: bytes
    audit_pub: bytes
    evidence: bytes


@dataclass(frozen=True)
class LogOpened:
    """6. The broker wrote the opening entry: the monitor chains its first receipt to ``opening_hash``."""

    opening_hash: bytes


@dataclass(frozen=True)
class LogEntry:
    """7. One signed receipt (or the closing entry) for the owner's log, as ``audit.receipts.ReceiptSigner``
    makes them."""

    receipt: bytes


@dataclass(frozen=True)
class LogAck:
    """8. The broker appended entry ``count - 1`` durably (``count`` entries, the opening one included)."""

    count: int


ReleaseMessage = (ReleaseRequest | ReleaseChallenge | ReleaseAttestation | ReleaseResponse | ReleaseRefusal |
                  LogOpen | LogOpened | LogEntry | LogAck)

_TYPES: Final[dict[str, tuple[type, dict[str, type]]]] = {
    "request": (ReleaseRequest, {"dataset_id": bytes, "requester_spki_sha256": bytes}),
    "challenge": (ReleaseChallenge, {"dataset_id": bytes, "nonce": bytes}),
    "attestation": (ReleaseAttestation, {"dataset_id": bytes, "nonce": bytes, "release_pub": bytes,
                                         "evidence": bytes}),
    "response": (ReleaseResponse, {"dataset_id": bytes, "header_sha256": bytes, "rules": bytes, "session": int,
                                   "suite": str, "wrapped_key": bytes}),
    "refusal": (ReleaseRefusal, {"check": str, "message": str}),
    "log_open": (LogOpen, {"session_id": bytes, "tls_spki": bytes, "audit_pub": bytes, "evidence": bytes}),
    "log_opened": (LogOpened, {"opening_hash": bytes}),
    "log_entry": (LogEntry, {"receipt": bytes}),
    "log_ack": (LogAck, {"count": int}),
}
_NAMES: Final = {cls: name for name, (cls, _) in _TYPES.items()}
_SIZES: Final = {"dataset_id": DATASET_ID_SIZE, "nonce": NONCE_SIZE, "requester_spki_sha256": 32,
                 "release_pub": 32, "header_sha256": 32, "session_id": 16, "audit_pub": 32, "opening_hash": 32}


def encode_release(msg: ReleaseMessage) -> bytes:
    """Canonical msgpack ``{"t": name, ...fields}``."""
    fields: dict[str, Any] = {"t": _NAMES[type(msg)]}
    fields.update(msg.__dict__)
    return codec.packb(fields)


def decode_release(data: bytes) -> ReleaseMessage:
    """Decode one release message.

    Raises:
        RemoteProtocolError: malformed msgpack, unknown type, missing/extra/mistyped field, wrong size.
    """
    value = codec.unpackb(data, max_size=MAX_MESSAGE_SIZE)
    if not isinstance(value, dict) or value.get("t") not in _TYPES:
        raise RemoteProtocolError("not a release message (a map with a known \"t\")")
    cls, schema = _TYPES[value.pop("t")]
    if set(value) != set(schema):
        raise RemoteProtocolError(f"release message fields {sorted(value)} are not {sorted(schema)}")
    for key, typ in schema.items():
        if type(value[key]) is not typ:
            raise RemoteProtocolError(f"release message field {key!r} must be {typ.__name__}")
        if key in _SIZES and len(value[key]) != _SIZES[key]:
            raise RemoteProtocolError(f"release message field {key!r} must be {_SIZES[key]} bytes")
    msg: ReleaseMessage = cls(**value)
    return msg


# --- the broker's side ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRecord:
    """What the broker's store holds for one dataset (the data key never leaves it unwrapped)."""

    dataset_id: bytes
    owner: str
    header_sha256: bytes
    data_key: bytes = field(repr=False)
    policy: bytes
    rules: bytes

    def encode(self) -> bytes:
        """Canonical msgpack of the record (the store's file)."""
        return codec.packb({"v": 1, **self.__dict__})

    @classmethod
    def decode(cls, data: bytes) -> DatasetRecord:
        """Raises RemoteProtocolError if ``data`` is not a record."""
        value = codec.unpackb(data)
        names = {"v", "dataset_id", "owner", "header_sha256", "data_key", "policy", "rules"}
        if not isinstance(value, dict) or set(value) != names or value.pop("v") != 1:
            raise RemoteProtocolError("not a dataset record")
        return cls(**value)


def wrap_info(*, dataset_id: bytes, header_sha256: bytes, nonce: bytes, rules_sha256: bytes) -> bytes:
    """HPKE ``info``: ``tagged_hash(TAG_DATASET_WRAP, dataset_id, header_sha256, nonce, rules_sha256)``."""
    return tagged_hash(TAG_DATASET_WRAP, dataset_id, header_sha256, nonce, rules_sha256)


def new_challenge(request: ReleaseRequest, record: DatasetRecord | None, *, nonce: bytes) -> ReleaseChallenge:
    """Answer a request with ``nonce`` (fresh, drawn by the caller).

    Raises:
        ReleaseRefused: ``release.dataset``: the broker holds no such dataset.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a challenge nonce is {NONCE_SIZE} bytes")
    if record is None or not constant_time_equal(record.dataset_id, request.dataset_id):
        raise ReleaseRefused("this broker holds no such dataset", check="release.dataset",
                             got=request.dataset_id)
    return ReleaseChallenge(dataset_id=request.dataset_id, nonce=nonce)


@dataclass(frozen=True)
class ReleaseGrant(Sealed):
    """A release every check allowed. Only ``appraise_release`` builds one."""

    dataset_id: bytes
    nonce: bytes
    release_pub: bytes
    session: int
    result: AttestationResult
    rules: Rules

    PRODUCER: ClassVar[str] = "appraise_release"


def appraise_release(
    record: DatasetRecord,
    request: ReleaseRequest,
    challenge: ReleaseChallenge,
    attestation: ReleaseAttestation,
    *,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None,
    now: datetime,
    sessions_used: int,
) -> ReleaseGrant:
    """Decide a release: the owner's rules, then the evidence under the owner's policy (numbered steps).

    ``sessions_used`` is how many releases the broker's store counted; the grant's ``session`` is the next.

    Raises:
        ReleaseRefused: with ``check`` = the failed step (``DatasetExpired`` for ``rules.not_after``).
    """
    # 1. the attestation answers this request and this challenge (a replayed exchange answers an old one)
    if not constant_time_equal(attestation.dataset_id, request.dataset_id):
        raise ReleaseRefused("the attestation is for another dataset", check="release.dataset",
                             got=attestation.dataset_id, expected=request.dataset_id)
    if not constant_time_equal(attestation.nonce, challenge.nonce):
        raise ReleaseRefused("the attestation answers another challenge: a replayed release exchange",
                             check="release.nonce", got=attestation.nonce, expected=challenge.nonce)
    # 2. the owner's rules: expiry and session count
    try:
        rules = load_rules(record.rules, source="the owner's rules")
        policy = load_policy(record.policy, source="the owner's policy")
    except (RulesError, PolicyError) as exc:
        raise ReleaseRefused(f"the broker's record is unusable: {exc}", check="release.dataset") from exc
    rules.check_release(now=now, sessions_used=sessions_used)
    # 3. authenticity of the evidence (pinned roots; simulation roots only if the owner's policy allows them)
    try:
        env = parse_envelope_unverified(attestation.evidence)
        sim = simulation_anchors if policy.unsafe_allow_simulation else None
        verified = verify_evidence(env, anchors=anchors, now=now, simulation_anchors=sim)
    except VerificationError as exc:
        raise ReleaseRefused(f"the evidence is not authentic: {exc}", check="release.evidence",
                             got=exc.check) from exc
    # 4. freshness and binding: the evidence answers this challenge and binds this release key
    try:
        bound = check_release_binding(
            verified, nonce=challenge.nonce, dataset_id=request.dataset_id, release_pub=attestation.release_pub,
            requester_spki_sha256=request.requester_spki_sha256, claimed_nonce=answered_nonce(verified, env),
        )
    except VerificationError as exc:
        check = "release.nonce" if exc.check == "freshness.nonce" else "release.binding"
        raise ReleaseRefused(str(exc), check=check, got=exc.got, expected=exc.expected) from exc
    # 5. the owner's policy (measurement, debug, TCB, platform)
    try:
        result = appraise(bound, policy, now=now)
    except PolicyViolation as exc:
        raise ReleaseRefused(
            "the enclave does not meet the owner's policy: " + "; ".join(str(f) for f in exc.failures),
            check="release.policy", got=exc.check,
        ) from exc
    return seal(ReleaseGrant, dataset_id=request.dataset_id, nonce=challenge.nonce,
                release_pub=attestation.release_pub, session=sessions_used + 1, result=result, rules=rules)


def release_response(grant: ReleaseGrant, record: DatasetRecord) -> ReleaseResponse:
    """Wrap the data key to the grant's release key (HPKE base mode, ``wrap_info`` as info).

    Raises:
        TypeError: ``grant`` was not made by ``appraise_release`` (e.g. a copy with another release key).
    """
    require_sealed(grant, ReleaseGrant)
    info = wrap_info(dataset_id=grant.dataset_id, header_sha256=record.header_sha256, nonce=grant.nonce,
                     rules_sha256=grant.rules.sha256)
    return ReleaseResponse(
        dataset_id=grant.dataset_id, header_sha256=record.header_sha256, rules=record.rules, session=grant.session,
        suite=HPKE_SUITE_NAME, wrapped_key=wrap_key(record.data_key, grant.release_pub, info=info),
    )


def refusal_of(exc: ReleaseRefused) -> ReleaseRefusal:
    """The message a broker sends for a refusal."""
    return ReleaseRefusal(check=exc.check, message=exc.message)


def open_owner_log(
    record: DatasetRecord,
    grant: ReleaseGrant,
    request: ReleaseRequest,
    msg: LogOpen,
    *,
    anchors: TrustAnchors,
    simulation_anchors: TrustAnchors | None,
    now: datetime,
    opened_ms: int,
    versions: dict[str, str],
) -> OpeningEntry:
    """The opening entry of the owner's log for the session ``grant`` released to (numbered steps).

    Raises:
        ReleaseRefused: ``log.key`` (the TLS key is not the requester's), ``log.evidence``, ``log.binding``,
            ``log.policy``.
    """
    # 1. the log is opened by the monitor that asked for the release
    if not constant_time_equal(hashlib.sha256(msg.tls_spki).digest(), request.requester_spki_sha256):
        raise ReleaseRefused("the owner's log is opened for another TLS key than the release was asked for",
                             check="log.key")
    policy = load_policy(record.policy, source="the owner's policy")
    # 2. authenticity (simulation roots only if the owner's policy allows them)
    try:
        env = parse_envelope_unverified(msg.evidence)
        sim = simulation_anchors if policy.unsafe_allow_simulation else None
        verified = verify_evidence(env, anchors=anchors, now=now, simulation_anchors=sim)
    except VerificationError as exc:
        raise ReleaseRefused(f"the log's evidence is not authentic: {exc}", check="log.evidence") from exc
    # 3. binding: this TLS key, audit key, the release's nonce and the log's session id
    try:
        bound = check_binding(verified, tls_spki=msg.tls_spki, audit_pub=msg.audit_pub, nonce=grant.nonce,
                              session_id=msg.session_id, claimed_nonce=answered_nonce(verified, env))
    except VerificationError as exc:
        raise ReleaseRefused(str(exc), check="log.binding") from exc
    # 4. the owner's policy, again (the same enclave: the log's evidence must meet it too)
    try:
        result = appraise(bound, policy, now=now)
    except PolicyViolation as exc:
        raise ReleaseRefused("the enclave does not meet the owner's policy: "
                             + "; ".join(str(f) for f in exc.failures), check="log.policy") from exc
    return make_opening(result=result, envelope_bytes=msg.evidence, tls_spki=msg.tls_spki, policy=policy,
                        opened_ms=opened_ms, versions=versions,
                        settings={"dataset": record.dataset_id.hex(), "release": grant.session})


# --- the monitor's side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleasedKey:
    """A data key the owner's broker released to this enclave, with the rules it was released under."""

    data_key: bytes = field(repr=False)
    rules: Rules
    session: int
    #: The broker's challenge nonce of this exchange (the owner's log binds it too).
    nonce: bytes = b""


class ReleaseClient:
    """The requester's half of one exchange, for the dataset whose header (and its hash) the caller read."""

    def __init__(
        self,
        header: DatasetHeader,
        header_sha256: bytes,
        *,
        requester_spki_sha256: bytes,
        release_key: ReleaseKey | None = None,
    ) -> None:
        self.header = header
        self.header_sha256 = header_sha256
        self.requester_spki_sha256 = requester_spki_sha256
        self.release_key = release_key if release_key is not None else ReleaseKey()
        self._challenge: ReleaseChallenge | None = None

    def request(self) -> ReleaseRequest:
        """Step 1."""
        return ReleaseRequest(dataset_id=self.header.dataset_id, requester_spki_sha256=self.requester_spki_sha256)

    def report_data(self, challenge: ReleaseChallenge) -> bytes:
        """The 64 bytes the evidence must bind for ``challenge`` (the monitor's evidence source signs them).

        Raises:
            ReleaseRefused: ``release.challenge``: the challenge is for another dataset.
        """
        if not constant_time_equal(challenge.dataset_id, self.header.dataset_id):
            raise ReleaseRefused("the broker challenged for another dataset", check="release.challenge")
        self._challenge = challenge
        return expected_release_report_data(
            nonce=challenge.nonce, dataset_id=self.header.dataset_id, release_pub=self.release_key.public_bytes,
            requester_spki_sha256=self.requester_spki_sha256,
        )

    def attestation(self, evidence: bytes) -> ReleaseAttestation:
        """Step 3: ``evidence`` is the encoded envelope collected for ``report_data(challenge)``."""
        if self._challenge is None:
            raise ValueError("call report_data(challenge) first")
        return ReleaseAttestation(dataset_id=self.header.dataset_id, nonce=self._challenge.nonce,
                                  release_pub=self.release_key.public_bytes, evidence=evidence)

    def open(self, reply: ReleaseResponse | ReleaseRefusal) -> ReleasedKey:
        """Step 4: the data key, after checking the response belongs to this sealed file.

        Raises:
            ReleaseRefused: the broker refused (its check), or ``release.response`` / ``release.rules`` /
                ``release.wrap`` (DatasetExpired for ``rules.not_after``).
            TamperedDataset: ``dataset.header``: the owner sealed a header with another hash.
        """
        if isinstance(reply, ReleaseRefusal):
            cls = DatasetExpired if reply.check == "rules.not_after" else ReleaseRefused
            raise cls(f"the broker refused: {reply.message}", check=reply.check)
        if self._challenge is None:
            raise ValueError("no challenge was answered")
        # 1. the response is for this dataset and this very header
        if not constant_time_equal(reply.dataset_id, self.header.dataset_id):
            raise ReleaseRefused("the response is for another dataset", check="release.response")
        if not constant_time_equal(reply.header_sha256, self.header_sha256):
            raise TamperedDataset(
                "the sealed file's header is not the one its owner sealed (the broker recorded another hash)",
                check="dataset.header", got=self.header_sha256, expected=reply.header_sha256,
            )
        # 2. the rules are the ones the header names
        try:
            rules = load_rules(reply.rules, source="the owner's rules")
        except RulesError as exc:
            raise ReleaseRefused(f"the broker sent unusable rules: {exc}", check="release.rules") from exc
        if not constant_time_equal(rules.sha256, self.header.rules_sha256):
            raise ReleaseRefused("the broker's rules are not the ones the sealed file names",
                                 check="release.rules", got=rules.sha256, expected=self.header.rules_sha256)
        # 3. unwrap
        info = wrap_info(dataset_id=self.header.dataset_id, header_sha256=self.header_sha256,
                         nonce=self._challenge.nonce, rules_sha256=rules.sha256)
        try:
            key = self.release_key.unwrap(reply.wrapped_key, info=info)
        except InvalidCiphertext as exc:
            raise ReleaseRefused(f"the wrapped data key does not open: {exc}", check="release.wrap") from exc
        return ReleasedKey(data_key=key, rules=rules, session=reply.session, nonce=self._challenge.nonce)


def check_broker(header: DatasetHeader, *, spki_sha256: bytes, address: str | None = None) -> None:
    """The broker reached at ``address`` presenting a TLS key with ``spki_sha256`` is the one the file names.

    The key digest decides (the address only routes: a relay may stand in between); ``address``, when given, is
    compared so a misconfiguration is named.

    Raises:
        WrongBroker: ``broker.key`` (another key: not the owner's broker) or ``broker.address``.
    """
    if not constant_time_equal(spki_sha256, header.broker_spki_sha256):
        raise WrongBroker(
            f"the broker at {address or header.broker} is not the one {header.owner!r} sealed this dataset to: "
            "its TLS key differs",
            check="broker.key", got=spki_sha256, expected=header.broker_spki_sha256,
        )
    if address is not None and address != header.broker:
        raise WrongBroker(f"the sealed file names the broker {header.broker}, not {address}",
                          check="broker.address", got=address, expected=header.broker)
