"""Pure attestation layer: the reference-value policy (schema: docs/policy.md), parsed strictly from TOML text.

Invariants: no I/O (callers read the file and pass its bytes); the schema is strict (unknown keys, wrong types
and wrong hex lengths are ``PolicyError``s naming the key and its table); a policy with no ``[[accept]]``
entry cannot be loaded (fail closed); every entry pins the platform's code measurement (``CODE_PIN_RULE``)
unless ``unsafe_any_measurement`` is in force for it; every key that is not spelled ``unsafe_*`` can only
*narrow* what the built-in baseline accepts, so every weakening is visible in ``Policy.unsafe_flags``.

Schema (version 1)::

    version = 1                          # required
    require_fresh_within_s = 300         # optional, 1..86400 (evidence age; Nitro document timestamp)
    unsafe_allow_simulation = false      # TOP LEVEL ONLY: permits platform = "simulation" entries
    unsafe_allow_debug = false           # these five may appear at the top level (then they apply to every
    unsafe_any_measurement = false       #   entry) and/or inside an entry (then only to that entry); the
    unsafe_permit_provisional_firmware = false   # effective value is top OR entry; an entry cannot set
    unsafe_skip_tcb_collateral = false   #   false to undo a top-level true (PolicyError: contradictory)
    unsafe_accept_tcb_status = []        #   (lists: the union is used)

    [[accept]]                           # any-of; at least one entry
    platform = "sev-snp" | "simulation"  # "simulation" only with unsafe_allow_simulation = true
    products = ["Milan", "Genoa", "Turin"]      # optional; default any AMD product line
    signers = ["vcek", "vlek"]                  # optional; default ["vcek"] (simulation: not checked)
    measurement = ["<48-byte hex>", ...]        # required unless unsafe_any_measurement
    vmpl = 0                                    # default 0
    min_tcb = { bl = 0, tee = 0, snp = 0, ucode = 0, fmc = 0 }   # optional, any subset, 0..255
    min_tcb_by_product = { Turin = { fmc = 1, ... } }          # optional, replaces min_tcb for that product
    min_guest_svn = 0                           # optional
    host_data = "<32-byte hex>"                 # optional
    forbid_policy_bits = ["smt", ...]           # optional; debug and migrate_ma are always forbidden
    require_policy_bits = ["single_socket", ...]  # optional
    min_report_version = 3                      # optional
    unsafe_permit_provisional_firmware, unsafe_allow_debug, unsafe_any_measurement

    [[accept]]
    platform = "tdx"
    mr_td = ["<48-byte hex>", ...]              # required unless unsafe_any_measurement
    rtmr = { 1 = "<48-byte hex>", ... }         # indices 0..3; 1 and 2 required unless unsafe_any_measurement
    mr_config_id = "<48-byte hex>"              # optional
    accept_tcb_status = ["UpToDate"]            # default; only non-weakening statuses may be listed here
    require_sept_ve_disable = false             # optional hardening
    unsafe_accept_tcb_status, unsafe_skip_tcb_collateral, unsafe_allow_debug, unsafe_any_measurement

    [[accept]]
    platform = "sgx-dcap"
    mrenclave = ["<32-byte hex>", ...]          # mrenclave, or mrsigner with isv_prod_id and min_isv_svn,
    #                                             required unless unsafe_any_measurement
    mrsigner = ["<32-byte hex>", ...]
    isv_prod_id = 0                             # 0..65535 (required with mrsigner alone)
    min_isv_svn = 0                             # 0..65535 (required with mrsigner alone)
    accept_tcb_status, unsafe_accept_tcb_status, unsafe_skip_tcb_collateral, unsafe_allow_debug,
    unsafe_any_measurement

    [[accept]]
    platform = "nitro"
    pcr = { 0 = "<48-byte hex>", 1 = "...", 2 = "...", 8 = "..." }   # PCR0 required unless unsafe_any_measurement

Decisions: the doc's ``permit_provisional_firmware`` is spelled ``unsafe_permit_provisional_firmware`` (the
old spelling is an unknown key with a hint); ``unsafe_any_measurement`` together with a pinned measurement is
contradictory and rejected; TCB status ``Revoked`` can never be accepted; entry numbers in messages and in
``AcceptEntry.number`` are 1-based (``[[accept]] #1`` is the first entry).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NoReturn

from cc_kernel.attestation.platforms.intel_status import TCB_STATUSES
from cc_kernel.attestation.platforms.sev_snp import POLICY_BITS as SNP_POLICY_BITS
from cc_kernel.crypto.hashing import TAG_POLICY, tagged_hash
from cc_kernel.errors import PolicyError

POLICY_VERSION: Final = 1
DEFAULT_FRESH_WITHIN_S: Final = 300
MAX_FRESH_WITHIN_S: Final = 86_400

#: Platforms an ``[[accept]]`` entry may name (same labels as ``VerifiedEvidence.platform``).
POLICY_PLATFORMS: Final = ("sev-snp", "simulation", "tdx", "sgx-dcap", "nitro")
SNP_PRODUCTS: Final = ("Milan", "Genoa", "Turin")
#: The RTMRs a TDX entry pins besides MRTD: RTMR1 (kernel) and RTMR2 (command line, initrd holding cc-kernel).
TDX_CODE_RTMRS: Final = (1, 2)
SNP_SIGNERS: Final = ("vcek", "vlek")
SIMULATION_SIGNERS: Final = ("sim-vcek", "sim-vlek", "vcek", "vlek")
TCB_COMPONENTS: Final = ("bl", "tee", "snp", "ucode", "fmc")

#: Bits the appraisal always forbids (``debug`` unless ``unsafe_allow_debug``).
ALWAYS_FORBIDDEN_POLICY_BITS: Final = ("debug", "migrate_ma")

#: Of Intel's TCB statuses (``TCB_STATUSES``) only ``UpToDate`` is not a weakening.
SAFE_TCB_STATUSES: Final = ("UpToDate",)

#: Every weakening, in the order ``Policy.unsafe_flags`` lists them.
UNSAFE_FLAGS: Final = (
    "unsafe_allow_simulation",
    "unsafe_allow_debug",
    "unsafe_any_measurement",
    "unsafe_permit_provisional_firmware",
    "unsafe_skip_tcb_collateral",
    "unsafe_accept_tcb_status",
)

_ENTRY_FLAGS: Final = (
    "unsafe_allow_debug",
    "unsafe_any_measurement",
    "unsafe_permit_provisional_firmware",
    "unsafe_skip_tcb_collateral",
    "unsafe_accept_tcb_status",
)
_TOP_KEYS: Final = frozenset({"version", "require_fresh_within_s", "accept", *UNSAFE_FLAGS})
_COMMON_ENTRY_KEYS: Final = frozenset({"platform", "unsafe_allow_debug", "unsafe_any_measurement"})
_SNP_KEYS: Final = _COMMON_ENTRY_KEYS | {
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
_INTEL_TCB_KEYS: Final = frozenset(
    {"accept_tcb_status", "unsafe_accept_tcb_status", "unsafe_skip_tcb_collateral"}
)
_TDX_KEYS: Final = (
    _COMMON_ENTRY_KEYS | _INTEL_TCB_KEYS | {"mr_td", "rtmr", "mr_config_id", "require_sept_ve_disable"}
)
_SGX_KEYS: Final = (
    _COMMON_ENTRY_KEYS | _INTEL_TCB_KEYS | {"mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"}
)
_NITRO_KEYS: Final = _COMMON_ENTRY_KEYS | {"pcr"}
_KEYS_BY_PLATFORM: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "sev-snp": _SNP_KEYS,
        "simulation": _SNP_KEYS,
        "tdx": _TDX_KEYS,
        "sgx-dcap": _SGX_KEYS,
        "nitro": _NITRO_KEYS,
    }
)
_ALL_ENTRY_KEYS: Final = frozenset().union(*_KEYS_BY_PLATFORM.values())
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


# --- the parsed policy --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Entry:
    """Fields every ``[[accept]]`` entry has. Flags hold the *effective* value (top level OR entry)."""

    number: int
    platform: str
    unsafe_allow_debug: bool = False
    unsafe_any_measurement: bool = False

    @property
    def unsafe_flags(self) -> tuple[str, ...]:
        """The weakenings in force for this entry, in ``UNSAFE_FLAGS`` order."""
        return tuple(name for name in UNSAFE_FLAGS if bool(getattr(self, name, False)))

    @property
    def label(self) -> str:
        """``[[accept]] #N (platform "P")``, as error messages name the entry."""
        return f'[[accept]] #{self.number} (platform "{self.platform}")'


