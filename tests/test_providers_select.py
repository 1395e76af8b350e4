"""Gramine's /dev/attestation provider, the AMD certificate table, the shared retry, and the selector.

The Gramine fake is a temporary directory holding the pseudo-files of Gramine's Documentation/attestation.rst
(``attestation_type``, ``user_report_data``, ``quote``); writing ``user_report_data`` regenerates ``quote`` as
Gramine does, as an SGX DCAP quote (v3, like Gramine's) carrying that REPORT_DATA.
"""

from __future__ import annotations

import errno
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cc_kernel.attestation.envelope import EvidenceEnvelope
from cc_kernel.attestation.platforms import HARDWARE_INTERFACES
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.enclave import evidence
from cc_kernel.enclave.evidence import SimulatedSource, detect_hardware_source
from cc_kernel.enclave.providers.amd_certs import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    load_certificate_dir,
    parse_cert_table,
    snp_endorsements,
)
from cc_kernel.enclave.providers.base import OsFilesystem, Retry, Transient, iowr
from cc_kernel.enclave.providers.configfs_tsm import ConfigfsTsm
from cc_kernel.enclave.providers.gramine import GramineDevAttestation
from cc_kernel.enclave.providers.nitro_nsm import NitroNsm
from cc_kernel.enclave.providers.selector import PROVIDER_NAMES, HardwarePaths, select_provider
from cc_kernel.enclave.providers.sev_guest import SevGuestIoctl
from cc_kernel.errors import ConfigError, EvidenceUnavailable
from cc_kernel.testing.providers import build_cert_table

AUDIT_PUB = b"\xa1" * 32
SESSION_ID = b"\x5e" * 16
NONCE = b"\x90" * 32
REPORT_DATA = bytes(range(64))


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def sgx_quote(report_data: bytes, *, version: int = 3, tee_type: int = 0) -> bytes:
    """A structurally faithful SGX DCAP quote (header, 384-byte report body, signature data); not signed."""
    header = struct.pack("<HHI", version, 2, tee_type) + bytes(4) + bytes.fromhex(
        "939a7233f79c4ca9940a0db3957f0607"
    ) + bytes(20)
    body = bytearray(384)
    body[320:384] = report_data
    prefix = struct.pack("<HI", 1, len(body)) if version == 5 else b""
    signature_data = bytes(128) + bytes(384) + bytes(64)
    return header + prefix + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


# --- Gramine --------------------------------------------------------------------------------------------------


@dataclass
class FakeGramine(OsFilesystem):
    """Gramine's /dev/attestation on a temporary directory."""

    root: Path
    attestation_type: str = "dcap"
    quote_for: Callable[[bytes], bytes] = sgx_quote
    interloper: int = 0  # the next N quote reads: another thread wrote user_report_data in between
    write_errno: int | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True)
        (self.root / "attestation_type").write_text(f"{self.attestation_type}\n")
        (self.root / "user_report_data").write_bytes(bytes(64))
        (self.root / "quote").write_bytes(self.quote_for(bytes(64)))

    def write(self, path: Path, data: bytes) -> None:
        self.events.append(("write", path.name))
        assert path.name == "user_report_data" and len(data) == 64, (path, len(data))
        if self.write_errno is not None:
            raise OSError(self.write_errno, os.strerror(self.write_errno), str(path))
        super().write(path, data)
        (self.root / "quote").write_bytes(self.quote_for(data))

    def read(self, path: Path, limit: int) -> bytes:
        self.events.append(("read", path.name))
        if path.name == "quote" and self.interloper:
            self.interloper -= 1
            (self.root / "quote").write_bytes(self.quote_for(b"\x77" * 64))
        return super().read(path, limit)


def gramine(fake: FakeGramine, *, attempts: int = 3) -> GramineDevAttestation:
    return GramineDevAttestation(
        root=fake.root, fs=fake, retry=Retry(attempts=attempts, sleep=Sleeps()), clock=lambda: 2.0
    )


