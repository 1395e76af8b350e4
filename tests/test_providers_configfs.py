"""configfs-tsm provider against a fake of the kernel interface built on a temporary directory.

The fake (``FakeTsm``) does the real file I/O of ``OsFilesystem`` on a temporary tree and adds what the kernel
does around it (Documentation/ABI/testing/configfs-tsm-report): ``mkdir`` populates the attribute files,
every accepted write to ``inblob``/``privlevel`` advances ``generation``, reading ``outblob``/``auxblob``
generates the report for the current inblob, ``rmdir`` removes the entry with its attributes. Knobs inject
what real systems do: EBUSY, a concurrent writer, a silently refused inblob write (configfs ignores errors
when it commits a binary attribute), odd sizes. For ``sev_guest`` the outblob is a byte-exact SEV-SNP report
signed by the simulated authority, so the envelope is verified end to end by the real verifier.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import SIM_CREATED_AT

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.envelope import Endorsement, EvidenceEnvelope, encode_envelope, parse_envelope_unverified
from cc_kernel.attestation.platforms import sev_snp
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.crypto.keys import new_tls_key, spki_der_of_key
from cc_kernel.enclave.providers.amd_certs import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID
from cc_kernel.enclave.providers.base import OsFilesystem, Retry
from cc_kernel.enclave.providers.configfs_tsm import ConfigfsTsm, probe_configfs_tsm
from cc_kernel.errors import ConfigError, EvidenceUnavailable, UntrustedRoot
from cc_kernel.testing.providers import build_cert_table

MEASUREMENT = bytes(range(48))
AUDIT_PUB = b"\xa1" * 32
SESSION_ID = b"\x5e" * 16
NONCE = b"\x90" * 32
NOW = SIM_CREATED_AT + timedelta(days=30)

Answer = Callable[[bytes, int | None], tuple[bytes, bytes]]


@dataclass
class FakeTsm(OsFilesystem):
    """configfs-tsm ``report`` subsystem on a temporary directory (see the module docstring)."""

    root: Path
    provider: str
    answer: Answer
    privlevel_floor: int = 0
    busy_reads: int = 0  # the next N outblob reads fail with EBUSY
    race_reads: int = 0  # before the next N outblob reads, another process writes its own inblob
    drop_inblob: int = 0  # the next N inblob writes are refused by the TSM (generation does not move)
    fail_outblob: int | None = None  # errno for every outblob read
    mkdir_errno: int | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    _generated: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------------------
    def _generation(self, entry: Path) -> int:
        return int((entry / "generation").read_text())

    def _bump(self, entry: Path) -> None:
        (entry / "generation").write_text(f"{self._generation(entry) + 1}\n")

    def _attributes(self) -> tuple[str, ...]:
        if self.provider == "sev_guest":
            return ("inblob", "outblob", "auxblob", "privlevel", "privlevel_floor")
        return ("inblob", "outblob")

    # -- the file operations the provider uses ---------------------------------------------------------
    def mkdir(self, path: Path) -> None:
        assert path.parent == self.root, f"entries are created directly under the report root, not {path}"
        if self.mkdir_errno is not None:
            raise OSError(self.mkdir_errno, os.strerror(self.mkdir_errno), str(path))
        super().mkdir(path)
        self.events.append(("mkdir", path.name))
        (path / "provider").write_text(f"{self.provider}\n")
        (path / "generation").write_text("0\n")
        for name in self._attributes():
            (path / name).write_bytes(b"")
        if self.provider == "sev_guest":
            (path / "privlevel_floor").write_text(f"{self.privlevel_floor}\n")

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():  # configfs removes the attributes with the item
            child.unlink()
        super().rmdir(path)
        self.events.append(("rmdir", path.name))

    def write(self, path: Path, data: bytes) -> None:
        entry, name = path.parent, path.name
        self.events.append(("write", name))
        if name == "inblob":
            if len(data) > 64:
                raise OSError(errno.EINVAL, "inblob too large", str(path))
            if self.drop_inblob:
                self.drop_inblob -= 1
                return  # committed at close, the TSM's error ignored: nothing changes
        elif name == "privlevel":
            level = int(data.decode("ascii").strip())
            if not self.privlevel_floor <= level <= 3:
                raise OSError(errno.EINVAL, "privlevel out of range", str(path))
        else:
            raise OSError(errno.EACCES, "read-only attribute", str(path))
        super().write(path, data)
        self._bump(entry)

    def read(self, path: Path, limit: int) -> bytes:
        entry, name = path.parent, path.name
        self.events.append(("read", name))
        if name in ("inblob", "privlevel"):
            raise OSError(errno.EACCES, "write-only attribute", str(path))
        if name in ("outblob", "auxblob"):
            if name == "outblob" and self.fail_outblob is not None:
                raise OSError(self.fail_outblob, os.strerror(self.fail_outblob), str(path))
            if name == "outblob" and self.busy_reads:
                self.busy_reads -= 1
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
            if name == "outblob" and self.race_reads:
                self.race_reads -= 1
                (entry / "inblob").write_bytes(b"\xee" * 64)  # another process's request
                self._bump(entry)
            self._generate(entry)
        return super().read(path, limit)

    def _generate(self, entry: Path) -> None:
        generation = self._generation(entry)
        if self._generated.get(entry.name) == generation:
            return
        inblob = (entry / "inblob").read_bytes().ljust(64, b"\x00")  # the provider zero-pads inblob
        raw_level = (entry / "privlevel").read_bytes() if (entry / "privlevel").exists() else b""
        level = int(raw_level.decode().strip()) if raw_level.strip() else None
        outblob, auxblob = self.answer(inblob, level)
        (entry / "outblob").write_bytes(outblob)
        if (entry / "auxblob").exists():
            (entry / "auxblob").write_bytes(auxblob)
        self._generated[entry.name] = generation

    # -- what tests look at ----------------------------------------------------------------------------
    def count(self, op: str, name: str | None = None) -> int:
        return sum(1 for o, n in self.events if o == op and (name is None or n == name))

    def leftover_entries(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def snp_answer(authority: SimulationAuthority, *, table: bytes | None = None, signing_key: int = 0) -> Answer:
    def answer(inblob: bytes, privlevel: int | None) -> tuple[bytes, bytes]:
        report = sign_report(
            authority, report_data=inblob, measurement=MEASUREMENT, vmpl=privlevel or 0, signing_key=signing_key
        )
        certs = table if table is not None else build_cert_table(
            [(VCEK_GUID, authority.vcek_der), (ASK_GUID, authority.ask_der), (ARK_GUID, authority.ark_der)]
        )
        return report, certs

    return answer


def tdx_quote(report_data: bytes, *, version: int = 4, tee_type: int = 0x81) -> bytes:
    """A structurally faithful TDX DCAP quote (header, TD report body, signature data); not signed."""
    header = struct.pack("<HHI", version, 2, tee_type) + bytes(4) + bytes.fromhex(
        "939a7233f79c4ca9940a0db3957f0607"
    ) + bytes(20)
    body = bytearray(584)
    body[520:584] = report_data
    prefix = struct.pack("<HI", 2, len(body)) if version == 5 else b""
    signature_data = bytes(128) + struct.pack("<HI", 6, 0)
    return header + prefix + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


def source(fake: FakeTsm, *, attempts: int = 3, sleeps: Sleeps | None = None, **kwargs: object) -> ConfigfsTsm:
    return ConfigfsTsm(
        root=fake.root, fs=fake, retry=Retry(attempts=attempts, delay_s=0.05, sleep=sleeps or Sleeps()),
        clock=lambda: 1_700_000_000.25, **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def binding() -> tuple[bytes, bytes]:
    spki = spki_der_of_key(new_tls_key())
    return spki, expected_report_data(tls_spki=spki, audit_pub=AUDIT_PUB, nonce=NONCE, session_id=SESSION_ID)


def collect(src: ConfigfsTsm, report_data: bytes) -> EvidenceEnvelope:
    return src.collect(report_data, audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)


# --- SEV-SNP through configfs-tsm, verified end to end -------------------------------------------------------


def test_snp_envelope_verifies_end_to_end(
    tmp_path: Path, sim_authority: SimulationAuthority, sim_anchors: TrustAnchors, hw_anchors: TrustAnchors,
    binding: tuple[bytes, bytes],
) -> None:
    spki, report_data = binding
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority))
    env = source(fake).collect(report_data, audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)

    assert (env.platform, env.format) == ("sev-snp", "amd-snp-report")
    assert [(e.kind, e.role) for e in env.endorsements] == [
        ("x509-der", "vcek"), ("x509-der", "ask"), ("x509-der", "ark")
    ]
    assert [e.data for e in env.endorsements] == [sim_authority.vcek_der, sim_authority.ask_der, sim_authority.ark_der]
    assert (env.audit_pub, env.session_id, env.nonce) == (AUDIT_PUB, SESSION_ID, NONCE)
    assert env.collected_at_ms == 1_700_000_000_250
    assert env.extra_claims == {"evidence_provider": "configfs-tsm/sev_guest"}
    # one entry, written once, generation checked, removed
    assert (fake.count("mkdir"), fake.count("write", "inblob"), fake.count("rmdir")) == (1, 1, 1)
    assert fake.count("read", "generation") == 3
    assert fake.leftover_entries() == []

    # the kernel's verifier: the SNP parser, chain and signature code; the label comes from the anchor
    wire = parse_envelope_unverified(encode_envelope(env))
    verified = verify_evidence(wire, anchors=hw_anchors, now=NOW, simulation_anchors=sim_anchors)
    assert verified.platform == "simulation"  # the envelope claimed sev-snp; the simulation ARK verified it
    assert verified.report_data == report_data
    check_binding(
        verified, tls_spki=spki, audit_pub=AUDIT_PUB, nonce=NONCE, session_id=SESSION_ID, claimed_nonce=wire.nonce
    )
    direct = sev_snp.verify_report(
        env.evidence, vek_der=env.endorsements[0].data, ask_der=env.endorsements[1].data,
        ark_der=env.endorsements[2].data, anchors=sim_anchors, now=NOW,
    )
    assert direct.measurement == MEASUREMENT


def test_snp_evidence_is_rejected_as_hardware_without_simulation_anchors(
    tmp_path: Path, sim_authority: SimulationAuthority, hw_anchors: TrustAnchors, binding: tuple[bytes, bytes]
) -> None:
    """The provider's platform claim does not make simulated bytes hardware: the verifier refuses them."""
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority))
    env = source(fake).collect(binding[1], audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)
    with pytest.raises(UntrustedRoot):
        verify_evidence(env, anchors=hw_anchors, now=NOW)


