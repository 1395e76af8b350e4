"""The reference-value policy: strict TOML schema, unsafe_* weakenings, digest, rendering (§3.5)."""

from __future__ import annotations

import re

import pytest

from cc_kernel.attestation.appraisal import NitroEntry, SgxEntry, SnpEntry, TdxEntry
from cc_kernel.attestation.appraisal.entry import UNSAFE_FLAGS
from cc_kernel.attestation.appraisal.registry import ENTRY_TYPES, POLICY_PLATFORMS
from cc_kernel.attestation.policy import default_hardware_policy, load_policy, render_policy
from cc_kernel.crypto.hashing import TAG_POLICY, tagged_hash
from cc_kernel.errors import PolicyError

M48 = "ab" * 48
M48_B = "cd" * 48
M32 = "ef" * 32
H32 = "12" * 32

FULL_POLICY = f"""
version = 1
require_fresh_within_s = 120

[[accept]]
platform = "sev-snp"
products = ["Milan", "Genoa", "Turin"]
signers = ["vcek", "vlek"]
measurement = ["{M48}", "{M48_B.upper()}"]
vmpl = 0
min_tcb = {{ bl = 4, tee = 0, snp = 24, ucode = 219 }}
min_tcb_by_product = {{ Turin = {{ fmc = 1, bl = 1, tee = 1, snp = 1, ucode = 1 }} }}
min_guest_svn = 2
host_data = "{H32}"
forbid_policy_bits = ["smt", "debug"]
require_policy_bits = ["single_socket"]
min_report_version = 3

[[accept]]
platform = "tdx"
mr_td = ["{M48}"]
rtmr = {{ 1 = "{M48}", 2 = "{M48_B}" }}
mr_config_id = "{"00" * 48}"
accept_tcb_status = ["UpToDate"]
require_sept_ve_disable = true

[[accept]]
platform = "sgx-dcap"
mrenclave = ["{M32}"]
mrsigner = ["{"01" * 32}"]
isv_prod_id = 7
min_isv_svn = 3

[[accept]]
platform = "nitro"
pcr = {{ 0 = "{M48}", 1 = "{M48_B}", 2 = "{M48}", 8 = "{M48_B}" }}
"""


TDX = f'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["{M48}"]\nrtmr = {{ 1 = "{M48}", 2 = "{M48}" }}\n'


def snp_policy(body: str = "", *, top: str = "", measurement: bool = True) -> str:
    pin = f'measurement = ["{M48}"]\n' if measurement else ""
    return f'version = 1\n{top}\n[[accept]]\nplatform = "sev-snp"\n{pin}{body}\n'


def error_of(text: str | bytes, source: str = "<policy>") -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(text, source=source)
    return str(info.value)


# --- valid policies -----------------------------------------------------------------------------------------


def test_full_policy_loads_every_key() -> None:
    policy = load_policy(FULL_POLICY, source="full.toml")
    assert policy.version == 1
    assert policy.require_fresh_within_s == 120
    assert policy.source == "full.toml"
    assert policy.platforms == ("sev-snp", "tdx", "sgx-dcap", "nitro")
    assert policy.unsafe_flags == ()
    assert not policy.unsafe_allow_simulation
    snp, tdx, sgx, nitro = policy.accept
    assert isinstance(snp, SnpEntry)
    assert snp.number == 1
    assert snp.products == ("Milan", "Genoa", "Turin")
    assert snp.signers == ("vcek", "vlek")
    assert snp.measurements == (bytes.fromhex(M48), bytes.fromhex(M48_B))
    assert snp.vmpl == 0
    assert dict(snp.min_tcb) == {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}
    assert dict(snp.min_tcb_by_product["Turin"]) == {"fmc": 1, "bl": 1, "tee": 1, "snp": 1, "ucode": 1}
    assert snp.min_guest_svn == 2
    assert snp.host_data == bytes.fromhex(H32)
    assert snp.forbid_policy_bits == ("smt", "debug")
    assert snp.require_policy_bits == ("single_socket",)
    assert snp.min_report_version == 3
    assert isinstance(tdx, TdxEntry)
    assert tdx.mr_td == (bytes.fromhex(M48),)
    assert dict(tdx.rtmr) == {1: bytes.fromhex(M48), 2: bytes.fromhex(M48_B)}
    assert tdx.mr_config_id == bytes(48)
    assert tdx.accept_tcb_status == ("UpToDate",)
    assert tdx.require_sept_ve_disable
    assert isinstance(sgx, SgxEntry)
    assert sgx.mrenclave == (bytes.fromhex(M32),)
    assert sgx.mrsigner == (bytes.fromhex("01" * 32),)
    assert (sgx.isv_prod_id, sgx.min_isv_svn) == (7, 3)
    assert isinstance(nitro, NitroEntry)
    assert sorted(nitro.pcr) == [0, 1, 2, 8]


