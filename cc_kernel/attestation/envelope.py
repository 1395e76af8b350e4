"""Pure: the versioned evidence envelope (docs/evidence.md §1): vendor evidence byte for byte plus endorsements.

Invariants: canonical msgpack, at most 64 KiB, unknown keys rejected, types checked. ``platform`` is a dispatch
hint only; nothing trusts it.

Check name: ``envelope`` (every decoding fault; the message says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cc_kernel.errors import MalformedEvidence, RemoteProtocolError
from cc_kernel.protocol import codec

ENVELOPE_VERSION = 1
MAX_ENVELOPE_SIZE = 64 * 1024
FORMATS = ("amd-snp-report", "intel-dcap-quote", "aws-nitro-cose-sign1", "cc-sim-snp-report")
BINDING_SCHEME = "cc-kernel/binding/v1"


@dataclass(frozen=True)
class Endorsement:
    """One endorsement (certificate, CRL, collateral). Untrusted transport: each is checked by signature."""

    kind: str
    data: bytes
    role: str = ""
    issuer_chain_pem: bytes = b""


@dataclass(frozen=True)
class EvidenceEnvelope:
    """Evidence as it travels and as the audit log stores it."""

    platform: str
    format: str
    evidence: bytes
    audit_pub: bytes
    session_id: bytes
    nonce: bytes
    endorsements: tuple[Endorsement, ...] = ()
    collected_at_ms: int = 0
    extra_claims: dict[str, str] = field(default_factory=dict)

    def endorsement(self, kind: str, role: str = "") -> bytes | None:
        """The data of the first endorsement of this kind (and role, if given), or None."""
        for e in self.endorsements:
            if e.kind == kind and (not role or e.role == role):
                return e.data
        return None


def encode_envelope(env: EvidenceEnvelope) -> bytes:
    """Canonical msgpack encoding of an envelope."""
    endorsements: list[dict[str, Any]] = []
    for e in env.endorsements:
        item: dict[str, Any] = {"kind": e.kind, "data": e.data}
        if e.role:
            item["role"] = e.role
        if e.issuer_chain_pem:
            item["issuer_chain_pem"] = e.issuer_chain_pem
        endorsements.append(item)
    data = codec.packb(
        {
            "v": ENVELOPE_VERSION,
            "platform": env.platform,
            "format": env.format,
            "evidence": env.evidence,
            "endorsements": endorsements,
            "binding": {
                "scheme": BINDING_SCHEME,
                "audit_pub": env.audit_pub,
                "session_id": env.session_id,
                "nonce": env.nonce,
            },
            "collected_at_ms": env.collected_at_ms,
            "claims": dict(env.extra_claims),
        }
    )
    if len(data) > MAX_ENVELOPE_SIZE:
        raise ValueError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return data


def _bad(message: str, *, got: object = None, expected: object = None) -> MalformedEvidence:
    return MalformedEvidence(message, check="envelope", got=got, expected=expected)


def _keys(obj: object, where: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(obj, dict):
        raise _bad(f"{where} must be a map", got=type(obj).__name__)
    unknown = set(obj) - required - optional
    if unknown:
        raise _bad(f"unknown key in {where}: {sorted(unknown)[0]!r}", got=sorted(unknown))
    missing = required - set(obj)
    if missing:
        raise _bad(f"missing key in {where}: {sorted(missing)[0]!r}", expected=sorted(missing))
    return obj


def _typed(obj: dict[str, Any], key: str, typ: type, where: str) -> Any:
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise _bad(f"{where}.{key} must be {typ.__name__}", got=type(value).__name__)
    return value


def parse_envelope_unverified(data: bytes) -> EvidenceEnvelope:
    """Parse an envelope. Nothing in it is verified yet.

    Raises:
        MalformedEvidence: not a well-formed v1 envelope (size, encoding, keys, types, lengths).
    """
    if len(data) > MAX_ENVELOPE_SIZE:
        raise _bad(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}", got=len(data))
    try:
        raw = codec.unpackb(data, max_size=MAX_ENVELOPE_SIZE)
    except RemoteProtocolError as exc:
        raise _bad(f"envelope is not valid msgpack: {exc}") from exc
    top = _keys(
        raw,
        "envelope",
        {"v", "platform", "format", "evidence", "endorsements", "binding", "collected_at_ms"},
        {"claims"},
    )
    if _typed(top, "v", int, "envelope") != ENVELOPE_VERSION:
        raise _bad("unsupported envelope version", got=top["v"], expected=ENVELOPE_VERSION)
    fmt = _typed(top, "format", str, "envelope")
    if fmt not in FORMATS:
        raise _bad("unknown evidence format", got=fmt, expected=list(FORMATS))
    binding = _keys(top["binding"], "binding", {"scheme", "audit_pub", "session_id", "nonce"})
    if binding["scheme"] != BINDING_SCHEME:
        raise _bad("unknown binding scheme", got=binding["scheme"], expected=BINDING_SCHEME)
    for key in ("audit_pub", "session_id", "nonce"):
        _typed(binding, key, bytes, "binding")
    endorsements_raw = top["endorsements"]
    if not isinstance(endorsements_raw, list) or len(endorsements_raw) > 16:
        raise _bad("endorsements must be a list of at most 16 items")
    endorsements = []
    for item in endorsements_raw:
        e = _keys(item, "endorsement", {"kind", "data"}, {"role", "issuer_chain_pem"})
        endorsements.append(
            Endorsement(
                kind=_typed(e, "kind", str, "endorsement"),
                data=_typed(e, "data", bytes, "endorsement"),
                role=_typed(e, "role", str, "endorsement") if "role" in e else "",
                issuer_chain_pem=(
                    _typed(e, "issuer_chain_pem", bytes, "endorsement") if "issuer_chain_pem" in e else b""
                ),
            )
        )
    claims = top.get("claims", {})
    if not isinstance(claims, dict) or not all(isinstance(v, str) for v in claims.values()):
        raise _bad("claims must be a map of strings")
    return EvidenceEnvelope(
        platform=_typed(top, "platform", str, "envelope"),
        format=fmt,
        evidence=_typed(top, "evidence", bytes, "envelope"),
        audit_pub=binding["audit_pub"],
        session_id=binding["session_id"],
        nonce=binding["nonce"],
        endorsements=tuple(endorsements),
        collected_at_ms=_typed(top, "collected_at_ms", int, "envelope"),
        extra_claims=dict(claims),
    )
