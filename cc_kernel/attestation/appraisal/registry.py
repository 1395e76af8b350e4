"""Pure attestation layer: the ``[[accept]]`` entry type of each platform, the one list of them.

Invariant: every platform a policy may name has exactly one entry type here, keyed by its ``PLATFORM``; the
policy loader, ``policy init`` and the appraisal find a platform's rules only through this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from cc_kernel.attestation.appraisal.entry import AcceptEntry
from cc_kernel.attestation.appraisal.intel import SgxEntry, TdxEntry
from cc_kernel.attestation.appraisal.nitro import NitroEntry
from cc_kernel.attestation.appraisal.snp import SimulationEntry, SnpEntry

#: Entry type by platform, in the order messages list the platforms.
ENTRY_TYPES: Final[Mapping[str, type[AcceptEntry]]] = MappingProxyType(
    {cls.PLATFORM: cls for cls in (SnpEntry, SimulationEntry, TdxEntry, SgxEntry, NitroEntry)}
)
#: Platforms an ``[[accept]]`` entry may name (same labels as ``VerifiedEvidence.platform``).
POLICY_PLATFORMS: Final = tuple(ENTRY_TYPES)
#: Every key some entry type reads.
ALL_ENTRY_KEYS: Final = frozenset().union(*(cls.KEYS for cls in ENTRY_TYPES.values()))


def entry_type(platform: str) -> type[AcceptEntry]:
    """The entry type of ``platform``.

    Raises:
        ValueError: no entry type reads this platform.
    """
    try:
        return ENTRY_TYPES[platform]
    except KeyError:
        raise ValueError(f"no [[accept]] entry type for platform {platform!r}") from None
