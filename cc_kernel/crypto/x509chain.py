"""Pure crypto layer: the ONE explicit X.509 chain walker, for every platform (AMD, Intel, AWS, simulation).

Invariants: a ``VerifiedChain`` exists only if its top certificate is byte-identical (SHA-256 of DER, then a
constant-time comparison of the DER) to a pinned anchor, every certificate is signed by the next one, names
chain, every issuer is a CA allowed to sign certificates, path lengths hold, no certificate carries a critical
extension we do not understand, and every certificate is valid at ``now``. Trust is never decided by a name.

Why not ``cryptography.x509.verification.PolicyBuilder``: it rejects AMD's RSASSA-PSS AlgorithmIdentifier
(explicit trailerField), VCEKs without AKI, Nitro leaves without AKI and Intel PCKs without SAN.
``Certificate.verify_directly_issued_by`` handles all of them but checks only the signature and the issuer name,
so everything else is checked here.

Check names: ``chain.length``, ``chain.anchor``, ``chain.issuer_name``, ``chain.ca``, ``chain.key_usage``,
``chain.path_length``, ``chain.critical_extension``, ``chain.validity``, ``chain.signature``,
``chain.signature_algorithm`` (Intel collateral reports them as ``collateral.tcb_signing.chain.*``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from cc_kernel.crypto.x509load import certificate_der, certificate_sha256
from cc_kernel.errors import CertificateExpired, ChainError, SignatureInvalid, UntrustedRoot

__all__ = ["MAX_CHAIN_LENGTH", "VerifiedChain", "walk_chain"]

_E = TypeVar("_E", bound=x509.ExtensionType)

#: Longest path accepted (leaf + intermediates + anchor). AMD: 3, Intel: 3, Nitro: 4-5.
MAX_CHAIN_LENGTH = 8

#: Critical extensions whose semantics this walker (or the platform verifier) enforces. Any other critical
#: extension (name constraints, policy constraints, ...) makes the chain unacceptable (RFC 5280 §4.2).
_UNDERSTOOD_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)


@dataclass(frozen=True)
class VerifiedChain:
    """A certification path that ``walk_chain`` verified: ``path[0]`` is the leaf, ``path[-1]`` the anchor."""

    path: tuple[x509.Certificate, ...]
    anchor_sha256: bytes
    verified_at: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.path[0]

    @property
    def anchor(self) -> x509.Certificate:
        return self.path[-1]


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


#: SHA-256 of pinned anchors whose self-signature verified. The check depends on the certificate's bytes alone,
#: and only anchors the caller pinned by that digest get here, so the set stays as small as the anchor sets.
_SELF_SIGNATURE_OK: set[bytes] = set()


def walk_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    *,
    anchors: Mapping[bytes, x509.Certificate],
    now: datetime,
) -> VerifiedChain:
    """Verify the path ``[leaf, *intermediates]`` whose last certificate must be a pinned anchor.

    ``intermediates`` is ordered from the leaf's issuer upwards and must END with the anchor itself (callers
    that ignore a presented root append the pinned one). ``anchors`` maps SHA-256(DER) to the pinned
    certificate. ``index`` in every error is the position in the path (0 = leaf).

    Raises:
        UntrustedRoot: ``chain.anchor``: the top certificate is not byte-identical to a pinned anchor.
        ChainError: ``chain.length``, ``chain.issuer_name``, ``chain.ca``, ``chain.key_usage``,
            ``chain.path_length``, ``chain.signature_algorithm``, ``chain.critical_extension``.
        SignatureInvalid: ``chain.signature``: a certificate is not signed by the next one's key.
        CertificateExpired: ``chain.validity``: a certificate is not valid at ``now``.
        ValueError: ``now`` is naive (programmer error: times are always timezone-aware).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    path = (leaf, *intermediates)

    # 1. shape: a bounded, non-empty path
    if len(path) > MAX_CHAIN_LENGTH:
        raise ChainError("certificate path is too long", check="chain.length", got=len(path), expected=MAX_CHAIN_LENGTH)

    # 2. the top certificate is a pinned anchor: found by SHA-256 of its DER, then compared byte for byte
    top_index = len(path) - 1
    top = path[top_index]
    top_sha256 = certificate_sha256(top)
    pinned = anchors.get(top_sha256)
    if pinned is None or not hmac.compare_digest(certificate_der(pinned), certificate_der(top)):
        raise UntrustedRoot(
            f"the chain ends at {_subject(top)!r}, which is not a pinned trust anchor",
            check="chain.anchor",
            got=top_sha256.hex(),
            expected=sorted(sha.hex() for sha in anchors),
            index=top_index,
        )

    # 3. a self-issued anchor must carry a valid self-signature (pinning already fixed its bytes, so the outcome
    #    for these exact bytes is remembered: verified once per process, not on every attestation)
    if top.issuer == top.subject and top_sha256 not in _SELF_SIGNATURE_OK:
        _check_signature(top, top, index=top_index)
        _SELF_SIGNATURE_OK.add(top_sha256)

    # 4. every link: child path[i] is issued by path[i + 1]
    for i in range(top_index):
        child, issuer = path[i], path[i + 1]
        # 4a. names chain
        if child.issuer != issuer.subject:
            raise ChainError(
                "issuer name does not match the next certificate's subject",
                check="chain.issuer_name",
                got=child.issuer.rfc4514_string(),
                expected=_subject(issuer),
                index=i,
            )
        # 4b. the issuer is a CA (basicConstraints CA=true is required of every issuer)
        bc = _extension(issuer, x509.BasicConstraints)
        if bc is None or not bc.ca:
            raise ChainError(
                f"{_subject(issuer)!r} issues a certificate but is not a CA (basicConstraints CA=true)",
                check="chain.ca",
                got=None if bc is None else bc.ca,
                expected=True,
                index=i + 1,
            )
        # 4c. if keyUsage is present it must allow certificate signing
        ku = _extension(issuer, x509.KeyUsage)
        if ku is not None and not ku.key_cert_sign:
            raise ChainError(
                f"{_subject(issuer)!r} issues a certificate but its keyUsage lacks keyCertSign",
                check="chain.key_usage",
                got=False,
                expected=True,
                index=i + 1,
            )
        # 4d. pathLenConstraint: CA certificates between this issuer and the leaf (the leaf does not count)
        below = i
        if bc.path_length is not None and below > bc.path_length:
            raise ChainError(
                f"{_subject(issuer)!r} allows {bc.path_length} intermediate CA(s) below it, the path has {below}",
                check="chain.path_length",
                got=below,
                expected=bc.path_length,
                index=i + 1,
            )
        # 4e. the signature (RSA PKCS#1 v1.5, RSASSA-PSS incl. AMD's trailerField, ECDSA, EdDSA)
        _check_signature(child, issuer, index=i)

    # 5. no critical extension we do not understand, anywhere in the path
    for i, cert in enumerate(path):
        for ext in cert.extensions:
            if ext.critical and ext.oid not in _UNDERSTOOD_CRITICAL:
                raise ChainError(
                    f"unsupported critical extension {ext.oid.dotted_string} in {_subject(cert)!r}",
                    check="chain.critical_extension",
                    got=ext.oid.dotted_string,
                    index=i,
                )

    # 6. every certificate (anchor included) is valid at `now`
    for i, cert in enumerate(path):
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not not_before <= now <= not_after:
            state = "not yet valid" if now < not_before else "expired"
            raise CertificateExpired(
                f"{_subject(cert)!r} is {state} at {now.isoformat()}",
                check="chain.validity",
                got=now.isoformat(),
                expected=[not_before.isoformat(), not_after.isoformat()],
                index=i,
            )

    return VerifiedChain(path=path, anchor_sha256=top_sha256, verified_at=now)


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_signature(child: x509.Certificate, issuer: x509.Certificate, *, index: int) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature as exc:
        raise SignatureInvalid(
            f"{_subject(child)!r} is not signed by the key of {_subject(issuer)!r}",
            check="chain.signature",
            index=index,
        ) from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ChainError(
            f"cannot verify the signature of {_subject(child)!r}: {exc}",
            check="chain.signature_algorithm",
            index=index,
        ) from exc