def collect(src: GramineDevAttestation | ConfigfsTsm, report_data: bytes = REPORT_DATA) -> EvidenceEnvelope:
    return src.collect(report_data, audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_gramine_quote(tmp_path: Path, version: int) -> None:
    fake = FakeGramine(tmp_path / "attestation", quote_for=lambda rd: sgx_quote(rd, version=version))
    env = collect(gramine(fake))
    assert (env.platform, env.format, env.endorsements, env.collected_at_ms) == (
        "sgx-dcap", "intel-dcap-quote", (), 2000
    )
    assert env.evidence == sgx_quote(REPORT_DATA, version=version)
    assert fake.events == [("read", "attestation_type"), ("write", "user_report_data"), ("read", "quote")]
    assert (tmp_path / "attestation" / "user_report_data").read_bytes() == REPORT_DATA


@pytest.mark.parametrize(
    ("kind", "message"),
    [("none", r"without remote attestation .*sgx\.remote_attestation = \"dcap\""),
     ("epid", "EPID attestation, which is retired"),
     ("sev", "unsupported Gramine attestation_type 'sev'")],
)
def test_gramine_wrong_attestation_type(tmp_path: Path, kind: str, message: str) -> None:
    fake = FakeGramine(tmp_path / "attestation", attestation_type=kind)
    with pytest.raises(EvidenceUnavailable, match=message):
        collect(gramine(fake))
    assert ("write", "user_report_data") not in fake.events


def test_gramine_quote_for_another_report_data_is_retried(tmp_path: Path) -> None:
    fake = FakeGramine(tmp_path / "attestation", interloper=1)
    assert collect(gramine(fake)).evidence == sgx_quote(REPORT_DATA)
    assert fake.events.count(("write", "user_report_data")) == 2
    fake.interloper = 100
    with pytest.raises(EvidenceUnavailable, match=r"failed 3 times in a row: .*evidence for another report_data"):
        collect(gramine(fake))


@pytest.mark.parametrize(
    ("quote_for", "message"),
    [
        (lambda rd: b"", "is empty: Gramine produced no quote"),
        (lambda rd: sgx_quote(rd)[:300], "truncated SGX quote"),
        (lambda rd: sgx_quote(rd)[:20], "too short for an Intel DCAP quote"),
        (lambda rd: sgx_quote(rd, version=4, tee_type=0x81), r"TEE type 0x81, not a SGX quote"),
        (lambda rd: sgx_quote(rd, version=2), "DCAP quote of version 2"),
        (lambda rd: sgx_quote(rd) + bytes(40 * 1024), "more than 32768"),
    ],
)
def test_gramine_unusable_quotes(tmp_path: Path, quote_for: Callable[[bytes], bytes], message: str) -> None:
    fake = FakeGramine(tmp_path / "attestation", quote_for=quote_for)
    with pytest.raises(EvidenceUnavailable, match=message):
        collect(gramine(fake))


def test_gramine_write_refused(tmp_path: Path) -> None:
    fake = FakeGramine(tmp_path / "attestation", write_errno=errno.EACCES)
    with pytest.raises(EvidenceUnavailable, match="failed writing user_report_data: EACCES"):
        collect(gramine(fake))
    fake.write_errno = errno.EBUSY
    with pytest.raises(EvidenceUnavailable, match="failed 3 times in a row: Gramine /dev/attestation is busy"):
        collect(gramine(fake))


def test_gramine_missing(tmp_path: Path) -> None:
    src = GramineDevAttestation(root=tmp_path / "nothing", retry=Retry(attempts=1))
    with pytest.raises(EvidenceUnavailable, match="attestation_type does not exist"):
        collect(src)


# --- the AMD certificate table ---------------------------------------------------------------------------------


def test_cert_table_round_trip_and_mixed_endian_guids(sim_authority: SimulationAuthority) -> None:
    table = build_cert_table([(VCEK_GUID, b"vcek"), (ASK_GUID, b"ask"), (uuid.UUID(int=9), b"other")])
    assert parse_cert_table(table) == {VCEK_GUID: b"vcek", ASK_GUID: b"ask", uuid.UUID(int=9): b"other"}
    # a host that writes GUIDs Microsoft-style (first three fields little-endian)
    le = bytearray(table)
    le[0:16] = VCEK_GUID.bytes_le
    assert parse_cert_table(bytes(le))[VCEK_GUID] == b"vcek"
    assert parse_cert_table(b"") == {} and parse_cert_table(bytes(4096)) == {}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (struct.pack("<16sII", VCEK_GUID.bytes, 48, 4), "no all-zero terminating entry"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 10, 4) + bytes(24) + b"xxxx", "outside the certificate area"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 48, 100) + bytes(24) + b"xxxx", "outside the certificate area"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 72, 1) * 2 + bytes(24) + b"x", "listed twice"),
        (b"".join(struct.pack("<16sII", uuid.UUID(int=i + 1).bytes, 0, 0) for i in range(33)) + bytes(24),
         "more than 32 entries"),
    ],
)
def test_malformed_cert_tables(table: bytes, message: str) -> None:
    with pytest.raises(EvidenceUnavailable, match=message):
        parse_cert_table(table)