@dataclass(frozen=True, kw_only=True)
class SnpEntry(_Entry):
    """An ``[[accept]]`` entry for ``sev-snp`` or (SNP-shaped) ``simulation`` evidence.

    ``products``/``signers`` of ``None`` mean "not checked"; ``min_tcb`` maps component -> minimum SVN.
    """

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


@dataclass(frozen=True, kw_only=True)
class TdxEntry(_Entry):
    """An ``[[accept]]`` entry for Intel TDX quotes. ``rtmr`` maps index (0..3) -> expected value."""

    mr_td: tuple[bytes, ...] = ()
    rtmr: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    mr_config_id: bytes | None = None
    accept_tcb_status: tuple[str, ...] = SAFE_TCB_STATUSES
    require_sept_ve_disable: bool = False
    unsafe_accept_tcb_status: tuple[str, ...] = ()
    unsafe_skip_tcb_collateral: bool = False


@dataclass(frozen=True, kw_only=True)
class SgxEntry(_Entry):
    """An ``[[accept]]`` entry for Intel SGX DCAP quotes."""

    mrenclave: tuple[bytes, ...] = ()
    mrsigner: tuple[bytes, ...] = ()
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    accept_tcb_status: tuple[str, ...] = SAFE_TCB_STATUSES
    unsafe_accept_tcb_status: tuple[str, ...] = ()
    unsafe_skip_tcb_collateral: bool = False


@dataclass(frozen=True, kw_only=True)
class NitroEntry(_Entry):
    """An ``[[accept]]`` entry for AWS Nitro attestation documents. ``pcr`` maps index -> expected value."""

    pcr: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))


AcceptEntry = SnpEntry | TdxEntry | SgxEntry | NitroEntry


