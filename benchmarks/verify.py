"""Benchmark: attestation evidence verifications per second, per platform, on the real vectors (not a test).

Usage::

    python benchmarks/verify.py [--quick] [--rounds N] [--only TEXT] [--json PATH]

Every verifier is called the way the kernel calls it, on the real vectors in ``tests/vectors`` at their pinned
times (``tests/vectors/README.md``): full certificate chain to the pinned root plus the evidence signature.

* SEV-SNP: ``sev_snp.verify_report`` with the VCEK/VLEK, the presented ASK/ASVK and ARK (from the chain files in
  ``tests/vectors/roots``), five vectors (four VCEK, one VLEK); one more row without a presented chain (the
  pinned ASK is used);
* Intel DCAP: ``intel_dcap.verify_quote`` on TDX v4 and v5 quotes and an SGX v3 quote without collateral, and
  with collateral already loaded (``intel_collateral.load_collateral``, timed on its own);
* AWS Nitro: ``nitro.verify_document`` on the four documents;
* interoperable RA-TLS: ``ratls_interop.verify_interop_certificate`` on both certificates (Gramine also with
  its legacy quote verified);
* the simulated TEE as the kernel runs it: ``verify.verify_evidence`` on a freshly signed simulated envelope,
  and the whole peer check ``channel.ratls.verify_peer`` (certificate, envelope, both evidences, binding,
  policy) against an in-process simulated enclave, without a socket; the enclave's signing is timed too;
* parse-only (``parse_*_unverified``) for every evidence, to show what part of a verification is parsing;
* one-time costs, in fresh interpreter processes: the first ``hardware_anchors()`` call, and the process's
  first SEV-SNP verification (all measured in this process are warm).

Method: per case a warm-up, then N calls, each timed alone with ``time.perf_counter_ns``; several rounds, the
cases interleaved (round order reversed every other round), and before each case's block the script waits
(up to --quiet-wait s) until other processes leave the CPUs mostly idle (--max-busy). Each round gives a
median and a p90 per case; the table shows the median over rounds of both, verifications/s = 1000 / median ms
(one thread). Garbage collection stays on, as in the kernel. The machine this was written on is shared and
has 2 cores: the medians are what to compare, single samples and p90s move with the neighbours.

Reference cost, in the same run (there is no stock verifier to compare with): one raw ``cryptography`` verify
of each signature primitive the chains use (ECDSA P-256/SHA-256, ECDSA P-384/SHA-384, RSA-4096 RSASSA-PSS/
SHA-384, over 1 KiB). Each verification is run once under ``sys.setprofile`` to count the signature checks it
really makes (certificate links, self-signed roots, evidence, collateral documents, CRLs), and the table gives
the ratio of its median to the sum of those primitives' medians (per round, then the median over rounds).

Target: a full SEV-SNP or TDX verification under 5 ms (median), PASS/FAIL per row; other rows are reported.
The JSON written with --json holds per round and case the sample count, median, p90, p99, min, mean and max
(not every sample), the signature checks counted, the machine, the plan and the git state.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import importlib.util
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("cc_kernel") is None:  # not installed: use this checkout
    sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402 - after the path fix-up above
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: E402
from cryptography.x509.oid import SignatureAlgorithmOID  # noqa: E402
from machine import git_state, wait_quiet  # noqa: E402 - benchmarks/machine.py (the scripts run from benchmarks/)

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors  # noqa: E402
from cc_kernel.attestation.binding import expected_report_data  # noqa: E402
from cc_kernel.attestation.envelope import encode_envelope, parse_envelope_unverified  # noqa: E402
from cc_kernel.attestation.platforms import intel_dcap, intel_quote, nitro, ratls_interop, sev_snp  # noqa: E402
from cc_kernel.attestation.platforms.intel_collateral import load_collateral  # noqa: E402
from cc_kernel.attestation.platforms.simulation import create_authority  # noqa: E402
from cc_kernel.attestation.policy import load_policy, render_policy  # noqa: E402
from cc_kernel.attestation.verify import verify_evidence  # noqa: E402
from cc_kernel.channel.ratls import verify_peer  # noqa: E402
from cc_kernel.crypto.keys import peer_certificate_info  # noqa: E402
from cc_kernel.enclave.evidence import SimulatedSource  # noqa: E402
from cc_kernel.testing.enclaves import InProcessEnclave  # noqa: E402

VECTORS = REPO / "tests" / "vectors"
#: Target for a full SEV-SNP or TDX verification (median), in ms.
TARGET_MS = 5.0

# Pinned times, from tests/vectors/README.md (the same ones the tests use).
SNP_AT = datetime(2025, 6, 1, tzinfo=UTC)  # inside every VCEK/VLEK window
DCAP_CHAIN_AT = datetime(2026, 2, 3, 1, tzinfo=UTC)  # inside every PCK window
DCAP_COLLATERAL_2023_AT = datetime(2023, 7, 1, 1, tzinfo=UTC)  # the 2023 collateral is current
RATLS_AT = datetime(2024, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_vector(relative: str) -> bytes:
    """Bytes of ``tests/vectors/<relative>``; ``*.hex`` files are decoded (as the tests' ``read_vector``)."""
    data = (VECTORS / relative).read_bytes()
    if relative.endswith(".hex"):
        return bytes.fromhex(data.decode("ascii").strip())
    return data


def split_chain(relative: str) -> tuple[bytes, bytes]:
    """(intermediate PEM, ARK PEM) of a ``roots/`` chain file (ASK or ASVK first, then the ARK)."""
    end = b"-----END CERTIFICATE-----\n"
    first, second = read_vector(relative).split(end)[:2]
    return first + end, second + end


# -- what is measured ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One measured call. ``kind``: ``verify`` (a full verification; its signature checks are counted and
    priced), ``parse`` (parse-only), ``primitive`` (one raw signature verify), ``other`` (loading, signing)."""

    key: str
    group: str
    label: str
    kind: str
    fn: Callable[[], object]
    #: for ``verify``: the key of the parse-only case of the same evidence, if any
    parse: str | None = None
    #: for ``verify``: the median target in ms (SEV-SNP and TDX), else None
    target_ms: float | None = None
    #: for ``verify``: the ``platform`` the result must carry (checked once, before timing)
    expect_platform: str | None = None


@dataclass(frozen=True)
class SnpVector:
    name: str
    report: str
    vek: str
    chain: str
    signer: str


SNP_VECTORS = (
    SnpVector("gosev-milan-v2-debug", "sev-snp/gosev-milan-v2-debug.report.bin",
              "sev-snp/gosev-milan-v2-debug.vcek.der", "roots/amd-milan-vcek-ask-ark.pem", "VCEK"),
    SnpVector("virtee-milan-v2", "sev-snp/virtee-milan-v2.report.hex",
              "sev-snp/virtee-milan-v2.vcek.der", "roots/amd-milan-vcek-ask-ark.pem", "VCEK"),
    SnpVector("trustee-milan-v2-idblock", "sev-snp/trustee-milan-v2-idblock.report.bin",
              "sev-snp/trustee-milan-v2-idblock.vcek.der", "roots/amd-milan-vcek-ask-ark.pem", "VCEK"),
    SnpVector("ccf-milan-v3", "sev-snp/ccf-milan-v3.report.bin",
              "sev-snp/ccf-milan-v3.vcek.pem", "roots/amd-milan-vcek-ask-ark.pem", "VCEK"),
    SnpVector("trustee-milan-v3-vlek", "sev-snp/trustee-milan-v3-vlek.report.bin",
              "sev-snp/trustee-milan-v3-vlek.vlek.der", "roots/amd-milan-vlek-asvk-ark.pem", "VLEK"),
)

#: name -> (file, group label, expected platform)
DCAP_VECTORS = {
    "gotdx-spr-e4-v4": ("tdx/gotdx-spr-e4-v4.quote.dat", "TDX v4", "tdx"),
    "gotdx-v5": ("tdx/gotdx-v5.quote.dat", "TDX v5", "tdx"),
    "trustee-v5": ("tdx/trustee-v5.quote.dat", "TDX v5", "tdx"),
    "trustee-occlum-v3-debug": ("sgx/trustee-occlum-v3-debug.quote.dat", "SGX v3", "sgx-dcap"),
}
COLLATERAL = "tdx/collateral/"
COLLATERAL_2023 = {
    "tcb_info": COLLATERAL + "tcbinfo-tdx-50806f000000-2023-06-18.json",
    "qe_identity": COLLATERAL + "qe-identity-td-qe-2023-06-08.json",
    "pck_crl": COLLATERAL + "pck-platform-ca-crl-2023-06-08.der",
    "root_crl": COLLATERAL + "intel-sgx-root-ca-crl-2023-04-03.der",
    "tcb_signing_chain": COLLATERAL + "intel-sgx-tcb-signing-chain.pem",
}
#: The only collateral current in 2026 is the tcbInfo; its TCB Signing certificate expired 2025-05-21, so
#: (as in tests/test_dcap_vectors.py) it is accepted only with the named weakening.
COLLATERAL_2026 = {
    "tcb_info": COLLATERAL + "tcbinfo-tdx-90c06f000000-2026-02-01.json",
    "tcb_signing_chain": COLLATERAL + "intel-sgx-tcb-signing-chain.pem",
}

#: name -> document timestamp in ms (tests/vectors/README.md, tests/nitro_support.py): the pinned time.
NITRO_VECTORS = {
    "evervault-2022-10-12-debug": 1665582606081,
    "blindai-2023-03-22-debug": 1679495307405,
    "evervault-2023-09-18-debug-bound": 1695049410860,
    "evervault-2023-01-18-nondebug-in-tls-cert": 1674047239280,
}

RATLS_VECTORS = {"gramine": "ratls/ccc-gramine-sgx-debug.cert.pem",
                 "intel-sgxsdk": "ratls/ccc-intel-sgxsdk-sgx-debug.cert.pem"}


def nitro_document(name: str) -> bytes:
    """The COSE document of a Nitro vector (base64-decoded or taken out of its TLS certificate, untimed)."""
    if name == "evervault-2023-09-18-debug-bound":
        return base64.b64decode(read_vector(f"nitro/{name}.cose.b64"))
    if name == "evervault-2023-01-18-nondebug-in-tls-cert":
        return nitro.document_from_certificate_san(read_vector(f"nitro/{name}.der"))
    return read_vector(f"nitro/{name}.cose")


def hardware_cases(anchors: TrustAnchors) -> list[Case]:
    """The real vectors: SEV-SNP, Intel DCAP (with and without collateral), Nitro, RA-TLS."""
    cases: list[Case] = []
    for v in SNP_VECTORS:
        report, vek = read_vector(v.report), read_vector(v.vek)
        ask, ark = split_chain(v.chain)
        cases.append(Case(f"snp.parse.{v.name}", "SEV-SNP", f"parse_report_unverified {v.name}", "parse",
                          partial(sev_snp.parse_report_unverified, report)))
        cases.append(Case(
            f"snp.{v.signer.lower()}.{v.name}", "SEV-SNP", f"{v.signer} {v.name}", "verify",
            partial(sev_snp.verify_report, report, vek_der=vek, ask_der=ask, ark_der=ark, anchors=anchors,
                    now=SNP_AT),
            parse=f"snp.parse.{v.name}", target_ms=TARGET_MS, expect_platform="sev-snp"))
    first = SNP_VECTORS[0]
    cases.append(Case(
        f"snp.vcek.{first.name}.pinned-ask", "SEV-SNP", f"VCEK {first.name}, no chain presented (pinned ASK)",
        "verify", partial(sev_snp.verify_report, read_vector(first.report), vek_der=read_vector(first.vek),
                          anchors=anchors, now=SNP_AT),
        parse=f"snp.parse.{first.name}", target_ms=TARGET_MS, expect_platform="sev-snp"))

    files_2023 = {item: read_vector(path) for item, path in COLLATERAL_2023.items()}
    files_2026 = {item: read_vector(path) for item, path in COLLATERAL_2026.items()}
    load_2023 = partial(load_collateral, files_2023)
    load_2026 = partial(load_collateral, files_2026, unsafe_accept_expired_tcb_signing_cert=True)
    # loaded once, as a caller that fetched and cached it would (loading is timed on its own below)
    collateral = {
        "gotdx-spr-e4-v4": ("2023", "full 2023 collateral (at 2023-07-01)", DCAP_COLLATERAL_2023_AT, load_2023()),
        "gotdx-v5": ("2026", "2026 tcbInfo (expired signing cert accepted)", DCAP_CHAIN_AT, load_2026()),
    }
    for name, (path, group, expect) in DCAP_VECTORS.items():
        quote = read_vector(path)
        target = TARGET_MS if expect == "tdx" else None
        cases.append(Case(f"dcap.parse.{name}", group, f"parse_quote_unverified {name}", "parse",
                          partial(intel_quote.parse_quote_unverified, quote)))
        cases.append(Case(
            f"dcap.{name}", group, f"{name}, no collateral", "verify",
            partial(intel_dcap.verify_quote, quote, anchors=anchors, now=DCAP_CHAIN_AT, collateral=None),
            parse=f"dcap.parse.{name}", target_ms=target, expect_platform=expect))
        if name in collateral:
            year, what, at, loaded = collateral[name]
            cases.append(Case(
                f"dcap.{name}.collateral-{year}", group, f"{name} + {what}", "verify",
                partial(intel_dcap.verify_quote, quote, anchors=anchors, now=at, collateral=loaded),
                parse=f"dcap.parse.{name}", target_ms=target, expect_platform=expect))
    cases += [
        Case("dcap.collateral.load-2023", "Intel collateral", "load_collateral: 2023 tcbInfo, QE identity, 2 CRLs, "
             "chain", "other", load_2023),
        Case("dcap.collateral.load-2026", "Intel collateral", "load_collateral: 2026 tcbInfo, signing chain",
             "other", load_2026),
    ]

    for name, ms in NITRO_VECTORS.items():
        document = nitro_document(name)
        cases.append(Case(f"nitro.parse.{name}", "Nitro", f"parse_document_unverified {name}", "parse",
                          partial(nitro.parse_document_unverified, document)))
        cases.append(Case(
            f"nitro.{name}", "Nitro", name, "verify",
            partial(nitro.verify_document, document, anchors=anchors, now=EPOCH + timedelta(milliseconds=ms)),
            parse=f"nitro.parse.{name}", expect_platform="nitro"))

    for name, path in RATLS_VECTORS.items():
        cert = read_vector(path)
        cases.append(Case(f"ratls.parse.{name}", "RA-TLS", f"parse_interop_certificate {name}", "parse",
                          partial(ratls_interop.parse_interop_certificate, cert)))
        cases.append(Case(
            f"ratls.{name}", "RA-TLS", f"{name} (SGX v3 quote inside)", "verify",
            partial(ratls_interop.verify_interop_certificate, cert, anchors=anchors, now=RATLS_AT),
            parse=f"ratls.parse.{name}", expect_platform="sgx-dcap"))
    cases.append(Case(
        "ratls.gramine.legacy", "RA-TLS", "gramine, legacy quote verified too", "verify",
        partial(ratls_interop.verify_interop_certificate, read_vector(RATLS_VECTORS["gramine"]), anchors=anchors,
                now=RATLS_AT, verify_legacy=True),
        parse="ratls.parse.gramine", expect_platform="sgx-dcap"))
    return cases


#: The simulated enclave's measurement (any 48 bytes: the policy pins whatever the enclave reports).
SIM_MEASUREMENT = hashlib.sha384(b"cc-kernel/benchmarks/verify.py simulated enclave").digest()


def simulated_cases(anchors: TrustAnchors, log: Callable[[str], None]) -> list[Case]:
    """The simulated TEE as the kernel meets it: an authority with RSA-4096 ARK/ASK (as in the kernel; key
    generation is untimed), an in-process enclave whose TLS certificate carries its start-up evidence, and
    one fresh envelope answering our nonce and session id, verified at a fixed ``now`` just after it was made.
    """
    t0 = time.perf_counter()
    authority = create_authority(now=datetime.now(UTC) - timedelta(hours=1))
    log(f"  simulated authority created (RSA-4096 keys, untimed): {time.perf_counter() - t0:.2f} s")
    sim_anchors = authority.anchors()
    source = SimulatedSource(authority=authority, measurement=SIM_MEASUREMENT)
    enclave = InProcessEnclave(source)
    cert_der = enclave.identity.cert_der
    tls_spki, _ = peer_certificate_info(cert_der)
    audit_pub = enclave.audit_key.public_bytes
    nonce, session_id = secrets.token_bytes(32), secrets.token_bytes(16)
    report_data = expected_report_data(tls_spki=tls_spki, audit_pub=audit_pub, nonce=nonce, session_id=session_id)

    def collect() -> bytes:
        env = source.collect(report_data, audit_pub=audit_pub, session_id=session_id, nonce=nonce)
        return encode_envelope(env)

    envelope_bytes = collect()
    envelope = parse_envelope_unverified(envelope_bytes)
    now = datetime.now(UTC)
    policy = load_policy(render_policy("simulation", [SIM_MEASUREMENT]), source="benchmarks/verify.py")
    return [
        Case("sim.collect", "Simulated", "enclave side: SimulatedSource.collect (signs), encode_envelope",
             "other", collect),
        Case("sim.parse", "Simulated", "parse_envelope_unverified + parse_report_unverified", "parse",
             lambda: sev_snp.parse_report_unverified(parse_envelope_unverified(envelope_bytes).evidence)),
        Case("sim.verify_evidence", "Simulated", "verify_evidence (simulated SEV-SNP envelope)", "verify",
             lambda: verify_evidence(envelope, anchors=anchors, now=now, simulation_anchors=sim_anchors),
             parse="sim.parse", expect_platform="simulation"),
        Case("sim.verify_peer", "Simulated", "verify_peer: cert, start-up + fresh evidence, binding, policy",
             "verify",
             lambda: verify_peer(peer_cert_der=cert_der, envelope_bytes=envelope_bytes, nonce=nonce,
                                 session_id=session_id, policy=policy, anchors=anchors,
                                 simulation_anchors=sim_anchors, now=now),
             expect_platform="simulation"),
    ]


# -- reference primitives and the signature-check count -----------------------------------------------------------

#: 1 KiB: about the size of a TBSCertificate or a signed report/quote body.
MESSAGE = bytes(range(256)) * 4
#: AMD's RSASSA-PSS parameters (SHA-384, MGF1-SHA-384, 48-byte salt).
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class Primitive:
    key: str
    label: str


PRIMITIVES = (
    Primitive("ecdsa-p256", "ECDSA P-256 / SHA-256 verify"),
    Primitive("ecdsa-p384", "ECDSA P-384 / SHA-384 verify"),
    Primitive("rsa4096-pss", "RSA-4096 RSASSA-PSS / SHA-384 verify"),
)


def primitive_cases() -> list[Case]:
    """One raw ``cryptography`` verify of each primitive, over ``MESSAGE`` (keys made once, untimed)."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa4096 = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    sig256 = p256.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    sig384 = p384.sign(MESSAGE, ec.ECDSA(hashes.SHA384()))
    sig_pss = rsa4096.sign(MESSAGE, AMD_PSS, hashes.SHA384())
    pub256, pub384, pub_rsa = p256.public_key(), p384.public_key(), rsa4096.public_key()
    fns: dict[str, Callable[[], object]] = {
        "ecdsa-p256": lambda: pub256.verify(sig256, MESSAGE, ec.ECDSA(hashes.SHA256())),
        "ecdsa-p384": lambda: pub384.verify(sig384, MESSAGE, ec.ECDSA(hashes.SHA384())),
        "rsa4096-pss": lambda: pub_rsa.verify(sig_pss, MESSAGE, AMD_PSS, hashes.SHA384()),
    }
    return [Case(f"primitive.{p.key}", "Reference", p.label, "primitive", fns[p.key]) for p in PRIMITIVES]


