"""The simulated TEE authority (ATTESTATION.md §3.8) and ``verify_evidence``'s labelling by anchor: same bytes as
SEV-SNP, verified by the same code, labelled ``simulation`` only because the simulation ARK verified it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conftest import SIM_CREATED_AT, SNP_VERIFY_AT, SimKeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.envelope import (
    Endorsement,
    EvidenceEnvelope,
    encode_envelope,
    parse_envelope_unverified,
)
from cc_kernel.attestation.platforms import simulation as sim
from cc_kernel.attestation.platforms.sev_snp import REPORT_SIZE, SIGNED_SIZE, parse_report_unverified
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.crypto.x509load import amd_vek_extensions, certificate_serial, certificate_sha256
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    ConfigError,
    MalformedEvidence,
    SignatureInvalid,
    UntrustedRoot,
    VerificationError,
)

MEASUREMENT = hashlib.sha384(b"cc-kernel enclave manifest").digest()
REPORT_DATA = hashlib.sha512(b"binding").digest()
NOW = SNP_VERIFY_AT + timedelta(hours=1)


def report(authority: SimulationAuthority, **knobs: object) -> bytes:
    return sim.sign_report(authority, report_data=REPORT_DATA, measurement=MEASUREMENT, **knobs)  # type: ignore[arg-type]


def envelope(authority: SimulationAuthority, data: bytes, **changes: object) -> EvidenceEnvelope:
    env = sim.simulated_envelope(
        authority, data, audit_pub=b"a" * 32, session_id=b"s" * 16, nonce=b"n" * 32, collected_at_ms=1234
    )
    if not changes:
        return env
    fields = {**env.__dict__, **changes}
    return EvidenceEnvelope(**fields)  # type: ignore[arg-type]


def fail(exc_type: type[VerificationError], call: Callable[[], object]) -> VerificationError:
    with pytest.raises(exc_type) as info:
        call()
    return info.value


# --- the authority -------------------------------------------------------------------------------------------


def test_certificates_imitate_amd_and_say_simulation(sim_authority: SimulationAuthority) -> None:
    a = sim_authority
    for cert, cn in ((a.ark_cert, "ARK-Simulated"), (a.ask_cert, "SEV-Simulated"), (a.vcek_cert, "SEV-VCEK")):
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        assert [o.value for o in orgs] == ["Confidential Python SIMULATION - NOT HARDWARE"]
        assert certificate_serial(cert) > 0
        assert cert.not_valid_before_utc == SIM_CREATED_AT
    assert a.ark_cert.not_valid_after_utc == datetime(2050, 6, 1, tzinfo=UTC)
    assert a.ask_cert.not_valid_after_utc == datetime(2050, 6, 1, tzinfo=UTC)
    assert a.vcek_cert.not_valid_after_utc == datetime(2032, 6, 1, tzinfo=UTC)
    assert a.ark_cert.issuer == a.ark_cert.subject
    assert a.ask_cert.issuer == a.ark_cert.subject
    assert a.vcek_cert.issuer == a.ask_cert.subject
    ark_key = a.ark_cert.public_key()
    assert isinstance(ark_key, rsa.RSAPublicKey)
    assert ark_key.key_size == 4096
    vcek_key = a.vcek_cert.public_key()
    assert isinstance(vcek_key, ec.EllipticCurvePublicKey)
    assert vcek_key.curve.name == "secp384r1"
    for cert in (a.ark_cert, a.ask_cert, a.vcek_cert):
        params = cert.signature_algorithm_parameters
        assert isinstance(params, padding.PSS)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    assert a.ark_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert a.ask_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


def test_vcek_carries_the_amd_extensions(sim_authority: SimulationAuthority) -> None:
    ext = amd_vek_extensions(sim_authority.vcek_cert)
    assert (ext.struct_version, ext.product_name, ext.product, ext.csp_id) == (0, "Simulated", "Simulated", None)
    assert {k: ext.spls[k] for k in ("bl", "tee", "snp", "ucode")} == dict(sim_authority.tcb)
    assert ext.hw_id == sim_authority.chip_id
    assert len(sim_authority.chip_id) == 64
    assert sim_authority.chip_id.startswith(b"CC-SIMULATION")
    # ucode 219 >= 128 needs the leading-zero INTEGER form, exactly like AMD's 02 02 00 db
    raw = sim_authority.vcek_cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
    ).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    assert raw.value == b"\x02\x02\x00\xdb"


def test_chip_id_is_stable_per_authority(sim_authority: SimulationAuthority, sim_keys: SimKeys) -> None:
    again = sim.create_authority(now=NOW, ark_key=sim_keys.ark, ask_key=sim_keys.ask, vcek_key=sim_keys.vcek)
    assert again.chip_id == sim_authority.chip_id
    swapped = sim.create_authority(now=NOW, ark_key=sim_keys.ask, ask_key=sim_keys.ark, vcek_key=sim_keys.vcek)
    assert swapped.chip_id != sim_authority.chip_id


def test_create_authority_rejects_misuse(sim_keys: SimKeys) -> None:
    keys = {"ark_key": sim_keys.ark, "ask_key": sim_keys.ask, "vcek_key": sim_keys.vcek}
    with pytest.raises(ValueError, match="timezone-aware"):
        sim.create_authority(now=datetime(2025, 6, 1), **keys)
    with pytest.raises(ValueError, match="unknown TCB"):
        sim.create_authority(now=NOW, tcb={"fmc": 1}, **keys)
    with pytest.raises(ValueError, match="one byte"):
        sim.create_authority(now=NOW, tcb={"ucode": 300}, **keys)
    with pytest.raises(ValueError, match="P-384"):
        sim.create_authority(
            now=NOW, ark_key=sim_keys.ark, ask_key=sim_keys.ask, vcek_key=ec.generate_private_key(ec.SECP256R1())
        )


def test_pem_round_trip(sim_authority: SimulationAuthority) -> None:
    blobs = sim.authority_to_pem(sim_authority)
    assert set(blobs) == set(sim.PEM_FILES)
    for name in sim.PRIVATE_KEY_FILES:
        assert blobs[name].startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    back = sim.authority_from_pem(blobs)
    assert (back.chip_id, dict(back.tcb)) == (sim_authority.chip_id, dict(sim_authority.tcb))
    assert (back.ark_der, back.ask_der, back.vcek_der) == (
        sim_authority.ark_der,
        sim_authority.ask_der,
        sim_authority.vcek_der,
    )
    data = report(back)
    ve = verify_evidence(envelope(back, data), anchors=TrustAnchors(), now=NOW, simulation_anchors=back.anchors())
    assert ve.platform == "simulation"


def test_pem_load_refuses_inconsistent_stores(
    sim_authority: SimulationAuthority, sim_keys: SimKeys, vector: Callable[[str], bytes]
) -> None:
    blobs = sim.authority_to_pem(sim_authority)
    with pytest.raises(ConfigError, match="missing"):
        sim.authority_from_pem({k: v for k, v in blobs.items() if k != "vcek-key.pem"})
    with pytest.raises(ConfigError, match="does not parse"):
        sim.authority_from_pem({**blobs, "ask-cert.pem": b"garbage"})
    with pytest.raises(ConfigError, match="does not match"):
        sim.authority_from_pem({**blobs, "ark-key.pem": blobs["ask-key.pem"]})
    with pytest.raises(ConfigError, match="must be RSA"):
        sim.authority_from_pem({**blobs, "ark-key.pem": blobs["vcek-key.pem"]})
    other = sim.create_authority(now=NOW, ark_key=sim_keys.ask, ask_key=sim_keys.ark, vcek_key=sim_keys.vcek)
    other_blobs = sim.authority_to_pem(other)
    mixed = {**blobs, "ark-cert.pem": other_blobs["ark-cert.pem"], "ark-key.pem": other_blobs["ark-key.pem"]}
    with pytest.raises(ConfigError, match="chain"):
        sim.authority_from_pem(mixed)
    real_ask_ark = vector("roots/amd-milan-vcek-ask-ark.pem").split(b"-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="not marked"):
        sim.authority_from_pem({**blobs, "ask-cert.pem": real_ask_ark[0] + b"-----END CERTIFICATE-----\n"})


# --- reports -------------------------------------------------------------------------------------------------


def test_report_is_a_byte_exact_v5_snp_report(sim_authority: SimulationAuthority) -> None:
    data = report(sim_authority)
    assert len(data) == REPORT_SIZE == 1184
    r = parse_report_unverified(data)
    assert (r.version, r.signature_algo, r.policy, r.vmpl, r.signing_key) == (5, 1, 0x30000, 0, 0)
    assert (r.measurement, r.report_data, r.chip_id) == (MEASUREMENT, REPORT_DATA, sim_authority.chip_id)
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == sim.SIMULATED_CPUID == (0xCC, 0, 0)
    assert r.product_from_cpuid() == "Simulated"
    assert r.reported_tcb == r.current_tcb == r.committed_tcb == r.launch_tcb
    assert r.report_id_ma == b"\xff" * 32
    assert (r.launch_mit_vector, r.current_mit_vector) == (0, 0)
    assert r.current_fw == r.committed_fw == "1.55.0"
    # the signature is AMD's format: little-endian R and S over bytes 0..0x29F
    sig = encode_dss_signature(r.signature_r, r.signature_s)
    sim_authority.vcek_key.public_key().verify(sig, data[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))


def test_report_knob_validation(sim_authority: SimulationAuthority) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        sim.sign_report(sim_authority, report_data=b"x", measurement=MEASUREMENT)
    with pytest.raises(ValueError, match="48 bytes"):
        sim.sign_report(sim_authority, report_data=REPORT_DATA, measurement=b"x")
    with pytest.raises(ValueError, match="unknown or non-overridable"):
        report(sim_authority, overrides={"nonsense": 1})
    with pytest.raises(ValueError, match="unknown or non-overridable"):
        report(sim_authority, overrides={"signature_r": bytes(72)})
    with pytest.raises(ValueError, match="32 bytes"):
        report(sim_authority, overrides={"host_data": b"short"})
    with pytest.raises(ValueError, match="does not fit"):
        report(sim_authority, overrides={"vmpl": 1 << 32})
    with pytest.raises(ValueError, match="not a TCB field"):
        report(sim_authority, overrides={"host_data": {"bl": 1}})
    with pytest.raises(TypeError):
        report(sim_authority, overrides={"vmpl": "1"})
    with pytest.raises(ValueError, match="outside the report"):
        report(sim_authority, raw_patch={1183: b"ab"})


def test_overrides_and_late_patches(sim_authority: SimulationAuthority) -> None:
    host = hashlib.sha256(b"host").digest()
    r = parse_report_unverified(report(sim_authority, overrides={"host_data": host, "guest_svn": 7}))
    assert (r.host_data, r.guest_svn) == (host, 7)
    patched = report(sim_authority, raw_patch={0x330: b"\x01"})
    assert patched[0x330] == 1  # applied after signing


# --- verify_evidence: the label comes from the anchor ---------------------------------------------------------


def test_simulated_envelope(sim_authority: SimulationAuthority) -> None:
    env = envelope(sim_authority, report(sim_authority))
    assert (env.platform, env.format, env.collected_at_ms) == ("simulation", "cc-sim-snp-report", 1234)
    assert [(e.kind, e.role) for e in env.endorsements] == [
        ("x509-der", "vcek"),
        ("x509-der", "ask"),
        ("x509-der", "ark"),
    ]
    assert env.endorsement("x509-der", "ark") == sim_authority.ark_der
    assert parse_envelope_unverified(encode_envelope(env)) == env


def test_verified_as_simulation(
    sim_authority: SimulationAuthority, sim_anchors: TrustAnchors, hw_anchors: TrustAnchors
) -> None:
    data = report(sim_authority)
    env = parse_envelope_unverified(encode_envelope(envelope(sim_authority, data)))
    ve = verify_evidence(env, anchors=hw_anchors, now=NOW, simulation_anchors=sim_anchors)
    assert (ve.platform, ve.product, ve.signer) == ("simulation", "Simulated", "sim-vcek")
    assert (ve.measurement, ve.report_data, ve.debug) == (MEASUREMENT, REPORT_DATA, False)
    assert ve.anchor_sha256 == certificate_sha256(sim_authority.ark_cert)
    assert ve.evidence_sha256 == hashlib.sha256(data).digest()
    assert ve.verified_at == NOW
    assert ve.claims["anchor"]["platform"] == "simulation"  # type: ignore[index]


@pytest.mark.parametrize(("platform", "fmt"), [("sev-snp", "amd-snp-report"), ("sev-snp", "cc-sim-snp-report")])
def test_an_envelope_claiming_sev_snp_is_still_simulation(
    sim_authority: SimulationAuthority,
    sim_anchors: TrustAnchors,
    hw_anchors: TrustAnchors,
    platform: str,
    fmt: str,
) -> None:
    env = envelope(sim_authority, report(sim_authority), platform=platform, format=fmt)
    ve = verify_evidence(env, anchors=hw_anchors, now=NOW, simulation_anchors=sim_anchors)
    assert ve.platform == "simulation"


@pytest.mark.parametrize("version", [5, 2])
@pytest.mark.parametrize("claimed", ["simulation", "sev-snp"])
def test_simulated_report_without_simulation_anchors_is_untrusted(
    sim_authority: SimulationAuthority, hw_anchors: TrustAnchors, version: int, claimed: str
) -> None:
    env = envelope(sim_authority, report(sim_authority, version=version), platform=claimed)
    error = fail(UntrustedRoot, lambda: verify_evidence(env, anchors=hw_anchors, now=NOW))
    assert error.check == "snp.anchor"
    assert "SIMULATED TEE" in str(error)
    assert "does not allow simulation" in str(error)


def test_simulated_report_with_only_its_vcek_still_gets_the_hint(
    sim_authority: SimulationAuthority, hw_anchors: TrustAnchors
) -> None:
    env = envelope(
        sim_authority,
        report(sim_authority),
        endorsements=(Endorsement(kind="x509-der", role="vcek", data=sim_authority.vcek_der),),
    )
    assert "SIMULATED TEE" in str(fail(UntrustedRoot, lambda: verify_evidence(env, anchors=hw_anchors, now=NOW)))


def test_expired_simulated_vcek(sim_authority: SimulationAuthority, sim_anchors: TrustAnchors) -> None:
    later = sim_authority.vcek_cert.not_valid_after_utc + timedelta(days=1)
    env = envelope(sim_authority, report(sim_authority))
    error = fail(
        CertificateExpired,
        lambda: verify_evidence(env, anchors=TrustAnchors(), now=later, simulation_anchors=sim_anchors),
    )
    assert (error.check, error.index) == ("chain.validity", 0)
    before = SIM_CREATED_AT - timedelta(seconds=1)
    error = fail(
        CertificateExpired,
        lambda: verify_evidence(env, anchors=TrustAnchors(), now=before, simulation_anchors=sim_anchors),
    )
    assert error.check == "chain.validity"


def test_another_authoritys_anchors_do_not_verify(sim_authority: SimulationAuthority, sim_keys: SimKeys) -> None:
    other = sim.create_authority(now=NOW, ark_key=sim_keys.ask, ask_key=sim_keys.ark, vcek_key=sim_keys.vcek)
    env = envelope(sim_authority, report(sim_authority))
    # the presented ARK is not the pinned (other) simulation ARK
    error = fail(
        UntrustedRoot, lambda: verify_evidence(env, anchors=TrustAnchors(), now=NOW, simulation_anchors=other.anchors())
    )
    assert error.check == "snp.presented_ark"
    # without the ARK endorsement, the chain reaches the other ARK and its signature check fails
    no_ark = envelope(sim_authority, report(sim_authority), endorsements=env.endorsements[:2])
    error = fail(
        SignatureInvalid,
        lambda: verify_evidence(no_ark, anchors=TrustAnchors(), now=NOW, simulation_anchors=other.anchors()),
    )
    assert (error.check, error.index) == ("chain.signature", 1)


def test_lower_tcb_authority(sim_authority: SimulationAuthority, sim_keys: SimKeys) -> None:
    """Teaching knob 'lower TCB': an authority whose VCEK was derived for an older TCB."""
    old = sim.create_authority(
        now=NOW,
        tcb={"bl": 2, "tee": 0, "snp": 5, "ucode": 68},
        ark_key=sim_keys.ark,
        ask_key=sim_keys.ask,
        vcek_key=sim_keys.vcek,
    )
    ve = verify_evidence(envelope(old, report(old)), anchors=TrustAnchors(), now=NOW, simulation_anchors=old.anchors())
    assert dict(ve.tcb) == {"bl": 2, "tee": 0, "snp": 5, "ucode": 68}


def test_signing_key_7_and_missing_endorsements(sim_authority: SimulationAuthority, sim_anchors: TrustAnchors) -> None:
    env = envelope(sim_authority, report(sim_authority, signing_key=7))
    error = fail(
        MalformedEvidence, lambda: verify_evidence(env, anchors=TrustAnchors(), now=NOW, simulation_anchors=sim_anchors)
    )
    assert error.check == "snp.signing_key"
    vlek_report = envelope(sim_authority, report(sim_authority, signing_key=1))
    error = fail(
        MalformedEvidence,
        lambda: verify_evidence(vlek_report, anchors=TrustAnchors(), now=NOW, simulation_anchors=sim_anchors),
    )
    assert (error.check, error.expected) == ("envelope.endorsement", "vlek")
    relabelled = envelope(
        sim_authority,
        report(sim_authority, signing_key=1),
        endorsements=(Endorsement(kind="x509-der", role="vlek", data=sim_authority.vcek_der),),
    )
    error = fail(
        ChainError,
        lambda: verify_evidence(relabelled, anchors=TrustAnchors(), now=NOW, simulation_anchors=sim_anchors),
    )
    assert error.check == "snp.intermediate"  # the simulated authority has no ASVK


def test_unsupported_formats(sim_authority: SimulationAuthority, hw_anchors: TrustAnchors) -> None:
    env = envelope(sim_authority, report(sim_authority), format="something-else")
    error = fail(MalformedEvidence, lambda: verify_evidence(env, anchors=hw_anchors, now=NOW))
    assert (error.check, error.got) == ("envelope.format", "something-else")
    assert "is not supported" in str(error)


@pytest.mark.parametrize(("fmt", "prefix"), [("intel-dcap-quote", "dcap."), ("aws-nitro-cose-sign1", "nitro.")])
def test_a_simulated_report_under_another_format_is_malformed_for_that_parser(
    fmt: str, prefix: str, sim_authority: SimulationAuthority, sim_anchors: TrustAnchors, hw_anchors: TrustAnchors
) -> None:
    # the format picks the parser; an SNP report handed to the DCAP or Nitro parser is malformed there
    env = envelope(sim_authority, report(sim_authority), format=fmt)
    error = fail(
        MalformedEvidence,
        lambda: verify_evidence(env, anchors=hw_anchors, now=NOW, simulation_anchors=sim_anchors),
    )
    assert error.check.startswith(prefix), error.check


def test_anchor_sets_cannot_be_mixed_up(
    sim_authority: SimulationAuthority, sim_anchors: TrustAnchors, hw_anchors: TrustAnchors
) -> None:
    env = envelope(sim_authority, report(sim_authority))
    with pytest.raises(ValueError, match="simulation_anchors="):
        verify_evidence(env, anchors=sim_anchors, now=NOW)
    with pytest.raises(ValueError, match="only hold simulation roots"):
        verify_evidence(env, anchors=TrustAnchors(), now=NOW, simulation_anchors=hw_anchors)


def test_real_evidence_never_needs_simulation_anchors(
    vector: Callable[[str], bytes], hw_anchors: TrustAnchors, sim_anchors: TrustAnchors
) -> None:
    env = EvidenceEnvelope(
        platform="simulation",  # a lying hint changes nothing
        format="amd-snp-report",
        evidence=vector("sev-snp/ccf-milan-v3.report.bin"),
        audit_pub=b"a" * 32,
        session_id=b"s" * 16,
        nonce=b"n" * 32,
        endorsements=(Endorsement(kind="x509-der", role="vcek", data=vector("sev-snp/ccf-milan-v3.vcek.pem")),),
    )
    for extra in (None, sim_anchors):
        ve = verify_evidence(env, anchors=hw_anchors, now=SNP_VERIFY_AT, simulation_anchors=extra)
        assert (ve.platform, ve.signer) == ("sev-snp", "vcek")
    vlek_env = EvidenceEnvelope(
        **{
            **env.__dict__,
            "evidence": vector("sev-snp/trustee-milan-v3-vlek.report.bin"),
            "endorsements": (
                Endorsement(kind="x509-der", role="vlek", data=vector("sev-snp/trustee-milan-v3-vlek.vlek.der")),
            ),
        }
    )
    assert verify_evidence(vlek_env, anchors=hw_anchors, now=SNP_VERIFY_AT).signer == "vlek"
    # a real report presented without hardware anchors: untrusted, and no simulation hint
    error = fail(UntrustedRoot, lambda: verify_evidence(env, anchors=TrustAnchors(), now=SNP_VERIFY_AT))
    assert "SIMULATED" not in str(error)


def test_describes_simulation_is_only_a_hint(
    sim_authority: SimulationAuthority, vector: Callable[[str], bytes]
) -> None:
    assert sim.describes_simulation(sim_authority.vcek_der)
    assert sim.describes_simulation(None, b"garbage", report=report(sim_authority, version=3))
    assert not sim.describes_simulation(vector("sev-snp/virtee-milan-v2.vcek.der"), b"junk", None)
    assert not sim.describes_simulation(report=vector("sev-snp/ccf-milan-v3.report.bin"))


def test_issue_vcek_for_an_old_tcb(sim_authority: SimulationAuthority, sim_anchors: TrustAnchors) -> None:
    """Teaching fault "old TCB": same ARK/ASK/chip, a VCEK (and reports) for an older TCB."""
    old = sim.issue_vcek(sim_authority, tcb=sim.OLD_TCB)
    assert (old.ark_der, old.ask_der, old.chip_id) == (
        sim_authority.ark_der,
        sim_authority.ask_der,
        sim_authority.chip_id,
    )
    assert old.vcek_cert.not_valid_before_utc == sim_authority.vcek_cert.not_valid_before_utc
    assert old.vcek_cert.not_valid_after_utc == sim_authority.vcek_cert.not_valid_after_utc
    assert certificate_serial(old.vcek_cert) != certificate_serial(sim_authority.vcek_cert)
    assert all(sim.OLD_TCB[k] <= sim.DEFAULT_TCB[k] for k in sim.DEFAULT_TCB)
    ve = verify_evidence(envelope(old, report(old)), anchors=TrustAnchors(), now=NOW, simulation_anchors=sim_anchors)
    assert dict(ve.tcb) == dict(sim.OLD_TCB)
    # a report for the default TCB does not match the re-issued VCEK
    mixed = envelope(old, report(sim_authority))
    error = fail(
        ChainError, lambda: verify_evidence(mixed, anchors=TrustAnchors(), now=NOW, simulation_anchors=sim_anchors)
    )
    assert error.check == "snp.vek.spl"
    renewed = sim.issue_vcek(sim_authority, tcb=sim.DEFAULT_TCB, now=NOW)
    assert renewed.vcek_cert.not_valid_before_utc == NOW.replace(microsecond=0)
    assert renewed.vcek_cert.not_valid_after_utc == NOW.replace(year=NOW.year + 7, microsecond=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        sim.issue_vcek(sim_authority, tcb=sim.OLD_TCB, now=datetime(2025, 6, 1))