@dataclass(frozen=True)
class Policy:
    """A loaded reference-value policy. Build it with ``load_policy`` (or ``default_hardware_policy``).

    ``canonical`` is the UTF-8 source with CRLF normalised to LF and no BOM; ``sha256`` is
    ``tagged_hash(TAG_POLICY, canonical)``, the digest the audit log records.
    """

    accept: tuple[AcceptEntry, ...]
    require_fresh_within_s: int
    unsafe_allow_simulation: bool
    source: str
    sha256: bytes
    canonical: bytes = field(repr=False)
    version: int = POLICY_VERSION

    @property
    def unsafe_flags(self) -> tuple[str, ...]:
        """Every weakening in force anywhere in this policy (top level or any entry), in a fixed order."""
        used = {flag for entry in self.accept for flag in entry.unsafe_flags}
        if self.unsafe_allow_simulation:
            used.add("unsafe_allow_simulation")
        return tuple(name for name in UNSAFE_FLAGS if name in used)

    @property
    def platforms(self) -> tuple[str, ...]:
        """The platforms named by the entries, each once, in entry order."""
        return tuple(dict.fromkeys(entry.platform for entry in self.accept))


# --- loading ------------------------------------------------------------------------------------------------


def load_policy(text: str | bytes, *, source: str = "<policy>") -> Policy:
    """Parse and validate a policy from TOML text (the caller reads the file).

    ``source`` names the policy in error messages and results (usually the file path).

    Raises:
        PolicyError: not UTF-8, not TOML (or nested too deeply), unsupported version, unknown key, wrong type
            or hex length,
            contradictory settings, a simulation entry without ``unsafe_allow_simulation = true``, or no
            ``[[accept]]`` entry at all.
        TypeError: ``text`` is neither str nor bytes.
    """
    ctx = _Ctx(source)
    if isinstance(text, bytes | bytearray):
        try:
            decoded = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            ctx.fail(f"the policy is not UTF-8 text ({exc.reason} at byte {exc.start})")
    elif isinstance(text, str):
        decoded = text
    else:
        raise TypeError(f"policy text must be str or bytes, not {type(text).__name__}")
    decoded = decoded.removeprefix("\ufeff").replace("\r\n", "\n")
    try:
        raw = tomllib.loads(decoded)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: the policy is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise PolicyError(
            f"{source}: the policy is not valid TOML for this schema: arrays or inline tables nested too deeply"
        ) from None
    canonical = decoded.encode("utf-8")
    return _build_policy(raw, ctx, canonical)


def _build_policy(raw: dict[str, Any], ctx: _Ctx, canonical: bytes) -> Policy:
    top = "the top-level table"
    ctx.reject_unknown(raw, _TOP_KEYS, top, scope="top")
    # 1. version
    if "version" not in raw:
        ctx.fail(f'missing key "version" in {top} (write version = {POLICY_VERSION} as the first line)')
    version = ctx.integer(raw, "version", top, lo=0, hi=1 << 31)
    if version != POLICY_VERSION:
        ctx.fail(f"unsupported policy version {version} (this cc-kernel reads version {POLICY_VERSION})")
    # 2. freshness window
    fresh = ctx.integer(raw, "require_fresh_within_s", top, lo=1, hi=MAX_FRESH_WITHIN_S)
    # 3. top-level weakenings
    allow_sim = ctx.boolean(raw, "unsafe_allow_simulation", top)
    top_flags: dict[str, Any] = {}
    for name in _ENTRY_FLAGS:
        if name == "unsafe_accept_tcb_status":
            top_flags[name] = ctx.tcb_statuses(raw, name, top, unsafe=True)
        else:
            top_flags[name] = ctx.boolean(raw, name, top)
    # 4. entries (any-of; empty fails closed)
    entries_raw = raw.get("accept")
    if entries_raw is None or entries_raw == []:
        ctx.fail(
            "the policy has no [[accept]] entries, so it would accept nothing (fail closed); add at least "
            "one [[accept]] entry, e.g. with `cc-kernel policy init --simulation --output FILE`"
        )
    if not isinstance(entries_raw, list) or not all(isinstance(e, dict) for e in entries_raw):
        ctx.fail(f'key "accept" must be an array of tables (write [[accept]]), got {_type_name(entries_raw)}')
    entries = tuple(
        _build_entry(item, number, ctx, top_flags, allow_sim) for number, item in enumerate(entries_raw, 1)
    )
    return Policy(
        accept=entries,
        require_fresh_within_s=DEFAULT_FRESH_WITHIN_S if fresh is None else fresh,
        unsafe_allow_simulation=bool(allow_sim),
        source=ctx.source,
        sha256=tagged_hash(TAG_POLICY, canonical),
        canonical=canonical,
        version=version,
    )


def _build_entry(
    item: dict[str, Any], number: int, ctx: _Ctx, top_flags: Mapping[str, Any], allow_sim: bool | None
) -> AcceptEntry:
    platform = item.get("platform")
    if platform is None:
        ctx.fail(f'[[accept]] #{number} has no "platform" key (one of {_quoted(POLICY_PLATFORMS)})')
    if not isinstance(platform, str) or platform not in POLICY_PLATFORMS:
        ctx.fail(
            f'key "platform" in [[accept]] #{number} must be one of {_quoted(POLICY_PLATFORMS)}, '
            f"got {_describe(platform)}"
        )
    where = f'[[accept]] #{number} (platform "{platform}")'
    ctx.reject_unknown(item, _KEYS_BY_PLATFORM[platform], where, scope=platform)
    if platform == "simulation" and not allow_sim:
        ctx.fail(
            f"{where} accepts simulated evidence, but the policy does not set unsafe_allow_simulation = true "
            "at the top level; a simulated TEE gives no hardware protection, so only a policy meant for the "
            "simulation kernelspec may set it (above the first [[accept]])"
        )
    flags: dict[str, Any] = {}
    for name in _ENTRY_FLAGS:
        if name not in _KEYS_BY_PLATFORM[platform]:
            continue
        if name == "unsafe_accept_tcb_status":
            mine = ctx.tcb_statuses(item, name, where, unsafe=True) or ()
            flags[name] = tuple(dict.fromkeys((*(top_flags[name] or ()), *mine)))
            continue
        value = ctx.boolean(item, name, where)
        if top_flags[name] and value is False:
            ctx.fail(
                f"{where} sets {name} = false but the top level sets it to true; remove one of them "
                "(an entry cannot undo a top-level weakening)"
            )
        flags[name] = bool(top_flags[name]) or bool(value)
    common: dict[str, Any] = {"number": number, "platform": platform, **flags}
    if platform in ("sev-snp", "simulation"):
        return _build_snp(item, where, ctx, common)
    if platform == "tdx":
        return _build_tdx(item, where, ctx, common)
    if platform == "sgx-dcap":
        return _build_sgx(item, where, ctx, common)
    return _build_nitro(item, where, ctx, common)


