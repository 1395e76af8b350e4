"""Pure attestation layer: policy appraisal. ``appraise`` turns bound, authentic evidence and a policy into an
``AttestationResult`` or a ``PolicyViolation``; each platform's ``[[accept]]`` entry type (``snp``, ``intel``,
``nitro``, listed in ``registry``) reads, appraises and renders itself, so a platform is added in one place.

Invariants: see ``engine`` (policy-wide clauses, the verdict) and ``entry`` (what every entry shares).

Check names (``VerificationError.check``): ``policy.empty``, ``policy.platform``, ``policy.simulation``,
``policy.freshness``, ``policy.debug``, ``policy.measurement``, ``policy.signer``, ``policy.product``,
``policy.vmpl``, ``policy.migrate_ma``, ``policy.policy_bits.<name>``, ``policy.min_tcb.<component>``,
``policy.provisional_firmware``, ``policy.min_guest_svn``, ``policy.host_data``,
``policy.min_report_version``, ``policy.rtmr.<i>``, ``policy.mr_config_id``, ``policy.sept_ve_disable``,
``policy.tcb_status``, ``policy.tcb_collateral``, ``policy.mrsigner``, ``policy.isv_prod_id``,
``policy.min_isv_svn``, ``policy.pcr.<i>``.
"""

from cc_kernel.attestation.appraisal.engine import appraise, appraise_offline
from cc_kernel.attestation.appraisal.entry import AcceptEntry, Outcome
from cc_kernel.attestation.appraisal.intel import SgxEntry, TdxEntry
from cc_kernel.attestation.appraisal.nitro import NitroEntry
from cc_kernel.attestation.appraisal.registry import ENTRY_TYPES
from cc_kernel.attestation.appraisal.snp import SimulationEntry, SnpEntry

__all__ = [
    "ENTRY_TYPES",
    "AcceptEntry",
    "NitroEntry",
    "Outcome",
    "SgxEntry",
    "SimulationEntry",
    "SnpEntry",
    "TdxEntry",
    "appraise",
    "appraise_offline",
]
