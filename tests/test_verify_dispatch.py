"""``verify_evidence`` dispatches Intel DCAP and AWS Nitro envelopes to their verifiers, takes Intel collateral
from the caller or the envelope, labels results by the root that verified them, and ``verify_peer`` checks a
Nitro document's signed nonce (a replayed document is named a replay).

Real vectors are verified at their pinned times (tests/vectors/README.md); Nitro documents for the channel
checks are signed by the throwaway test PKI of ``nitro_support`` (pinned under the ``nitro`` label only inside
the test), because no real document binds one of our TLS keys.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import read_vector
from nitro_support import TEST_NOW as NITRO_NOW
from nitro_support import TEST_PCRS, build_document, default_pki, pinned_test_anchors

from cc_kernel.attestation.anchors import PinnedRoot, TrustAnchors, hardware_anchors
from cc_kernel.attestation.binding import expected_report_data
from cc_kernel.attestation.envelope import (
    Endorsement,
    EvidenceEnvelope,
    encode_envelope,
    parse_envelope_unverified,
)
from cc_kernel.attestation.platforms.intel_collateral import load_collateral
from cc_kernel.attestation.policy import load_policy
from cc_kernel.attestation.verify import (
    COLLATERAL_ENDORSEMENT,
    DCAP_FORMAT,
    NITRO_FORMAT,
    SNP_FORMATS,
    answered_nonce,
    envelope_collateral,
    verify_evidence,
)
from cc_kernel.channel.ratls import verify_peer
from cc_kernel.crypto.keys import make_tls_identity, new_tls_key
from cc_kernel.errors import BindingMismatch, MalformedEvidence, PolicyViolation, StaleEvidence, UntrustedRoot

CHAIN_AT = datetime(2026, 2, 3, 1, 0, tzinfo=UTC)
COLLATERAL_2023_AT = datetime(2023, 7, 1, 1, 0, tzinfo=UTC)
COLLATERAL = "tdx/collateral/"
FILES_2023 = {
    "tcb_info": COLLATERAL + "tcbinfo-tdx-50806f000000-2023-06-18.json",
    "qe_identity": COLLATERAL + "qe-identity-td-qe-2023-06-08.json",
    "pck_crl": COLLATERAL + "pck-platform-ca-crl-2023-06-08.der",
    "root_crl": COLLATERAL + "intel-sgx-root-ca-crl-2023-04-03.der",
    "tcb_signing_chain": COLLATERAL + "intel-sgx-tcb-signing-chain.pem",
}
SPR_MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
V5_MRTD = "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876"


def envelope(
    evidence: bytes, fmt: str, *, platform: str = "tdx", endorsements: tuple[Endorsement, ...] = ()
) -> EvidenceEnvelope:
    """An envelope as it travels: encoded and parsed back, so the size limit and schema apply."""
    env = EvidenceEnvelope(
        platform=platform,
        format=fmt,
        evidence=evidence,
        audit_pub=b"\x44" * 32,
        session_id=b"\x22" * 16,
        nonce=b"\x33" * 32,
        endorsements=endorsements,
    )
    return parse_envelope_unverified(encode_envelope(env))


def collateral_endorsements(**files: str) -> tuple[Endorsement, ...]:
    return tuple(
        Endorsement(kind=COLLATERAL_ENDORSEMENT, role=role, data=read_vector(path)) for role, path in files.items()
    )


# --- Intel DCAP -----------------------------------------------------------------------------------------------


def test_a_tdx_quote_without_collateral_verifies_and_warns() -> None:
    env = envelope(read_vector("tdx/gotdx-v5.quote.dat"), DCAP_FORMAT)
    ev = verify_evidence(env, anchors=hardware_anchors(), now=CHAIN_AT)
    assert (ev.platform, ev.product, ev.measurement.hex()) == ("tdx", "Intel TDX", V5_MRTD)
    assert ev.tcb_status is None and "tcb-collateral-missing" in ev.warnings


def test_the_platform_label_comes_from_the_root_not_the_envelope() -> None:
    env = envelope(read_vector("tdx/gotdx-v5.quote.dat"), DCAP_FORMAT, platform="sev-snp")
    assert verify_evidence(env, anchors=hardware_anchors(), now=CHAIN_AT).platform == "tdx"
    sgx = envelope(read_vector("sgx/trustee-occlum-v3-debug.quote.dat"), DCAP_FORMAT, platform="tdx")
    ev = verify_evidence(sgx, anchors=hardware_anchors(), now=CHAIN_AT)
    assert ev.platform == "sgx-dcap" and ev.debug is True


def test_collateral_carried_in_the_envelope_is_evaluated() -> None:
    env = envelope(
        read_vector("tdx/gotdx-spr-e4-v4.quote.dat"), DCAP_FORMAT, endorsements=collateral_endorsements(**FILES_2023)
    )
    assert len(encode_envelope(env)) < 64 * 1024
    ev = verify_evidence(env, anchors=hardware_anchors(), now=COLLATERAL_2023_AT)
    assert ev.measurement.hex() == SPR_MRTD
    # the documented outcome of this vector with its 2023 collateral: no TCB level matches
    assert ev.tcb_status == "NoMatchingTcbLevel"
    assert "tcb-collateral-missing" not in ev.warnings and "trailing-bytes" in ev.warnings


def test_the_callers_collateral_wins_over_the_envelopes() -> None:
    # the envelope carries collateral that is stale at this time; the caller's own copy is what counts
    env = envelope(
        read_vector("tdx/gotdx-spr-e4-v4.quote.dat"), DCAP_FORMAT, endorsements=collateral_endorsements(**FILES_2023)
    )
    later = COLLATERAL_2023_AT + timedelta(days=400)
    with pytest.raises(StaleEvidence):
        verify_evidence(env, anchors=hardware_anchors(), now=later)
    own = load_collateral({"pck_crl": read_vector(FILES_2023["pck_crl"])})
    with pytest.raises(StaleEvidence) as info:  # the caller's CRL is just as stale: proves it was the one used
        verify_evidence(env, anchors=hardware_anchors(), now=later, collateral=own)
    assert "pck_crl" in info.value.check
    fresh = load_collateral({"root_crl": read_vector(FILES_2023["root_crl"])})
    ev = verify_evidence(env, anchors=hardware_anchors(), now=COLLATERAL_2023_AT, collateral=fresh)
    assert ev.tcb_status is None and "tcb-collateral-incomplete" in ev.warnings


@pytest.mark.parametrize(
    ("endorsements", "message"),
    [
        ((Endorsement(kind=COLLATERAL_ENDORSEMENT, role="tcb_inf", data=b"{}"),), "unknown or repeated item 'tcb_inf'"),
        (
            (
                Endorsement(kind=COLLATERAL_ENDORSEMENT, role="root_crl", data=b"x"),
                Endorsement(kind=COLLATERAL_ENDORSEMENT, role="root_crl", data=b"y"),
            ),
            "unknown or repeated item 'root_crl'",
        ),
        (collateral_endorsements(tcb_info=FILES_2023["tcb_info"]), "incomplete"),
    ],
    ids=["unknown-item", "repeated-item", "tcb-info-without-chain"],
)
def test_bad_collateral_in_the_envelope_is_malformed(endorsements: tuple[Endorsement, ...], message: str) -> None:
    env = envelope(read_vector("tdx/gotdx-v5.quote.dat"), DCAP_FORMAT, endorsements=endorsements)
    with pytest.raises(MalformedEvidence, match=message) as info:
        verify_evidence(env, anchors=hardware_anchors(), now=CHAIN_AT)
    assert info.value.check == "envelope.collateral"


def test_garbage_collateral_in_the_envelope_is_malformed_not_a_crash() -> None:
    env = envelope(
        read_vector("tdx/gotdx-v5.quote.dat"),
        DCAP_FORMAT,
        endorsements=(Endorsement(kind=COLLATERAL_ENDORSEMENT, role="pck_crl", data=b"\x30\x03\x02\x01"),),
    )
    with pytest.raises(MalformedEvidence) as info:
        verify_evidence(env, anchors=hardware_anchors(), now=CHAIN_AT)
    assert info.value.check == "collateral.crl.parse" and info.value.message.startswith("pck_crl:")
    assert envelope_collateral(envelope(read_vector("tdx/gotdx-v5.quote.dat"), DCAP_FORMAT)) is None


def test_incomplete_collateral_is_named_by_the_policy() -> None:
    from cc_kernel.attestation.appraisal import appraise_offline

    env = envelope(
        read_vector("tdx/gotdx-spr-e4-v4.quote.dat"),
        DCAP_FORMAT,
        endorsements=collateral_endorsements(root_crl=FILES_2023["root_crl"]),
    )
    ev = verify_evidence(env, anchors=hardware_anchors(), now=COLLATERAL_2023_AT)
    rtmr = f'rtmr = {{ 1 = "{ev.measurements["rtmr1"].hex()}", 2 = "{ev.measurements["rtmr2"].hex()}" }}\n'
    policy = load_policy(f'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["{SPR_MRTD}"]\n{rtmr}')
    with pytest.raises(PolicyViolation) as info:
        appraise_offline(ev, policy, now=COLLATERAL_2023_AT)
    (failure,) = info.value.failures
    assert failure.check == "policy.tcb_collateral"
    assert "incomplete (missing: tcb_info, qe_identity, pck_crl)" in failure.message


# --- AWS Nitro ------------------------------------------------------------------------------------------------


def test_a_real_nitro_document_dispatches_to_the_nitro_verifier() -> None:
    doc = read_vector("nitro/blindai-2023-03-22-debug.cose")
    from nitro_support import VECTORS_BY_NAME

    case = VECTORS_BY_NAME["blindai-2023-03-22-debug"]
    env = envelope(doc, NITRO_FORMAT, platform="sev-snp")
    ev = verify_evidence(env, anchors=hardware_anchors(), now=case.verify_at)
    assert ev.platform == "nitro" and ev.debug is True
    assert ev.measurement == bytes(48)


def test_simulation_anchors_never_verify_a_nitro_document() -> None:
    # the throwaway root that signed the document, given as a simulation root: still not a pinned nitro root
    pki = default_pki()
    sim = TrustAnchors(roots=(PinnedRoot(platform="simulation", product="Simulated", certificate=pki.root),))
    with pytest.raises(UntrustedRoot) as info:
        verify_evidence(
            envelope(build_document(), NITRO_FORMAT), anchors=TrustAnchors(roots=()), now=NITRO_NOW,
            simulation_anchors=sim,
        )
    assert info.value.check == "nitro.root"


# --- the channel check with a Nitro enclave (verify_peer) ----------------------------------------------------

NITRO_POLICY = f"""
version = 1
[[accept]]
platform = "nitro"
pcr = {{ 0 = "{TEST_PCRS[0].hex()}" }}
"""


def nitro_peer(
    anchors: TrustAnchors, *, doc_nonce: bytes | None, our_nonce: bytes, bind_nonce: bytes | None = None
) -> None:
    key = new_tls_key()
    identity = make_tls_identity(key, now=NITRO_NOW)
    audit_pub, session_id = b"\xaa" * 32, b"\xcc" * 16
    report_data = expected_report_data(
        tls_spki=identity.spki_der, audit_pub=audit_pub, nonce=bind_nonce or our_nonce, session_id=session_id
    )
    document = build_document(user_data=report_data, nonce=doc_nonce)
    env = EvidenceEnvelope(
        platform="nitro", format=NITRO_FORMAT, evidence=document, audit_pub=audit_pub, session_id=session_id,
        nonce=our_nonce,
    )
    verify_peer(
        peer_cert_der=identity.cert_der, envelope_bytes=encode_envelope(env), nonce=our_nonce,
        session_id=session_id, policy=load_policy(NITRO_POLICY), anchors=anchors, simulation_anchors=None,
        now=NITRO_NOW,
    )


@pytest.fixture
def nitro_anchors(monkeypatch: pytest.MonkeyPatch) -> TrustAnchors:
    return pinned_test_anchors(default_pki(), monkeypatch)


def test_verify_peer_accepts_a_bound_nitro_document(nitro_anchors: TrustAnchors) -> None:
    nonce = b"\x01" * 32
    nitro_peer(nitro_anchors, doc_nonce=nonce, our_nonce=nonce)  # does not raise


def test_a_nitro_document_answering_another_nonce_is_a_replay(nitro_anchors: TrustAnchors) -> None:
    # the envelope's (unsigned) nonce hint says ours, but the signed document answers an older one
    with pytest.raises(StaleEvidence) as info:
        nitro_peer(nitro_anchors, doc_nonce=b"\x02" * 32, our_nonce=b"\x01" * 32)
    assert info.value.check == "freshness.nonce"


def test_a_nitro_document_binding_another_nonce_is_a_binding_mismatch(nitro_anchors: TrustAnchors) -> None:
    with pytest.raises(BindingMismatch):
        nitro_peer(nitro_anchors, doc_nonce=None, our_nonce=b"\x01" * 32, bind_nonce=b"\x02" * 32)


def test_answered_nonce_prefers_the_signed_nitro_nonce(nitro_anchors: TrustAnchors) -> None:
    env = envelope(build_document(nonce=b"\x05" * 32), NITRO_FORMAT, platform="nitro")
    ev = verify_evidence(env, anchors=nitro_anchors, now=NITRO_NOW)
    assert answered_nonce(ev, env) == b"\x05" * 32
    env_without = envelope(build_document(nonce=None), NITRO_FORMAT, platform="nitro")
    ev_without = verify_evidence(env_without, anchors=nitro_anchors, now=NITRO_NOW)
    assert answered_nonce(ev_without, env_without) == env_without.nonce


def test_an_unknown_format_names_the_supported_ones() -> None:
    env = EvidenceEnvelope(
        platform="tdx", format="intel-tdx-v6", evidence=b"", audit_pub=b"", session_id=b"", nonce=b""
    )
    with pytest.raises(MalformedEvidence) as info:
        verify_evidence(env, anchors=hardware_anchors(), now=CHAIN_AT)
    assert info.value.check == "envelope.format"
    assert DCAP_FORMAT in info.value.expected and NITRO_FORMAT in info.value.expected  # type: ignore[operator]


def test_the_dispatch_formats_are_the_envelope_formats() -> None:
    from cc_kernel.attestation.envelope import FORMATS
    from cc_kernel.attestation.platforms import nitro

    assert NITRO_FORMAT == nitro.ENVELOPE_FORMAT
    assert set(FORMATS) == {*SNP_FORMATS, DCAP_FORMAT, NITRO_FORMAT}