#: What "pins the code" means per platform (named in errors, docs/policy.md "Every entry pins the code").
CODE_PIN_RULE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sev-snp": '"measurement" (the SEV-SNP launch MEASUREMENT)',
        "simulation": '"measurement" (the simulated launch MEASUREMENT)',
        "tdx": '"mr_td" (MRTD: the TD firmware) and "rtmr" indices 1 and 2 (RTMR1: the kernel; RTMR2: the '
        "command line and the initrd that holds cc-kernel)",
        "sgx-dcap": '"mrenclave" (MRENCLAVE), or "mrsigner" (MRSIGNER) together with "isv_prod_id" (ISVPRODID) '
        'and "min_isv_svn" (the minimum ISVSVN)',
        "nitro": '"pcr" with index 0 (PCR0: the enclave image file)',
    }
)


_INIT_HINT: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sev-snp": "--platform sev-snp --measurement HEX",
        "simulation": "--simulation",
        "tdx": "--platform tdx --measurement MRTD --rtmr 1=HEX --rtmr 2=HEX",
        "sgx-dcap": "--platform sgx-dcap --measurement MRENCLAVE",
        "nitro": "--platform nitro --measurement PCR0",
    }
)


def _require_measurement(
    ctx: _Ctx, where: str, common: Mapping[str, Any], pinned: Sequence[str], missing: Sequence[str]
) -> None:
    """Every entry pins the platform's code measurement unless ``unsafe_any_measurement`` is in force.

    ``pinned`` names the code-identifying keys the entry sets; ``missing`` the ones the rule still needs.
    """
    platform = common["platform"]
    if common["unsafe_any_measurement"] and pinned:
        ctx.fail(
            f"{where} pins {pinned[0]} but unsafe_any_measurement = true is in force for it; "
            "these contradict each other: remove one"
        )
    if not common["unsafe_any_measurement"] and missing:
        ctx.fail(
            f"{where} does not pin the enclave's code: {_quoted(missing)} missing; a {platform} entry must set "
            f"{CODE_PIN_RULE[platform]} (e.g. `cc-kernel policy init {_INIT_HINT[platform]}`), "
            "or, to accept any enclave code, set unsafe_any_measurement = true"
        )


def _build_snp(item: dict[str, Any], where: str, ctx: _Ctx, common: dict[str, Any]) -> SnpEntry:
    simulation = common["platform"] == "simulation"
    product_choices = None if simulation else SNP_PRODUCTS
    products = ctx.strings(item, "products", where, choices=product_choices)
    signers = ctx.strings(item, "signers", where, choices=SIMULATION_SIGNERS if simulation else SNP_SIGNERS)
    if signers is None and not simulation:
        signers = ("vcek",)
    measurements = ctx.hex_list(item, "measurement", where, size=48)
    _require_measurement(
        ctx, where, common, ["measurement"] if measurements else [], [] if measurements else ["measurement"]
    )
    vmpl = ctx.integer(item, "vmpl", where, lo=0, hi=3)
    min_tcb = ctx.tcb(item, "min_tcb", where)
    by_product: dict[str, Mapping[str, int]] = {}
    by_raw = item.get("min_tcb_by_product")
    if by_raw is not None:
        if not isinstance(by_raw, dict):
            ctx.fail(f'key "min_tcb_by_product" in {where} must be a table, got {_describe(by_raw)}')
        for product in by_raw:
            if product_choices is not None and product not in product_choices:
                ctx.fail(
                    f'unknown product "{product}" in min_tcb_by_product of {where} '
                    f"(one of {_quoted(product_choices)})"
                )
            if products is not None and product not in products:
                ctx.fail(
                    f'min_tcb_by_product of {where} names "{product}", which is not in its products list'
                )
            by_product[product] = (
                ctx.tcb(by_raw, product, where, label=f"min_tcb_by_product.{product} of {where}") or {}
            )
    forbid = ctx.strings(item, "forbid_policy_bits", where, choices=tuple(SNP_POLICY_BITS)) or ()
    require = (
        ctx.strings(
            item,
            "require_policy_bits",
            where,
            choices=tuple(b for b in SNP_POLICY_BITS if b not in ALWAYS_FORBIDDEN_POLICY_BITS),
        )
        or ()
    )
    if common["unsafe_allow_debug"] and "debug" in forbid:
        ctx.fail(f'{where} forbids policy bit "debug" but unsafe_allow_debug = true is in force: remove one')
    both = sorted(set(forbid) & set(require))
    if both:
        ctx.fail(f'{where} both forbids and requires policy bit "{both[0]}"')
    host_data = ctx.hex_value(item, "host_data", where, size=32)
    return SnpEntry(
        **common,
        products=products,
        signers=signers,
        measurements=measurements or (),
        vmpl=0 if vmpl is None else vmpl,
        min_tcb=min_tcb if min_tcb is not None else MappingProxyType({}),
        min_tcb_by_product=MappingProxyType(by_product),
        min_guest_svn=ctx.integer(item, "min_guest_svn", where, lo=0, hi=0xFFFFFFFF),
        host_data=host_data,
        forbid_policy_bits=forbid,
        require_policy_bits=require,
        min_report_version=ctx.integer(item, "min_report_version", where, lo=0, hi=0xFFFFFFFF),
    )


