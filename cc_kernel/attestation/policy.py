"""Pure attestation layer: the reference-value policy (schema: docs/policy.md), parsed strictly from TOML text.

Invariants: no I/O (callers read the file and pass its bytes); the schema is strict (unknown keys, wrong types
and wrong hex lengths are ``PolicyError``s naming the key and its table); a policy with no ``[[accept]]``
entry cannot be loaded (fail closed); every entry pins the platform's code measurement (``CODE_PIN_RULE``)
unless ``unsafe_any_measurement`` is in force for it; every key that is not spelled ``unsafe_*`` can only
*narrow* what the built-in baseline accepts, so every weakening is visible in ``Policy.unsafe_flags``.

The schema, its weakenings and the appraisal rules, with the decisions behind them: docs/policy.md.

Each platform's entry type (``cc_kernel.attestation.appraisal``: ``snp``, ``intel``, ``nitro``) reads its own
keys and renders its own entry; this module reads the top level and hands every entry to its platform's type.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cc_kernel.attestation.appraisal.entry import ENTRY_FLAGS, UNSAFE_FLAGS, AcceptEntry
from cc_kernel.attestation.appraisal.intel import read_tcb_statuses
from cc_kernel.attestation.appraisal.reader import Reader, close_match, describe, quoted, type_name
from cc_kernel.attestation.appraisal.registry import ALL_ENTRY_KEYS, ENTRY_TYPES, POLICY_PLATFORMS
from cc_kernel.crypto.hashing import TAG_POLICY, tagged_hash
from cc_kernel.errors import PolicyError

POLICY_VERSION: Final = 1
DEFAULT_FRESH_WITHIN_S: Final = 300
MAX_FRESH_WITHIN_S: Final = 86_400

#: The keys of the top-level table.
TOP_KEYS: Final = frozenset({"version", "require_fresh_within_s", "accept", *UNSAFE_FLAGS})


# --- the parsed policy --------------------------------------------------------------------------------------


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
    reader = Reader(source)
    if isinstance(text, bytes | bytearray):
        try:
            decoded = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            reader.fail(f"the policy is not UTF-8 text ({exc.reason} at byte {exc.start})")
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
    return _build_policy(raw, reader, canonical)


def _build_policy(raw: dict[str, Any], reader: Reader, canonical: bytes) -> Policy:
    top = "the top-level table"
    reject_unknown(reader, raw, TOP_KEYS, top, scope="top")
    # 1. version
    if "version" not in raw:
        reader.fail(f'missing key "version" in {top} (write version = {POLICY_VERSION} as the first line)')
    version = reader.integer(raw, "version", top, lo=0, hi=1 << 31)
    if version != POLICY_VERSION:
        reader.fail(f"unsupported policy version {version} (this cc-kernel reads version {POLICY_VERSION})")
    # 2. freshness window
    fresh = reader.integer(raw, "require_fresh_within_s", top, lo=1, hi=MAX_FRESH_WITHIN_S)
    # 3. top-level weakenings
    allow_sim = reader.boolean(raw, "unsafe_allow_simulation", top)
    top_flags: dict[str, Any] = {}
    for name in ENTRY_FLAGS:
        if name == "unsafe_accept_tcb_status":
            top_flags[name] = read_tcb_statuses(reader, raw, name, top, unsafe=True)
        else:
            top_flags[name] = reader.boolean(raw, name, top)
    # 4. entries (any-of; empty fails closed)
    entries_raw = raw.get("accept")
    if entries_raw is None or entries_raw == []:
        reader.fail(
            "the policy has no [[accept]] entries, so it would accept nothing (fail closed); add at least "
            "one [[accept]] entry, e.g. with `cc-kernel policy init --simulation --output FILE`"
        )
    if not isinstance(entries_raw, list) or not all(isinstance(e, dict) for e in entries_raw):
        reader.fail(f'key "accept" must be an array of tables (write [[accept]]), got {type_name(entries_raw)}')
    entries = tuple(
        _build_entry(item, number, reader, top_flags, allow_sim) for number, item in enumerate(entries_raw, 1)
    )
    return Policy(
        accept=entries,
        require_fresh_within_s=DEFAULT_FRESH_WITHIN_S if fresh is None else fresh,
        unsafe_allow_simulation=bool(allow_sim),
        source=reader.source,
        sha256=tagged_hash(TAG_POLICY, canonical),
        canonical=canonical,
        version=version,
    )


def _build_entry(
    item: dict[str, Any], number: int, reader: Reader, top_flags: Mapping[str, Any], allow_sim: bool | None
) -> AcceptEntry:
    platform = item.get("platform")
    if platform is None:
        reader.fail(f'[[accept]] #{number} has no "platform" key (one of {quoted(POLICY_PLATFORMS)})')
    if not isinstance(platform, str) or platform not in POLICY_PLATFORMS:
        reader.fail(
            f'key "platform" in [[accept]] #{number} must be one of {quoted(POLICY_PLATFORMS)}, '
            f"got {describe(platform)}"
        )
    entry_cls = ENTRY_TYPES[platform]
    where = f'[[accept]] #{number} (platform "{platform}")'
    reject_unknown(reader, item, entry_cls.KEYS, where, scope=platform)
    if platform == "simulation" and not allow_sim:
        reader.fail(
            f"{where} accepts simulated evidence, but the policy does not set unsafe_allow_simulation = true "
            "at the top level; a simulated TEE gives no hardware protection, so only a policy meant for the "
            "simulation kernelspec may set it (above the first [[accept]])"
        )
    flags: dict[str, Any] = {}
    for name in ENTRY_FLAGS:
        if name not in entry_cls.KEYS:
            continue
        if name == "unsafe_accept_tcb_status":
            mine = read_tcb_statuses(reader, item, name, where, unsafe=True) or ()
            flags[name] = tuple(dict.fromkeys((*(top_flags[name] or ()), *mine)))
            continue
        value = reader.boolean(item, name, where)
        if top_flags[name] and value is False:
            reader.fail(
                f"{where} sets {name} = false but the top level sets it to true; remove one of them "
                "(an entry cannot undo a top-level weakening)"
            )
        flags[name] = bool(top_flags[name]) or bool(value)
    common: dict[str, Any] = {"number": number, "platform": platform, **flags}
    return entry_cls.build(item, where, reader, common)


def reject_unknown(
    reader: Reader, table: Mapping[str, Any], allowed: frozenset[str], where: str, *, scope: str
) -> None:
    """Fail on the first key of ``table`` not in ``allowed``, with a hint where one helps."""
    for key in table:
        if key not in allowed:
            reader.fail(f'unknown key "{key}" in {where}{_hint(key, allowed, scope)}')


def _hint(key: str, allowed: frozenset[str], scope: str) -> str:
    if f"unsafe_{key}" in UNSAFE_FLAGS:
        if f"unsafe_{key}" in allowed:
            return f'; weakenings are spelled unsafe_*: did you mean "unsafe_{key}"?'
        return f'; weakenings are spelled unsafe_* ("unsafe_{key}")'
    if scope == "top":
        if key in ALL_ENTRY_KEYS:
            return f'; "{key}" belongs inside an [[accept]] entry'
        return close_match(key, allowed)
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
    close = close_match(key, allowed)
    if close:
        return close
    owners = [p for p, cls in ENTRY_TYPES.items() if key in cls.KEYS and p != "simulation"]
    if owners:
        return f'; "{key}" applies to platform {quoted(owners)}, not "{scope}"'
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
    reader = Reader("policy init")
    if platform not in POLICY_PLATFORMS:
        reader.fail(f'unknown platform "{platform}" (one of {quoted(POLICY_PLATFORMS)})')
    if platform == "simulation":
        allow_simulation = True
        simulation_measurements = ()
    entry_cls = ENTRY_TYPES[platform]
    options = {"min_tcb": min_tcb, "signers": signers, "rtmr": rtmr}
    for names, what in ((("min_tcb", "signers"), "min_tcb and signers"), (("rtmr",), "RTMRs")):
        if any(options[name] for name in names) and names[0] not in entry_cls.RENDER_OPTIONS:
            owners = " or ".join(f'"{p}"' for p, cls in ENTRY_TYPES.items() if names[0] in cls.RENDER_OPTIONS)
            reader.fail(f'{what} apply to platform {owners}, not "{platform}"')
    if allow_simulation and platform != "simulation" and not simulation_measurements:
        reader.fail("allowing simulation needs the simulated enclave's measurement(s) as well")
    pinned = _hex_items(reader, platform, measurements)
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
    lines += entry_cls.render(reader, pinned, options)
    if allow_simulation and platform != "simulation":
        lines.append("")
        simulated = _hex_items(reader, "simulation", simulation_measurements)
        lines += ENTRY_TYPES["simulation"].render(reader, simulated, {})
    text = "\n".join(lines) + "\n"
    load_policy(text, source="policy init")  # the promise: whatever we render, we can load
    return text


def _hex_items(reader: Reader, platform: str, values: Sequence[bytes | str]) -> list[str]:
    key, size = ENTRY_TYPES[platform].MEASUREMENT_KEY
    if isinstance(values, str | bytes):
        raise TypeError("measurements must be a sequence of values, not a single value")
    if not values:
        reader.fail(f'platform "{platform}" needs at least one measurement to pin ({key}, {size} bytes)')
    out: list[str] = []
    for value in values:
        text = value.hex() if isinstance(value, bytes) else value.strip().lower()
        reader.hex_text(text, f"measurement {text[:24]!r} for {key}", size)
        out.append(text)
    return list(dict.fromkeys(out))