def _key_kind(key: object, signature_oid: x509.ObjectIdentifier | None = None) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name, f"ecdsa-{key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey):
        pss = signature_oid == SignatureAlgorithmOID.RSASSA_PSS  # None: a raw verify, padding not visible
        return f"rsa{key.key_size}" + ("-pss" if pss else "")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__


def _by_signature_oid(oid: x509.ObjectIdentifier) -> str:
    """Fallback when the verifying key is not visible: guess by the signature algorithm (named as a guess)."""
    guess = {SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ecdsa-p256", SignatureAlgorithmOID.ECDSA_WITH_SHA384:
             "ecdsa-p384", SignatureAlgorithmOID.RSASSA_PSS: "rsa4096-pss"}.get(oid)
    return f"{guess}?" if guess else f"unknown({oid.dotted_string})"


def count_signature_checks(fn: Callable[[], object]) -> dict[str, int]:
    """Run ``fn`` once under ``sys.setprofile`` and count the signature verifications it makes, by kind.

    Counted: ``Certificate.verify_directly_issued_by`` (the issuer is read from the caller's ``issuer``
    local: ``x509chain._check_signature``), ``<public key>.verify`` and ``CertificateRevocationList.
    is_signature_valid`` (issuer likewise). These are C calls, so the profiler sees every one.
    """
    counts: collections.Counter[str] = collections.Counter()
    public_keys = (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)
    signed_by_issuer = ("verify_directly_issued_by", "is_signature_valid")  # Certificate, CRL

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        name, owner = getattr(arg, "__name__", ""), getattr(arg, "__self__", None)
        issuer = frame.f_locals.get("issuer")
        issuer_key = issuer.public_key() if isinstance(issuer, x509.Certificate) else None
        if name == "verify" and isinstance(owner, public_keys):
            counts[_key_kind(owner)] += 1
        elif isinstance(owner, x509.Certificate | x509.CertificateRevocationList) and name in signed_by_issuer:
            oid = owner.signature_algorithm_oid
            counts[_key_kind(issuer_key, oid) if issuer_key is not None else _by_signature_oid(oid)] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return dict(sorted(counts.items()))


