"""Pure attestation layer: offline verification of one raw evidence file (``cc-kernel evidence verify``).

Invariants:

* no I/O and no clock: the caller reads the files and passes their bytes, and passes ``now``;
* the platform is the caller's choice and is never guessed from the bytes: the bytes are handed to that
  platform's verifier and nothing else, and the verified result must carry that platform's label (an SGX
  quote presented as ``tdx`` fails ``offline.platform``). ``sniff_platform`` only feeds error *hints*;
* authenticity is entirely the platform verifiers' (``sev_snp``, ``intel_dcap``, ``nitro``,
  ``ratls_interop``) against the pinned roots in ``anchors``; this module only decodes the file's text armour
  (hex or base64), splits a presented AMD chain into its intermediate and root, and maps collateral file
  names to ``load_collateral`` items. Decoding is never a trust decision: whatever it yields is verified;
* nothing here binds evidence to a channel, so an appraisal of the result (``result.appraise_offline``) says
  what the evidence claims, never that a connection is safe.

Check names (besides the verifiers' own): ``offline.platform`` (the evidence is another platform's),
``offline.chain`` (the presented AMD chain is not one intermediate and/or one root).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.attestation.platforms import intel_dcap, nitro, ratls_interop, sev_snp
from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral
from cc_kernel.attestation.policy import Policy, load_policy
from cc_kernel.attestation.result import AttestationResult, iso_utc, jsonable
from cc_kernel.attestation.verify import verify_snp_report
from cc_kernel.crypto.x509load import certificate_der, load_amd_certificate, load_certificate_bundle
from cc_kernel.errors import CertificateExpired, MalformedEvidence, VerificationError

__all__ = [
    "COLLATERAL_FILE_PATTERNS",
    "DEFAULT_OFFLINE_POLICY_SOURCE",
    "OFFLINE_PLATFORMS",
    "OfflineEvidence",
    "check_options",
    "collateral_from_files",
    "default_offline_policy",
    "evidence_json",
    "failure_hints",
    "sniff_platform",
    "verify_raw",
]

#: The ``--platform`` choices: the raw form each takes is an SEV-SNP report, a DCAP quote (TDX or SGX), a Nitro
#: COSE document, or a CCC interoperable RA-TLS certificate.
OFFLINE_PLATFORMS: Final = ("sev-snp", "tdx", "sgx", "nitro", "ratls")
#: The ``VerifiedEvidence.platform`` labels each choice accepts.
_LABELS: Final[Mapping[str, tuple[str, ...]]] = {
    "sev-snp": ("sev-snp",),
    "tdx": ("tdx",),
    "sgx": ("sgx-dcap",),
    "nitro": ("nitro",),
    "ratls": ("sgx-dcap", "tdx"),
}
_INTEL: Final = frozenset({"tdx", "sgx", "ratls"})

#: Collateral file names -> ``load_collateral`` items: the item's own name (``tcb_info.json``, ...) or the names
#: Intel PCS downloads and go-tdx-guest's test data use (``tcbinfo-tdx-<fmspc>-<date>.json``,
#: ``qe-identity-td-qe-<date>.json``, ``pck-platform-ca-crl-<date>.der``, ``intel-sgx-root-ca-crl-<date>.der``,
#: ``intel-sgx-tcb-signing-chain.pem``). Case-insensitive; CRLs may be ``.der``, ``.pem`` or ``.crl``.
COLLATERAL_FILE_PATTERNS: Final[tuple[tuple[str, re.Pattern[str], str], ...]] = (
    ("tcb_info", re.compile(r"tcb_info\.json|tcbinfo([-_].*)?\.json", re.I), "tcb_info.json or tcbinfo-*.json"),
    ("qe_identity", re.compile(r"qe_identity\.json|qe-?identity([-_].*)?\.json", re.I),
     "qe_identity.json or qe-identity-*.json"),
    ("pck_crl", re.compile(r"pck_crl\.(der|pem|crl)|pck[-_].*crl([-_].*)?\.(der|pem|crl)", re.I),
     "pck_crl.der or pck-*-crl-*.der"),
    ("root_crl", re.compile(r"root_crl\.(der|pem|crl)|.*root[-_]ca[-_]crl([-_].*)?\.(der|pem|crl)", re.I),
     "root_crl.der or *-root-ca-crl-*.der"),
    ("tcb_signing_chain", re.compile(r"tcb_signing_chain\.pem|.*tcb[-_]signing[-_]chain([-_].*)?\.pem", re.I),
     "tcb_signing_chain.pem or *-tcb-signing-chain.pem"),
)

_DEFAULT_OFFLINE_POLICY: Final = """\
# cc-kernel evidence verify: the built-in policy when no --policy is given.
# It pins NO measurement (unsafe_any_measurement in every entry), so an accepted result is at best "warning":
# genuine, non-debug TEE hardware signed the evidence, whatever code it measured. Every other clause keeps its
# strict default: never debug; SEV-SNP at VMPL 0, no migration agent, no provisional firmware; Intel TCB status
# UpToDate, which needs verified collateral (--collateral): without it a TDX or SGX quote is refused
# (policy.tcb_collateral) rather than accepted with an unknown TCB status.
version = 1