def test_defaults_are_the_strict_baseline() -> None:
    entry = load_policy(snp_policy()).accept[0]
    assert isinstance(entry, SnpEntry)
    assert entry.vmpl == 0
    assert entry.signers == ("vcek",)
    assert entry.products is None
    assert not entry.unsafe_allow_debug
    assert not entry.unsafe_permit_provisional_firmware
    assert load_policy(snp_policy()).require_fresh_within_s == 300


def test_unsafe_flags_top_level_apply_to_every_entry() -> None:
    text = f"""
version = 1
unsafe_allow_debug = true
unsafe_skip_tcb_collateral = true
unsafe_accept_tcb_status = ["OutOfDate"]

[[accept]]
platform = "sev-snp"
measurement = ["{M48}"]

[[accept]]
platform = "tdx"
mr_td = ["{M48}"]
rtmr = {{ 1 = "{M48}", 2 = "{M48}" }}
unsafe_accept_tcb_status = ["SWHardeningNeeded"]
"""
    policy = load_policy(text)
    snp, tdx = policy.accept
    assert snp.unsafe_allow_debug and tdx.unsafe_allow_debug
    assert isinstance(tdx, TdxEntry)
    assert tdx.unsafe_skip_tcb_collateral
    assert tdx.unsafe_accept_tcb_status == ("OutOfDate", "SWHardeningNeeded")
    assert policy.unsafe_flags == (
        "unsafe_allow_debug",
        "unsafe_skip_tcb_collateral",
        "unsafe_accept_tcb_status",
    )
    assert snp.unsafe_flags == ("unsafe_allow_debug",)


def test_unsafe_flag_in_an_entry_applies_to_that_entry_only() -> None:
    text = snp_policy("unsafe_permit_provisional_firmware = true") + (
        f'\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{M48_B}"]\n'
    )
    first, second = load_policy(text).accept
    assert first.unsafe_flags == ("unsafe_permit_provisional_firmware",)
    assert second.unsafe_flags == ()
    assert load_policy(text).unsafe_flags == ("unsafe_permit_provisional_firmware",)


def test_entry_cannot_undo_a_top_level_weakening() -> None:
    message = error_of(snp_policy("unsafe_allow_debug = false", top="unsafe_allow_debug = true"))
    assert "unsafe_allow_debug = false" in message
    assert "[[accept]] #1" in message


def test_simulation_entry_needs_top_level_unsafe_allow_simulation() -> None:
    text = f'version = 1\n[[accept]]\nplatform = "simulation"\nmeasurement = ["{M48}"]\n'
    message = error_of(text)
    assert "unsafe_allow_simulation = true" in message
    assert "[[accept]] #1" in message
    policy = load_policy(text.replace("version = 1\n", "version = 1\nunsafe_allow_simulation = true\n"))
    assert policy.unsafe_allow_simulation
    assert policy.unsafe_flags == ("unsafe_allow_simulation",)
    entry = policy.accept[0]
    assert isinstance(entry, SnpEntry)
    assert entry.platform == "simulation"
    assert entry.signers is None  # not checked for simulation


def test_simulation_flag_inside_an_entry_is_rejected_with_toml_hint() -> None:
    message = error_of(snp_policy("unsafe_allow_simulation = true"))
    assert 'unknown key "unsafe_allow_simulation" in [[accept]] #1 (platform "sev-snp")' in message
    assert "move it above the first [[accept]]" in message