def test_vlek_signed_report_maps_the_ask_guid_to_asvk(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    table = build_cert_table(
        [(VLEK_GUID, b"vlek-der"), (ASK_GUID, b"asvk-der"), (ARK_GUID, b"ark-der"), (VCEK_GUID, b"")]
    )
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority, table=table, signing_key=1))
    env = source(fake).collect(binding[1], audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)
    assert [(e.role, e.data) for e in env.endorsements] == [
        ("vlek", b"vlek-der"), ("asvk", b"asvk-der"), ("ark", b"ark-der")
    ]


def test_operator_certificates_fill_roles_the_host_table_lacks(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    table = build_cert_table([(ARK_GUID, b"host-ark")])
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority, table=table))
    extra = (
        Endorsement(kind="x509-der", role="vcek", data=b"local-vcek"),
        Endorsement(kind="x509-der", role="ark", data=b"local-ark"),
    )
    env = source(fake, snp_certificates=extra).collect(
        binding[1], audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE
    )
    assert [(e.role, e.data) for e in env.endorsements] == [("vcek", b"local-vcek"), ("ark", b"host-ark")]


def test_privlevel_is_written_and_counted_in_the_generation(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority))
    env = source(fake, privlevel=2).collect(binding[1], audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)
    assert sev_snp.parse_report_unverified(env.evidence).vmpl == 2
    assert fake.count("write", "privlevel") == 1
    assert fake.leftover_entries() == []


