"""Real Intel DCAP vectors (tests/vectors/tdx, tests/vectors/sgx; values from testvectors/README.md and
manifest.json): each verifies at its pinned time to the documented fields, each has negative twins, and the
results go through the existing policy layer (appraise) the way the kernel uses them."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import dcap_support as ds
import pytest
from conftest import read_vector
from cryptography.hazmat.primitives.asymmetric import ec

from cc_kernel.attestation.anchors import INTEL_SGX_ROOT_CA_SHA256, hardware_anchors
from cc_kernel.attestation.appraisal import appraise
from cc_kernel.attestation.evidence import BoundEvidence, VerifiedEvidence, seal_bound
from cc_kernel.attestation.platforms.intel_collateral import (
    DcapCollateral,
    load_collateral,
    load_tcb_info,
)
from cc_kernel.attestation.platforms.intel_dcap import verify_quote
from cc_kernel.attestation.platforms.intel_quote import parse_quote_unverified
from cc_kernel.attestation.platforms.intel_tcb import verify_document_signature
from cc_kernel.attestation.policy import default_hardware_policy, load_policy
from cc_kernel.crypto.x509chain import walk_chain
from cc_kernel.crypto.x509load import load_certificate_bundle
from cc_kernel.errors import (
    CertificateExpired,
    ChainError,
    MalformedEvidence,
    PolicyViolation,
    SignatureInvalid,
    StaleEvidence,
    UntrustedRoot,
)

CHAIN_AT = datetime(2026, 2, 3, 1, tzinfo=UTC)  # inside every PCK window (README "Time: pin now=")
COLLATERAL_2023_AT = datetime(2023, 7, 1, 1, tzinfo=UTC)  # the 2023 collateral is current
COLLATERAL = "tdx/collateral/"

EXPECTED: dict[str, dict[str, Any]] = {
    "gotdx-spr-e4-v4": {
        "file": "tdx/gotdx-spr-e4-v4.quote.dat",
        "platform": "tdx",
        "version": 4,
        "body_type": None,
        "signed_length": 632,
        "trailing_bytes": 39,
        "fmspc": "50806f000000",
        "pcesvn": 11,
        "sgx_comps": [3, 3, 2, 2, 2, 1, 0, 2],
        "pck_valid": ("2022-09-20T13:20:31+00:00", "2029-09-20T13:20:31+00:00"),
        "measurement": "6363b8043668a3ad953278e10389574d326c6749fb78aa81"
        "0ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
        "report_data": "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
        "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113",
        "qe_isv_svn": 4,
        "qe_mrsigner": "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5",
        "td": {
            "td_attributes_hex": "0000004000000000",
            "tee_tcb_svn": "03000400000000000000000000000000",
            "xfam": "e71a060000000000",
            "mr_seam": "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb"
            "865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656",
            "rtmr0": "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a",
            "rtmr1": "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61",
            "rtmr2": "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e",
            "rtmr3": "00" * 48,
            "mr_config_id": "00" * 48,
            "mr_owner": "00" * 48,
            "sept_ve_disable": False,
        },
        "td_flags": {"debug": False, "pks": True, "kl": False, "perfmon": False, "sept_ve_disable": False},
    },
    "gotdx-v5": {
        "file": "tdx/gotdx-v5.quote.dat",
        "platform": "tdx",
        "version": 5,
        "body_type": 3,
        "signed_length": 702,
        "trailing_bytes": 0,
        "fmspc": "90c06f000000",
        "pcesvn": 13,
        "sgx_comps": [4, 4, 2, 2, 4, 1, 0, 5],
        "pck_valid": ("2026-01-27T14:36:27+00:00", "2033-01-27T14:36:27+00:00"),
        "measurement": "7348651a34b2d2d3462822e3a750ec6110125f36757c7848"
        "0bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876",
        "report_data": "945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e"
        "094aed63060cd4a4933a4dd537ed1255c9c79ecb3ed82cd1b486233e31c25c3a",
        "qe_isv_svn": 7,
        "qe_mrsigner": "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5",
        "td": {
            "td_attributes_hex": "0000001000000000",
            "tee_tcb_svn": "0b010400000000000000000000000000",
            "tee_tcb_svn2": "0d010400000000000000000000000000",
            "xfam": "e702060000000000",
            "mr_seam": "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b"
            "709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d",
            "mr_servicetd": "00" * 48,
            "rtmr0": "5c8daf76063a71ac8fcef4067564661fc682ed7944c7a5d21dbbced02f61ceff4ba0678c6aef3bdae8cbc614cec24619",
            "rtmr1": "463acaace1b6e97c76e92e41fe312aa66f3fd4dad60ec7acf169859db0343e3d1e591646795cdc80fbc0ca5f7041d253",
            "rtmr2": "6369b9c9a3b791ebcbdc5a0bb9536cfb57f50df2b393b33c8b29616d3568baa61f4b59dc6092e31ea8764bcbdfc69f20",
            "rtmr3": "00" * 48,
            "sept_ve_disable": True,
        },
        "td_flags": {"debug": False, "pks": False, "kl": False, "perfmon": False, "sept_ve_disable": True},
    },
    "trustee-v5": {
        "file": "tdx/trustee-v5.quote.dat",
        "platform": "tdx",
        "version": 5,
        "body_type": 3,
        "signed_length": 702,
        "trailing_bytes": 0,
        "fmspc": "90c06f000000",
        "pcesvn": 13,
        "sgx_comps": [1, 1, 2, 2, 3, 1, 0, 3],
        "pck_valid": ("2024-03-18T08:43:51+00:00", "2031-03-18T08:43:51+00:00"),
        "measurement": "dfba221b48a22af8511542ee796603f37382800840dcd978"
        "703909bf8e64d4c8a1e9de86e7c9638bfcba422f3886400a",
        "report_data": "6d6ab13b046cff606ac0074be13981b07b6325dba10b5facc96febf551c0c3be"
        "2b75f92fe1f88f4bb996969ad0174b4b7a70261b7b85c844f4b33a4674fd049f",
        "qe_isv_svn": 6,
        "qe_mrsigner": "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5",
        "td": {
            "td_attributes_hex": "0000001000000000",
            "tee_tcb_svn": "05010200000000000000000000000000",
            "tee_tcb_svn2": "05010200000000000000000000000000",
            "xfam": "e742060000000000",
            "mr_seam": "1cc6a17ab799e9a693fac7536be61c12ee1e0fabada82d0c"
            "999e08ccee2aa86de77b0870f558c570e7ffe55d6d47fa04",
            "mr_servicetd": "383c87d3bbb047b2d171eaca95312ede99f258088dc788f6"
            "ae2ccf8b6dd848fe8d47629e08b3f6cbd4a00dd47a5a033d",
            "rtmr0": "9b529f3689e2e8ebb899e9abbbc3dab394d6545e8cdb28a2abb9cc2f377b83a65c01ba56b824cd3ee885df20051f5128",
            "rtmr1": "ca5a979317ffe8a527a3b7aadab03976d7cb6eef1041fb9bd9d69e6fafa7252cdc10e4c2a55e7ecbd2ddb5cacc867430",
            "rtmr2": "00" * 48,
            "sept_ve_disable": True,
        },
        "td_flags": {"debug": False, "pks": False, "kl": False, "perfmon": False, "sept_ve_disable": True},
    },
    "trustee-occlum-v3-debug": {
        "file": "sgx/trustee-occlum-v3-debug.quote.dat",
        "platform": "sgx-dcap",
        "version": 3,
        "body_type": None,
        "signed_length": 432,
        "trailing_bytes": 0,
        "fmspc": "00606a000000",
        "pcesvn": 11,
        "sgx_comps": [4, 4, 3, 3, 255, 255, 0, 0],
        "pck_valid": ("2023-04-26T15:35:16+00:00", "2030-04-26T15:35:16+00:00"),
        "measurement": "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68",
        "report_data": "74657374" + "00" * 60,
        "qe_isv_svn": 8,
        "qe_mrsigner": "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff",
        "sgx": {
            "mr_signer": "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e",
            "attributes": "0700000000000000e700000000000000",
            "cpu_svn": "06060c0cffff00000000000000000000",
            "misc_select": 1,
            "isv_prod_id": 0,
            "isv_svn": 0,
        },
    },
}
NAMES = sorted(EXPECTED)


def quote_of(name: str) -> bytes:
    return read_vector(EXPECTED[name]["file"])


def verify(raw: bytes, now: datetime = CHAIN_AT, collateral: DcapCollateral | None = None) -> VerifiedEvidence:
    return verify_quote(raw, anchors=hardware_anchors(), now=now, collateral=collateral)


def collateral_2023() -> DcapCollateral:
    return load_collateral(
        {
            "tcb_info": read_vector(COLLATERAL + "tcbinfo-tdx-50806f000000-2023-06-18.json"),
            "qe_identity": read_vector(COLLATERAL + "qe-identity-td-qe-2023-06-08.json"),
            "pck_crl": read_vector(COLLATERAL + "pck-platform-ca-crl-2023-06-08.der"),
            "root_crl": read_vector(COLLATERAL + "intel-sgx-root-ca-crl-2023-04-03.der"),
            "tcb_signing_chain": read_vector(COLLATERAL + "intel-sgx-tcb-signing-chain.pem"),
        }
    )


def tcbinfo_2026(*, unsafe_expired: bool) -> DcapCollateral:
    return load_collateral(
        {
            "tcb_info": read_vector(COLLATERAL + "tcbinfo-tdx-90c06f000000-2026-02-01.json"),
            "tcb_signing_chain": read_vector(COLLATERAL + "intel-sgx-tcb-signing-chain.pem"),
        },
        unsafe_accept_expired_tcb_signing_cert=unsafe_expired,
    )


# --- authentic, with the documented values -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_vector_is_authentic_with_the_documented_values(name: str) -> None:
    want = EXPECTED[name]
    ev = verify(quote_of(name))
    claims = ev.claims
    assert ev.platform == want["platform"]
    assert ev.signer == "pck" and ev.anchor_sha256 == INTEL_SGX_ROOT_CA_SHA256
    assert ev.measurement.hex() == want["measurement"]
    assert ev.report_data.hex() == want["report_data"]
    assert claims["version"] == want["version"] and claims["body_type"] == want["body_type"]
    assert claims["signed_length"] == want["signed_length"]
    assert claims["trailing_bytes"] == want["trailing_bytes"]
    assert ("trailing-bytes" in ev.warnings) == (want["trailing_bytes"] > 0)
    pck = claims["pck"]
    assert isinstance(pck, dict)
    assert pck["fmspc"] == want["fmspc"] and pck["pcesvn"] == want["pcesvn"]
    assert pck["sgx_tcb_components"] == want["sgx_comps"] + [0] * 8
    assert (pck["not_before"], pck["not_after"]) == want["pck_valid"]
    assert pck["ca"] == "Intel SGX PCK Platform CA"
    qe = claims["qe"]
    assert isinstance(qe, dict)
    assert qe["isv_svn"] == want["qe_isv_svn"] and qe["mr_signer"] == want["qe_mrsigner"]
    assert ev.tcb["qe_isvsvn"] == want["qe_isv_svn"] and ev.tcb["pcesvn"] == want["pcesvn"]
    # without collateral: authentic, TCB status unknown, and said so
    assert ev.tcb_status is None and "tcb-collateral-missing" in ev.warnings
    assert claims["tcb"] == {"evaluated": False}
    if want["platform"] == "tdx":
        for key, value in want["td"].items():
            assert claims[key] == value, key
        assert claims["td_attributes_flags"] == {**want["td_flags"], "migratable": False}
        assert ev.debug is False
        assert ev.measurements["mr_td"] == ev.measurement
        for i in range(4):
            assert ev.measurements[f"rtmr{i}"].hex() == want["td"].get(f"rtmr{i}", claims[f"rtmr{i}"])
        tee = bytes.fromhex(want["td"]["tee_tcb_svn"])
        assert (ev.tcb["tdx_module_svn"], ev.tcb["tdx_module_version"], ev.tcb["tdx_late_ucode"]) == tuple(tee[:3])
    else:
        for key, value in want["sgx"].items():
            assert claims[key] == value, key
        assert ev.debug is True and claims["attributes_flags"]["debug"] is True  # type: ignore[index]
        assert ev.measurements["mrsigner"].hex() == want["sgx"]["mr_signer"]


def test_spr_with_the_2023_collateral_matches_no_tcb_level() -> None:
    ev = verify(quote_of("gotdx-spr-e4-v4"), COLLATERAL_2023_AT, collateral_2023())
    assert ev.tcb_status == "NoMatchingTcbLevel"
    tcb = ev.claims["tcb"]
    assert isinstance(tcb, dict)
    assert tcb["complete"] is True and tcb["missing"] == []
    assert "no TCB level matches the PCK's SGX TCB components [3, 3, 2, 2, 2, 1, 0, 2" in tcb["reason"]
    assert tcb["qe_identity"]["status"] == "UpToDate" and tcb["qe_identity"]["isvsvn"] == 4
    assert tcb["pck_crl"]["revoked_count"] == 44  # the SPR PCK is not among them
    assert tcb["root_crl"]["revoked_count"] == 0
    assert ev.warnings == ("trailing-bytes",)


def test_gotdx_v5_with_the_2026_tcbinfo_is_up_to_date_and_so_is_its_tdx_module() -> None:
    ev = verify(quote_of("gotdx-v5"), CHAIN_AT, tcbinfo_2026(unsafe_expired=True))
    tcb = ev.claims["tcb"]
    assert isinstance(tcb, dict)
    assert tcb["platform_status"] == "UpToDate" and tcb["status"] == "UpToDate"
    assert tcb["tdx_module"]["id"] == "TDX_01" and tcb["tdx_module"]["status"] == "UpToDate"
    assert tcb["tdx_module"]["isvsvn"] == 11 and tcb["relaunch_advised"] is False
    assert tcb["tcb_info"]["tcb_evaluation_data_number"] == 18
    # only the tcbInfo is current in 2026: no QE identity, no CRLs -> no TCB status, and both weakenings named
    assert tcb["missing"] == ["qe_identity", "pck_crl", "root_crl"]
    assert ev.tcb_status is None
    assert set(ev.warnings) == {"tcb-signing-cert-expired", "tcb-collateral-incomplete"}


def test_the_2026_tcbinfo_needs_a_current_tcb_signing_certificate() -> None:
    with pytest.raises(CertificateExpired) as info:
        verify(quote_of("gotdx-v5"), CHAIN_AT, tcbinfo_2026(unsafe_expired=False))
    assert info.value.check == "collateral.tcb_signing.chain.validity" and info.value.index == 0
    assert "2025-05-21" in str(info.value)


def test_the_2026_tcbinfo_signature_verifies_with_the_tcb_signing_key_whose_chain_was_valid_in_2023() -> None:
    chain = load_certificate_bundle(read_vector(COLLATERAL + "intel-sgx-tcb-signing-chain.pem"))
    root = hardware_anchors().get("intel-dcap", "Intel SGX Root CA")
    assert root is not None
    walk_chain(
        chain[0], [*chain[1:]], anchors=hardware_anchors().by_sha256(platforms=["intel-dcap"]), now=COLLATERAL_2023_AT
    )
    info = load_tcb_info(read_vector(COLLATERAL + "tcbinfo-tdx-90c06f000000-2026-02-01.json"))
    key = chain[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    verify_document_signature(info.signed, key, "tcb_info")  # does not raise
    assert info.signed.body.startswith(b'{"id":"TDX","version":3,"issueDate":"2026-02-01T14:49:26Z"')


def test_trustee_v5_with_the_2026_tcbinfo_matches_no_tcb_level() -> None:
    ev = verify(quote_of("trustee-v5"), CHAIN_AT, tcbinfo_2026(unsafe_expired=True))
    # a final negative outcome stands even with incomplete collateral
    assert ev.tcb_status == "NoMatchingTcbLevel"
    tcb = ev.claims["tcb"]
    assert isinstance(tcb, dict)
    assert "[1, 1, 2, 2, 3, 1, 0, 3" in tcb["reason"] and tcb["complete"] is False


def test_the_2026_tcbinfo_is_for_another_platform_than_the_spr_quote() -> None:
    with pytest.raises(ChainError) as info:
        verify(quote_of("gotdx-spr-e4-v4"), CHAIN_AT, tcbinfo_2026(unsafe_expired=True))
    assert info.value.check == "collateral.tcb_info.fmspc"
    assert (info.value.got, info.value.expected) == ("90c06f000000", "50806f000000")


def test_the_2023_collateral_is_stale_in_2026() -> None:
    with pytest.raises(StaleEvidence) as info:
        verify(
            quote_of("gotdx-spr-e4-v4"),
            CHAIN_AT,
            dataclasses.replace(collateral_2023(), unsafe_accept_expired_tcb_signing_cert=True),
        )
    assert info.value.check == "collateral.root_crl.window"


# --- negative twins ---------------------------------------------------------------------------------------


def flip(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(raw)
    out[offset] ^= mask
    return bytes(out)


def sig_data_offset(name: str) -> int:
    return parse_quote_unverified(quote_of(name)).signed_end + 4


@pytest.mark.parametrize("name", NAMES)
def test_flipped_report_data_bit_breaks_the_quote_signature(name: str) -> None:
    raw = quote_of(name)
    end = parse_quote_unverified(raw).signed_end
    with pytest.raises(SignatureInvalid) as info:
        verify(flip(raw, end - 1))  # the last byte of REPORT_DATA (TD 1.5: of MRSERVICETD)
    assert info.value.check == "dcap.signature"


@pytest.mark.parametrize("name", NAMES)
def test_flipped_measurement_bit_breaks_the_quote_signature(name: str) -> None:
    offset = 48 + (136 if EXPECTED[name]["platform"] == "tdx" else 64) + (6 if EXPECTED[name]["version"] == 5 else 0)
    raw = quote_of(name)
    assert verify(raw).measurement[0] == raw[offset]
    with pytest.raises(SignatureInvalid) as info:
        verify(flip(raw, offset))
    assert info.value.check == "dcap.signature"


@pytest.mark.parametrize("name", NAMES)
def test_flipped_quote_signature(name: str) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify(flip(quote_of(name), sig_data_offset(name) + 10))
    assert info.value.check == "dcap.signature"


@pytest.mark.parametrize("name", NAMES)
def test_flipped_attestation_key_is_not_bound_by_the_qe(name: str) -> None:
    with pytest.raises(ChainError) as info:
        verify(flip(quote_of(name), sig_data_offset(name) + 64 + 5))
    assert info.value.check == "dcap.qe_report.report_data"


def qe_report_offset(name: str) -> int:
    return sig_data_offset(name) + 128 + (0 if EXPECTED[name]["version"] == 3 else 6)


@pytest.mark.parametrize("name", NAMES)
def test_flipped_qe_report_breaks_its_pck_signature(name: str) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify(flip(quote_of(name), qe_report_offset(name) + 258))  # QE ISVSVN
    assert info.value.check == "dcap.qe_report.signature"


@pytest.mark.parametrize("name", NAMES)
def test_flipped_qe_report_signature(name: str) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify(flip(quote_of(name), qe_report_offset(name) + 384 + 3))
    assert info.value.check == "dcap.qe_report.signature"


@pytest.mark.parametrize("name", NAMES)
def test_flipped_qe_auth_data_is_not_bound_by_the_qe(name: str) -> None:
    with pytest.raises(ChainError) as info:
        verify(flip(quote_of(name), qe_report_offset(name) + 384 + 64 + 2))
    assert info.value.check == "dcap.qe_report.report_data"


def _flip_in_pck_der(raw: bytes, der_offset: int) -> bytes:
    """Flip one bit of the PCK certificate's DER inside the quote's PEM (same length, same line layout)."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----\n(.*?)\n-----END CERTIFICATE-----", raw, re.S)
    assert match is not None
    lines = match.group(1).split(b"\n")
    der = bytearray(base64.b64decode(b"".join(lines)))
    der[der_offset] ^= 0x01
    encoded = base64.b64encode(bytes(der))
    width = len(lines[0])
    relaid = b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
    assert len(relaid) == len(match.group(1))
    return raw[: match.start(1)] + relaid + raw[match.end(1) :]