# -- timing -------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    verify_n: int
    verify_warmup: int
    parse_n: int
    parse_warmup: int
    cold_processes: int


FULL = Plan(rounds=5, verify_n=300, verify_warmup=20, parse_n=1000, parse_warmup=50, cold_processes=10)
QUICK = Plan(rounds=2, verify_n=30, verify_warmup=5, parse_n=200, parse_warmup=20, cold_processes=2)


def time_calls(fn: Callable[[], object], n: int, warmup: int) -> list[float]:
    """``warmup`` untimed calls, then ``n`` calls each timed alone; milliseconds."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1e6)
    return out


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def round_stats(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "median_ms": statistics.median(samples), "p90_ms": p90(samples),
            "p99_ms": p99(samples), "min_ms": min(samples), "mean_ms": statistics.fmean(samples),
            "max_ms": max(samples)}


_COLD_PROBE = """
import json, sys, time
from datetime import UTC, datetime
sys.path.append({repo!r})
clock = time.perf_counter_ns
t0 = clock()
from cc_kernel.attestation.anchors import hardware_anchors
t1 = clock()
anchors = hardware_anchors()
t2 = clock()
hardware_anchors()
t3 = clock()
from cc_kernel.attestation.platforms.sev_snp import verify_report
report, vek = open({report!r}, "rb").read(), open({vek!r}, "rb").read()
t4 = clock()
verify_report(report, vek_der=vek, anchors=anchors, now=datetime(2025, 6, 1, tzinfo=UTC))
t5 = clock()
verify_report(report, vek_der=vek, anchors=anchors, now=datetime(2025, 6, 1, tzinfo=UTC))
t6 = clock()
print(json.dumps({{"import_ms": (t1 - t0) / 1e6, "first_ms": (t2 - t1) / 1e6, "cached_ms": (t3 - t2) / 1e6,
                  "snp_first_verify_ms": (t5 - t4) / 1e6, "snp_second_verify_ms": (t6 - t5) / 1e6}}))
