"""The ioctl providers (/dev/sev-guest, /dev/nsm) against fakes of their drivers.

Each fake is the injected ``ioctl(fd, request, arg)``: it checks the request code against the number the uapi
header defines, reads the argument structure as raw bytes (so the layout, not our field names, is what is
checked), follows the pointers in it to the request, and writes the response into our buffers — as the driver
would. The SEV-SNP fake answers with byte-exact reports signed by the simulated authority, verified end to end.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from conftest import SIM_CREATED_AT
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

from cc_kernel.attestation.anchors import TrustAnchors
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.envelope import EvidenceEnvelope, encode_envelope, parse_envelope_unverified
from cc_kernel.attestation.platforms import sev_snp
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, sign_report
from cc_kernel.attestation.verify import verify_evidence
from cc_kernel.crypto.keys import new_tls_key, spki_der_of_key
from cc_kernel.enclave.providers.amd_certs import ARK_GUID, ASK_GUID, VCEK_GUID
from cc_kernel.enclave.providers.base import Retry
from cc_kernel.enclave.providers.nitro_nsm import NSM_IOCTL_RAW, NitroNsm, NsmRaw
from cc_kernel.enclave.providers.sev_guest import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    SevGuestIoctl,
    SnpExtReportReq,
    SnpGuestRequestIoctl,
    SnpReportReq,
    SnpReportResp,
)
from cc_kernel.errors import ConfigError, EvidenceUnavailable
from cc_kernel.testing.providers import build_cert_table

MEASUREMENT = bytes(range(48))
AUDIT_PUB = b"\xa1" * 32
SESSION_ID = b"\x5e" * 16
NONCE = b"\x90" * 32
NOW = SIM_CREATED_AT + timedelta(days=30)
PAGE = mmap.PAGESIZE

# The numbers as the uapi headers define them on x86-64 / arm64 (not computed by our helper).
UAPI_SNP_GET_REPORT = 0xC0205300  # _IOWR('S', 0x0, struct snp_guest_request_ioctl)
UAPI_SNP_GET_EXT_REPORT = 0xC0205302  # _IOWR('S', 0x2, struct snp_guest_request_ioctl)
UAPI_NSM_IOCTL_RAW = 0xC0200A00  # _IOWR(0x0A, 0x0, struct nsm_raw)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def binding() -> tuple[bytes, bytes]:
    spki = spki_der_of_key(new_tls_key())
    return spki, expected_report_data(tls_spki=spki, audit_pub=AUDIT_PUB, nonce=NONCE, session_id=SESSION_ID)


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """Something os.open(O_RDWR) can open: the fake ioctl is what answers."""
    path = tmp_path / "dev"
    path.write_bytes(b"")
    return path


def test_uapi_numbers_and_struct_sizes() -> None:
    assert (SNP_GET_REPORT, SNP_GET_EXT_REPORT, NSM_IOCTL_RAW) == (
        UAPI_SNP_GET_REPORT, UAPI_SNP_GET_EXT_REPORT, UAPI_NSM_IOCTL_RAW
    )
    sizes = [ctypes.sizeof(t) for t in (SnpGuestRequestIoctl, SnpReportReq, SnpExtReportReq, SnpReportResp, NsmRaw)]
    assert sizes == [32, 96, 112, 4000, 32]


# --- /dev/sev-guest ------------------------------------------------------------------------------------------


@dataclass
class FakeSevGuest:
    """The sev-guest driver and the AMD secure processor behind SNP_GET_REPORT / SNP_GET_EXT_REPORT."""

    authority: SimulationAuthority
    table: bytes = b""
    fw_error: int = 0  # fail with this firmware error (EIO)
    vmm_error: int = 0  # fail with this hypervisor error (EIO)
    busy: int = 0  # the next N calls: hypervisor BUSY (EAGAIN)
    status: int = 0  # MSG_REPORT_RSP.status
    report_size: int | None = None  # MSG_REPORT_RSP.report_size override
    ext_unsupported: bool = False  # the kernel does not know SNP_GET_EXT_REPORT (ENOTTY)
    calls: list[int] = field(default_factory=list)
    vmpls: list[int] = field(default_factory=list)
    certs_lens: list[int] = field(default_factory=list)

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        self.calls.append(request)
        assert isinstance(fd, int) and fd >= 0
        if request not in (UAPI_SNP_GET_REPORT, UAPI_SNP_GET_EXT_REPORT):
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if request == UAPI_SNP_GET_EXT_REPORT and self.ext_unsupported:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        raw = memoryview(arg).cast("B")
        assert len(raw) == 32, "struct snp_guest_request_ioctl is 32 bytes"
        version, pad, req_addr, resp_addr, exitinfo2 = struct.unpack("<B7sQQQ", raw)
        assert (version, pad, exitinfo2) == (1, bytes(7), 0) and req_addr and resp_addr

        def fail(vmm: int, fw: int, code: int) -> None:
            raw[24:32] = struct.pack("<II", fw, vmm)  # exitinfo2: fw_error low, vmm_error high
            raise OSError(code, os.strerror(code))

        request_size = 96 if request == UAPI_SNP_GET_REPORT else 112
        req = ctypes.string_at(req_addr, request_size)
        user_data, vmpl, rsvd = struct.unpack_from("<64sI28s", req, 0)
        assert rsvd == bytes(28) and 0 <= vmpl <= 3
        self.vmpls.append(vmpl)
        if self.busy:
            self.busy -= 1
            fail(2, 0, errno.EAGAIN)
        if self.fw_error or self.vmm_error:
            fail(self.vmm_error, self.fw_error, errno.EIO)
        if request == UAPI_SNP_GET_EXT_REPORT:
            certs_addr, certs_len, tail = struct.unpack_from("<QI4s", req, 96)
            assert tail == bytes(4)
            assert certs_addr % PAGE == 0, "the certificate buffer must be page-aligned"
            assert certs_len % PAGE == 0 and 0 < certs_len <= 0x4000, certs_len
            self.certs_lens.append(certs_len)
            needed = -(-len(self.table) // PAGE) * PAGE
            if needed > certs_len:  # the kernel reports the size it needs in the caller's request
                ctypes.memmove(req_addr + 104, struct.pack("<I", needed), 4)
                fail(1, 0, errno.EIO)
            ctypes.memset(certs_addr, 0, certs_len)
            ctypes.memmove(certs_addr, self.table, len(self.table))
        report = sign_report(self.authority, report_data=user_data, measurement=MEASUREMENT, vmpl=vmpl)
        size = len(report) if self.report_size is None else self.report_size
        body = report if self.status == 0 else b""
        response = struct.pack("<II", self.status, size) + bytes(24) + body
        ctypes.memmove(resp_addr, response, len(response))
        return 0


def host_table(authority: SimulationAuthority) -> bytes:
    return build_cert_table(
        [(VCEK_GUID, authority.vcek_der), (ASK_GUID, authority.ask_der), (ARK_GUID, authority.ark_der)]
    )


def sev(
    fake: FakeSevGuest, device: Path, *, attempts: int = 3, sleeps: Sleeps | None = None, **kw: Any
) -> SevGuestIoctl:
    return SevGuestIoctl(
        device=device, ioctl=fake, retry=Retry(attempts=attempts, sleep=sleeps or Sleeps()),
        clock=lambda: 1_700_000_000.0, **kw,
    )


def snp_collect(src: SevGuestIoctl | NitroNsm, report_data: bytes) -> EvidenceEnvelope:
    return src.collect(report_data, audit_pub=AUDIT_PUB, session_id=SESSION_ID, nonce=NONCE)


def test_extended_report_verifies_end_to_end(
    device: Path, sim_authority: SimulationAuthority, sim_anchors: TrustAnchors, hw_anchors: TrustAnchors,
    binding: tuple[bytes, bytes],
) -> None:
    spki, report_data = binding
    fake = FakeSevGuest(sim_authority, table=host_table(sim_authority))
    env = snp_collect(sev(fake, device), report_data)

    assert fake.calls == [UAPI_SNP_GET_EXT_REPORT] and fake.vmpls == [0]
    assert (env.platform, env.format, env.collected_at_ms) == ("sev-snp", "amd-snp-report", 1_700_000_000_000)
    assert [e.role for e in env.endorsements] == ["vcek", "ask", "ark"]
    wire = parse_envelope_unverified(encode_envelope(env))
    verified = verify_evidence(wire, anchors=hw_anchors, now=NOW, simulation_anchors=sim_anchors)
    assert (verified.platform, verified.report_data) == ("simulation", report_data)
    check_binding(verified, tls_spki=spki, audit_pub=AUDIT_PUB, nonce=NONCE, session_id=SESSION_ID)
    sev_snp.verify_report(env.evidence, vek_der=sim_authority.vcek_der, anchors=sim_anchors, now=NOW)


def test_plain_report_has_no_host_certificates(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeSevGuest(sim_authority, table=host_table(sim_authority))
    env = snp_collect(sev(fake, device, extended=False, vmpl=1), binding[1])
    assert fake.calls == [UAPI_SNP_GET_REPORT] and fake.vmpls == [1]
    assert env.endorsements == ()
    assert sev_snp.parse_report_unverified(env.evidence).vmpl == 1


def test_kernel_without_ext_report_falls_back_once(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeSevGuest(sim_authority, ext_unsupported=True)
    src = sev(fake, device)
    snp_collect(src, binding[1])
    snp_collect(src, binding[1])
    assert fake.calls == [UAPI_SNP_GET_EXT_REPORT, UAPI_SNP_GET_REPORT, UAPI_SNP_GET_REPORT]


def test_certificate_buffer_grows_to_what_the_host_needs(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    big = build_cert_table([
        (VCEK_GUID, sim_authority.vcek_der), (ASK_GUID, sim_authority.ask_der), (ARK_GUID, sim_authority.ark_der),
        (uuid.UUID(int=7), b"\x00" * (2 * PAGE)),  # an extra entry the provider ignores
    ])
    assert len(big) > PAGE
    fake = FakeSevGuest(sim_authority, table=big)
    env = snp_collect(sev(fake, device, cert_pages=1), binding[1])
    assert fake.certs_lens == [PAGE, -(-len(big) // PAGE) * PAGE]
    assert [e.role for e in env.endorsements] == ["vcek", "ask", "ark"]


def test_certificate_table_above_the_kernel_limit(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeSevGuest(sim_authority, table=b"\x01" * (0x4000 + 1))
    with pytest.raises(
        EvidenceUnavailable, match="needs 20480 bytes; the buffer had 4096 and the kernel allows at most 16384"
    ):
        snp_collect(sev(fake, device, cert_pages=1), binding[1])


@pytest.mark.parametrize(
    ("fw", "vmm", "message"),
    [
        (0x16, 0, r"firmware error 0x16 \(INVALID_PARAM\) \(EIO"),
        (0x07, 0, r"firmware error 0x7 \(POLICY_FAILURE\)"),
        (0x99, 0, r"firmware error 0x99 \(unknown code\)"),
        (0, 0xFFFFFFFF, "the hypervisor failed the guest request"),
        (0, 5, "the hypervisor refused the request with error 0x5"),
    ],
)
def test_firmware_and_hypervisor_errors_are_named(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes], fw: int, vmm: int, message: str
) -> None:
    fake = FakeSevGuest(sim_authority, fw_error=fw, vmm_error=vmm)
    with pytest.raises(EvidenceUnavailable, match=message):
        snp_collect(sev(fake, device), binding[1])
    assert len(fake.calls) == 1  # a firmware refusal is not retried


def test_report_response_status_is_named(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]
) -> None:
    fake = FakeSevGuest(sim_authority, status=0x16)
    with pytest.raises(EvidenceUnavailable, match=r"MSG_REPORT_RSP status 0x16 \(INVALID_PARAMETERS\)"):
        snp_collect(sev(fake, device, extended=False), binding[1])


@pytest.mark.parametrize("size", [0, 1000, 1185, 3968])
def test_report_of_the_wrong_size(
    device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes], size: int
) -> None:
    fake = FakeSevGuest(sim_authority, report_size=size)
    expected = f"report of {size} bytes; an SEV-SNP attestation report is exactly 1184"
    with pytest.raises(EvidenceUnavailable, match=expected):
        snp_collect(sev(fake, device), binding[1])


def test_busy_host_then_success(device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]) -> None:
    fake = FakeSevGuest(sim_authority, busy=2)
    sleeps = Sleeps()
    env = snp_collect(sev(fake, device, sleeps=sleeps), binding[1])
    assert sev_snp.parse_report_unverified(env.evidence).report_data == binding[1]
    assert len(fake.calls) == 3 and sleeps.calls == [0.05, 0.1]


def test_busy_host_forever(device: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]) -> None:
    fake = FakeSevGuest(sim_authority, busy=100)
    with pytest.raises(EvidenceUnavailable, match=r"failed 4 times in a row: .*the host is busy \(EAGAIN"):
        snp_collect(sev(fake, device, attempts=4), binding[1])
    assert len(fake.calls) == 4


def test_missing_device(tmp_path: Path, sim_authority: SimulationAuthority, binding: tuple[bytes, bytes]) -> None:
    fake = FakeSevGuest(sim_authority)
    with pytest.raises(EvidenceUnavailable, match=r"cannot open .*ENOENT"):
        snp_collect(sev(fake, tmp_path / "sev-guest"), binding[1])
    assert fake.calls == []


def test_bad_configuration(device: Path, sim_authority: SimulationAuthority) -> None:
    with pytest.raises(ConfigError, match="VMPL"):
        sev(FakeSevGuest(sim_authority), device, vmpl=4)
    with pytest.raises(ConfigError, match="cert_pages"):
        sev(FakeSevGuest(sim_authority), device, cert_pages=5)


# --- /dev/nsm ------------------------------------------------------------------------------------------------

ES384_PROTECTED = cbor2.dumps({1: -35})


def _self_signed(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test NSM leaf")])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(start).not_valid_after(start + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def sig_structure(payload: bytes) -> bytes:
    return bytes(cbor2.dumps(["Signature1", ES384_PROTECTED, b"", payload]))


@dataclass
class FakeNsm:
    """The nsm driver + Nitro Secure Module: CBOR request in, COSE_Sign1 attestation document out."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    error: str | None = None  # answer {"Error": error}
    response: bytes | None = None  # answer these bytes verbatim
    response_len: int | None = None  # what the driver reports as the response length
    echo_user_data: bytes | None = None  # put this in user_data instead of what was asked
    tagged: bool = False
    busy: int = 0
    fail_errno: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    def document(self, user_data: bytes, nonce: bytes) -> bytes:
        payload = cbor2.dumps({
            "module_id": "i-0123456789abcdef0-enc0123456789abcdef", "digest": "SHA384", "timestamp": 1_750_000_000_000,
            "pcrs": {i: bytes([0x40 + i]) * 48 for i in range(3)}, "certificate": _self_signed(self.key),
            "cabundle": [_self_signed(self.key)], "public_key": None, "user_data": user_data, "nonce": nonce,
        })
        r, s = decode_dss_signature(self.key.sign(sig_structure(payload), ec.ECDSA(hashes.SHA384())))
        cose = [ES384_PROTECTED, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")]
        return bytes(cbor2.dumps(cbor2.CBORTag(18, cose) if self.tagged else cose))

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        assert request == UAPI_NSM_IOCTL_RAW, hex(request)
        raw = memoryview(arg).cast("B")
        assert len(raw) == 32, "struct nsm_raw is 32 bytes"
        req_addr, req_len, resp_addr, resp_cap = struct.unpack("<QQQQ", raw)
        assert 0 < req_len <= 0x1000 and resp_cap == 0x3000 and req_addr and resp_addr
        if self.busy:
            self.busy -= 1
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        decoded = cbor2.loads(ctypes.string_at(req_addr, req_len))
        self.requests.append(decoded)
        body = decoded["Attestation"]
        assert list(body) == ["user_data", "nonce", "public_key"]
        if self.response is not None:
            answer = self.response
        elif self.error is not None:
            answer = cbor2.dumps({"Error": self.error})
        else:
            user_data = self.echo_user_data if self.echo_user_data is not None else body["user_data"]
            answer = cbor2.dumps({"Attestation": {"document": self.document(user_data, body["nonce"])}})
        assert len(answer) <= resp_cap
        ctypes.memmove(resp_addr, answer, len(answer))
        raw[24:32] = struct.pack("<Q", len(answer) if self.response_len is None else self.response_len)
        return 0


def nsm(fake: FakeNsm, device: Path, *, attempts: int = 3) -> NitroNsm:
    return NitroNsm(device=device, ioctl=fake, retry=Retry(attempts=attempts, sleep=Sleeps()), clock=lambda: 1.5)


@pytest.mark.parametrize("tagged", [False, True])
def test_nsm_request_and_document(device: Path, binding: tuple[bytes, bytes], tagged: bool) -> None:
    fake = FakeNsm(tagged=tagged)
    env = snp_collect(nsm(fake, device), binding[1])
    # the request: our 64-byte report_data as user_data, the raw nonce, no public key
    assert fake.requests == [{"Attestation": {"user_data": binding[1], "nonce": NONCE, "public_key": None}}]
    assert (env.platform, env.format, env.endorsements, env.collected_at_ms) == (
        "nitro", "aws-nitro-cose-sign1", (), 1500
    )
    assert (env.nonce, env.audit_pub, env.session_id) == (NONCE, AUDIT_PUB, SESSION_ID)
    # the document travels byte for byte: its signature still verifies over the Sig_structure
    cose = cbor2.loads(env.evidence)
    cose = cose.value if tagged else cose
    assert isinstance(cose, list | tuple)  # cbor2 decodes a tagged array as a tuple
    signature = cose[3]
    fake.key.public_key().verify(
        encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")),
        sig_structure(cose[2]), ec.ECDSA(hashes.SHA384()),
    )
    payload = cbor2.loads(cose[2])
    assert (payload["user_data"], payload["nonce"]) == (binding[1], NONCE)


def test_nsm_document_verifies_with_the_nitro_verifier(
    device: Path, binding: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through the kernel's Nitro verifier, with a throwaway PKI pinned in place of AWS's root."""
    nitro = pytest.importorskip("cc_kernel.attestation.platforms.nitro")
    support = pytest.importorskip("nitro_support")
    pki = support.default_pki()

    class PkiNsm(FakeNsm):
        def document(self, user_data: bytes, nonce: bytes) -> bytes:
            return bytes(support.build_document(pki, user_data=user_data, nonce=nonce))

    spki, report_data = binding
    env = snp_collect(nsm(PkiNsm(), device), report_data)
    verified = nitro.verify_document(env.evidence, anchors=support.pinned_test_anchors(pki, monkeypatch),
                                     now=support.TEST_NOW)
    assert verified.report_data == report_data  # user_data is what the verifier maps to report_data
    assert nitro.document_nonce(verified) == NONCE
    check_binding(verified, tls_spki=spki, audit_pub=AUDIT_PUB, nonce=NONCE, session_id=SESSION_ID)


@pytest.mark.parametrize(
    ("error", "message"),
    [("InvalidArgument", r"InvalidArgument \(an input argument is invalid\)"),
     ("InternalError", r"InternalError \(the NSM failed internally\)"),
     ("Weird", r"Weird \(unknown error code\)")],
)
def test_nsm_error_response(device: Path, binding: tuple[bytes, bytes], error: str, message: str) -> None:
    fake = FakeNsm(error=error)
    with pytest.raises(EvidenceUnavailable, match="refused the attestation request: " + message):
        snp_collect(nsm(fake, device), binding[1])
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"response": b"\xff\x00garbage"}, "not CBOR"),
        ({"response": cbor2.dumps({"DescribeNSM": {}})}, r"expected an Attestation answer, got \['DescribeNSM'\]"),
        ({"response": cbor2.dumps({"Attestation": {}})}, "carries no document"),
        ({"response": cbor2.dumps({"Attestation": {"document": b"\x01\x02"}})}, "not an attestation document"),
        ({"response_len": 0}, "an empty response"),
        ({"response_len": 0x3001}, "a response length of 12289"),
    ],
)
def test_nsm_unusable_responses(
    device: Path, binding: tuple[bytes, bytes], knobs: dict[str, Any], message: str
) -> None:
    with pytest.raises(EvidenceUnavailable, match=message):
        snp_collect(nsm(FakeNsm(**knobs), device), binding[1])


def test_nsm_document_for_another_request_is_not_returned(device: Path, binding: tuple[bytes, bytes]) -> None:
    fake = FakeNsm(echo_user_data=b"\x00" * 64)
    with pytest.raises(EvidenceUnavailable, match=r"failed 2 times in a row: .*does not echo the user_data and nonce"):
        snp_collect(nsm(fake, device, attempts=2), binding[1])
    assert len(fake.requests) == 2


def test_nsm_busy_then_success_and_errno_hints(device: Path, binding: tuple[bytes, bytes]) -> None:
    fake = FakeNsm(busy=1)
    assert snp_collect(nsm(fake, device), binding[1]).format == "aws-nitro-cose-sign1"
    with pytest.raises(EvidenceUnavailable, match=r"NSM_IOCTL_RAW failed: EPERM .*CAP_SYS_ADMIN"):
        snp_collect(nsm(FakeNsm(fail_errno=errno.EPERM), device), binding[1])
    with pytest.raises(EvidenceUnavailable, match=r"failed 3 times in a row: .* is busy: EBUSY"):
        snp_collect(nsm(FakeNsm(busy=100), device), binding[1])


def test_nsm_report_data_length_is_checked_before_any_ioctl(device: Path) -> None:
    fake = FakeNsm()
    with pytest.raises(ValueError, match="64 bytes"):
        snp_collect(nsm(fake, device), b"\x01" * 65)
    assert fake.requests == []