def test_simulation_entries_accept_any_product_name() -> None:
    text = f"""version = 1
unsafe_allow_simulation = true
[[accept]]
platform = "simulation"
products = ["Simulated"]
signers = ["sim-vcek"]
measurement = ["{M48}"]
min_tcb_by_product = {{ Simulated = {{ snp = 1 }} }}
"""
    entry = load_policy(text).accept[0]
    assert isinstance(entry, SnpEntry)
    assert entry.products == ("Simulated",)


# --- unknown keys: every table, with the key and its table named --------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version = 1\nrequire_fresh_within = 3\n" + snp_policy()[11:],
            'unknown key "require_fresh_within" in the '
            'top-level table; did you mean "require_fresh_within_s"?',
        ),
        (
            snp_policy('measurment = ["x"]', measurement=False),
            'unknown key "measurment" in [[accept]] #1 (platform "sev-snp"); did you mean "measurement"?',
        ),
        (snp_policy("vmpll = 0"), 'unknown key "vmpll" in [[accept]] #1 (platform "sev-snp")'),
        (snp_policy('product = ["Milan"]'), 'unknown key "product" in [[accept]] #1 (platform "sev-snp")'),
        (snp_policy('signer = ["vcek"]'), 'unknown key "signer" in [[accept]] #1 (platform "sev-snp")'),
        (
            snp_policy("min_tcb = { bl = 1, ucod = 2 }"),
            'unknown key "ucod" in min_tcb of [[accept]] #1 (platform "sev-snp")',
        ),
        (
            snp_policy("min_tcb_by_product = { Turin = { fcm = 1 } }"),
            'unknown key "fcm" in min_tcb_by_product.Turin of [[accept]] #1 (platform "sev-snp")',
        ),
        (snp_policy("min_guest_sv = 1"), 'unknown key "min_guest_sv" in [[accept]] #1 (platform "sev-snp")'),
        (snp_policy('hostdata = "00"'), 'unknown key "hostdata" in [[accept]] #1 (platform "sev-snp")'),
        (snp_policy('forbid_policy_bit = ["smt"]'), 'unknown key "forbid_policy_bit" in [[accept]] #1'),
        (snp_policy("min_report_versions = 1"), 'unknown key "min_report_versions" in [[accept]] #1'),
        (
            snp_policy("permit_provisional_firmware = true"),
            'unknown key "permit_provisional_firmware" in [[accept]] #1 (platform "sev-snp"); '
            'weakenings are spelled unsafe_*: did you mean "unsafe_permit_provisional_firmware"?',
        ),
        (snp_policy("allow_debug = true"), 'did you mean "unsafe_allow_debug"?'),
        (snp_policy(f'mr_td = ["{M48}"]'), '"mr_td" applies to platform "tdx", not "sev-snp"'),
        (
            TDX + "rtmrs = {}\n",
            'unknown key "rtmrs" in [[accept]] #1 (platform "tdx")',
        ),
        (
            TDX + f'measurement = ["{M48}"]\n',
            'unknown key "measurement" in [[accept]] #1 (platform "tdx")',
        ),
        (
            TDX + "require_sept_ve_disabled = true\n",
            'did you mean "require_sept_ve_disable"?',
        ),
        (
            f'version = 1\n[[accept]]\nplatform = "sgx-dcap"\nmrenclave = ["{M32}"]\nisv_prodid = 1\n',
            'unknown key "isv_prodid" in [[accept]] #1 (platform "sgx-dcap")',
        ),
        (
            f'version = 1\n[[accept]]\nplatform = "nitro"\npcrs = {{ 0 = "{M48}" }}\n',
            'unknown key "pcrs" in [[accept]] #1 (platform "nitro")',
        ),
        (snp_policy() + "require_fresh_within_s = 3\n", "require_fresh_within_s is a top-level key"),
        (
            "version = 1\nmeasurement = []\n" + snp_policy()[11:],
            '"measurement" belongs inside an [[accept]] entry',
        ),
        (
            "version = 1\nallow_simulation = true\n" + snp_policy()[11:],
            'did you mean "unsafe_allow_simulation"?',
        ),
    ],
)
def test_unknown_keys_are_named_with_their_table(text: str, expected: str) -> None:
    message = error_of(text, source="p.toml")
    assert message.startswith("p.toml: ")
    assert expected in message