@pytest.mark.parametrize("name", NAMES)
def test_flipped_pck_certificate_bit_breaks_the_chain(name: str) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify(_flip_in_pck_der(quote_of(name), 20))  # inside the serial number
    assert info.value.check == "chain.signature" and info.value.index == 0


@pytest.mark.parametrize("name", NAMES)
def test_a_test_root_does_not_verify_intel_quotes(name: str) -> None:
    pki = ds.make_pki()
    with pytest.raises(UntrustedRoot) as info:
        verify_quote(quote_of(name), anchors=pki.anchors, now=CHAIN_AT)
    assert info.value.check == "chain.anchor"


def test_a_quote_chained_to_a_test_root_is_not_intel() -> None:
    pki = ds.make_pki()
    with pytest.raises(UntrustedRoot) as info:
        verify(ds.build_quote(pki), ds.TEST_NOW)
    assert info.value.check == "chain.anchor" and info.value.index == 2


@pytest.mark.parametrize("name", NAMES)
def test_pck_expired_after_its_not_after(name: str) -> None:
    not_after = datetime.fromisoformat(EXPECTED[name]["pck_valid"][1])
    with pytest.raises(CertificateExpired) as info:
        verify(quote_of(name), now=not_after + timedelta(seconds=1))
    assert info.value.check == "chain.validity" and info.value.index == 0