def test_pem_entries_become_der_and_certificate_dir(tmp_path: Path, sim_authority: SimulationAuthority) -> None:
    pem = sim_authority.vcek_cert.public_bytes(Encoding.PEM)
    table = build_cert_table([(VCEK_GUID, pem), (ARK_GUID, sim_authority.ark_der)])
    report = bytes(0x4A0)
    endorsed = snp_endorsements(table, report)
    assert [(e.role, e.data) for e in endorsed] == [("vcek", sim_authority.vcek_der), ("ark", sim_authority.ark_der)]
    with pytest.raises(EvidenceUnavailable, match="VCEK certificate is PEM that does not parse"):
        snp_endorsements(build_cert_table([(VCEK_GUID, b"-----BEGIN CERTIFICATE-----\nAAAA\n")]), report)

    (tmp_path / "vcek.pem").write_bytes(pem)
    (tmp_path / "ask.der").write_bytes(sim_authority.ask_der)
    loaded = load_certificate_dir(tmp_path)
    assert [(e.role, e.data) for e in loaded] == [("vcek", sim_authority.vcek_der), ("ask", sim_authority.ask_der)]
    (tmp_path / "ark.der").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=r"ark\.der is not an X\.509 certificate"):
        load_certificate_dir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_certificate_dir(tmp_path / "missing")


# --- shared pieces ---------------------------------------------------------------------------------------------


def test_iowr_encoding() -> None:
    assert iowr(ord("S"), 0, 32) == 0xC0205300
    assert iowr(0x0A, 0, 32) == 0xC0200A00
    with pytest.raises(ValueError, match="out of range"):
        iowr(0x100, 0, 32)


def test_retry_is_bounded_and_backs_off() -> None:
    sleeps = Sleeps()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise Transient(f"busy #{len(attempts)}")
        return "ok"

    assert Retry(attempts=5, delay_s=0.5, sleep=sleeps).run(flaky, what="x") == "ok"
    assert sleeps.calls == [0.5, 1.0]
    calls: list[int] = []

    def busy() -> str:
        calls.append(1)
        raise Transient(f"busy #{len(calls)}")

    with pytest.raises(EvidenceUnavailable, match="doing it failed 2 times in a row: busy #2"):
        Retry(attempts=2, sleep=sleeps).run(busy, what="doing it")
    assert len(calls) == 2
    with pytest.raises(ValueError, match="at least 1"):
        Retry(attempts=0)


# --- the selector -----------------------------------------------------------------------------------------------


@dataclass
class TsmRoot(OsFilesystem):
    """Just enough of configfs-tsm for the selector's probe: mkdir populates ``provider``."""

    provider: str = "sev_guest"
    mkdir_errno: int | None = None
    made: list[str] = field(default_factory=list)

    def mkdir(self, path: Path) -> None:
        if self.mkdir_errno is not None:
            raise OSError(self.mkdir_errno, os.strerror(self.mkdir_errno), str(path))
        super().mkdir(path)
        self.made.append(path.name)
        (path / "provider").write_text(f"{self.provider}\n")

    def rmdir(self, path: Path) -> None:
        (path / "provider").unlink()
        super().rmdir(path)


def machine(tmp_path: Path, *present: str, gramine_type: str = "dcap") -> HardwarePaths:
    """A fake machine under ``tmp_path`` with only the ``present`` interfaces."""
    paths = HardwarePaths(
        configfs_tsm=tmp_path / "sys/kernel/config/tsm/report", sev_guest=tmp_path / "dev/sev-guest",
        gramine=tmp_path / "dev/attestation", nsm=tmp_path / "dev/nsm",
    )
    (tmp_path / "dev").mkdir(exist_ok=True)
    if "configfs-tsm" in present:
        paths.configfs_tsm.mkdir(parents=True)
    if "sev-guest" in present:
        paths.sev_guest.write_bytes(b"")
    if "gramine" in present:
        paths.gramine.mkdir()
        (paths.gramine / "attestation_type").write_text(f"{gramine_type}\n")
    if "nitro-nsm" in present:
        paths.nsm.write_bytes(b"")
    return paths


def test_nothing_present_lists_everything_looked_for(tmp_path: Path) -> None:
    paths = machine(tmp_path)
    with pytest.raises(EvidenceUnavailable) as info:
        select_provider(paths=paths, environ={})
    text = str(info.value)
    for name in PROVIDER_NAMES:
        assert f"[{name}]" in text
    for path in (paths.configfs_tsm, paths.sev_guest, paths.gramine / "attestation_type", paths.nsm):
        assert f"{path} does not exist" in text
    assert "SIMULATION" in text  # points the user at the simulated kernel instead of silently using it


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (("configfs-tsm", "sev-guest", "gramine", "nitro-nsm"), ConfigfsTsm),
        (("sev-guest", "gramine", "nitro-nsm"), SevGuestIoctl),
        (("gramine", "nitro-nsm"), GramineDevAttestation),
        (("nitro-nsm",), NitroNsm),
    ],
)
def test_documented_order(tmp_path: Path, present: tuple[str, ...], chosen: type) -> None:
    fs = TsmRoot()
    src = select_provider(paths=machine(tmp_path, *present), fs=fs, environ={})
    assert type(src) is chosen
    assert not isinstance(src, SimulatedSource)
    if chosen is ConfigfsTsm:  # the probe created and removed one entry, generating nothing
        assert len(fs.made) == 1 and list(machine_root(tmp_path).iterdir()) == []