def test_privlevel_below_the_floor_is_a_configuration_error(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), privlevel_floor=2)
    with pytest.raises(ConfigError, match="privlevel 1: below this guest's privlevel_floor 2"):
        collect(source(fake, privlevel=1), binding[1])
    assert fake.leftover_entries() == []
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        source(fake, privlevel=4)


# --- TDX ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_tdx_quote_travels_unchanged(tmp_path: Path, binding: tuple[bytes, bytes], version: int) -> None:
    fake = FakeTsm(tmp_path / "report", "tdx_guest", lambda inblob, _lvl: (tdx_quote(inblob, version=version), b""))
    env = source(fake).collect(binding[1], audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)
    assert (env.platform, env.format, env.endorsements) == ("tdx", "intel-dcap-quote", ())
    assert env.evidence == tdx_quote(binding[1], version=version)
    assert fake.count("read", "auxblob") == 0  # no certificate table for TDX
    assert fake.leftover_entries() == []


def test_tdx_provider_answering_an_sgx_quote_is_refused(tmp_path: Path, binding: tuple[bytes, bytes]) -> None:
    fake = FakeTsm(tmp_path / "report", "tdx_guest", lambda inblob, _lvl: (tdx_quote(inblob, tee_type=0), b""))
    with pytest.raises(EvidenceUnavailable, match="TEE type 0x0, not a TDX quote"):
        collect(source(fake), binding[1])
    assert fake.leftover_entries() == []