def test_pck_not_yet_valid() -> None:
    with pytest.raises(CertificateExpired) as info:
        verify(quote_of("gotdx-v5"), now=COLLATERAL_2023_AT)
    assert info.value.check == "chain.validity" and "not yet valid" in info.value.message


def test_naive_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(quote_of("gotdx-v5"), now=datetime(2026, 2, 3))


def test_a_corrupted_header_vendor_id_is_malformed() -> None:
    with pytest.raises(MalformedEvidence) as info:
        verify(flip(quote_of("gotdx-v5"), 12))
    assert info.value.check == "dcap.qe_vendor_id"


# --- through the policy layer -----------------------------------------------------------------------------


def bound(ev: VerifiedEvidence) -> BoundEvidence:
    # Binding is the kernel's step (check_binding against its own TLS key and nonce); these vectors bind
    # someone else's data, so the appraisal is driven with a BoundEvidence sealed directly, as in test_appraise.
    return seal_bound(
        evidence=ev, tls_spki_sha256=b"\x55" * 32, audit_pub=b"\x44" * 32, nonce=b"\x33" * 32, session_id=b"\x22" * 16
    )


@pytest.mark.parametrize("name", NAMES)
def test_default_policy_outcome(name: str) -> None:
    """The built-in policy never accepts these: the SGX one is a debug enclave, the TD quotes have no
    complete current collateral (and two of them match no TCB level)."""
    ev = verify(quote_of(name))
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), default_hardware_policy(), now=ev.verified_at)
    checks = {f.check for f in info.value.failures}
    if name == "trustee-occlum-v3-debug":
        assert "policy.debug" in checks
    else:
        assert "policy.debug" not in checks
    assert "policy.tcb_collateral" in checks