def machine_root(tmp_path: Path) -> Path:
    return tmp_path / "sys/kernel/config/tsm/report"


def test_unusable_interfaces_are_skipped_with_their_reason(tmp_path: Path) -> None:
    paths = machine(tmp_path, "configfs-tsm", "gramine", gramine_type="none")
    with pytest.raises(EvidenceUnavailable) as info:
        select_provider(paths=paths, fs=TsmRoot(mkdir_errno=errno.ENXIO), environ={})
    text = str(info.value)
    assert "no TSM provider is registered" in text
    assert "attestation_type 'none'" in text
    # the same machine with a working /dev/nsm: configfs-tsm and Gramine are passed over, NSM chosen
    paths.nsm.write_bytes(b"")
    assert isinstance(select_provider(paths=paths, fs=TsmRoot(mkdir_errno=errno.ENXIO), environ={}), NitroNsm)


def test_unsupported_tsm_provider_is_skipped(tmp_path: Path) -> None:
    paths = machine(tmp_path, "configfs-tsm", "sev-guest")
    src = select_provider(paths=paths, fs=TsmRoot(provider="arm_cca_guest"), environ={})
    assert isinstance(src, SevGuestIoctl)


def test_forced_provider_is_used_or_refused_never_replaced(tmp_path: Path) -> None:
    paths = machine(tmp_path, "configfs-tsm", "nitro-nsm")
    assert isinstance(select_provider("nitro-nsm", paths=paths, fs=TsmRoot(), environ={}), NitroNsm)
    refused = r"'sev-guest' was requested but is not usable here: .*does not exist"
    with pytest.raises(EvidenceUnavailable, match=refused):
        select_provider("sev-guest", paths=paths, fs=TsmRoot(), environ={})
    # from the environment, as the enclave process would be configured
    env = {"CC_KERNEL_EVIDENCE_PROVIDER": "nitro-nsm"}
    assert isinstance(select_provider(paths=paths, fs=TsmRoot(), environ=env), NitroNsm)
    assert isinstance(select_provider("auto", paths=paths, fs=TsmRoot(), environ=env), ConfigfsTsm)
    with pytest.raises(ConfigError, match="unknown evidence provider 'simulation'"):
        select_provider("simulation", paths=paths, environ={})


def test_snp_certificate_dir_from_the_environment(tmp_path: Path, sim_authority: SimulationAuthority) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "vcek.der").write_bytes(sim_authority.vcek_der)
    paths = machine(tmp_path, "sev-guest")
    src = select_provider(paths=paths, environ={"CC_KERNEL_SNP_CERTS_DIR": str(certs)})
    assert isinstance(src, SevGuestIoctl)
    assert [(e.role, e.data) for e in src.snp_certificates] == [("vcek", sim_authority.vcek_der)]
    with pytest.raises(ConfigError, match="does not exist"):
        select_provider(paths=paths, environ={"CC_KERNEL_SNP_CERTS_DIR": str(tmp_path / "none")})


def test_unopenable_device_is_reported(tmp_path: Path) -> None:
    paths = machine(tmp_path, "sev-guest")
    paths.sev_guest.unlink()
    paths.sev_guest.mkdir()  # exists, but opening it read-write fails (EISDIR), as a root-only device would (EACCES)
    with pytest.raises(EvidenceUnavailable, match="exists but cannot be opened: EISDIR"):
        select_provider(paths=paths, environ={})


def test_selector_looks_where_the_kernel_says_hardware_lives() -> None:
    """The kernel names HARDWARE_INTERFACES when a machine has no TEE; the selector looks at the same places."""
    paths = HardwarePaths()
    assert {path for _name, path in HARDWARE_INTERFACES} == {
        str(paths.configfs_tsm), str(paths.sev_guest), str(paths.gramine / "quote"), str(paths.nsm)
    }


def test_detect_hardware_source_on_this_machine_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    if any(Path(path).exists() for _name, path in HARDWARE_INTERFACES):
        pytest.skip("this machine has a TEE interface")
    monkeypatch.delenv("CC_KERNEL_EVIDENCE_PROVIDER", raising=False)
    with pytest.raises(EvidenceUnavailable, match="no TEE evidence provider works on this machine"):
        detect_hardware_source()
    with pytest.raises(EvidenceUnavailable, match="'gramine' was requested"):
        evidence.detect_hardware_source("gramine")
