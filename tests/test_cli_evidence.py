"""``cc-kernel evidence verify``: every real vector at its pinned time, through the command line.

Exit codes: 0 accepted, 1 rejected (not authentic, or refused by the policy; every failed check printed with
got/expected), 2 usage error or unreadable input. The built-in policy accepts any measurement and nothing else
weak, so debug enclaves, VMPL 1, provisional firmware and an unknown Intel TCB status (no --collateral) are all
refused. Pinned times and documented values: tests/vectors/README.md (and the verifier tests, whose tables are
imported here rather than copied).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import VECTORS_DIR, read_vector
from nitro_support import VECTORS_BY_NAME as NITRO
from nitro_support import NitroVector
from test_dcap_vectors import EXPECTED as DCAP
from test_snp_verify import BY_NAME as SNP
from test_snp_verify import SnpCase

from cc_kernel import cli
from cc_kernel.attestation.offline import OFFLINE_PLATFORMS, collateral_from_files
from cc_kernel.attestation.platforms.ratls_interop import parse_interop_certificate

SNP_AT = "2025-06-01T00:00:00Z"
DCAP_CHAIN_AT = "2026-02-03T01:00:00Z"
DCAP_2023_AT = "2023-07-01T01:00:00Z"
RATLS_AT = "2024-01-01T00:00:00Z"
COLLATERAL = VECTORS_DIR / "tdx" / "collateral"
COLLATERAL_2023 = (
    "tcbinfo-tdx-50806f000000-2023-06-18.json",
    "qe-identity-td-qe-2023-06-08.json",
    "pck-platform-ca-crl-2023-06-08.der",
    "intel-sgx-root-ca-crl-2023-04-03.der",
    "intel-sgx-tcb-signing-chain.pem",
)
SKIP_TCB_POLICY = (
    'version = 1\n[[accept]]\nplatform = "tdx"\nunsafe_any_measurement = true\nunsafe_skip_tcb_collateral = true\n'
)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main(["evidence", "verify", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, dict[str, Any], str]:
    code, out, err = run(capsys, *args, "--json")
    return code, json.loads(out), err


def checks(doc: dict[str, Any]) -> set[str]:
    return {f["check"] for f in doc["failures"]}


def vec(relative: str) -> Path:
    return VECTORS_DIR / relative


def snp_args(case: SnpCase, *, chain: bool = True) -> list[str | Path]:
    args: list[str | Path] = [vec(case.report), "--platform", "sev-snp", "--cert", vec(case.vek), "--at", SNP_AT]
    return [*args, "--chain", vec(case.chain)] if chain else args


def collateral_dir(tmp_path: Path, *names: str) -> Path:
    directory = tmp_path / "collateral"
    directory.mkdir()
    for name in names:
        shutil.copy(COLLATERAL / name, directory / name)
    return directory


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


# --- SEV-SNP: all five reports ---------------------------------------------------------------------------------

#: What the built-in policy says about each real report (testvectors/README.md "what must happen").
SNP_OUTCOME: dict[str, tuple[int, set[str]]] = {
    "virtee-milan-v2": (0, set()),
    "ccf-milan-v3": (0, set()),
    "gosev-milan-v2-debug": (1, {"policy.debug"}),  # POLICY bit 19
    "trustee-milan-v2-idblock": (1, {"policy.provisional_firmware"}),  # CURRENT_TCB != COMMITTED_TCB
    "trustee-milan-v3-vlek": (1, {"policy.vmpl", "policy.provisional_firmware"}),  # VMPL 1
}


@pytest.mark.parametrize("name", sorted(SNP_OUTCOME))
@pytest.mark.parametrize("chain", [True, False], ids=["with-chain", "pinned-chain"])
def test_snp_vector_at_its_pinned_time(name: str, chain: bool, capsys: pytest.CaptureFixture[str]) -> None:
    case, (want_code, want_checks) = SNP[name], SNP_OUTCOME[name]
    code, doc, err = run_json(capsys, *snp_args(case, chain=chain))
    assert code == want_code, err
    assert doc["authentic"] is True and doc["verified"] is (want_code == 0)
    assert doc["platform"] == "sev-snp" and doc["product"] == "Milan" and doc["signer"] == case.signer
    assert doc["measurement"] == case.measurement
    assert doc["report_data"] == case.report_data
    assert doc["debug"] is case.debug
    assert doc["tcb"] == case.tcb and doc["tcb_status"] is None
    assert doc["claims"]["vmpl"] == case.vmpl and doc["claims"]["policy"] == case.policy
    assert doc["encoding"] == ("hex" if case.report.endswith(".hex") else "binary")
    if want_code == 0:
        assert doc["status"] == "warning" and doc["unsafe_flags_used"] == ["unsafe_any_measurement"]
        assert "failures" not in doc
    else:
        assert doc["status"] == "contraindicated" and checks(doc) == want_checks
        for check in want_checks:
            assert f"[{check}]" in err


def test_snp_accepted_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    case = SNP["ccf-milan-v3"]
    code, out, err = run(capsys, *snp_args(case))
    assert code == 0 and err == ""
    assert out.startswith(f"{vec(case.report)}: ACCEPTED (warning) - authentic sev-snp evidence (Milan)")
    assert f"Measurement: {case.measurement}" in out
    assert "Debug:       disabled" in out and "TCB:         bl=4 tee=0 snp=24 ucode=219" in out
    assert "Unsafe used: unsafe_any_measurement" in out and "Verified at: 2025-06-01T00:00:00Z" in out


def test_snp_debug_vector_is_refused_by_the_default_policy_with_got_and_expected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = SNP["gosev-milan-v2-debug"]
    code, out, err = run(capsys, *snp_args(case))
    assert code == 1
    assert "REJECTED - authentic sev-snp evidence (Milan) refused by policy <built-in offline policy" in out
    assert "Debug:       ENABLED" in out and f"Measurement: {case.measurement}" in out
    assert "[policy.debug]" in err and "(got True, expected False)" in err


def test_a_policy_pinning_the_measurement_affirms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = SNP["virtee-milan-v2"]
    text = f'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{case.measurement}"]\n'
    pinned = policy_file(tmp_path, text)
    code, doc, _ = run_json(capsys, *snp_args(case), "--policy", pinned)
    assert code == 0 and doc["status"] == "affirming" and doc["unsafe_flags_used"] == []
    assert doc["policy_source"] == str(pinned) and doc["matched_entry"] == 1


def test_a_policy_pinning_another_measurement_lists_got_and_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case, other = SNP["virtee-milan-v2"], SNP["ccf-milan-v3"].measurement
    pinned = policy_file(tmp_path, f'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{other}"]\n')
    code, out, err = run(capsys, *snp_args(case), "--policy", pinned)
    assert code == 1 and "REJECTED" in out
    assert f"REJECTED by policy {pinned}" in err and "[policy.measurement]" in err
    assert f"got '{case.measurement}', expected ['{other}']" in err
    code, doc, _ = run_json(capsys, *snp_args(case), "--policy", pinned)
    (failure,) = doc["failures"]
    assert code == 1 and failure["check"] == "policy.measurement"
    assert (failure["got"], failure["expected"]) == (case.measurement, [other])


def test_every_failed_clause_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = SNP["trustee-milan-v3-vlek"]
    policy = policy_file(
        tmp_path,
        f'version = 1\n[[accept]]\nplatform = "sev-snp"\nmeasurement = ["{"00" * 48}"]\n'
        "min_tcb = { snp = 25 }\n",
    )
    code, doc, err = run_json(capsys, *snp_args(case), "--policy", policy)
    assert code == 1
    assert checks(doc) == {
        "policy.measurement", "policy.signer", "policy.vmpl", "policy.min_tcb.snp", "policy.provisional_firmware"
    }
    assert err.count("\n  - [policy.") == 5
    signer = next(f for f in doc["failures"] if f["check"] == "policy.signer")
    assert (signer["got"], signer["expected"]) == ("vlek", ["vcek"])


def test_snp_flipped_measurement_byte_breaks_the_signature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = SNP["ccf-milan-v3"]
    raw = bytearray(read_vector(case.report))
    raw[0x90] ^= 0x01  # MEASUREMENT starts at 0x90
    report = tmp_path / "flipped.bin"
    report.write_bytes(bytes(raw))
    code, doc, err = run_json(capsys, report, "--platform", "sev-snp", "--cert", vec(case.vek), "--at", SNP_AT)
    assert code == 1 and doc["authentic"] is False and doc["measurement"] is None
    assert checks(doc) == {"snp.signature"}
    assert "REJECTED - not authentic sev-snp evidence at 2025-06-01T00:00:00Z" in err and "[snp.signature]" in err


def test_vlek_after_its_expiry_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    case = SNP["trustee-milan-v3-vlek"]
    args = [a if a != SNP_AT else "2026-01-01T00:00:00Z" for a in snp_args(case)]
    code, doc, err = run_json(capsys, *args)
    assert code == 1 and checks(doc) == {"chain.validity"}
    assert "2025-12-10" in err and "hint: certificates are checked at the verification time" in err


def test_another_products_vcek_or_chain_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    case = SNP["virtee-milan-v2"]
    # the Turin VCEK (chain-only vector) cannot have signed a Milan report
    code, doc, _ = run_json(capsys, vec(case.report), "--platform", "sev-snp", "--cert",
                            vec("sev-snp/virtee-turin.vcek.der"), "--at", SNP_AT)
    assert code == 1 and doc["authentic"] is False and doc["failures"][0]["check"].startswith(("chain.", "snp.vek"))
    # a presented root must be the pinned ARK of the report's product
    code, doc, _ = run_json(capsys, *snp_args(case, chain=False), "--chain", vec("roots/amd-genoa-vcek-ask-ark.pem"))
    assert code == 1 and checks(doc) == {"snp.presented_ark"}


def test_snp_without_cert_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, vec(SNP["ccf-milan-v3"].report), "--platform", "sev-snp", "--at", SNP_AT)
    assert code == 2 and out == ""
    assert "pass --cert FILE" in err and "VCEK or VLEK" in err


# --- Intel TDX and SGX quotes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gotdx-spr-e4-v4", "gotdx-v5", "trustee-v5"])
def test_tdx_vector_without_collateral_is_refused_with_the_collateral_hint(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    want = DCAP[name]
    code, doc, err = run_json(capsys, vec(want["file"]), "--platform", "tdx", "--at", DCAP_CHAIN_AT)
    assert code == 1 and doc["authentic"] is True and checks(doc) == {"policy.tcb_collateral"}
    assert doc["platform"] == "tdx" and doc["product"] == "Intel TDX" and doc["signer"] == "pck"
    assert doc["measurement"] == want["measurement"] and doc["report_data"] == want["report_data"]
    assert doc["debug"] is False and doc["tcb_status"] is None
    assert "tcb-collateral-missing" in doc["warnings"]
    assert ("trailing-bytes" in doc["warnings"]) == (want["trailing_bytes"] > 0)
    assert any("--collateral DIR" in hint for hint in doc["hints"])
    assert "[policy.tcb_collateral]" in err and "hint: " in err and "pass --collateral DIR" in err


@pytest.mark.parametrize("name", ["gotdx-v5", "trustee-v5"])
def test_tdx_vector_is_accepted_by_a_policy_that_skips_collateral(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = policy_file(tmp_path, SKIP_TCB_POLICY)
    code, doc, _ = run_json(capsys, vec(DCAP[name]["file"]), "--platform", "tdx", "--at", DCAP_CHAIN_AT,
                            "--policy", policy)
    assert code == 0 and doc["status"] == "warning"
    assert doc["measurement"] == DCAP[name]["measurement"] and doc["debug"] is False
    assert set(doc["unsafe_flags_used"]) == {"unsafe_any_measurement", "unsafe_skip_tcb_collateral"}


def test_spr_with_the_2023_collateral_has_a_tcb_status_the_policy_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = collateral_dir(tmp_path, *COLLATERAL_2023)  # the real file names, as shipped
    code, doc, err = run_json(capsys, vec(DCAP["gotdx-spr-e4-v4"]["file"]), "--platform", "tdx",
                              "--collateral", directory, "--at", DCAP_2023_AT)
    assert code == 1 and doc["authentic"] is True
    assert doc["tcb_status"] == "NoMatchingTcbLevel"
    assert doc["claims"]["tcb"]["complete"] is True and doc["claims"]["tcb"]["pck_crl"]["revoked_count"] == 44
    (failure,) = doc["failures"]
    assert failure["check"] == "policy.tcb_status" and failure["got"] == "NoMatchingTcbLevel"
    assert "the platform's TCB status is NoMatchingTcbLevel" in err


def test_the_2026_tcbinfo_needs_a_current_tcb_signing_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = collateral_dir(tmp_path, "tcbinfo-tdx-90c06f000000-2026-02-01.json", "intel-sgx-tcb-signing-chain.pem")
    code, doc, err = run_json(capsys, vec(DCAP["gotdx-v5"]["file"]), "--platform", "tdx", "--collateral", directory,
                              "--at", DCAP_CHAIN_AT)
    assert code == 1 and doc["authentic"] is False
    assert checks(doc) == {"collateral.tcb_signing.chain.validity"} and "2025-05-21" in err


def test_sgx_debug_quote_is_refused_for_debug_and_collateral(capsys: pytest.CaptureFixture[str]) -> None:
    want = DCAP["trustee-occlum-v3-debug"]
    code, doc, err = run_json(capsys, vec(want["file"]), "--platform", "sgx", "--at", DCAP_CHAIN_AT)
    assert code == 1 and checks(doc) == {"policy.debug", "policy.tcb_collateral"}
    assert doc["platform"] == "sgx-dcap" and doc["product"] == "Intel SGX" and doc["debug"] is True
    assert doc["measurement"] == want["measurement"] and doc["report_data"] == want["report_data"]
    assert doc["measurements"]["mrsigner"] == want["sgx"]["mr_signer"]
    assert "[policy.debug]" in err and "[policy.tcb_collateral]" in err


def test_an_sgx_quote_is_not_tdx_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = run_json(capsys, vec(DCAP["trustee-occlum-v3-debug"]["file"]), "--platform", "tdx",
                              "--at", DCAP_CHAIN_AT)
    assert code == 1 and doc["authentic"] is False
    (failure,) = doc["failures"]
    assert (failure["check"], failure["got"], failure["expected"]) == ("offline.platform", "sgx-dcap", ["tdx"])
    assert "not tdx" in err and "hint: the file is sgx-dcap evidence: try --platform sgx" in err


def test_a_flipped_report_data_byte_breaks_the_quote_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray(read_vector(DCAP["gotdx-v5"]["file"]))
    raw[DCAP["gotdx-v5"]["signed_length"] - 1] ^= 0x01
    quote = tmp_path / "flipped.dat"
    quote.write_bytes(bytes(raw))
    code, doc, _ = run_json(capsys, quote, "--platform", "tdx", "--at", DCAP_CHAIN_AT)
    assert code == 1 and checks(doc) == {"dcap.signature"}


def test_a_quote_given_as_an_snp_report_fails_with_a_platform_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = run_json(capsys, vec(DCAP["gotdx-v5"]["file"]), "--platform", "sev-snp",
                              "--cert", vec(SNP["ccf-milan-v3"].vek), "--at", SNP_AT)
    assert code == 1 and checks(doc) == {"snp.length"}
    assert "hint: the file looks like tdx evidence: try --platform tdx" in err


# --- collateral directories ----------------------------------------------------------------------------------


def test_every_shipped_collateral_file_name_maps_to_its_item() -> None:
    names = {p.name: p.read_bytes() for p in COLLATERAL.iterdir()}
    names.pop("tcbinfo-tdx-90c06f000000-2026-02-01.json")  # one tcbInfo per directory
    assert set(collateral_from_files(names)) == {"tcb_info", "qe_identity", "pck_crl", "root_crl", "tcb_signing_chain"}
    plain = {"tcb_info.json": b"1", "qe_identity.json": b"2", "pck_crl.der": b"3", "root_crl.pem": b"4",
             "tcb_signing_chain.pem": b"5"}
    assert collateral_from_files(plain) == {
        "tcb_info": b"1", "qe_identity": b"2", "pck_crl": b"3", "root_crl": b"4", "tcb_signing_chain": b"5"
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("notes.txt",), "unknown collateral file 'notes.txt'"),
        ((COLLATERAL_2023[0], "tcbinfo-tdx-90c06f000000-2026-02-01.json"),
         "two collateral files for tcb_info: 'tcbinfo-tdx-50806f000000-2023-06-18.json' and "
         "'tcbinfo-tdx-90c06f000000-2026-02-01.json'"),
        (COLLATERAL_2023[:1], "tcbinfo-tdx-50806f000000-2023-06-18.json needs the TCB signing chain"),
        ((), "no collateral files"),
    ],
    ids=["unknown", "two-tcbinfos", "no-signing-chain", "empty"],
)
def test_a_bad_collateral_directory_is_a_usage_error(
    files: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "collateral"
    directory.mkdir()
    for name in files:
        source = COLLATERAL / name
        (directory / name).write_bytes(source.read_bytes() if source.exists() else b"fetched from PCCS")
    code, out, err = run(capsys, vec(DCAP["gotdx-v5"]["file"]), "--platform", "tdx", "--collateral", directory,
                         "--at", DCAP_CHAIN_AT)
    assert code == 2 and out == ""
    assert message in err


def test_a_missing_collateral_directory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, vec(DCAP["gotdx-v5"]["file"]), "--platform", "tdx", "--collateral",
                       tmp_path / "nowhere", "--at", DCAP_CHAIN_AT)
    assert code == 2 and "cannot read the collateral directory" in err


# --- AWS Nitro: all four documents ---------------------------------------------------------------------------


def nitro_args(v: NitroVector, *, at: str | None = None) -> list[str | Path]:
    files = {
        "evervault-2023-09-18-debug-bound": "nitro/evervault-2023-09-18-debug-bound.cose.b64",
        "evervault-2023-01-18-nondebug-in-tls-cert": "nitro/evervault-2023-01-18-nondebug-in-tls-cert.der",
    }
    path = vec(files.get(v.name, f"nitro/{v.name}.cose"))
    return [path, "--platform", "nitro", "--at", at or v.verify_at.isoformat()]


@pytest.mark.parametrize("name", sorted(NITRO))
def test_nitro_vector_at_its_pinned_time(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    v = NITRO[name]
    code, doc, err = run_json(capsys, *nitro_args(v))
    assert code == (1 if v.debug else 0), err
    assert doc["platform"] == "nitro" and doc["signer"] == "nitro-leaf" and doc["debug"] is v.debug
    assert doc["measurement"] == v.pcrs[0] and doc["report_data"] == v.user_data.hex()
    assert {k: doc["measurements"][f"pcr{k}"] for k in v.pcrs} == dict(v.pcrs)
    if v.debug:
        assert checks(doc) == {"policy.debug"} and "[policy.debug]" in err
    else:
        assert doc["status"] == "warning" and doc["encoding"] == "certificate-san"
        assert doc["bindings"] == ["user_data is the public key of the certificate that carries the document"]


def test_nitro_document_bound_to_its_tls_certificate(capsys: pytest.CaptureFixture[str]) -> None:
    v = NITRO["evervault-2023-09-18-debug-bound"]
    assert v.tls_cert is not None
    code, doc, _ = run_json(capsys, *nitro_args(v), "--cert", vec(v.tls_cert))
    assert code == 1 and checks(doc) == {"policy.debug"}  # authentic and bound, but a debug enclave
    assert doc["encoding"] == "base64" and doc["bindings"] == ["user_data is the public key of the --cert certificate"]
    other = NITRO["evervault-2023-01-18-nondebug-in-tls-cert"].tls_cert
    assert other is not None
    code, doc, _ = run_json(capsys, *nitro_args(v), "--cert", vec(other))
    assert code == 1 and doc["authentic"] is False and checks(doc) == {"nitro.binding.spki"}


def test_nitro_document_four_hours_later_is_expired(capsys: pytest.CaptureFixture[str]) -> None:
    v = NITRO["blindai-2023-03-22-debug"]
    code, doc, err = run_json(capsys, *nitro_args(v, at="2023-03-22T18:28:27.405Z"))
    assert code == 1 and doc["authentic"] is False and checks(doc) == {"chain.validity"}
    assert "(for a Nitro document: its timestamp)" in err


def test_nitro_flipped_signature_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = NITRO["evervault-2022-10-12-debug"]
    raw = bytearray(read_vector(f"nitro/{v.name}.cose"))
    raw[-1] ^= 0x01  # the last byte of the 96-byte signature
    path = tmp_path / "flipped.cose"
    path.write_bytes(bytes(raw))
    code, doc, _ = run_json(capsys, path, "--platform", "nitro", "--at", v.verify_at.isoformat())
    assert code == 1 and checks(doc) == {"nitro.signature"}


# --- interoperable RA-TLS certificates -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ccc-gramine-sgx-debug.cert.pem", "ccc-intel-sgxsdk-sgx-debug.cert.pem"])
def test_ratls_vector_at_its_pinned_time(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    raw = read_vector(f"ratls/{name}")
    code, doc, _ = run_json(capsys, vec(f"ratls/{name}"), "--platform", "ratls", "--at", RATLS_AT)
    assert code == 1 and doc["authentic"] is True
    assert checks(doc) == {"policy.debug", "policy.tcb_collateral"}  # debug enclaves, and no collateral
    assert doc["platform"] == "sgx-dcap" and doc["debug"] is True and doc["encoding"] == "certificate"
    assert doc["measurement"] == parse_interop_certificate(raw).quote[112:144].hex()  # MRENCLAVE in the quote
    if "gramine" in name:
        assert doc["measurement"] == "0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585"


# --- usage errors and unreadable input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "yesterday"], "--at 'yesterday' is not an ISO 8601 time"),
        (["--at", "2025-06-01T00:00:00"], "has no timezone"),
        (["--chain", str(vec("roots/amd-milan-vcek-ask-ark.pem"))], "--chain applies to sev-snp"),
        (["--cert", str(vec("sev-snp/ccf-milan-v3.vcek.pem"))], "--cert applies to sev-snp"),
    ],
    ids=["not-iso", "naive", "chain-for-tdx", "cert-for-tdx"],
)
def test_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, vec(DCAP["gotdx-v5"]["file"]), "--platform", "tdx", *args)
    assert code == 2 and out == "" and message in err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, tmp_path / "absent.bin", "--platform", "tdx", "--at", DCAP_CHAIN_AT)
    assert code == 2 and f"cannot read the evidence file {tmp_path / 'absent.bin'}: No such file" in err
    code, _, err = run(capsys, vec(SNP["ccf-milan-v3"].report), "--platform", "sev-snp", "--cert",
                       tmp_path / "vcek.der", "--at", SNP_AT)
    assert code == 2 and "cannot read the --cert file" in err


def test_an_invalid_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = policy_file(tmp_path, 'version = 1\n[[accept]]\nplatform = "tdx"\nmr_td = ["00"]\n')
    code, _, err = run(capsys, vec(DCAP["gotdx-v5"]["file"]), "--platform", "tdx", "--policy", bad)
    assert code == 2 and "48 bytes of hex" in err


def test_an_unknown_platform_is_an_argparse_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["evidence", "verify", str(vec(DCAP["gotdx-v5"]["file"])), "--platform", "sgx-dcap"])
    assert info.value.code == 2 and "invalid choice: 'sgx-dcap'" in capsys.readouterr().err


def test_the_parser_offers_exactly_the_offline_platforms() -> None:
    assert cli.EVIDENCE_PLATFORMS == OFFLINE_PLATFORMS


# --- the real entry point ------------------------------------------------------------------------------------


def test_python_m_cc_kernel_evidence_verify(tmp_path: Path) -> None:
    case = SNP["virtee-milan-v2"]
    proc = subprocess.run(
        [sys.executable, "-m", "cc_kernel", "evidence", "verify", *map(str, snp_args(case)), "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verified"] is True and doc["measurement"] == case.measurement and doc["debug"] is False


@pytest.mark.parametrize(
    "args",
    [["measure", "--json"], ["evidence", "verify", *map(str, snp_args(SNP["virtee-milan-v2"])), "--json"]],
    ids=["measure", "evidence-verify"],
)
def test_a_closed_stdout_ends_quietly(args: list[str], tmp_path: Path) -> None:
    """``cc-kernel measure --json | head -c 10``: the reader is gone before we write; no traceback, 141."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cc_kernel", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the child has imported anything, let alone printed
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == cli.EXIT_BROKEN_PIPE
    assert err == b""


def test_times_are_written_in_utc_as_results_write_them(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI prints times with the results' one ISO 8601 writer: an --at given with an offset shows in UTC."""
    from datetime import datetime

    from cc_kernel.attestation.result import iso_utc

    case = SNP["ccf-milan-v3"]
    args = [vec(case.report), "--platform", "sev-snp", "--cert", vec(case.vek), "--at", "2025-06-01T02:00:00+02:00"]
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert iso_utc(datetime.fromisoformat("2025-06-01T02:00:00+02:00")) == "2025-06-01T00:00:00Z"
    assert "Verified at: 2025-06-01T00:00:00Z" in out