TDX_POLICY = """
version = 1
[[accept]]
platform = "tdx"
mr_td = ["{mr_td}"]
rtmr = {{ 1 = "{rtmr1}", 2 = "{rtmr2}" }}
require_sept_ve_disable = true
{extra}
"""


def tdx_policy(ev: Any, mr_td: str, extra: str) -> str:
    """TDX_POLICY pinning ``mr_td`` and the RTMR1/RTMR2 the quote reports (every TDX entry pins them)."""
    return TDX_POLICY.format(
        mr_td=mr_td, rtmr1=ev.measurements["rtmr1"].hex(), rtmr2=ev.measurements["rtmr2"].hex(), extra=extra
    )


def test_a_tdx_policy_pinning_the_mrtd_accepts_gotdx_v5_when_it_skips_complete_collateral() -> None:
    want = EXPECTED["gotdx-v5"]["measurement"]
    ev = verify(quote_of("gotdx-v5"), CHAIN_AT, tcbinfo_2026(unsafe_expired=True))
    strict = load_policy(tdx_policy(ev, want, ""))
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), strict, now=CHAIN_AT)
    assert [f.check for f in info.value.failures] == ["policy.tcb_collateral"]
    weakened = load_policy(tdx_policy(ev, want, "unsafe_skip_tcb_collateral = true"))
    result = appraise(bound(ev), weakened, now=CHAIN_AT)
    assert result.status == "warning" and result.platform == "tdx"
    assert result.measurement.hex() == want
    assert result.unsafe_flags_used == ("unsafe_skip_tcb_collateral",)
    assert {"tcb-signing-cert-expired", "tcb-collateral-incomplete"} <= set(result.warnings)
    assert result.trust_vector["hardware"] == "warning"
    # another MRTD: rejected, with the repin hint
    other = load_policy(tdx_policy(ev, "00" * 48, "unsafe_skip_tcb_collateral = true"))
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), other, now=CHAIN_AT)
    assert [f.check for f in info.value.failures] == ["policy.measurement"]