def test_second_entry_is_numbered_in_messages() -> None:
    text = snp_policy() + f'\n[[accept]]\nplatform = "nitro"\npcr = {{ 0 = "{M48}" }}\nbogus = 1\n'
    assert 'unknown key "bogus" in [[accept]] #2 (platform "nitro")' in error_of(text)


# --- types, ranges, hex lengths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            snp_policy('vmpl = "0"'),
            'key "vmpl" in [[accept]] #1 (platform "sev-snp") must be an integer from 0 to 3, '
            "got string '0'",
        ),
        (snp_policy("vmpl = 4"), "must be an integer from 0 to 3, got integer 4"),
        (snp_policy("vmpl = true"), "got boolean True"),
        (snp_policy("min_guest_svn = -1"), 'key "min_guest_svn"'),
        (
            snp_policy("min_tcb = { snp = 256 }"),
            'key "snp" in min_tcb of [[accept]] #1 (platform "sev-snp") must be an integer from 0 to 255',
        ),
        (snp_policy("min_tcb = 5"), 'key "min_tcb" in [[accept]] #1 (platform "sev-snp") must be a table'),
        (snp_policy('products = ["Milna"]'), 'must list values from "Milan", "Genoa", "Turin", got "Milna"'),
        (
            snp_policy('products = "Milan"'),
            'key "products" in [[accept]] #1 (platform "sev-snp") must be an array',
        ),
        (snp_policy("products = []"), "is an empty array, which would accept nothing"),
        (snp_policy('signers = ["pck"]'), 'key "signers"'),
        (snp_policy('forbid_policy_bits = ["smtt"]'), 'key "forbid_policy_bits"'),
        (snp_policy('require_policy_bits = ["debug"]'), 'key "require_policy_bits"'),
        (
            snp_policy('forbid_policy_bits = ["smt"]\nrequire_policy_bits = ["smt"]'),
            "both forbids and requires",
        ),
        (
            snp_policy('forbid_policy_bits = ["debug"]\nunsafe_allow_debug = true'),
            'forbids policy bit "debug"',
        ),
        (
            snp_policy('unsafe_allow_debug = "yes"'),
            'key "unsafe_allow_debug" in [[accept]] #1 (platform "sev-snp") '
            "must be true or false, got string 'yes'",
        ),
        (snp_policy("min_tcb_by_product = { Venice = { snp = 1 } }"), 'unknown product "Venice"'),
        (
            snp_policy('products = ["Milan"]\nmin_tcb_by_product = { Turin = { snp = 1 } }'),
            'names "Turin", which is not in its products list',
        ),
        (snp_policy(f'measurement = "{M48}"', measurement=False), 'write measurement = ["..."]'),
        (snp_policy("measurement = []", measurement=False), "empty array, which would accept nothing"),
        ("version = 2\n" + snp_policy()[11:], "unsupported policy version 2"),
        ("version = true\n" + snp_policy()[11:], 'key "version"'),
        (snp_policy()[11:], 'missing key "version"'),
        ("version = 1\nrequire_fresh_within_s = 0\n" + snp_policy()[11:], 'key "require_fresh_within_s"'),
        ("version = 1\nrequire_fresh_within_s = 1.5\n" + snp_policy()[11:], "got float 1.5"),
        ("version = 1\n[[accept]]\nmeasurement = []\n", '[[accept]] #1 has no "platform" key'),
        ('version = 1\n[[accept]]\nplatform = "sev"\n', 'key "platform" in [[accept]] #1 must be one of'),
        ('version = 1\nunsafe_accept_tcb_status = ["Revoked"]\n' + snp_policy()[11:], "never acceptable"),
        ('version = 1\nunsafe_accept_tcb_status = ["UpToDate"]\n' + snp_policy()[11:], "accepted by default"),
        (
            'version = 1\nunsafe_accept_tcb_status = ["Fine"]\n' + snp_policy()[11:],
            'unknown TCB status "Fine"',
        ),
        (
            'version = 1\nunsafe_accept_tcb_status = ["TDRelaunchAdvised"]\n' + snp_policy()[11:],
            'unknown TCB status "TDRelaunchAdvised" (one of "UpToDate", "SWHardeningNeeded", '
            '"ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate", '
            '"OutOfDateConfigurationNeeded", "Revoked")',
        ),
        (
            TDX + 'accept_tcb_status = ["OutOfDate"]\n',
            "a weakening: move it to unsafe_accept_tcb_status",
        ),
        (
            TDX + "accept_tcb_status = []\n",
            "empty array",
        ),
        (
            f'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["{M48}"]\nrtmr = {{ 4 = "{M48}" }}\n',
            'key "4" in rtmr of [[accept]] #1 (platform "tdx") must be a RTMR index from 0 to 3',
        ),
        (
            f'version = 1\n[[accept]]\nplatform = "nitro"\npcr = {{ 32 = "{M48}" }}\n',
            "PCR index from 0 to 31",
        ),
        (
            f'version = 1\n[[accept]]\nplatform = "nitro"\npcr = {{ 01 = "{M48}" }}\n',
            "PCR index from 0 to 31",
        ),
        (
            f'version = 1\n[[accept]]\nplatform = "sgx-dcap"\nmrenclave = ["{M32}"]\nisv_prod_id = 65536\n',
            'key "isv_prod_id"',
        ),
    ],
)
def test_wrong_types_and_values_name_key_expected_and_got(text: str, expected: str) -> None:
    assert expected in error_of(text)