# --- busy, races, refused writes --------------------------------------------------------------------------------


def test_busy_then_success_retries_with_fresh_entries(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), busy_reads=2)
    sleeps = Sleeps()
    env = source(fake, attempts=3, sleeps=sleeps).collect(
        binding[1], audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE
    )
    assert sev_snp.parse_report_unverified(env.evidence).report_data == binding[1]
    assert sleeps.calls == [0.05, 0.1]
    assert (fake.count("mkdir"), fake.count("rmdir")) == (3, 3)
    assert fake.leftover_entries() == []


def test_busy_forever_is_a_clear_error(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), busy_reads=100)
    with pytest.raises(EvidenceUnavailable, match=r"failed 3 times in a row: configfs-tsm is busy: EBUSY"):
        collect(source(fake, attempts=3), binding[1])
    assert (fake.count("mkdir"), fake.count("rmdir")) == (3, 3)
    assert fake.leftover_entries() == []


def test_generation_race_is_detected_and_retried(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), race_reads=1)
    env = collect(source(fake), binding[1])
    assert sev_snp.parse_report_unverified(env.evidence).report_data == binding[1]
    assert (fake.count("mkdir"), fake.count("rmdir")) == (2, 2)


def test_generation_race_every_time_names_the_race(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), race_reads=100)
    with pytest.raises(EvidenceUnavailable, match=r"another writer raced .*generation is 2, expected 1"):
        collect(source(fake, attempts=4), binding[1])
    assert fake.count("rmdir") == 4
    assert fake.leftover_entries() == []


def test_a_refused_inblob_write_is_seen_through_the_generation(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), drop_inblob=100)
    with pytest.raises(EvidenceUnavailable, match=r"write was not accepted .*generation 0, expected 1"):
        collect(source(fake), binding[1])
    assert fake.count("read", "outblob") == 0  # never read a report for an inblob that did not land
    assert fake.leftover_entries() == []