def _build_tdx(item: dict[str, Any], where: str, ctx: _Ctx, common: dict[str, Any]) -> TdxEntry:
    mr_td = ctx.hex_list(item, "mr_td", where, size=48)
    rtmr = ctx.hex_map(item, "rtmr", where, size=48, max_index=3, what="RTMR index")
    accept = ctx.tcb_statuses(item, "accept_tcb_status", where, unsafe=False)
    sept = ctx.boolean(item, "require_sept_ve_disable", where)
    mr_config_id = ctx.hex_value(item, "mr_config_id", where, size=48)
    missing = [] if mr_td else ["mr_td"]
    missing += [f"rtmr.{index}" for index in TDX_CODE_RTMRS if index not in rtmr]
    _require_measurement(ctx, where, common, ["mr_td"] if mr_td else [], missing)
    return TdxEntry(
        **common,
        mr_td=mr_td or (),
        rtmr=rtmr,
        mr_config_id=mr_config_id,
        accept_tcb_status=SAFE_TCB_STATUSES if accept is None else accept,
        require_sept_ve_disable=bool(sept),
    )


def _build_sgx(item: dict[str, Any], where: str, ctx: _Ctx, common: dict[str, Any]) -> SgxEntry:
    mrenclave = ctx.hex_list(item, "mrenclave", where, size=32)
    mrsigner = ctx.hex_list(item, "mrsigner", where, size=32)
    isv_prod_id = ctx.integer(item, "isv_prod_id", where, lo=0, hi=0xFFFF)
    min_isv_svn = ctx.integer(item, "min_isv_svn", where, lo=0, hi=0xFFFF)
    accept = ctx.tcb_statuses(item, "accept_tcb_status", where, unsafe=False)
    pinned = [name for name, value in (("mrenclave", mrenclave), ("mrsigner", mrsigner)) if value]
    missing: list[str] = []
    if mrsigner and not mrenclave:  # a signer signs many enclaves: product id and minimum version narrow it
        missing = [key for key, value in (("isv_prod_id", isv_prod_id), ("min_isv_svn", min_isv_svn)) if value is None]
    elif not mrenclave:
        missing = ["mrenclave"]
    _require_measurement(ctx, where, common, pinned, missing)
    return SgxEntry(
        **common,
        mrenclave=mrenclave or (),
        mrsigner=mrsigner or (),
        isv_prod_id=isv_prod_id,
        min_isv_svn=min_isv_svn,
        accept_tcb_status=SAFE_TCB_STATUSES if accept is None else accept,
    )


def _build_nitro(item: dict[str, Any], where: str, ctx: _Ctx, common: dict[str, Any]) -> NitroEntry:
    pcr = ctx.hex_map(item, "pcr", where, size=48, max_index=31, what="PCR index")
    # PCR3 (IAM role), PCR4 (instance) and PCR8 (EIF signer) are chosen by the operator: only PCR0 pins the code
    _require_measurement(ctx, where, common, ["pcr.0"] if 0 in pcr else [], [] if 0 in pcr else ["pcr.0"])
    return NitroEntry(**common, pcr=pcr)


# --- strict field readers -----------------------------------------------------------------------------------


