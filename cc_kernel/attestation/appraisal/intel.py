"""Pure attestation layer: ``[[accept]]`` entries for Intel TDX and SGX (DCAP quotes).

Invariants: the platform's TCB status comes only from verified Intel collateral; no status (no or incomplete
collateral) fails unless ``unsafe_skip_tcb_collateral``; only ``UpToDate`` passes without a weakening;
``Revoked`` never passes.

Check names: ``policy.measurement``, ``policy.rtmr.<i>``, ``policy.mr_config_id``, ``policy.sept_ve_disable``,
``policy.mrsigner``, ``policy.isv_prod_id``, ``policy.min_isv_svn``, ``policy.tcb_status``,
``policy.tcb_collateral``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final, Self

from cc_kernel.attestation.appraisal.entry import (
    COMMON_ENTRY_KEYS,
    AcceptEntry,
    Outcome,
    claim_int,
    register,
)
from cc_kernel.attestation.appraisal.reader import Reader, describe, quoted, toml_list, toml_str
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.attestation.platforms.intel_status import TCB_STATUSES

#: Of Intel's TCB statuses (``TCB_STATUSES``) only ``UpToDate`` is not a weakening.
SAFE_TCB_STATUSES: Final = ("UpToDate",)
#: The RTMRs a TDX entry pins besides MRTD: RTMR1 (kernel) and RTMR2 (command line, initrd holding cc-kernel).
TDX_CODE_RTMRS: Final = (1, 2)

_INTEL_TCB_KEYS: Final = frozenset({"accept_tcb_status", "unsafe_accept_tcb_status", "unsafe_skip_tcb_collateral"})
_TD_ATTRIBUTES_SEPT_VE_DISABLE: Final = 1 << 28
_UP_TO_DATE_LINES: Final = (
    "# Only an up-to-date platform TCB (needs collateral in the envelope).",
    'accept_tcb_status = ["UpToDate"]',
)


@dataclass(frozen=True, kw_only=True)
class IntelEntry(AcceptEntry):
    """What TDX and SGX entries share: the TCB status the Intel collateral gives the platform."""

    accept_tcb_status: tuple[str, ...] = SAFE_TCB_STATUSES
    unsafe_accept_tcb_status: tuple[str, ...] = ()
    unsafe_skip_tcb_collateral: bool = False

    def check_tcb_status(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        """The TCB status clause (``policy.tcb_collateral``, ``policy.tcb_status``)."""
        status = ev.tcb_status
        if status is None:
            if self.unsafe_skip_tcb_collateral:
                outcome.use("unsafe_skip_tcb_collateral", "tcb-collateral-missing")
            elif "tcb-collateral-incomplete" in ev.warnings:
                missing = _missing_collateral(ev.claims)
                outcome.fail(
                    "policy.tcb_collateral",
                    "the Intel collateral is incomplete"
                    + (f" (missing: {', '.join(missing)})" if missing else "")
                    + ", so the platform's TCB status is unknown; supply every current item (tcbInfo, QE "
                    "identity, PCK CRL, root CRL), or accept the risk with unsafe_skip_tcb_collateral = true",
                    got=None,
                    expected=list(self.accept_tcb_status),
                )
            else:
                outcome.fail(
                    "policy.tcb_collateral",
                    "no Intel TCB collateral was verified, so the platform's TCB status is unknown; supply it "
                    "(--collateral DIR, or in the evidence envelope), or accept the risk with "
                    "unsafe_skip_tcb_collateral = true",
                    got=None,
                    expected=list(self.accept_tcb_status),
                )
        elif status in self.accept_tcb_status:
            return
        elif status in self.unsafe_accept_tcb_status and status != "Revoked":
            outcome.use("unsafe_accept_tcb_status", f"tcb-status-{status}")
        else:
            outcome.fail(
                "policy.tcb_status",
                f"the platform's TCB status is {status}",
                got=status,
                expected=[*self.accept_tcb_status, *self.unsafe_accept_tcb_status],
            )


@dataclass(frozen=True, kw_only=True)
class TdxEntry(IntelEntry):
    """An ``[[accept]]`` entry for Intel TDX quotes. ``rtmr`` maps index (0..3) -> expected value."""

    PLATFORM: ClassVar[str] = "tdx"
    KEYS: ClassVar[frozenset[str]] = (
        COMMON_ENTRY_KEYS | _INTEL_TCB_KEYS | {"mr_td", "rtmr", "mr_config_id", "require_sept_ve_disable"}
    )
    CODE_PIN_RULE: ClassVar[str] = (
        '"mr_td" (MRTD: the TD firmware) and "rtmr" indices 1 and 2 (RTMR1: the kernel; RTMR2: the '
        "command line and the initrd that holds cc-kernel)"
    )
    INIT_HINT: ClassVar[str] = "--platform tdx --measurement MRTD --rtmr 1=HEX --rtmr 2=HEX"
    MEASUREMENT_KEY: ClassVar[tuple[str, int]] = ("mr_td", 48)
    RENDER_OPTIONS: ClassVar[frozenset[str]] = frozenset({"rtmr"})

    mr_td: tuple[bytes, ...] = ()
    rtmr: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    mr_config_id: bytes | None = None
    require_sept_ve_disable: bool = False

    @classmethod
    def build(cls, item: Mapping[str, Any], where: str, reader: Reader, common: Mapping[str, Any]) -> Self:
        mr_td = reader.hex_list(item, "mr_td", where, size=48)
        rtmr = reader.hex_map(item, "rtmr", where, size=48, max_index=3, what="RTMR index")
        accept = read_tcb_statuses(reader, item, "accept_tcb_status", where, unsafe=False)
        sept = reader.boolean(item, "require_sept_ve_disable", where)
        mr_config_id = reader.hex_value(item, "mr_config_id", where, size=48)
        missing = [] if mr_td else ["mr_td"]
        missing += [f"rtmr.{index}" for index in TDX_CODE_RTMRS if index not in rtmr]
        cls.require_code_pin(reader, where, common, ["mr_td"] if mr_td else [], missing)
        return cls(
            **common,
            mr_td=mr_td or (),
            rtmr=rtmr,
            mr_config_id=mr_config_id,
            accept_tcb_status=SAFE_TCB_STATUSES if accept is None else accept,
            require_sept_ve_disable=bool(sept),
        )

    def appraise(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        outcome.check_measurement(ev, "policy.measurement", "MRTD", self.mr_td)
        for index, value in self.rtmr.items():
            got = register(ev, f"rtmr{index}", f"rtmr_{index}")
            outcome.check_any_of(f"policy.rtmr.{index}", f"RTMR{index}", got, [value])
        if self.mr_config_id is not None:
            got = register(ev, "mr_config_id", "mrconfigid")
            outcome.check_any_of("policy.mr_config_id", "MRCONFIGID", got, [self.mr_config_id])
        if self.require_sept_ve_disable:
            sept = _sept_ve_disable(ev.claims)
            if sept is not True:
                outcome.fail(
                    "policy.sept_ve_disable",
                    "TD_ATTRIBUTES.SEPT_VE_DISABLE is not set"
                    if sept is False
                    else 'the evidence has no "td_attributes" claim to check SEPT_VE_DISABLE',
                    got=sept,
                    expected=True,
                )
        self.check_tcb_status(ev, outcome)

    @classmethod
    def render(cls, reader: Reader, pinned: Sequence[str], options: Mapping[str, Any]) -> list[str]:
        rtmr: dict[int, str] = {}
        for index, value in sorted((options.get("rtmr") or {}).items()):
            if not 0 <= index <= 3:
                reader.fail(f"RTMR index {index} must be from 0 to 3")
            text = value.hex() if isinstance(value, bytes) else value.strip().lower()
            reader.hex_text(text, f"RTMR{index} {text[:24]!r}", 48)
            rtmr[index] = text
        out = ["[[accept]]", "# Intel TDX trust domain, verified against Intel's pinned SGX root.", 'platform = "tdx"']
        out.append("# MRTD (build-time measurement of the TD firmware), 48 bytes hex each.")
        out += toml_list("mr_td", pinned)
        if rtmr:
            out.append("# RTMR1: the kernel; RTMR2: the command line and the initrd holding cc-kernel.")
            parts = ", ".join(f"{index} = {toml_str(value)}" for index, value in sorted(rtmr.items()))
            out.append(f"rtmr = {{ {parts} }}")
        return [*out, *_UP_TO_DATE_LINES]


@dataclass(frozen=True, kw_only=True)
class SgxEntry(IntelEntry):
    """An ``[[accept]]`` entry for Intel SGX DCAP quotes."""

    PLATFORM: ClassVar[str] = "sgx-dcap"
    KEYS: ClassVar[frozenset[str]] = (
        COMMON_ENTRY_KEYS | _INTEL_TCB_KEYS | {"mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"}
    )
    CODE_PIN_RULE: ClassVar[str] = (
        '"mrenclave" (MRENCLAVE), or "mrsigner" (MRSIGNER) together with "isv_prod_id" (ISVPRODID) '
        'and "min_isv_svn" (the minimum ISVSVN)'
    )
    INIT_HINT: ClassVar[str] = "--platform sgx-dcap --measurement MRENCLAVE"
    MEASUREMENT_KEY: ClassVar[tuple[str, int]] = ("mrenclave", 32)

    mrenclave: tuple[bytes, ...] = ()
    mrsigner: tuple[bytes, ...] = ()
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    @classmethod
    def build(cls, item: Mapping[str, Any], where: str, reader: Reader, common: Mapping[str, Any]) -> Self:
        mrenclave = reader.hex_list(item, "mrenclave", where, size=32)
        mrsigner = reader.hex_list(item, "mrsigner", where, size=32)
        isv_prod_id = reader.integer(item, "isv_prod_id", where, lo=0, hi=0xFFFF)
        min_isv_svn = reader.integer(item, "min_isv_svn", where, lo=0, hi=0xFFFF)
        accept = read_tcb_statuses(reader, item, "accept_tcb_status", where, unsafe=False)
        pinned = [name for name, value in (("mrenclave", mrenclave), ("mrsigner", mrsigner)) if value]
        missing: list[str] = []
        if mrsigner and not mrenclave:  # a signer signs many enclaves: product id and minimum version narrow it
            missing = [k for k, v in (("isv_prod_id", isv_prod_id), ("min_isv_svn", min_isv_svn)) if v is None]
        elif not mrenclave:
            missing = ["mrenclave"]
        cls.require_code_pin(reader, where, common, pinned, missing)
        return cls(
            **common,
            mrenclave=mrenclave or (),
            mrsigner=mrsigner or (),
            isv_prod_id=isv_prod_id,
            min_isv_svn=min_isv_svn,
            accept_tcb_status=SAFE_TCB_STATUSES if accept is None else accept,
        )

    def appraise(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        if self.unsafe_any_measurement:
            outcome.use("unsafe_any_measurement", "any-measurement")
        else:
            if self.mrenclave:
                outcome.check_any_of("policy.measurement", "MRENCLAVE", bytes(ev.measurement), self.mrenclave)
            if self.mrsigner:
                outcome.check_any_of("policy.mrsigner", "MRSIGNER", register(ev, "mrsigner"), self.mrsigner)
        if self.isv_prod_id is not None:
            prod = claim_int(ev.claims, "isv_prod_id", "isvprodid")
            if prod != self.isv_prod_id:
                outcome.fail(
                    "policy.isv_prod_id",
                    "ISVPRODID differs" if prod is not None else 'the evidence has no "isv_prod_id" claim',
                    got=prod,
                    expected=self.isv_prod_id,
                )
        if self.min_isv_svn is not None:
            svn = claim_int(ev.claims, "isv_svn", "isvsvn")
            outcome.check_minimum("policy.min_isv_svn", "ISVSVN", svn, self.min_isv_svn)
        self.check_tcb_status(ev, outcome)

    @classmethod
    def render(cls, reader: Reader, pinned: Sequence[str], options: Mapping[str, Any]) -> list[str]:
        out = [
            "[[accept]]",
            "# Intel SGX enclave (DCAP quote), verified against Intel's pinned SGX root.",
            'platform = "sgx-dcap"',
            "# MRENCLAVE of the enclave, 32 bytes hex each.",
        ]
        return [*out, *toml_list("mrenclave", pinned), *_UP_TO_DATE_LINES]


def read_tcb_statuses(
    reader: Reader, table: Mapping[str, Any], key: str, where: str, *, unsafe: bool
) -> tuple[str, ...] | None:
    """A list of Intel TCB statuses: ``accept_tcb_status`` (``unsafe=False``: only non-weakening ones) or
    ``unsafe_accept_tcb_status`` (``unsafe=True``: only weakening ones); ``Revoked`` never. None if absent."""
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        reader.fail(f'key "{key}" in {where} must be an array of TCB status strings, got {describe(value)}')
    for status in value:
        if status not in TCB_STATUSES:
            reader.fail(f'key "{key}" in {where} lists unknown TCB status "{status}" (one of {quoted(TCB_STATUSES)})')
        if status == "Revoked":
            reader.fail(f'key "{key}" in {where} lists "Revoked": a revoked platform is never acceptable')
        if unsafe and status in SAFE_TCB_STATUSES:
            reader.fail(f'key "{key}" in {where} lists "{status}", which is accepted by default; remove it')
        if not unsafe and status not in SAFE_TCB_STATUSES:
            reader.fail(
                f'key "{key}" in {where} lists "{status}", a weakening: move it to unsafe_accept_tcb_status'
            )
    if not unsafe and not value:
        reader.fail(f'key "{key}" in {where} is an empty array, which would accept nothing')
    return tuple(dict.fromkeys(value))


def _missing_collateral(claims: Mapping[str, object]) -> list[str]:
    tcb = claims.get("tcb")
    missing = tcb.get("missing") if isinstance(tcb, Mapping) else None
    return [str(item) for item in missing] if isinstance(missing, list | tuple) else []


def _sept_ve_disable(claims: Mapping[str, object]) -> bool | None:
    direct = claims.get("sept_ve_disable")
    if isinstance(direct, bool):
        return direct
    attributes = claims.get("td_attributes")
    if isinstance(attributes, bytes | bytearray) and len(attributes) == 8:
        return bool(int.from_bytes(attributes, "little") & _TD_ATTRIBUTES_SEPT_VE_DISABLE)
    number = claim_int(claims, "td_attributes")
    if number is None:
        return None
    return bool(number & _TD_ATTRIBUTES_SEPT_VE_DISABLE)