def test_outblob_answering_another_report_data_is_not_returned(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    """Even with a consistent generation, a report for other REPORT_DATA never becomes our evidence."""
    stale = snp_answer(sim_authority)(b"\x01" * 64, None)
    fake = FakeTsm(tmp_path / "report", "sev_guest", lambda _inblob, _lvl: stale)
    with pytest.raises(EvidenceUnavailable, match="evidence for another report_data"):
        collect(source(fake), binding[1])
    assert fake.leftover_entries() == []


# --- other failures: the entry is removed every time ----------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "message"),
    [(1000, "1000 bytes; an SEV-SNP attestation report is exactly 1184"),
     (1185, "1185 bytes; an SEV-SNP attestation report is exactly 1184"),
     (40 * 1024, "outblob is larger than 32768 bytes"),
     (0, "0 bytes; an SEV-SNP")],
)
def test_wrong_size_outblob(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes], size: int, message: str
) -> None:
    def answer(inblob: bytes, lvl: int | None) -> tuple[bytes, bytes]:
        report, table = snp_answer(sim_authority)(inblob, lvl)
        return (report + bytes(size))[:size], table

    fake = FakeTsm(tmp_path / "report", "sev_guest", answer)
    with pytest.raises(EvidenceUnavailable, match=message):
        collect(source(fake), binding[1])
    assert fake.leftover_entries() == []


@pytest.mark.parametrize(
    ("code", "message"),
    [(errno.EIO, "failed reading outblob: EIO"), (errno.EFBIG, "exceeds the kernel's maximum size")],
)
def test_io_errors_are_named_and_the_entry_removed(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes], code: int, message: str
) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority), fail_outblob=code)
    with pytest.raises(EvidenceUnavailable, match=message):
        collect(source(fake), binding[1])
    assert fake.count("mkdir") == 1  # not retried: only busy and races are
    assert fake.leftover_entries() == []


def test_unknown_tsm_provider(tmp_path: Path, binding: tuple[bytes, bytes]) -> None:
    fake = FakeTsm(tmp_path / "report", "arm_cca_guest", lambda inblob, _lvl: (b"x", b""))
    with pytest.raises(EvidenceUnavailable, match="provider 'arm_cca_guest' is not supported"):
        collect(source(fake), binding[1])
    assert fake.count("write") == 0
    assert fake.leftover_entries() == []


def test_no_registered_tsm_provider(tmp_path: Path, binding: tuple[bytes, bytes]) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", lambda inblob, _lvl: (b"", b""), mkdir_errno=errno.ENXIO)
    with pytest.raises(EvidenceUnavailable, match=r"ENXIO .*no TSM provider is registered"):
        collect(source(fake), binding[1])
    provider, reason = probe_configfs_tsm(fake.root, fake)
    assert provider is None and "no TSM provider is registered" in reason


def test_malformed_certificate_table_blames_the_host(
    tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    table = struct.pack("<16sII", VCEK_GUID.bytes, 48, 5000) + bytes(24)  # points past the end
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority, table=table))
    with pytest.raises(EvidenceUnavailable, match="host's SEV-SNP certificate table is malformed"):
        collect(source(fake), binding[1])
    assert fake.leftover_entries() == []


def test_report_data_must_be_64_bytes(tmp_path: Path, sim_authority: SimulationAuthority) -> None:
    fake = FakeTsm(tmp_path / "report", "sev_guest", snp_answer(sim_authority))
    with pytest.raises(ValueError, match="64 bytes"):
        collect(source(fake), b"\x00" * 32)
    assert fake.count("mkdir") == 0


def test_probe_reads_the_provider_and_leaves_nothing(tmp_path: Path, sim_authority: SimulationAuthority) -> None:
    fake = FakeTsm(tmp_path / "report", "tdx_guest", lambda inblob, _lvl: (b"", b""))
    assert probe_configfs_tsm(fake.root, fake) == ("tdx_guest", "")
    assert fake.count("write") == 0 and fake.count("read", "outblob") == 0
    assert fake.leftover_entries() == []
    assert probe_configfs_tsm(tmp_path / "absent", fake) == (None, f"{tmp_path / 'absent'} does not exist")
