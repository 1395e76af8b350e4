"""Pure attestation layer: Intel's TCB status names, the one list the collateral verifier and the policy share.

Invariant: ``TCB_STATUSES`` holds exactly the ``tcbStatus`` values Intel's collateral (PCS API v4: tcbInfo
levels, QE identity levels, TDX module identity levels) may carry. Statuses the verifier derives itself (TD
relaunch advised, no matching level) are not among them: no collateral level may claim one, and no policy can
name one.
"""

from __future__ import annotations

from typing import Final

#: The ``tcbStatus`` values of Intel PCS API v4 collateral levels; ``Revoked`` is never acceptable.
TCB_STATUSES: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