def test_spr_requires_sept_ve_disable_and_a_supported_tcb() -> None:
    ev = verify(quote_of("gotdx-spr-e4-v4"), COLLATERAL_2023_AT, collateral_2023())
    policy = load_policy(tdx_policy(ev, EXPECTED["gotdx-spr-e4-v4"]["measurement"], ""))
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), policy, now=COLLATERAL_2023_AT)
    failures = {f.check: f for f in info.value.failures}
    assert set(failures) == {"policy.sept_ve_disable", "policy.tcb_status"}
    assert failures["policy.tcb_status"].got == "NoMatchingTcbLevel"


def test_trustee_v5_is_rejected_for_its_tcb_even_when_collateral_is_skipped() -> None:
    ev = verify(quote_of("trustee-v5"), CHAIN_AT, tcbinfo_2026(unsafe_expired=True))
    policy = load_policy(
        tdx_policy(ev, EXPECTED["trustee-v5"]["measurement"], "unsafe_skip_tcb_collateral = true")
    )
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), policy, now=CHAIN_AT)
    assert [f.check for f in info.value.failures] == ["policy.tcb_status"]


def test_the_occlum_debug_enclave_is_rejected_by_an_sgx_policy_pinning_it() -> None:
    want = EXPECTED["trustee-occlum-v3-debug"]
    ev = verify(quote_of("trustee-occlum-v3-debug"))
    policy = load_policy(
        f'version = 1\n[[accept]]\nplatform = "sgx-dcap"\nmrenclave = ["{want["measurement"]}"]\n'
        f'mrsigner = ["{want["sgx"]["mr_signer"]}"]\nisv_prod_id = 0\nunsafe_skip_tcb_collateral = true\n'
    )
    with pytest.raises(PolicyViolation) as info:
        appraise(bound(ev), policy, now=CHAIN_AT)
    assert [f.check for f in info.value.failures] == ["policy.debug"]
    debug_ok = load_policy(policy.canonical.decode() + "unsafe_allow_debug = true\n")
    result = appraise(bound(ev), debug_ok, now=CHAIN_AT)
    assert result.status == "warning" and result.debug is True
    assert result.trust_vector["runtime-opaque"] == "contraindicated"