@pytest.mark.parametrize(
    ("body", "key", "size", "got"),
    [
        (f'measurement = ["{"ab" * 47}"]', "measurement", 48, 94),
        (f'measurement = ["{M48}", "{"ab" * 49}"]', "measurement", 48, 98),
        (f'host_data = "{"12" * 31}"', "host_data", 32, 62),
        (f'host_data = "{"12" * 32}0"', "host_data", 32, 65),
    ],
)
def test_snp_hex_lengths_are_exact(body: str, key: str, size: int, got: int) -> None:
    message = error_of(snp_policy(body, measurement="measurement" not in body))
    assert f'key "{key}" in [[accept]] #1 (platform "sev-snp")' in message
    assert f"must be {size} bytes of hex ({2 * size} hex digits), got {got} characters" in message


@pytest.mark.parametrize(
    ("entry", "key", "size"),
    [
        (f'platform = "tdx"\nmr_td = ["{M32}"]', "mr_td", 48),
        (f'platform = "tdx"\nmr_td = ["{M48}"]\nmr_config_id = "{M32}"', "mr_config_id", 48),
        (f'platform = "tdx"\nmr_td = ["{M48}"]\nrtmr = {{ 3 = "{M32}" }}', "3", 48),
        (f'platform = "sgx-dcap"\nmrenclave = ["{M48}"]', "mrenclave", 32),
        (f'platform = "sgx-dcap"\nmrsigner = ["{M48}"]', "mrsigner", 32),
        (f'platform = "nitro"\npcr = {{ 0 = "{M32}" }}', "0", 48),
    ],
)
def test_other_platforms_hex_lengths_are_exact(entry: str, key: str, size: int) -> None:
    message = error_of(f"version = 1\n[[accept]]\n{entry}\n")
    assert f'key "{key}"' in message
    assert f"must be {size} bytes of hex" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0x" + "ab" * 48, 'without a "0x" prefix'), ("zz" * 48, "not hex"), ("ab " * 48, "not hex")],
)
def test_hex_must_be_plain_hex(value: str, expected: str) -> None:
    assert expected in error_of(snp_policy(f'measurement = ["{value}"]', measurement=False))


def test_hex_is_case_insensitive() -> None:
    entry = load_policy(snp_policy(f'measurement = ["{M48.upper()}"]', measurement=False)).accept[0]
    assert isinstance(entry, SnpEntry)
    assert entry.measurements == (bytes.fromhex(M48),)


