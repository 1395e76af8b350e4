"""Pure attestation layer: pinned trust anchors (roots + pinned intermediates), keyed by SHA-256 of DER.

Invariants:

* a root labelled with a hardware platform (``sev-snp``, ``intel-dcap``, ``nitro``) is one of the roots
  pinned below by SHA-256 — checked when the ``PinnedRoot`` is built, so no code path (and no test) can give a
  simulated or unknown certificate a hardware label;
* a ``simulation`` root is never one of those hardware roots;
* ``hardware_anchors()`` reads only read-only package data (``cc_kernel/attestation/roots/``, via
  ``importlib.resources``) and checks every root and pinned intermediate against the constants here; it never
  fetches anything and never reads the untrusted host's files;
* simulation anchors live in a separate ``TrustAnchors`` (``simulation_anchors()``), consulted only when the
  caller passes them explicitly.

The platform label a verifier puts on its result is the ``platform`` of the ``PinnedRoot`` that verified the
evidence, never what the evidence envelope claims.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from cc_kernel.crypto.x509load import (
    certificate_der,
    certificate_sha256,
    load_certificate,
    load_certificate_bundle,
)
from cc_kernel.errors import MalformedEvidence

__all__ = [
    "AMD_ARK_SHA256",
    "AMD_ASK_SHA256",
    "AMD_ASVK_SHA256",
    "AMD_PRODUCTS",
    "AWS_NITRO_ROOT_G1_SHA256",
    "INTEL_SGX_ROOT_CA_SHA256",
    "ROOT_PLATFORMS",
    "SIMULATION_PRODUCT",
    "PinnedRoot",
    "TrustAnchors",
    "hardware_anchors",
    "simulation_anchors",
]

#: The platform families a root can speak for. ``intel-dcap`` roots verify both ``tdx`` and ``sgx-dcap``
#: evidence (the verifier then labels by quote type); ``sev-snp`` and ``simulation`` roots verify SNP reports.
ROOT_PLATFORMS = ("sev-snp", "intel-dcap", "nitro", "simulation")
HARDWARE_PLATFORMS = ("sev-snp", "intel-dcap", "nitro")

AMD_PRODUCTS = ("Milan", "Genoa", "Turin")
SIMULATION_PRODUCT = "Simulated"
INTEL_PRODUCT = "Intel SGX Root CA"
NITRO_PRODUCT = "AWS Nitro Enclaves Root-G1"

# Pinned SHA-256 of the DER certificates (testvectors/README.md "Trust anchors", manifest.json).
AMD_ARK_SHA256: Mapping[str, bytes] = MappingProxyType(
    {
        "Milan": bytes.fromhex("69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"),
        "Genoa": bytes.fromhex("4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"),
        "Turin": bytes.fromhex("1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"),
    }
)
AMD_ASK_SHA256: Mapping[str, bytes] = MappingProxyType(
    {
        "Milan": bytes.fromhex("67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b"),
        "Genoa": bytes.fromhex("5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521"),
        "Turin": bytes.fromhex("5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185"),
    }
)
AMD_ASVK_SHA256: Mapping[str, bytes] = MappingProxyType(
    {
        "Milan": bytes.fromhex("c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5"),
        "Genoa": bytes.fromhex("197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372"),
        "Turin": bytes.fromhex("104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c"),
    }
)
INTEL_SGX_ROOT_CA_SHA256 = bytes.fromhex("44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3")
AWS_NITRO_ROOT_G1_SHA256 = bytes.fromhex("641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b")

#: (platform, product) -> pinned root SHA-256: the only roots that may carry a hardware label.
_HARDWARE_ROOTS: Mapping[tuple[str, str], bytes] = MappingProxyType(
    {
        **{("sev-snp", product): sha for product, sha in AMD_ARK_SHA256.items()},
        ("intel-dcap", INTEL_PRODUCT): INTEL_SGX_ROOT_CA_SHA256,
        ("nitro", NITRO_PRODUCT): AWS_NITRO_ROOT_G1_SHA256,
    }
)

_ROOTS_PACKAGE = "cc_kernel.attestation"
_ROOTS_DIR = "roots"


@dataclass(frozen=True)
class PinnedRoot:
    """One pinned root and the intermediates pinned with it (role -> certificate, e.g. ``ask``, ``asvk``).

    ``sha256`` is the SHA-256 of the root's DER. Hardware-labelled roots must be the pinned ones.
    """

    platform: str
    product: str
    certificate: x509.Certificate
    intermediates: Mapping[str, x509.Certificate] = field(default_factory=dict)
    sha256: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.platform not in ROOT_PLATFORMS:
            raise ValueError(f"unknown root platform {self.platform!r}; expected one of {ROOT_PLATFORMS}")
        sha = certificate_sha256(self.certificate)
        object.__setattr__(self, "sha256", sha)
        object.__setattr__(self, "intermediates", MappingProxyType(dict(self.intermediates)))
        if self.platform in HARDWARE_PLATFORMS:
            pinned = _HARDWARE_ROOTS.get((self.platform, self.product))
            if pinned is None or not hmac.compare_digest(pinned, sha):
                raise ValueError(
                    f"{self.platform}/{self.product}: only the pinned hardware root can carry this label "
                    f"(got SHA-256 {sha.hex()})"
                )
        elif any(hmac.compare_digest(sha, pinned) for pinned in _HARDWARE_ROOTS.values()):
            raise ValueError("a hardware root cannot be used as a simulation anchor")
        elif self.product in AMD_PRODUCTS:
            raise ValueError(f"a simulation root cannot use the hardware product name {self.product!r}")


@dataclass(frozen=True)
class TrustAnchors:
    """An immutable set of pinned roots. Lookups by (platform, product) or by SHA-256 of the DER."""

    roots: tuple[PinnedRoot, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(self.roots))
        keys: set[tuple[str, str]] = set()
        digests: set[bytes] = set()
        snp_products: set[str] = set()
        for root in self.roots:
            key = (root.platform, root.product)
            if key in keys:
                raise ValueError(f"two roots for {root.platform}/{root.product}")
            if root.sha256 in digests:
                raise ValueError(f"root {root.sha256.hex()} appears twice")
            if root.platform in ("sev-snp", "simulation"):
                if root.product in snp_products:
                    raise ValueError(f"two SEV-SNP roots for product {root.product!r}")
                snp_products.add(root.product)
            keys.add(key)
            digests.add(root.sha256)

    def get(self, platform: str, product: str) -> PinnedRoot | None:
        """The root pinned for this platform and product, or None."""
        for root in self.roots:
            if root.platform == platform and root.product == product:
                return root
        return None

    def find_product(self, product: str, *, platforms: Collection[str]) -> PinnedRoot | None:
        """The root pinned for ``product`` among roots of the given platform families, or None."""
        for root in self.roots:
            if root.platform in platforms and root.product == product:
                return root
        return None

    def by_sha256(self, *, platforms: Collection[str] | None = None) -> Mapping[bytes, x509.Certificate]:
        """Pinned roots keyed by SHA-256 of DER (the ``anchors`` argument of ``walk_chain``)."""
        return MappingProxyType(
            {r.sha256: r.certificate for r in self.roots if platforms is None or r.platform in platforms}
        )

    def root_for_sha256(self, sha256: bytes) -> PinnedRoot | None:
        for root in self.roots:
            if hmac.compare_digest(root.sha256, sha256):
                return root
        return None

    @property
    def platforms(self) -> frozenset[str]:
        return frozenset(r.platform for r in self.roots)

    def merged(self, other: TrustAnchors) -> TrustAnchors:
        """A new set with the roots of both (duplicates are an error)."""
        return TrustAnchors(roots=self.roots + other.roots)


# --- construction -------------------------------------------------------------------------------------------


def _read_root_file(name: str) -> bytes:
    return resources.files(_ROOTS_PACKAGE).joinpath(_ROOTS_DIR).joinpath(name).read_bytes()


def _check_pinned(cert: x509.Certificate, expected: bytes, what: str) -> None:
    got = certificate_sha256(cert)
    if not hmac.compare_digest(got, expected):
        raise RuntimeError(
            f"packaged trust anchor {what} has SHA-256 {got.hex()}, pinned {expected.hex()}: "
            "the installation is corrupted or was tampered with"
        )


def _amd_pair(product: str, kind: str) -> tuple[x509.Certificate, x509.Certificate]:
    """Load ``amd-<product>-<kind>.pem`` (intermediate then ARK)."""
    name = f"amd-{product.lower()}-{kind}.pem"
    certs = load_certificate_bundle(_read_root_file(name))
    if len(certs) != 2:
        raise RuntimeError(f"packaged trust anchor {name} must hold exactly 2 certificates, has {len(certs)}")
    return certs[0], certs[1]


@functools.lru_cache(maxsize=1)
def hardware_anchors() -> TrustAnchors:
    """The pinned hardware roots shipped in the package: AMD ARK Milan/Genoa/Turin (each with its pinned ASK
    and ASVK), the Intel SGX Root CA and the AWS Nitro Enclaves Root-G1.

    Every file is checked against the SHA-256 constants of this module when loaded (once; the result is cached
    and immutable).

    Raises:
        RuntimeError: a packaged file does not match its pinned SHA-256 (corrupted installation).
    """
    roots: list[PinnedRoot] = []
    for product in AMD_PRODUCTS:
        ask, ark = _amd_pair(product, "vcek-ask-ark")
        asvk, ark_again = _amd_pair(product, "vlek-asvk-ark")
        _check_pinned(ark, AMD_ARK_SHA256[product], f"ARK-{product}")
        _check_pinned(ark_again, AMD_ARK_SHA256[product], f"ARK-{product} (VLEK chain file)")
        _check_pinned(ask, AMD_ASK_SHA256[product], f"ASK {product}")
        _check_pinned(asvk, AMD_ASVK_SHA256[product], f"ASVK {product}")
        roots.append(
            PinnedRoot(platform="sev-snp", product=product, certificate=ark, intermediates={"ask": ask, "asvk": asvk})
        )
    intel = load_certificate(_read_root_file("intel-sgx-root-ca.pem"))
    _check_pinned(intel, INTEL_SGX_ROOT_CA_SHA256, INTEL_PRODUCT)
    roots.append(PinnedRoot(platform="intel-dcap", product=INTEL_PRODUCT, certificate=intel))
    nitro = load_certificate(_read_root_file("aws-nitro-enclaves-root-g1.pem"))
    _check_pinned(nitro, AWS_NITRO_ROOT_G1_SHA256, NITRO_PRODUCT)
    roots.append(PinnedRoot(platform="nitro", product=NITRO_PRODUCT, certificate=nitro))
    return TrustAnchors(roots=tuple(roots))


def simulation_anchors(ark_der: bytes, ask_der: bytes) -> TrustAnchors:
    """A separate ``TrustAnchors`` for the simulated TEE authority: its ARK (label ``simulation``, product
    ``Simulated``) with its ASK pinned as intermediate.

    Raises:
        ValueError: the certificates do not parse, the ARK is not self-signed, the ASK is not issued by
            the ARK, or the ARK is a hardware root.
    """
    try:
        ark = load_certificate(ark_der)
        ask = load_certificate(ask_der)
    except MalformedEvidence as exc:
        raise ValueError(f"simulation anchors do not parse: {exc}") from exc
    try:
        ark.verify_directly_issued_by(ark)
        ask.verify_directly_issued_by(ark)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ValueError(f"simulation ARK/ASK do not form a chain: {exc!r}") from exc
    if hmac.compare_digest(certificate_der(ark), certificate_der(ask)):
        raise ValueError("simulation ARK and ASK must differ")
    return TrustAnchors(
        roots=(
            PinnedRoot(platform="simulation", product=SIMULATION_PRODUCT, certificate=ark, intermediates={"ask": ask}),
        )
    )
