"""Step 1 of the SEV-SNP verifier: ``parse_report_unverified`` (structure), TCB decoding and products.

Structural negatives are produced with the simulated signer, so the signature over the changed report is
valid and only the structure check can fail (``assert_signature_valid`` shows it for the signed region).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cc_kernel.attestation.platforms.sev_snp import (
    LAYOUT,
    REPORT_SIZE,
    SIGNED_SIZE,
    decode_tcb,
    encode_tcb,
    mbz_ranges,
    parse_report_unverified,
    product_from_cpuid,
)
from cc_kernel.attestation.platforms.simulation import SIMULATED_CPUID, SimulationAuthority, sign_report
from cc_kernel.errors import MalformedEvidence

Vector = Callable[[str], bytes]

REPORTS = {
    "gosev-milan-v2-debug": "sev-snp/gosev-milan-v2-debug.report.bin",
    "virtee-milan-v2": "sev-snp/virtee-milan-v2.report.hex",
    "trustee-milan-v2-idblock": "sev-snp/trustee-milan-v2-idblock.report.bin",
    "trustee-milan-v3-vlek": "sev-snp/trustee-milan-v3-vlek.report.bin",
    "ccf-milan-v3": "sev-snp/ccf-milan-v3.report.bin",
}
MEASUREMENT = bytes(range(48))
REPORT_DATA = bytes(range(64, 128))


def sim(authority: SimulationAuthority, **knobs: object) -> bytes:
    return sign_report(authority, report_data=REPORT_DATA, measurement=MEASUREMENT, **knobs)  # type: ignore[arg-type]


def assert_signature_valid(authority: SimulationAuthority, report: bytes) -> None:
    r = int.from_bytes(report[0x2A0:0x2E8], "little")
    s = int.from_bytes(report[0x2E8:0x330], "little")
    authority.vcek_key.public_key().verify(encode_dss_signature(r, s), report[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))


def malformed(report: bytes) -> MalformedEvidence:
    with pytest.raises(MalformedEvidence) as info:
        parse_report_unverified(report)
    return info.value


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_real_reports_parse(vector: Vector, name: str) -> None:
    report = parse_report_unverified(vector(REPORTS[name]))
    assert report.raw == vector(REPORTS[name])
    assert report.signature_algo == 1
    assert report.signed_bytes == report.raw[:0x2A0]
    assert report.launch_mit_vector is None  # no v5 among the real vectors
    if report.version == 2:
        assert report.cpuid_fam_id is None
        assert report.product_from_cpuid() is None
    else:
        assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x19, 0x01, 0x01)
        assert report.product_from_cpuid() == "Milan"


def test_gosev_fields(vector: Vector) -> None:
    r = parse_report_unverified(vector(REPORTS["gosev-milan-v2-debug"]))
    assert (r.version, r.vmpl, r.policy, r.debug, r.smt_allowed, r.migrate_ma) == (2, 0, 0xB0000, True, True, False)
    assert r.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert r.reported_tcb.hex() == r.current_tcb.hex() == r.launch_tcb.hex() == "0200000000000544"
    assert (r.current_fw, r.committed_fw) == ("1.49.3", "1.49.3")
    assert r.signing_key == 0
    assert not r.author_key_en
    assert not r.mask_chip_key
    assert r.platform_info == 1


def test_trustee_idblock_fields(vector: Vector) -> None:
    r = parse_report_unverified(vector(REPORTS["trustee-milan-v2-idblock"]))
    assert (r.policy, r.guest_svn) == (0x3001F, 4)
    assert r.family_id == b"\x01" + bytes(15)
    assert r.image_id == b"\x02" + bytes(15)
    assert r.id_key_digest.hex().startswith("0356215882a82527")
    assert r.current_tcb.hex() == "03000000000008ce"
    assert r.reported_tcb.hex() == r.committed_tcb.hex() == "0300000000000873"


def test_vlek_report_fields(vector: Vector) -> None:
    r = parse_report_unverified(vector(REPORTS["trustee-milan-v3-vlek"]))
    assert (r.version, r.vmpl, r.signing_key, r.platform_info) == (3, 1, 1, 0x27)
    assert r.chip_id_masked
    assert decode_tcb(r.reported_tcb, "Milan") == {"bl": 4, "tee": 0, "snp": 24, "ucode": 217}


def test_truncation_at_every_offset_is_malformed_never_index_error(vector: Vector) -> None:
    report = vector(REPORTS["ccf-milan-v3"])
    for cut in range(REPORT_SIZE):
        error = malformed(report[:cut])
        assert (error.check, error.got, error.expected) == ("snp.length", cut, REPORT_SIZE)
    for extra in (b"\x00", b"\x00" * 100):
        assert malformed(report + extra).check == "snp.length"


def test_report_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        parse_report_unverified("00" * REPORT_SIZE)  # type: ignore[arg-type]
    assert parse_report_unverified(bytearray(sim_placeholder())).version == 5


def sim_placeholder() -> bytes:
    """An unsigned but structurally valid v5 report (for type handling only)."""
    buf = bytearray(REPORT_SIZE)
    buf[0] = 5
    buf[0x8:0x10] = (0x30000).to_bytes(8, "little")
    buf[0x34] = 1
    return bytes(buf)


# --- structural rules, each with a validly signed simulated report -------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_every_supported_version_parses(sim_authority: SimulationAuthority, version: int) -> None:
    r = parse_report_unverified(sim(sim_authority, version=version))
    assert r.version == version
    if version >= 3:
        assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == SIMULATED_CPUID
        assert r.product_from_cpuid() == "Simulated"
    else:
        assert r.cpuid_fam_id is None
    assert (r.launch_mit_vector is None) == (version < 5)


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_versions(sim_authority: SimulationAuthority, version: int) -> None:
    report = sim(sim_authority, version=version)
    assert_signature_valid(sim_authority, report)
    error = malformed(report)
    assert (error.check, error.got) == ("snp.version", version)


def test_signature_algo_must_be_ecdsa_p384(sim_authority: SimulationAuthority) -> None:
    error = malformed(sim(sim_authority, overrides={"signature_algo": 2}))
    assert (error.check, error.got, error.expected) == ("snp.signature_algo", 2, 1)


def test_policy_bit_17_must_be_set(sim_authority: SimulationAuthority) -> None:
    error = malformed(sim(sim_authority, policy=0x10000))
    assert error.check == "snp.policy.bit17"


@pytest.mark.parametrize("bit", [26, 40, 63])
def test_policy_reserved_bits(sim_authority: SimulationAuthority, bit: int) -> None:
    error = malformed(sim(sim_authority, policy=0x30000 | 1 << bit))
    assert (error.check, error.got) == ("snp.policy.reserved", hex(1 << bit))


def test_policy_bits_below_26_are_accepted(sim_authority: SimulationAuthority) -> None:
    r = parse_report_unverified(sim(sim_authority, policy=(1 << 26) - 1))
    assert r.debug
    assert r.migrate_ma


@pytest.mark.parametrize("bit", [5, 17, 31])
def test_signer_info_reserved_bits(sim_authority: SimulationAuthority, bit: int) -> None:
    error = malformed(sim(sim_authority, overrides={"signer_info": 1 << bit}))
    assert error.check == "snp.signer_info.reserved"


@pytest.mark.parametrize("signing_key", [2, 3, 6, 7])
def test_signing_key_must_be_vcek_or_vlek(sim_authority: SimulationAuthority, signing_key: int) -> None:
    report = sim(sim_authority, signing_key=signing_key)
    assert_signature_valid(sim_authority, report)
    error = malformed(report)
    assert (error.check, error.got, error.expected) == ("snp.signing_key", signing_key, [0, 1])


def test_signer_info_flags(sim_authority: SimulationAuthority) -> None:
    r = parse_report_unverified(sim(sim_authority, overrides={"signer_info": 0b00111}))
    assert (r.author_key_en, r.mask_chip_key, r.signing_key) == (True, True, 1)


def _mbz_cases() -> list[tuple[int, int]]:
    cases: list[tuple[int, int]] = []
    for version in (2, 3, 4, 5):
        for start, end in mbz_ranges(version):
            cases.extend([(version, start), (version, end - 1)])
    return sorted(set(cases))


@pytest.mark.parametrize(("version", "offset"), _mbz_cases())
def test_every_reserved_byte_is_checked(sim_authority: SimulationAuthority, version: int, offset: int) -> None:
    report = sim(sim_authority, version=version, raw_patch={offset: b"\x5a"})
    if offset < SIGNED_SIZE:
        assert_signature_valid(sim_authority, report)  # only the structure is wrong
    error = malformed(report)
    assert (error.check, error.index, error.expected) == ("snp.reserved", offset, "all zero")


def test_version_specific_ranges(sim_authority: SimulationAuthority) -> None:
    cpuid = {"cpuid_fam_id": 0x19, "cpuid_mod_id": 0x01, "cpuid_step": 0x01}
    assert parse_report_unverified(sim(sim_authority, version=3, overrides=cpuid)).cpuid_fam_id == 0x19
    assert malformed(sim(sim_authority, version=2, overrides=cpuid)).index == 0x188  # CPUID is MBZ in v2
    mit = {"launch_mit_vector": 3, "current_mit_vector": 7}
    r = parse_report_unverified(sim(sim_authority, version=5, overrides=mit))
    assert (r.launch_mit_vector, r.current_mit_vector) == (3, 7)
    assert malformed(sim(sim_authority, version=4, overrides=mit)).index == 0x1F8  # reserved before v5


def test_fields_that_are_not_reserved_are_free(sim_authority: SimulationAuthority) -> None:
    """Bytes outside every MBZ range may hold anything (e.g. PLATFORM_INFO bits we do not know yet)."""
    r = parse_report_unverified(
        sim(sim_authority, overrides={"platform_info": 0xFFFF_FFFF_FFFF_FFFF, "vmpl": 0xFFFFFFFF, "guest_svn": 9})
    )
    assert (r.platform_info, r.vmpl, r.guest_svn) == (0xFFFF_FFFF_FFFF_FFFF, 0xFFFFFFFF, 9)


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_fields_and_reserved_ranges_tile_the_report(version: int) -> None:
    """Every byte is either in exactly one field defined for this version or in exactly one MBZ range."""
    owners = [0] * REPORT_SIZE
    for name, f in LAYOUT.items():
        if (name.startswith("cpuid_") and version < 3) or (name.endswith("_mit_vector") and version < 5):
            continue
        size = 48 if name in ("signature_r", "signature_s") else f.size  # R/S: 48 value bytes, the rest is MBZ
        for i in range(f.offset, f.offset + size):
            owners[i] += 1
    for start, end in mbz_ranges(version):
        for i in range(start, end):
            owners[i] += 1
    assert owners == [1] * REPORT_SIZE


# --- TCB and products ----------------------------------------------------------------------------------------


def test_milan_and_turin_tcb_layouts() -> None:
    raw = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert decode_tcb(raw, "Milan") == {"bl": 1, "tee": 2, "snp": 7, "ucode": 8}
    assert decode_tcb(raw, "Genoa") == decode_tcb(raw, "Milan")
    assert decode_tcb(raw, "Simulated") == decode_tcb(raw, "Milan")
    assert decode_tcb(raw, "Turin") == {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 8}
    assert decode_tcb(bytes.fromhex("04000000000018db"), "Milan") == {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin", "Simulated"])
def test_encode_tcb_round_trips(product: str) -> None:
    parts = {"bl": 4, "tee": 1, "snp": 24, "ucode": 219} | ({"fmc": 2} if product == "Turin" else {})
    assert decode_tcb(encode_tcb(parts, product), product) == parts


def test_tcb_helpers_reject_misuse() -> None:
    with pytest.raises(ValueError, match="fmc"):
        encode_tcb({"fmc": 1}, "Milan")
    with pytest.raises(ValueError, match="one byte"):
        encode_tcb({"bl": 256}, "Milan")
    with pytest.raises(ValueError, match="8 bytes"):
        decode_tcb(b"\x00" * 7, "Milan")


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x00, "Milan"),
        (0x19, 0x01, "Milan"),
        (0x19, 0x0F, "Milan"),
        (0x19, 0x10, "Genoa"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x19, 0x20, None),
        (0x1A, 0x02, "Turin"),
        (0x1A, 0x11, "Turin"),
        (0x1A, 0x50, None),
        (0x17, 0x31, None),
        (0xCC, 0x00, "Simulated"),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product