"""


def cold_process_probe() -> dict[str, float]:
    """In a fresh interpreter: the import of ``cc_kernel.attestation.anchors``, the first ``hardware_anchors()``
    call (reads and parses the 8 packaged PEM files, checks their SHA-256 pins), a second (cached) call, then
    the process's first and second SEV-SNP verification (``gosev-milan-v2-debug``, pinned ASK)."""
    first = SNP_VECTORS[0]
    code = _COLD_PROBE.format(repo=str(REPO), report=str(VECTORS / first.report), vek=str(VECTORS / first.vek))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    values: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return values


@dataclass
class Results:
    """Per case key, the per-round statistics; the fresh-process probes; the busy fractions seen."""

    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    cold: list[dict[str, float]] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)

    def median_of(self, key: str, stat: str) -> float:
        return statistics.median(r[stat] for r in self.rounds[key])


def run_rounds(
    cases: list[Case], plan: Plan, quiet: tuple[float, float], log: Callable[[str], None]
) -> Results:
    res = Results()
    max_busy, patience = quiet
    for rnd in range(1, plan.rounds + 1):
        t_round = time.perf_counter()
        order = cases if rnd % 2 else cases[::-1]
        for case in order:
            res.busy.append(wait_quiet(max_busy, patience, log, first=0.2, then=0.5))
            heavy = case.kind in ("verify", "other")
            n, warmup = (plan.verify_n, plan.verify_warmup) if heavy else (plan.parse_n, plan.parse_warmup)
            res.rounds.setdefault(case.key, []).append(round_stats(time_calls(case.fn, n, warmup)))
        per_round = max(1, plan.cold_processes // plan.rounds)
        for _ in range(per_round):
            res.busy.append(wait_quiet(max_busy, patience, log, first=0.2, then=0.5))
            res.cold.append(cold_process_probe())
        log(f"  round {rnd}/{plan.rounds}: {time.perf_counter() - t_round:.1f} s")
    return res


# -- report -------------------------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def describe_checks(counts: dict[str, int]) -> str:
    return " + ".join(f"{n}x {kind}" for kind, n in counts.items()) or "none"


def report(
    cases: list[Case], res: Results, checks: dict[str, dict[str, int]], plan: Plan
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """The printed table, one JSON row per case, and the hardware_anchors() summary."""
    prim = {p.key: res.median_of(f"primitive.{p.key}", "median_ms") for p in PRIMITIVES}
    rows: list[dict[str, Any]] = []
    head = (f"{'case':66s} {'median':>8s} {'p90':>8s} {'per s':>7s} {'parse':>7s} {'prim.sum':>8s} {'ratio':>6s}"
            f"  verdict  signature checks")
    lines = [head, "-" * 154]
    group = None
    for case in cases:
        median, p90_ms = res.median_of(case.key, "median_ms"), res.median_of(case.key, "p90_ms")
        row: dict[str, Any] = {"key": case.key, "group": case.group, "label": case.label, "kind": case.kind,
                               "median_ms": median, "p90_ms": p90_ms, "per_s": 1e3 / median,
                               "rounds": res.rounds[case.key]}
        parse_ms = prim_sum = ratio = None
        verdict = ""
        if case.kind == "verify":
            counts = checks[case.key]
            known = all(kind in prim for kind in counts)
            if known:
                prim_sum = sum(n * prim[kind] for kind, n in counts.items())
                # per round: this case's median / the same round's primitives (a noisy moment then spoils one
                # round's ratio, not all); the median over rounds
                ratio = statistics.median(
                    mine["median_ms"] / sum(n * res.rounds[f"primitive.{kind}"][i]["median_ms"]
                                            for kind, n in counts.items())
                    for i, mine in enumerate(res.rounds[case.key]))
            parse_ms = res.median_of(case.parse, "median_ms") if case.parse else None
            if case.target_ms is not None:
                verdict = "PASS" if median < case.target_ms else "FAIL"
            row.update({"signature_checks": counts, "primitive_sum_ms": prim_sum, "ratio_to_primitives": ratio,
                        "parse_ms": parse_ms, "target_ms": case.target_ms, "verdict": verdict or None})
        rows.append(row)
        if case.kind == "parse":
            continue  # shown in the "parse" column of its verification
        if case.group != group:
            group = case.group
            lines.append(f"{group}:")
        label = ("  " + case.label)[:66]
        lines.append(f"{label:66s} {median:8.3f} {p90_ms:8.3f} {1e3 / median:7.0f} {ms(parse_ms):>7s} "
                     f"{ms(prim_sum):>8s} {'' if ratio is None else f'{ratio:5.2f}x':>6s}  {verdict:7s}  "
                     f"{describe_checks(checks[case.key]) if case.kind == 'verify' else ''}")
    cold: dict[str, Any] = {
        "first_ms_median": statistics.median(a["first_ms"] for a in res.cold),
        "first_ms_p90": p90([a["first_ms"] for a in res.cold]) if len(res.cold) > 1 else None,
        "import_ms_median": statistics.median(a["import_ms"] for a in res.cold),
        "cached_ms_median": statistics.median(a["cached_ms"] for a in res.cold),
        "snp_first_verify_ms_median": statistics.median(a["snp_first_verify_ms"] for a in res.cold),
        "snp_second_verify_ms_median": statistics.median(a["snp_second_verify_ms"] for a in res.cold),
        "processes": res.cold,
    }
    lines.append(f"hardware_anchors(): first call in a fresh process {cold['first_ms_median']:.2f} ms (median of "
                 f"{len(res.cold)} processes; import of cc_kernel.attestation.anchors before it "
                 f"{cold['import_ms_median']:.0f} ms), cached call {cold['cached_ms_median'] * 1e3:.1f} us; "
                 f"then that process's first SEV-SNP verification {cold['snp_first_verify_ms_median']:.2f} ms, "
                 f"its second {cold['snp_second_verify_ms_median']:.2f} ms")
    lines.append(f"(ms per call; medians over {plan.rounds} rounds of {plan.verify_n} verifications / "
                 f"{plan.parse_n} parses each, one thread; per s = 1000 / median; parse = parse-only of the same "
                 f"evidence; prim.sum = the signature checks counted, priced at the reference primitives' medians; "
                 f"ratio = median / prim.sum, per round, median over rounds; target: SEV-SNP and TDX median < "
                 f"{TARGET_MS:g} ms)")
    busy = sorted(b for b in res.busy if b == b)  # not NaN
    if busy:
        lines.append(f"(all CPUs busy just before a case's block: median {statistics.median(busy):.0%}, max "
                     f"{busy[-1]:.0%}; load average at the end {os.getloadavg()[0]:.2f}; shared 2-core machine: "
                     f"compare medians)")
    return "\n".join(lines), rows, cold


def check_once(cases: list[Case], log: Callable[[str], None]) -> dict[str, dict[str, int]]:
    """Every case runs once (a verification must succeed with the expected platform label); for verifications
    the signature checks are counted."""
    checks: dict[str, dict[str, int]] = {}
    for case in cases:
        result = case.fn()
        if case.kind != "verify":
            continue
        got = getattr(result, "platform", None)
        if got is None:  # verify_peer returns an AttestedPeer
            got = getattr(getattr(result, "result", None), "platform", None)
        if got != case.expect_platform:
            raise RuntimeError(f"{case.key}: verified with platform {got!r}, expected {case.expect_platform!r}")
        checks[case.key] = count_signature_checks(case.fn)
        log(f"  {case.key}: {describe_checks(checks[case.key])}")
    return checks


def iter_selected(cases: list[Case], only: str | None) -> Iterator[Case]:
    """``--only``: the cases whose key contains the text, the parse cases they refer to (for the parse column)
    and the reference primitives (for the ratio)."""
    keep = {c.key for c in cases if only is None or only in c.key or c.kind == "primitive"}
    keep |= {c.parse for c in cases if c.key in keep and c.parse}
    return (c for c in cases if c.key in keep)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of fewer calls (~25 s instead of ~2 min)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over all cases; default 5, quick 2")
    ap.add_argument("--only", default=None, metavar="TEXT",
                    help="only the cases whose key contains TEXT (e.g. snp., dcap., sim.); for experiments")
    ap.add_argument("--max-busy", type=float, default=0.3, metavar="FRACTION",
                    help="before each case's block, wait until the CPUs are at most this busy (default 0.3; "
                         "1 disables the wait)")
    ap.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS",
                    help="longest wait for a quiet machine before measuring anyway (default 30)")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers to this JSON file")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        plan = replace(plan, rounds=args.rounds)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.time()
    anchors = hardware_anchors()
    cases = [*primitive_cases(), *hardware_cases(anchors), *simulated_cases(anchors, log)]
    cases = list(iter_selected(cases, args.only))
    log(f"{len(cases)} cases; checking each once and counting signature checks:")
    checks = check_once(cases, log)
    res = run_rounds(cases, plan, (args.max_busy, args.quiet_wait), log)
    table, rows, cold_summary = report(cases, res, checks, plan)
    print(table)
    fails = [r["key"] for r in rows if r.get("verdict") == "FAIL"]
    print("all targets met" if not fails else f"targets missed: {', '.join(fails)}")
    if args.json is not None:
        from importlib.metadata import version

        from cryptography.hazmat.backends.openssl.backend import backend

        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                        "cryptography": version("cryptography"), "openssl": backend.openssl_version_text(),
                        "loadavg_at_end": os.getloadavg()},
            "code": git_state(), "plan": plan.__dict__, "target_ms": TARGET_MS,
            "busy_before_blocks": res.busy, "cold_process": cold_summary, "cases": rows,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        log(f"numbers written to {args.json}")
    return 0 if not fails else 1


if __name__ == "__main__":
    sys.exit(main())