class _Ctx:
    """Reads typed values out of a parsed TOML table; every failure is a PolicyError naming the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> NoReturn:
        raise PolicyError(f"{self.source}: {message}")

    def reject_unknown(
        self, table: Mapping[str, Any], allowed: frozenset[str], where: str, *, scope: str
    ) -> None:
        for key in table:
            if key not in allowed:
                self.fail(f'unknown key "{key}" in {where}{_hint(key, allowed, scope)}')

    def boolean(self, table: Mapping[str, Any], key: str, where: str) -> bool | None:
        value = table.get(key)
        if value is not None and not isinstance(value, bool):
            self.fail(f'key "{key}" in {where} must be true or false, got {_describe(value)}')
        return value

    def integer(self, table: Mapping[str, Any], key: str, where: str, *, lo: int, hi: int) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(f'key "{key}" in {where} must be an integer from {lo} to {hi}, got {_describe(value)}')
        return value

    def strings(
        self, table: Mapping[str, Any], key: str, where: str, *, choices: Sequence[str] | None
    ) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f'key "{key}" in {where} must be an array of strings, got {_describe(value)}')
        if not value:
            self.fail(
                f'key "{key}" in {where} is an empty array, which would accept nothing; '
                "remove it or list values"
            )
        for v in value:
            if choices is not None and v not in choices:
                self.fail(f'key "{key}" in {where} must list values from {_quoted(choices)}, got "{v}"')
        return tuple(dict.fromkeys(value))

    def hex_value(self, table: Mapping[str, Any], key: str, where: str, *, size: int) -> bytes | None:
        value = table.get(key)
        if value is None:
            return None
        return self.hex_text(value, f'key "{key}" in {where}', size)

    def hex_list(
        self, table: Mapping[str, Any], key: str, where: str, *, size: int
    ) -> tuple[bytes, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        name = f'key "{key}" in {where}'
        if isinstance(value, str):
            self.fail(f'{name} must be an array of hex strings (write {key} = ["..."]), got a single string')
        if not isinstance(value, list):
            self.fail(f"{name} must be an array of hex strings, got {_describe(value)}")
        if not value:
            self.fail(f"{name} is an empty array, which would accept nothing; pin at least one value")
        return tuple(
            dict.fromkeys(self.hex_text(v, f"{name} (item {i})", size) for i, v in enumerate(value, 1))
        )

    def hex_map(
        self, table: Mapping[str, Any], key: str, where: str, *, size: int, max_index: int, what: str
    ) -> Mapping[int, bytes]:
        value = table.get(key)
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, dict):
            self.fail(f'key "{key}" in {where} must be a table like {{ 1 = "..." }}, got {_describe(value)}')
        out: dict[int, bytes] = {}
        for index, item in value.items():
            if not index.isdigit() or not 0 <= int(index) <= max_index or str(int(index)) != index:
                self.fail(f'key "{index}" in {key} of {where} must be a {what} from 0 to {max_index}')
            out[int(index)] = self.hex_text(item, f'key "{index}" in {key} of {where}', size)
        return MappingProxyType(dict(sorted(out.items())))

    def tcb(
        self, table: Mapping[str, Any], key: str, where: str, *, label: str = ""
    ) -> Mapping[str, int] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(
                f'key "{key}" in {where} must be a table like {{ bl = 3, snp = 20 }}, got {_describe(value)}'
            )
        inner = label or f"{key} of {where}"
        for component in value:
            if component not in TCB_COMPONENTS:
                self.fail(
                    f'unknown key "{component}" in {inner} (TCB components: {_quoted(TCB_COMPONENTS)})'
                    f"{_close(component, TCB_COMPONENTS)}"
                )
        out = {c: self.integer(value, c, inner, lo=0, hi=255) for c in TCB_COMPONENTS if c in value}
        return MappingProxyType({c: v for c, v in out.items() if v is not None})

    def tcb_statuses(
        self, table: Mapping[str, Any], key: str, where: str, *, unsafe: bool
    ) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(
                f'key "{key}" in {where} must be an array of TCB status strings, got {_describe(value)}'
            )
        for status in value:
            if status not in TCB_STATUSES:
                self.fail(
                    f'key "{key}" in {where} lists unknown TCB status "{status}" '
                    f"(one of {_quoted(TCB_STATUSES)})"
                )
            if status == "Revoked":
                self.fail(f'key "{key}" in {where} lists "Revoked": a revoked platform is never acceptable')
            if unsafe and status in SAFE_TCB_STATUSES:
                self.fail(f'key "{key}" in {where} lists "{status}", which is accepted by default; remove it')
            if not unsafe and status not in SAFE_TCB_STATUSES:
                self.fail(
                    f'key "{key}" in {where} lists "{status}", a weakening: '
                    "move it to unsafe_accept_tcb_status"
                )
        if not unsafe and not value:
            self.fail(f'key "{key}" in {where} is an empty array, which would accept nothing')
        return tuple(dict.fromkeys(value))

    def hex_text(self, value: object, name: str, size: int) -> bytes:
        want = f"{size} bytes of hex ({2 * size} hex digits)"
        if not isinstance(value, str):
            self.fail(f"{name} must be {want}, got {_describe(value)}")
        if value[:2].lower() == "0x":
            self.fail(f'{name} must be {want} without a "0x" prefix')
        if not all(c in _HEX_DIGITS for c in value):
            self.fail(f"{name} must be {want}, got a string that is not hex: {value[:24]!r}")
        if len(value) != 2 * size:
            self.fail(f"{name} must be {want}, got {len(value)} characters")
        return bytes.fromhex(value)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _describe(value: object) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = "<nested too deeply to show>"
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_type_name(value)} {text}"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _close(key: str, allowed: Sequence[str] | frozenset[str]) -> str:
    match = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return f'; did you mean "{match[0]}"?' if match else ""


def _hint(key: str, allowed: frozenset[str], scope: str) -> str:
    if f"unsafe_{key}" in UNSAFE_FLAGS:
        if f"unsafe_{key}" in allowed:
            return f'; weakenings are spelled unsafe_*: did you mean "unsafe_{key}"?'
        return f'; weakenings are spelled unsafe_* ("unsafe_{key}")'
    if scope == "top":
        if key in _ALL_ENTRY_KEYS:
            return f'; "{key}" belongs inside an [[accept]] entry'
        return _close(key, allowed)
    if key == "unsafe_allow_simulation":
        return (
            "; unsafe_allow_simulation is a top-level key: move it above the first [[accept]] "
            "(in TOML, keys after an [[accept]] header belong to that entry)"
        )
    if key in ("version", "require_fresh_within_s"):
        return (
            f"; {key} is a top-level key: move it above the first [[accept]] "
            "(in TOML, keys after an [[accept]] header belong to that entry)"
        )
    close = _close(key, allowed)
    if close:
        return close
    owners = [p for p, keys in _KEYS_BY_PLATFORM.items() if key in keys and p != "simulation"]
    if owners:
        return f'; "{key}" applies to platform {_quoted(owners)}, not "{scope}"'
    return ""


# --- built-in policies and rendering ------------------------------------------------------------------------

_DEFAULT_HARDWARE_POLICY = """\
# Built-in policy for offline evidence verification when no --policy is given.
# It pins NO measurement (unsafe_any_measurement), so a result is at best "warning":
# it shows that genuine, non-debug TEE hardware signed the evidence, not which code ran.
version = 1
require_fresh_within_s = 300
unsafe_any_measurement = true

