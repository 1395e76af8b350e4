"""Pure attestation layer: ``[[accept]]`` entries for AMD SEV-SNP and for the (SNP-shaped) simulated TEE.

Invariants: the migration agent is always forbidden and debug unless ``unsafe_allow_debug``; the minimum TCB
is compared component by component (never as one 64-bit number); firmware whose current TCB is not the
committed one (provisional, can still be rolled back) fails unless ``unsafe_permit_provisional_firmware``.

Check names: ``policy.measurement``, ``policy.signer``, ``policy.product``, ``policy.vmpl``,
``policy.migrate_ma``, ``policy.policy_bits.<name>``, ``policy.min_tcb.<component>``,
``policy.provisional_firmware``, ``policy.min_guest_svn``, ``policy.min_report_version``, ``policy.host_data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final, Self

from cc_kernel.attestation.appraisal.entry import (
    COMMON_ENTRY_KEYS,
    AcceptEntry,
    Outcome,
    claim_int,
    int_value,
    register,
)
from cc_kernel.attestation.appraisal.reader import Reader, close_match, describe, quoted, toml_list, toml_str
from cc_kernel.attestation.evidence import VerifiedEvidence
from cc_kernel.attestation.platforms.sev_snp import POLICY_BITS
from cc_kernel.attestation.result import jsonable

SNP_PRODUCTS: Final = ("Milan", "Genoa", "Turin")
SNP_SIGNERS: Final = ("vcek", "vlek")
SIMULATION_SIGNERS: Final = ("sim-vcek", "sim-vlek", "vcek", "vlek")
TCB_COMPONENTS: Final = ("bl", "tee", "snp", "ucode", "fmc")
#: Bits the appraisal always forbids (``debug`` unless ``unsafe_allow_debug``).
ALWAYS_FORBIDDEN_POLICY_BITS: Final = ("debug", "migrate_ma")

_SNP_KEYS: Final = COMMON_ENTRY_KEYS | {
    "products",
    "signers",
    "measurement",
    "vmpl",
    "min_tcb",
    "min_tcb_by_product",
    "min_guest_svn",
    "host_data",
    "forbid_policy_bits",
    "require_policy_bits",
    "min_report_version",
    "unsafe_permit_provisional_firmware",
}


@dataclass(frozen=True, kw_only=True)
class SnpEntry(AcceptEntry):
    """An ``[[accept]]`` entry for ``sev-snp`` evidence (``SimulationEntry``: the simulated TEE).

    ``products``/``signers`` of ``None`` mean "not checked"; ``min_tcb`` maps component -> minimum SVN.
    """

    PLATFORM: ClassVar[str] = "sev-snp"
    KEYS: ClassVar[frozenset[str]] = _SNP_KEYS
    CODE_PIN_RULE: ClassVar[str] = '"measurement" (the SEV-SNP launch MEASUREMENT)'
    INIT_HINT: ClassVar[str] = "--platform sev-snp --measurement HEX"
    MEASUREMENT_KEY: ClassVar[tuple[str, int]] = ("measurement", 48)
    RENDER_OPTIONS: ClassVar[frozenset[str]] = frozenset({"min_tcb", "signers"})
    #: Product lines an entry may name (None: not checked), signers it may list, and the default signers.
    PRODUCTS: ClassVar[tuple[str, ...] | None] = SNP_PRODUCTS
    SIGNERS: ClassVar[tuple[str, ...]] = SNP_SIGNERS
    DEFAULT_SIGNERS: ClassVar[tuple[str, ...] | None] = ("vcek",)

    products: tuple[str, ...] | None = None
    signers: tuple[str, ...] | None = None
    measurements: tuple[bytes, ...] = ()
    vmpl: int = 0
    min_tcb: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    min_tcb_by_product: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: MappingProxyType({}))
    min_guest_svn: int | None = None
    host_data: bytes | None = None
    forbid_policy_bits: tuple[str, ...] = ()
    require_policy_bits: tuple[str, ...] = ()
    min_report_version: int | None = None
    unsafe_permit_provisional_firmware: bool = False

    @classmethod
    def build(cls, item: Mapping[str, Any], where: str, reader: Reader, common: Mapping[str, Any]) -> Self:
        products = reader.strings(item, "products", where, choices=cls.PRODUCTS)
        signers = reader.strings(item, "signers", where, choices=cls.SIGNERS)
        if signers is None:
            signers = cls.DEFAULT_SIGNERS
        measurements = reader.hex_list(item, "measurement", where, size=48)
        cls.require_code_pin(
            reader, where, common, ["measurement"] if measurements else [], [] if measurements else ["measurement"]
        )
        vmpl = reader.integer(item, "vmpl", where, lo=0, hi=3)
        min_tcb = read_tcb(reader, item, "min_tcb", where)
        by_product: dict[str, Mapping[str, int]] = {}
        by_raw = item.get("min_tcb_by_product")
        if by_raw is not None:
            if not isinstance(by_raw, dict):
                reader.fail(f'key "min_tcb_by_product" in {where} must be a table, got {describe(by_raw)}')
            for product in by_raw:
                if cls.PRODUCTS is not None and product not in cls.PRODUCTS:
                    reader.fail(
                        f'unknown product "{product}" in min_tcb_by_product of {where} '
                        f"(one of {quoted(cls.PRODUCTS)})"
                    )
                if products is not None and product not in products:
                    reader.fail(
                        f'min_tcb_by_product of {where} names "{product}", which is not in its products list'
                    )
                by_product[product] = (
                    read_tcb(reader, by_raw, product, where, label=f"min_tcb_by_product.{product} of {where}")
                    or {}
                )
        forbid = reader.strings(item, "forbid_policy_bits", where, choices=tuple(POLICY_BITS)) or ()
        require = (
            reader.strings(
                item,
                "require_policy_bits",
                where,
                choices=tuple(b for b in POLICY_BITS if b not in ALWAYS_FORBIDDEN_POLICY_BITS),
            )
            or ()
        )
        if common["unsafe_allow_debug"] and "debug" in forbid:
            reader.fail(f'{where} forbids policy bit "debug" but unsafe_allow_debug = true is in force: remove one')
        both = sorted(set(forbid) & set(require))
        if both:
            reader.fail(f'{where} both forbids and requires policy bit "{both[0]}"')
        host_data = reader.hex_value(item, "host_data", where, size=32)
        return cls(
            **common,
            products=products,
            signers=signers,
            measurements=measurements or (),
            vmpl=0 if vmpl is None else vmpl,
            min_tcb=min_tcb if min_tcb is not None else MappingProxyType({}),
            min_tcb_by_product=MappingProxyType(by_product),
            min_guest_svn=reader.integer(item, "min_guest_svn", where, lo=0, hi=0xFFFFFFFF),
            host_data=host_data,
            forbid_policy_bits=forbid,
            require_policy_bits=require,
            min_report_version=reader.integer(item, "min_report_version", where, lo=0, hi=0xFFFFFFFF),
        )

    @classmethod
    def is_debug(cls, ev: VerifiedEvidence) -> bool:
        """The verifier's flag, or (defence in depth) guest POLICY.DEBUG set in the report."""
        if ev.debug:
            return True
        guest_policy = claim_int(ev.claims, "policy")
        return guest_policy is not None and bool(guest_policy >> POLICY_BITS["debug"] & 1)

    def appraise(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        claims = ev.claims
        # c. launch measurement
        outcome.check_measurement(ev, "policy.measurement", "launch measurement", self.measurements)
        # d. signing key kind and product line
        if self.signers is not None and ev.signer not in self.signers:
            outcome.fail(
                "policy.signer",
                f'the report was signed by a "{ev.signer}" key',
                got=ev.signer,
                expected=list(self.signers),
            )
        if self.products is not None and _product_in(ev.product, self.products) is None:
            outcome.fail(
                "policy.product",
                "the product line is not accepted",
                got=ev.product,
                expected=list(self.products),
            )
        # e. VMPL of the requester
        vmpl = claim_int(claims, "vmpl")
        if vmpl is None:
            outcome.fail("policy.vmpl", 'the evidence has no "vmpl" claim', expected=self.vmpl)
        elif vmpl != self.vmpl:
            outcome.fail(
                "policy.vmpl", f"the report was requested at VMPL {vmpl}", got=vmpl, expected=self.vmpl
            )
        # f. guest policy bits: migration agent always forbidden, plus the entry's own bits
        self._check_policy_bits(claim_int(claims, "policy"), outcome)
        # g. minimum TCB, component by component (never as one 64-bit number)
        self._check_min_tcb(ev, outcome)
        # h. provisional firmware: the running firmware must be the committed one
        self._check_provisional(ev, outcome)
        # i. the rest of the pinned identity
        if self.min_guest_svn is not None:
            svn = claim_int(claims, "guest_svn")
            outcome.check_minimum("policy.min_guest_svn", "guest SVN", svn, self.min_guest_svn)
        if self.min_report_version is not None:
            version = claim_int(claims, "version")
            outcome.check_minimum("policy.min_report_version", "report version", version, self.min_report_version)
        if self.host_data is not None:
            outcome.check_any_of("policy.host_data", "HOST_DATA", register(ev, "host_data"), [self.host_data])

    def _check_policy_bits(self, guest_policy: int | None, outcome: Outcome) -> None:
        if guest_policy is None:
            outcome.fail(
                "policy.migrate_ma",
                'the evidence has no guest "policy" claim, so its policy bits cannot be checked',
            )
            return
        for name in dict.fromkeys(("migrate_ma", *self.forbid_policy_bits, *self.require_policy_bits)):
            if name == "debug":
                continue  # clause a
            is_set = bool(guest_policy >> POLICY_BITS[name] & 1)
            want = name in self.require_policy_bits
            if is_set != want:
                check = "policy.migrate_ma" if name == "migrate_ma" else f"policy.policy_bits.{name}"
                state = "set" if is_set else "clear"
                outcome.fail(check, f"guest policy bit {name} is {state}", got=int(is_set), expected=int(want))

    def _check_min_tcb(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        product = _product_in(ev.product, self.min_tcb_by_product)
        minimum = self.min_tcb_by_product[product] if product is not None else self.min_tcb
        for component in TCB_COMPONENTS:
            if component not in minimum:
                continue
            have = ev.tcb.get(component)
            if have is None:
                outcome.fail(
                    f"policy.min_tcb.{component}",
                    f'the evidence reports no "{component}" TCB component (product {ev.product})',
                    expected=minimum[component],
                )
            elif have < minimum[component]:
                outcome.fail(
                    f"policy.min_tcb.{component}",
                    f"the reported TCB {component} SVN {have} is below the minimum {minimum[component]}",
                    got=have,
                    expected=minimum[component],
                )

    def _check_provisional(self, ev: VerifiedEvidence, outcome: Outcome) -> None:
        current = _tcb_value(ev.claims.get("current_tcb"))
        committed = _tcb_value(ev.claims.get("committed_tcb"))
        if "provisional-firmware" in ev.warnings:
            provisional: bool | None = True
        elif current is None or committed is None or type(current) is not type(committed):
            provisional = None
        else:
            provisional = current != committed
        if provisional is False:
            return
        if self.unsafe_permit_provisional_firmware:
            outcome.use("unsafe_permit_provisional_firmware", "provisional-firmware")
        elif provisional is None:
            outcome.fail(
                "policy.provisional_firmware",
                'the evidence lacks comparable "current_tcb" and "committed_tcb" claims, so provisional '
                "firmware cannot be ruled out",
                got=None,
                expected="current_tcb == committed_tcb",
            )
        else:
            outcome.fail(
                "policy.provisional_firmware",
                "the running (current) firmware TCB is not the committed one: provisional firmware that can "
                "still be rolled back (accepting it needs unsafe_permit_provisional_firmware = true)",
                got=jsonable(ev.claims.get("current_tcb")),
                expected=jsonable(ev.claims.get("committed_tcb")),
            )

    @classmethod
    def render(cls, reader: Reader, pinned: Sequence[str], options: Mapping[str, Any]) -> list[str]:
        out = ["[[accept]]", *cls._render_head(options.get("signers"))]
        out += ["# SHA-384 launch measurement(s) of the enclave, 48 bytes hex each.", *toml_list("measurement", pinned)]
        out += ["# The enclave must make its report at VMPL 0 (no SVSM or paravisor below it).", "vmpl = 0"]
        min_tcb = options.get("min_tcb")
        if min_tcb:
            parts = ", ".join(f"{c} = {int(min_tcb[c])}" for c in TCB_COMPONENTS if c in min_tcb)
            out += [
                "# Minimum reported TCB: every component must be at least its minimum.",
                f"min_tcb = {{ {parts} }}",
            ]
        return out

    @classmethod
    def _render_head(cls, signers: Sequence[str] | None) -> list[str]:
        return [
            "# AMD SEV-SNP confidential VM, verified against AMD's pinned roots.",
            'platform = "sev-snp"',
            '# Keys allowed to sign the report: "vcek" (per chip); add "vlek" for AWS.',
            f"signers = [{', '.join(toml_str(s) for s in (signers or ('vcek',)))}]",
        ]


@dataclass(frozen=True, kw_only=True)
class SimulationEntry(SnpEntry):
    """An ``[[accept]]`` entry for the simulated TEE: SNP-shaped reports signed by the simulation authority.

    Products are not checked (the simulated product is "Simulated"); signers are checked only when listed.
    """

    PLATFORM: ClassVar[str] = "simulation"
    CODE_PIN_RULE: ClassVar[str] = '"measurement" (the simulated launch MEASUREMENT)'
    INIT_HINT: ClassVar[str] = "--simulation"
    PRODUCTS: ClassVar[tuple[str, ...] | None] = None
    SIGNERS: ClassVar[tuple[str, ...]] = SIMULATION_SIGNERS
    DEFAULT_SIGNERS: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def _render_head(cls, signers: Sequence[str] | None) -> list[str]:
        out = [
            "# The simulated TEE (byte-exact SEV-SNP reports signed by the local simulation authority).",
            'platform = "simulation"',
        ]
        if signers:
            out.append(f"signers = [{', '.join(toml_str(s) for s in signers)}]")
        return out


def read_tcb(
    reader: Reader, table: Mapping[str, Any], key: str, where: str, *, label: str = ""
) -> Mapping[str, int] | None:
    """A table of TCB component -> SVN (0..255), e.g. ``{ bl = 3, snp = 20 }``; None if absent."""
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        reader.fail(f'key "{key}" in {where} must be a table like {{ bl = 3, snp = 20 }}, got {describe(value)}')
    inner = label or f"{key} of {where}"
    for component in value:
        if component not in TCB_COMPONENTS:
            reader.fail(
                f'unknown key "{component}" in {inner} (TCB components: {quoted(TCB_COMPONENTS)})'
                f"{close_match(component, TCB_COMPONENTS)}"
            )
    out = {c: reader.integer(value, c, inner, lo=0, hi=255) for c in TCB_COMPONENTS if c in value}
    return MappingProxyType({c: v for c, v in out.items() if v is not None})


def _product_in(product: str, names: Iterable[str]) -> str | None:
    """The entry of ``names`` naming ``product`` ("Milan" names "Milan" and "Milan-B0"), or None."""
    for name in names:
        if product == name or product.startswith(f"{name}-"):
            return name
    return None


def _tcb_value(value: object) -> int | dict[str, int] | None:
    """Normalise a TCB claim for equality tests: int, hex string, 8 raw bytes, ``{"raw": hex, ...}`` or a
    mapping of component SVNs."""
    if isinstance(value, str):
        value = value.removeprefix("0x")
    if isinstance(value, int | str):
        return int_value(value, base=16)
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "little")
    if isinstance(value, Mapping):
        if "raw" in value:  # the SNP verifier's shape: {"raw": "<16 hex>", "bl": 3, ...}
            return _tcb_value(value["raw"])
        out = {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
        return out or None
    return None