@pytest.mark.parametrize(
    ("entry", "missing", "rule"),
    [
        ('platform = "sev-snp"', '"measurement"', "the SEV-SNP launch MEASUREMENT"),
        ('platform = "tdx"', '"mr_td", "rtmr.1", "rtmr.2"', "MRTD"),
        (f'platform = "tdx"\nmr_td = ["{M48}"]', '"rtmr.1", "rtmr.2"', "RTMR1: the kernel"),
        (f'platform = "tdx"\nmr_td = ["{M48}"]\nrtmr = {{ 1 = "{M48}" }}', '"rtmr.2"', "RTMR2"),
        (f'platform = "tdx"\nrtmr = {{ 1 = "{M48}", 2 = "{M48}" }}', '"mr_td"', "MRTD"),
        ('platform = "sgx-dcap"', '"mrenclave"', "MRSIGNER) together with"),
        (f'platform = "sgx-dcap"\nmrsigner = ["{M32}"]', '"isv_prod_id", "min_isv_svn"', "ISVPRODID"),
        (f'platform = "sgx-dcap"\nmrsigner = ["{M32}"]\nisv_prod_id = 1', '"min_isv_svn"', "minimum ISVSVN"),
        (f'platform = "sgx-dcap"\nmrsigner = ["{M32}"]\nmin_isv_svn = 1', '"isv_prod_id"', "ISVPRODID"),
        ('platform = "nitro"', '"pcr.0"', "PCR0: the enclave image file"),
        # PCR3 (IAM role), PCR8 (EIF signer): chosen by the operator, they say nothing about the code
        (f'platform = "nitro"\npcr = {{ 3 = "{M48}" }}', '"pcr.0"', "PCR0"),
        (f'platform = "nitro"\npcr = {{ 8 = "{M48}" }}', '"pcr.0"', "PCR0"),
        (f'platform = "nitro"\npcr = {{ 1 = "{M48}", 2 = "{M48}" }}', '"pcr.0"', "PCR0"),
    ],
)
def test_every_entry_must_pin_the_code_unless_unsafe(entry: str, missing: str, rule: str) -> None:
    message = error_of(f"version = 1\n[[accept]]\n{entry}\n")
    assert f"does not pin the enclave's code: {missing} missing" in message
    assert rule in message
    assert "unsafe_any_measurement = true" in message
    assert "cc-kernel policy init --" in message


@pytest.mark.parametrize(
    "entry",
    [
        'platform = "sev-snp"',
        'platform = "tdx"',
        f'platform = "tdx"\nrtmr = {{ 3 = "{M48}" }}',
        'platform = "sgx-dcap"',
        'platform = "nitro"',
        f'platform = "nitro"\npcr = {{ 3 = "{M48}", 8 = "{M48}" }}',
    ],
)
def test_unsafe_any_measurement_lifts_the_rule_and_is_a_listed_weakening(entry: str) -> None:
    policy = load_policy(f"version = 1\n[[accept]]\n{entry}\nunsafe_any_measurement = true\n")
    assert policy.unsafe_flags == ("unsafe_any_measurement",)


@pytest.mark.parametrize(
    "entry",
    [
        f'platform = "tdx"\nmr_td = ["{M48}"]\nrtmr = {{ 1 = "{M48}", 2 = "{M48}" }}',
        f'platform = "sgx-dcap"\nmrenclave = ["{M32}"]',
        f'platform = "sgx-dcap"\nmrsigner = ["{M32}"]\nisv_prod_id = 1\nmin_isv_svn = 0',
        f'platform = "nitro"\npcr = {{ 0 = "{M48}", 8 = "{M48}" }}',
    ],
)
def test_entries_that_pin_the_code_load_without_weakening(entry: str) -> None:
    assert load_policy(f"version = 1\n[[accept]]\n{entry}\n").unsafe_flags == ()


def test_the_rule_holds_for_every_entry_not_only_the_first() -> None:
    text = (
        f'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{M48}"]\n\n'
        f'[[accept]]\nplatform = "nitro"\npcr = {{ 3 = "{M48}" }}\n'
    )
    assert '[[accept]] #2 (platform "nitro") does not pin the enclave\'s code: "pcr.0" missing' in error_of(text)