[[accept]]
platform = "sev-snp"
signers = ["vcek", "vlek"]

[[accept]]
platform = "tdx"

[[accept]]
platform = "sgx-dcap"

[[accept]]
platform = "nitro"
"""


def default_hardware_policy() -> Policy:
    """The built-in "any measurement, never debug, never simulation" policy for offline verification.

    It sets ``unsafe_any_measurement`` (so results are never better than ``warning``); every other check
    (debug, VMPL 0, no migration agent, no provisional firmware, Intel TCB status UpToDate with collateral)
    keeps its strict default.
    """
    return load_policy(_DEFAULT_HARDWARE_POLICY, source="<built-in: any measurement, no debug>")


_MEASUREMENT_KEY: Final[Mapping[str, tuple[str, int]]] = MappingProxyType(
    {
        "sev-snp": ("measurement", 48),
        "simulation": ("measurement", 48),
        "tdx": ("mr_td", 48),
        "sgx-dcap": ("mrenclave", 32),
        "nitro": ("pcr", 48),
    }
)


def render_policy(
    platform: str,
    measurements: Sequence[bytes | str],
    *,
    allow_simulation: bool = False,
    simulation_measurements: Sequence[bytes | str] = (),
    min_tcb: Mapping[str, int] | None = None,
    signers: Sequence[str] | None = None,
    require_fresh_within_s: int = DEFAULT_FRESH_WITHIN_S,
    note: str | None = None,
    rtmr: Mapping[int, bytes | str] | None = None,
) -> str:
    """Render a commented TOML policy pinning ``measurements`` for ``platform`` (``cc-kernel policy init``).

    ``platform = "simulation"`` implies ``allow_simulation``. For a hardware platform, ``allow_simulation``
    adds ``unsafe_allow_simulation = true`` and a ``simulation`` entry pinning ``simulation_measurements``
    (the simulated enclave's measurement differs from a hardware launch digest). ``min_tcb`` and ``signers``
    apply to SEV-SNP/simulation entries. ``rtmr`` (TDX only) maps RTMR index -> value; a TDX entry needs RTMR1
    and RTMR2 besides MRTD. ``note`` becomes a comment line (e.g. who generated it, when).
    The text is checked with ``load_policy`` before it is returned, so it always round-trips.

    Raises:
        PolicyError: unknown platform, no or badly sized measurement, simulation requested without a
            simulated measurement, or options that do not apply to the platform.
        TypeError: ``measurements`` is a single str/bytes value instead of a sequence of them.
    """
    ctx = _Ctx("policy init")
    if platform not in POLICY_PLATFORMS:
        ctx.fail(f'unknown platform "{platform}" (one of {_quoted(POLICY_PLATFORMS)})')
    if platform == "simulation":
        allow_simulation = True
        simulation_measurements = ()
    if (min_tcb or signers) and platform not in ("sev-snp", "simulation"):
        ctx.fail(f'min_tcb and signers apply to platform "sev-snp" or "simulation", not "{platform}"')
    if rtmr and platform != "tdx":
        ctx.fail(f'RTMRs apply to platform "tdx", not "{platform}"')
    rtmr_hex: dict[int, str] = {}
    for index, value in sorted((rtmr or {}).items()):
        if not 0 <= index <= 3:
            ctx.fail(f"RTMR index {index} must be from 0 to 3")
        text = value.hex() if isinstance(value, bytes) else value.strip().lower()
        ctx.hex_text(text, f"RTMR{index} {text[:24]!r}", 48)
        rtmr_hex[index] = text
    if allow_simulation and platform != "simulation" and not simulation_measurements:
        ctx.fail("allowing simulation needs the simulated enclave's measurement(s) as well")
    pinned = _hex_items(ctx, platform, measurements)
    lines = [
        "# Confidential Python attestation policy (schema: docs/policy.md in cc-kernel),",
        "# written by `cc-kernel policy init`.",
        "# The kernel sends no code to an enclave unless its verified evidence matches an [[accept]] entry.",
        "# Every weakening is spelled unsafe_*; each one in use turns the badge amber and is written to the",
        "# audit log. After a deliberate enclave change, re-pin: `cc-kernel policy init ... --force`.",
    ]
    if note:
        lines.extend(f"# {line}" for line in note.splitlines())
    lines += [
        "",
        "# Schema version of this file.",
        f"version = {POLICY_VERSION}",
        "",
        "# Maximum age in seconds of the evidence when appraised (and of a Nitro document's timestamp).",
        f"require_fresh_within_s = {require_fresh_within_s}",
        "",
    ]
    if allow_simulation:
        lines += [
            "# WEAKENING: accept the SIMULATED TEE. It gives no hardware protection; results say SIMULATION",
            "# and are never 'affirming'. Remove this line (and the simulation entry) for real hardware.",
            "unsafe_allow_simulation = true",
            "",
        ]
    lines += [
        "# Other weakenings, deliberately off (uncomment here, above the first [[accept]], to apply to all):",
        "# unsafe_allow_debug = true                  # accept a TEE whose host can read its memory",
        "# unsafe_any_measurement = true              # accept any enclave code",
        "# unsafe_permit_provisional_firmware = true  # SEV-SNP: current firmware not yet committed",
        '# unsafe_accept_tcb_status = ["SWHardeningNeeded"]  # TDX/SGX: accept a platform needing updates',
        "# unsafe_skip_tcb_collateral = true          # TDX/SGX: accept an unknown TCB status",
        "",
        "# Any one [[accept]] entry matching is enough.",
    ]
    lines += _render_entry(platform, pinned, min_tcb=min_tcb, signers=signers, rtmr=rtmr_hex)
    if allow_simulation and platform != "simulation":
        lines.append("")
        lines += _render_entry(
            "simulation", _hex_items(ctx, "simulation", simulation_measurements), min_tcb=None, signers=None
        )
    text = "\n".join(lines) + "\n"
    load_policy(text, source="policy init")  # the promise: whatever we render, we can load
    return text


def _hex_items(ctx: _Ctx, platform: str, values: Sequence[bytes | str]) -> list[str]:
    key, size = _MEASUREMENT_KEY[platform]
    if isinstance(values, str | bytes):
        raise TypeError("measurements must be a sequence of values, not a single value")
    if not values:
        ctx.fail(f'platform "{platform}" needs at least one measurement to pin ({key}, {size} bytes)')
    out: list[str] = []
    for value in values:
        text = value.hex() if isinstance(value, bytes) else value.strip().lower()
        ctx.hex_text(text, f"measurement {text[:24]!r} for {key}", size)
        out.append(text)
    return list(dict.fromkeys(out))


def _render_entry(
    platform: str,
    pinned: list[str],
    *,
    min_tcb: Mapping[str, int] | None,
    signers: Sequence[str] | None,
    rtmr: Mapping[int, str] | None = None,
) -> list[str]:
    out = ["[[accept]]"]
    if platform in ("sev-snp", "simulation"):
        if platform == "sev-snp":
            out += [
                "# AMD SEV-SNP confidential VM, verified against AMD's pinned roots.",
                'platform = "sev-snp"',
            ]
            out.append('# Keys allowed to sign the report: "vcek" (per chip); add "vlek" for AWS.')
            out.append(f"signers = [{', '.join(_toml_str(s) for s in (signers or ('vcek',)))}]")
        else:
            out += [
                "# The simulated TEE (byte-exact SEV-SNP reports signed by the local simulation authority).",
                'platform = "simulation"',
            ]
            if signers:
                out.append(f"signers = [{', '.join(_toml_str(s) for s in signers)}]")
        out.append("# SHA-384 launch measurement(s) of the enclave, 48 bytes hex each.")
        out += _toml_list("measurement", pinned)
        out += ["# The enclave must make its report at VMPL 0 (no SVSM or paravisor below it).", "vmpl = 0"]
        if min_tcb:
            parts = ", ".join(f"{c} = {int(min_tcb[c])}" for c in TCB_COMPONENTS if c in min_tcb)
            out += [
                "# Minimum reported TCB: every component must be at least its minimum.",
                f"min_tcb = {{ {parts} }}",
            ]
    elif platform == "tdx":
        out += ["# Intel TDX trust domain, verified against Intel's pinned SGX root.", 'platform = "tdx"']
        out.append("# MRTD (build-time measurement of the TD firmware), 48 bytes hex each.")
        out += _toml_list("mr_td", pinned)
        if rtmr:
            out.append("# RTMR1: the kernel; RTMR2: the command line and the initrd holding cc-kernel.")
            parts = ", ".join(f"{index} = {_toml_str(value)}" for index, value in sorted(rtmr.items()))
            out.append(f"rtmr = {{ {parts} }}")
        out += [
            "# Only an up-to-date platform TCB (needs collateral in the envelope).",
            'accept_tcb_status = ["UpToDate"]',
        ]
    elif platform == "sgx-dcap":
        out += [
            "# Intel SGX enclave (DCAP quote), verified against Intel's pinned SGX root.",
            'platform = "sgx-dcap"',
        ]
        out.append("# MRENCLAVE of the enclave, 32 bytes hex each.")
        out += _toml_list("mrenclave", pinned)
        out += [
            "# Only an up-to-date platform TCB (needs collateral in the envelope).",
            'accept_tcb_status = ["UpToDate"]',
        ]
    else:
        out += ["# AWS Nitro Enclave, verified against the pinned AWS Nitro root.", 'platform = "nitro"']
        out.append("# PCR0 (hash of the enclave image file), 48 bytes hex.")
        out.append(f"pcr = {{ 0 = {_toml_str(pinned[0])} }}")
        # several PCR0 values need several entries: Nitro pins are per-index, not any-of
        for extra in pinned[1:]:
            out += ["", "[[accept]]", 'platform = "nitro"', f"pcr = {{ 0 = {_toml_str(extra)} }}"]
    return out


def _toml_list(key: str, values: Sequence[str]) -> list[str]:
    return [f"{key} = [", *(f"  {_toml_str(v)}," for v in values), "]"]


def _toml_str(value: str) -> str:
    if not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"refusing to render an unusual string value {value!r}")
    return f'"{value}"'