[[accept]]
platform = "sev-snp"
signers = ["vcek", "vlek"]
unsafe_any_measurement = true

[[accept]]
platform = "tdx"
unsafe_any_measurement = true

[[accept]]
platform = "sgx-dcap"
unsafe_any_measurement = true

[[accept]]
platform = "nitro"
unsafe_any_measurement = true
"""
DEFAULT_OFFLINE_POLICY_SOURCE: Final = "<built-in offline policy: any measurement, no debug>"

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_COSE_FIRST_BYTES: Final = (0x84, 0xD2)  # untagged COSE_Sign1 array of 4, or CBOR tag 18


@dataclass(frozen=True)
class OfflineEvidence:
    """Authentic evidence read from a raw file.

    ``encoding`` says how the file was read (``binary``, ``hex``, ``base64``, ``certificate``, or
    ``certificate-san`` for a Nitro document inside a certificate's SAN); ``bindings`` describes each binding
    that was checked besides authenticity (e.g. a Nitro document's user_data == a certificate's key).
    """

    evidence: VerifiedEvidence
    encoding: str
    bindings: tuple[str, ...] = ()


def default_offline_policy() -> Policy:
    """The built-in policy of ``cc-kernel evidence verify``: one ``[[accept]]`` per hardware platform, any
    measurement (``unsafe_any_measurement``), never debug, never simulation; every other clause strict. TDX and
    SGX quotes therefore need collateral (``policy.tcb_collateral`` fails without it: no silent weakening)."""
    return load_policy(_DEFAULT_OFFLINE_POLICY, source=DEFAULT_OFFLINE_POLICY_SOURCE)


def check_options(platform: str, *, cert: bool, chain: bool, collateral: bool) -> None:
    """Check which inputs go with ``platform`` (each flag: that input is present).

    SEV-SNP needs the VCEK/VLEK (``cert``) and may have a ``chain``; Nitro may have a ``cert`` (a TLS
    certificate the document's user_data must bind); TDX, SGX and RA-TLS may have ``collateral``.

    Raises:
        ValueError: an unknown platform, SEV-SNP without ``cert``, or an input that does not apply (the
            message names the command-line option).
    """
    if platform not in OFFLINE_PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; expected one of {', '.join(OFFLINE_PLATFORMS)}")
    if platform == "sev-snp" and not cert:
        raise ValueError(
            "an SEV-SNP report is signed by a VCEK or VLEK that is not inside it: pass --cert FILE (DER or PEM; "
            "AMD KDS serves the VCEK for the report's chip id and reported TCB)"
        )
    if cert and platform not in ("sev-snp", "nitro"):
        raise ValueError(
            f"--cert applies to sev-snp (the VCEK or VLEK) and nitro (a TLS certificate), not {platform}: "
            "a DCAP quote carries its own PCK chain"
        )
    if chain and platform != "sev-snp":
        raise ValueError(f"--chain applies to sev-snp (ASK or ASVK, and ARK), not {platform}")
    if collateral and platform not in _INTEL:
        raise ValueError(f"--collateral holds Intel collateral; it applies to tdx, sgx and ratls, not {platform}")


def collateral_from_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Map collateral files (base name -> bytes) to ``load_collateral`` items, by ``COLLATERAL_FILE_PATTERNS``.

    Raises:
        ValueError: no file, a file whose name matches no item (named in the message), two files for the same
            item (both named), or a tcbInfo / QE identity without the TCB signing chain that signs it.
    """
    if not files:
        raise ValueError(f"no collateral files (expected some of: {_expected_names()})")
    items: dict[str, bytes] = {}
    source: dict[str, str] = {}
    for name in sorted(files):
        item = next((key for key, pattern, _names in COLLATERAL_FILE_PATTERNS if pattern.fullmatch(name)), None)
        if item is None:
            raise ValueError(f"unknown collateral file {name!r} (expected: {_expected_names()})")
        if item in items:
            raise ValueError(
                f"two collateral files for {item}: {source[item]!r} and {name!r} (keep one platform's "
                "collateral per directory)"
            )
        items[item], source[item] = files[name], name
    if ("tcb_info" in items or "qe_identity" in items) and "tcb_signing_chain" not in items:
        signed = " and ".join(source[k] for k in ("tcb_info", "qe_identity") if k in items)
        raise ValueError(
            f"{signed} needs the TCB signing chain that signs it (e.g. intel-sgx-tcb-signing-chain.pem: the TCB "
            "Signing certificate, then the root, as PCS serves it in TCB-Info-Issuer-Chain)"
        )
    return items


def _expected_names() -> str:
    return "; ".join(names for _item, _pattern, names in COLLATERAL_FILE_PATTERNS)


def verify_raw(
    platform: str,
    data: bytes,
    *,
    anchors: TrustAnchors,
    now: datetime,
    cert: bytes | None = None,
    chain: bytes | None = None,
    collateral: DcapCollateral | None = None,
) -> OfflineEvidence:
    """Verify the authenticity of one raw evidence file of ``platform`` (one of ``OFFLINE_PLATFORMS``) at ``now``.

    ``data``: ``sev-snp`` a 1184-byte report (binary, or hex/base64 text); ``tdx``/``sgx`` a DCAP quote (binary
    or text); ``nitro`` a COSE_Sign1 document (binary or base64/hex text), or a certificate carrying one in its
    SAN (Evervault format: its user_data must then be that certificate's key); ``ratls`` a CCC interoperable
    RA-TLS certificate (PEM or DER). ``cert``: the SEV-SNP VCEK/VLEK (required), or for Nitro a TLS certificate
    whose SubjectPublicKeyInfo the document's user_data must equal. ``chain``: SEV-SNP intermediate (ASK or
    ASVK) and/or ARK, PEM (or one DER certificate); without it the pinned ones for the report's product are
    used, and a presented ARK must be the pinned one. ``collateral``: Intel collateral for a quote, parsed
    (``load_collateral(collateral_from_files(files))``) and verified here. ``anchors``: pinned hardware roots
    only.

    Raises:
        ValueError: ``check_options`` refuses the inputs, ``anchors`` holds a simulation root, or ``now`` is
            naive.
        MalformedEvidence: the file, a certificate or the chain (``offline.chain``) does not parse.
        VerificationError: ``offline.platform``: the evidence is authentic but another platform's; or anything
            the platform verifier raises (``UntrustedRoot``, ``ChainError``, ``CertificateExpired``,
            ``SignatureInvalid``, ``StaleEvidence`` (e.g. collateral out of its window), ``BindingMismatch``).
    """
    check_options(platform, cert=cert is not None, chain=chain is not None, collateral=collateral is not None)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if "simulation" in anchors.platforms:
        raise ValueError("offline verification takes the pinned hardware roots only, never simulation roots")

    # 1. the platform's verifier, on the bytes in the form it takes
    if platform == "sev-snp":
        if cert is None:  # pragma: no cover - check_options refused it above; this narrows the type
            raise ValueError("sev-snp needs cert")
        out = _verify_snp(data, vek=cert, chain=chain, anchors=anchors, now=now)
    elif platform in ("tdx", "sgx"):
        quote, encoding = _unarmour(data)
        out = OfflineEvidence(intel_dcap.verify_quote(quote, anchors=anchors, now=now, collateral=collateral), encoding)
    elif platform == "nitro":
        out = _verify_nitro(data, tls_cert=cert, anchors=anchors, now=now)
    else:
        ev = ratls_interop.verify_interop_certificate(data, anchors=anchors, now=now, collateral=collateral)
        out = OfflineEvidence(ev, "certificate", ("the quote's claims bind this certificate's public key",))

    # 2. it must be the platform asked for (a TDX quote is no SGX evidence, whatever the file name says)
    if out.evidence.platform not in _LABELS[platform]:
        raise VerificationError(
            f"the file is authentic {out.evidence.platform} evidence ({out.evidence.product}), not {platform}",
            check="offline.platform",
            got=out.evidence.platform,
            expected=list(_LABELS[platform]),
        )
    return out


def _verify_snp(
    data: bytes, *, vek: bytes, chain: bytes | None, anchors: TrustAnchors, now: datetime
) -> OfflineEvidence:
    report, encoding = (data, "binary") if len(data) == sev_snp.REPORT_SIZE else _unarmour(data)
    ask_der, ark_der = _split_amd_chain(chain) if chain is not None else (None, None)
    ev = verify_snp_report(
        report, vek_der=vek, ask_der=ask_der, ark_der=ark_der, anchors=anchors, now=now,
        simulation_hint="this is SIMULATED evidence (no hardware protection), which offline verification never accepts",
    )
    return OfflineEvidence(ev, encoding)


def _split_amd_chain(chain: bytes) -> tuple[bytes | None, bytes | None]:
    """(intermediate DER, ARK DER) from a presented chain: the self-issued certificate is the ARK."""
    if chain.lstrip().startswith(b"-----BEGIN"):
        certs = load_certificate_bundle(chain, amd=True)
    else:
        certs = (load_amd_certificate(chain),)
    roots = [c for c in certs if c.subject == c.issuer]
    others = [c for c in certs if c.subject != c.issuer]
    if len(roots) > 1 or len(others) > 1:
        raise MalformedEvidence(
            "the chain must hold at most one intermediate (ASK or ASVK) and one root (ARK)",
            check="offline.chain",
            got=[_subject(c) for c in certs],
            expected="ASK or ASVK, and/or ARK",
        )
    return (
        certificate_der(others[0]) if others else None,
        certificate_der(roots[0]) if roots else None,
    )


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _verify_nitro(
    data: bytes, *, tls_cert: bytes | None, anchors: TrustAnchors, now: datetime
) -> OfflineEvidence:
    embedded_in: bytes | None = None
    if _looks_like_certificate(data):
        document, encoding, embedded_in = nitro.document_from_certificate_san(data), "certificate-san", data
    else:
        document, encoding = _unarmour(data)
    ev = nitro.verify_document(document, anchors=anchors, now=now)
    bindings: list[str] = []
    if embedded_in is not None:
        nitro.check_user_data_is_certificate_spki(ev, certificate=embedded_in)
        bindings.append("user_data is the public key of the certificate that carries the document")
    if tls_cert is not None:
        nitro.check_user_data_is_certificate_spki(ev, certificate=tls_cert)
        bindings.append("user_data is the public key of the --cert certificate")
    return OfflineEvidence(ev, encoding, tuple(bindings))


def _looks_like_certificate(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN CERTIFICATE") or data[:2] == b"\x30\x82"


def _unarmour(data: bytes) -> tuple[bytes, str]:
    """Binary evidence as it is; hex or base64 text (whitespace ignored) decoded. Binary SNP reports, DCAP
    quotes and COSE documents start with bytes that are not printable text, so the forms cannot be confused."""
    text = data.strip()
    if not text or any(b > 0x7E or (b < 0x20 and b not in b"\t\r\n") for b in text):
        return data, "binary"
    compact = b"".join(text.split())
    if len(compact) % 2 == 0 and all(b in _HEX for b in compact):
        return bytes.fromhex(compact.decode("ascii")), "hex"
    try:
        return base64.b64decode(compact, validate=True), "base64"
    except (binascii.Error, ValueError):
        return data, "binary"  # the verifier names what is wrong with it


def sniff_platform(data: bytes) -> tuple[str, ...]:
    """For error HINTS only, never for a trust decision: the ``--platform`` choices these bytes look like."""
    if _looks_like_certificate(data):
        return ("ratls", "nitro")
    raw = data if len(data) == sev_snp.REPORT_SIZE else _unarmour(data)[0]
    if raw[:1] and raw[0] in _COSE_FIRST_BYTES:
        return ("nitro",)
    if len(raw) == sev_snp.REPORT_SIZE and 2 <= int.from_bytes(raw[:4], "little") <= 5:
        return ("sev-snp",)
    if len(raw) >= 48:
        version, key_type, tee_type = struct.unpack_from("<HHI", raw)
        if version in (3, 4, 5) and key_type == 2 and tee_type in (0, 0x81):
            return ("tdx",) if tee_type == 0x81 else ("sgx",)
    return ()


def failure_hints(platform: str, data: bytes, failures: Sequence[VerificationError]) -> list[str]:
    """What the user can do about these failures, for the CLI (messages only, never a trust decision)."""
    checks = {f.check for f in failures}
    hints: list[str] = []
    if "policy.tcb_collateral" in checks:
        hints.append(
            "the TCB status of an Intel platform comes from Intel's signed collateral: pass --collateral DIR "
            "holding its tcbInfo (for the PCK's FMSPC), QE identity, PCK CRL, root CA CRL and TCB signing chain "
            "(from Intel PCS or your PCCS), or use a --policy with unsafe_skip_tcb_collateral = true to accept "
            "an unknown TCB status"
        )
    if any(isinstance(f, MalformedEvidence) for f in failures):
        looks = [p for p in sniff_platform(data) if p != platform]
        if looks and platform not in sniff_platform(data):
            hints.append(f"the file looks like {' or '.join(looks)} evidence: try --platform {looks[0]}")
    for f in failures:
        if f.check == "offline.platform":
            names = [name for name, labels in _LABELS.items() if f.got in labels and name != platform]
            if names:
                hints.append(f"the file is {f.got} evidence: try --platform {names[0]}")
    if any(f.check.endswith(".validity") or isinstance(f, CertificateExpired) for f in failures):
        hints.append(
            "certificates are checked at the verification time (--at, default now); to check evidence as of "
            "when it was produced, pass that time with a timezone (for a Nitro document: its timestamp)"
        )
    if "policy.freshness" in checks:
        hints.append(
            "the policy's freshness window (require_fresh_within_s) counts from the document's timestamp: "
            "pass --at near that time (claims.timestamp) to verify it as of then"
        )
    return hints


# --- JSON ---------------------------------------------------------------------------------------------------


def evidence_json(out: OfflineEvidence, *, result: AttestationResult | None = None) -> dict[str, Any]:
    """The claims of verified evidence as JSON types (bytes as lowercase hex, times ISO 8601 UTC).

    With ``result`` (the evidence was accepted) its status, warnings (including the policy's notes), trust
    vector and weakenings are added; without it the status is ``contraindicated``.
    """
    ev = out.evidence
    data: dict[str, Any] = {
        "status": result.status if result is not None else "contraindicated",
        "platform": ev.platform,
        "product": ev.product,
        "measurement": ev.measurement.hex(),
        "report_data": ev.report_data.hex(),
        "debug": result.debug if result is not None else ev.debug,
        "tcb": {k: int(v) for k, v in ev.tcb.items()},
        "tcb_status": ev.tcb_status,
        "signer": ev.signer,
        "warnings": list(result.warnings if result is not None else ev.warnings),
        "measurements": {k: bytes(v).hex() for k, v in sorted(ev.measurements.items())},
        "anchor_sha256": ev.anchor_sha256.hex(),
        "evidence_sha256": ev.evidence_sha256.hex(),
        "verified_at": iso_utc(ev.verified_at),
        "encoding": out.encoding,
        "bindings": list(out.bindings),
        "claims": jsonable(ev.claims),
    }
    if result is not None:
        data["trust_vector"] = dict(result.trust_vector)
        data["unsafe_flags_used"] = list(result.unsafe_flags_used)
        data["matched_entry"] = result.matched_entry
    return data