def test_any_measurement_and_a_pin_contradict() -> None:
    assert "contradict" in error_of(snp_policy("unsafe_any_measurement = true"))
    assert "contradict" in error_of(snp_policy(top="unsafe_any_measurement = true"))


# --- fail closed: no entries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["version = 1\n", "version = 1\naccept = []\n", "version = 1\nrequire_fresh_within_s = 5\n"]
)
def test_empty_accept_fails_closed_at_load(text: str) -> None:
    message = error_of(text)
    assert "no [[accept]] entries" in message
    assert "fail closed" in message


def test_accept_must_be_an_array_of_tables() -> None:
    assert "must be an array of tables (write [[accept]])" in error_of(
        'version = 1\n[accept]\nplatform = "nitro"\n'
    )
    assert "must be an array of tables" in error_of("version = 1\naccept = [1, 2]\n")


# --- decoding and digest ------------------------------------------------------------------------------------


def test_invalid_toml_and_utf8_are_policy_errors() -> None:
    assert "not valid TOML" in error_of("version = = 1", source="bad.toml")
    assert error_of("version = = 1", source="bad.toml").startswith("bad.toml: ")
    assert "not UTF-8" in error_of(b"version = 1\n# \xff\n")


def test_non_text_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        load_policy(42)  # type: ignore[arg-type]


def test_sha256_is_the_tagged_hash_of_the_canonical_source() -> None:
    text = snp_policy()
    policy = load_policy(text)
    assert policy.canonical == text.encode()
    assert policy.sha256 == tagged_hash(TAG_POLICY, text.encode())
    assert load_policy(text.encode()).sha256 == policy.sha256
    # CRLF checkouts and a BOM do not change the digest; any other byte does
    assert load_policy(text.replace("\n", "\r\n")).sha256 == policy.sha256
    assert load_policy(b"\xef\xbb\xbf" + text.encode()).sha256 == policy.sha256
    assert load_policy(text + "# comment\n").sha256 != policy.sha256


def test_policy_is_frozen() -> None:
    policy = load_policy(snp_policy())
    with pytest.raises(AttributeError):
        policy.require_fresh_within_s = 1  # type: ignore[misc]


# --- built-in and rendered policies -------------------------------------------------------------------------


def test_default_hardware_policy_pins_nothing_and_says_so() -> None:
    policy = default_hardware_policy()
    assert policy.unsafe_flags == ("unsafe_any_measurement",)
    assert not policy.unsafe_allow_simulation
    assert "simulation" not in policy.platforms
    assert set(policy.platforms) == {"sev-snp", "tdx", "sgx-dcap", "nitro"}
    assert all(not entry.unsafe_allow_debug for entry in policy.accept)
    assert "any measurement" in policy.source


@pytest.mark.parametrize(
    ("platform", "value", "attr"),
    [
        ("sev-snp", bytes(range(48)), "measurements"),
        ("simulation", bytes(range(48)), "measurements"),
        ("tdx", bytes(range(48)), "mr_td"),
        ("sgx-dcap", bytes(range(32)), "mrenclave"),
    ],
)
def test_render_round_trips(platform: str, value: bytes, attr: str) -> None:
    rtmr = {1: b"\x01" * 48, 2: (b"\x02" * 48).hex()} if platform == "tdx" else None
    text = render_policy(platform, [value, value.hex().upper()], note="generated for a test\nsecond line", rtmr=rtmr)
    policy = load_policy(text)
    (entry,) = policy.accept
    assert entry.platform == platform
    assert getattr(entry, attr) == (value,)
    assert policy.unsafe_allow_simulation == (platform == "simulation")
    assert policy.unsafe_flags == (("unsafe_allow_simulation",) if platform == "simulation" else ())
    assert "# generated for a test\n# second line\n" in text


def test_render_nitro_pins_pcr0_one_entry_per_value() -> None:
    policy = load_policy(render_policy("nitro", [bytes(48), b"\x01" * 48]))
    assert [dict(e.pcr) for e in policy.accept if isinstance(e, NitroEntry)] == [
        {0: bytes(48)},
        {0: b"\x01" * 48},
    ]


def test_render_with_simulation_allowance_and_tcb() -> None:
    text = render_policy(
        "sev-snp",
        [bytes(48)],
        allow_simulation=True,
        simulation_measurements=[b"\x02" * 48],
        min_tcb={"bl": 3, "snp": 20, "ucode": 200},
        signers=["vcek", "vlek"],
        require_fresh_within_s=60,
    )
    policy = load_policy(text)
    snp, sim = policy.accept
    assert isinstance(snp, SnpEntry) and isinstance(sim, SnpEntry)
    assert (snp.platform, sim.platform) == ("sev-snp", "simulation")
    assert dict(snp.min_tcb) == {"bl": 3, "snp": 20, "ucode": 200}
    assert snp.signers == ("vcek", "vlek")
    assert sim.measurements == (b"\x02" * 48,)
    assert policy.require_fresh_within_s == 60
    assert policy.unsafe_flags == ("unsafe_allow_simulation",)


def test_rendered_lines_are_explained_by_comments() -> None:
    text = render_policy("sev-snp", [bytes(48)], allow_simulation=True, simulation_measurements=[bytes(48)])
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith(("#", " ", "]", "[[accept]]")):
            assert lines[i - 1].startswith(("#", "  ", "[[accept]]")), line
    # every weakening is mentioned (commented out) so users find the names
    for flag in UNSAFE_FLAGS:
        assert flag in text
    assert re.search(r"^unsafe_allow_simulation = true$", text, re.M)
    assert not re.search(r"^unsafe_allow_debug", text, re.M)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("sev-snp", []), {}, "needs at least one measurement"),
        (("sev-snp", [bytes(32)]), {}, "48 bytes of hex"),
        (("sgx-dcap", [bytes(48)]), {}, "32 bytes of hex"),
        (("sev-snp", ["zz" * 48]), {}, "not hex"),
        (("sev", [bytes(48)]), {}, 'unknown platform "sev"'),
        (("sev-snp", [bytes(48)]), {"allow_simulation": True}, "simulated enclave's measurement"),
        (("tdx", [bytes(48)]), {"min_tcb": {"bl": 1}}, "apply to platform"),
        (
            ("nitro", [bytes(48)]),
            {"signers": ["vcek"]},
            'min_tcb and signers apply to platform "sev-snp" or "simulation", not "nitro"',
        ),
        (("sev-snp", [bytes(48)]), {"rtmr": {1: bytes(48)}}, 'RTMRs apply to platform "tdx", not "sev-snp"'),
        (("tdx", [bytes(48)]), {"rtmr": {4: bytes(48)}}, "RTMR index 4 must be from 0 to 3"),
    ],
)
def test_render_rejects_bad_input(
    args: tuple[str, list[bytes | str]], kwargs: dict[str, object], expected: str
) -> None:
    with pytest.raises(PolicyError, match=re.escape(expected)):
        render_policy(*args, **kwargs)  # type: ignore[arg-type]


def test_render_rejects_a_bare_value_for_measurements() -> None:
    with pytest.raises(TypeError):
        render_policy("sev-snp", bytes(48))  # type: ignore[arg-type]


@pytest.mark.parametrize("platform", POLICY_PLATFORMS)
def test_one_entry_type_reads_and_renders_each_platform(platform: str) -> None:
    """The registry's entry type is the one that renders a platform's entry and the one its TOML loads into."""
    cls = ENTRY_TYPES[platform]
    size = cls.MEASUREMENT_KEY[1]
    rtmr = {1: bytes(48), 2: bytes(48)} if "rtmr" in cls.RENDER_OPTIONS else None
    entry = load_policy(render_policy(platform, [b"\x01" * size], rtmr=rtmr)).accept[0]
    assert type(entry) is cls and entry.platform == platform == cls.PLATFORM
    assert set(cls.KEYS) >= {"platform", "unsafe_allow_debug", "unsafe_any_measurement"}
