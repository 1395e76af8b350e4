"""Sealed results: a verified value cannot be changed or copied into something that is accepted as verified.

``dataclasses.replace``, ``copy.copy``/``deepcopy`` and pickling are refused with ``TypeError``; an object of
the class that ``seal`` did not make itself (built around the constructor, or by a subclass that skips the
check) is refused by every consumer: ``check_binding``, ``appraise``, ``appraise_offline``.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from cc_kernel.attestation.appraisal import appraise, appraise_offline
from cc_kernel.attestation.binding import check_binding, expected_report_data
from cc_kernel.attestation.evidence import (
    BoundEvidence,
    Sealed,
    VerifiedEvidence,
    require_sealed,
    seal_bound,
    seal_verified,
)
from cc_kernel.attestation.policy import load_policy

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
MEASUREMENT = bytes(range(48))
SPKI, AUDIT, NONCE, SESSION = b"spki", b"\x44" * 32, b"\x33" * 32, b"\x22" * 16
REPORT_DATA = expected_report_data(tls_spki=SPKI, audit_pub=AUDIT, nonce=NONCE, session_id=SESSION)
POLICY = load_policy(
    "version = 1\nunsafe_allow_simulation = true\n[[accept]]\nplatform = \"simulation\"\n"
    f'measurement = ["{MEASUREMENT.hex()}"]\n'
)
FORGED = "was not sealed by"


def verified() -> VerifiedEvidence:
    return seal_verified(
        platform="simulation", product="Simulated", measurement=MEASUREMENT, report_data=REPORT_DATA,
        debug=False, signer="sim-vcek", anchor_sha256=b"\xa0" * 32, evidence_sha256=b"\xe0" * 32,
        verified_at=NOW, claims={"policy": 0x30000, "vmpl": 0, "current_tcb": 1, "committed_tcb": 1},
    )


def bind(ev: VerifiedEvidence) -> BoundEvidence:
    return check_binding(ev, tls_spki=SPKI, audit_pub=AUDIT, nonce=NONCE, session_id=SESSION)


def forged_copy(value: Sealed, **changes: object) -> Any:
    """What a copy made around the constructor looks like: the same class, the same (or changed) fields."""
    clone = object.__new__(type(value))
    for f in dataclasses.fields(value):  # type: ignore[arg-type]
        object.__setattr__(clone, f.name, changes.get(f.name, getattr(value, f.name)))
    return clone


def test_the_sealed_originals_are_accepted() -> None:
    ev = verified()
    assert appraise(bind(ev), POLICY, now=NOW).status == "simulation"
    assert appraise_offline(ev, POLICY, now=NOW).status == "simulation"


@pytest.mark.parametrize("make", [verified, lambda: bind(verified())], ids=["VerifiedEvidence", "BoundEvidence"])
@pytest.mark.parametrize("changes", [{}, {"nonce": b"\x00" * 32, "measurement": b"\x00" * 48}], ids=["same", "changed"])
def test_replace_does_not_yield_a_sealed_value(make: Callable[[], Sealed], changes: dict[str, object]) -> None:
    value = make()
    names = {f.name for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"is only produced by .*\(dataclasses.replace included\) is not verified"):
        dataclasses.replace(value, **{k: v for k, v in changes.items() if k in names})  # type: ignore[type-var]


@pytest.mark.parametrize(
    "copier",
    [copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_a_sealed_value_cannot_be_copied(copier: Callable[[object], object]) -> None:
    with pytest.raises(TypeError, match="VerifiedEvidence cannot be copied: a copy would not be the value"):
        copier(verified())
    with pytest.raises(TypeError, match="BoundEvidence cannot be copied"):
        copier(bind(verified()))


def test_a_copy_made_around_the_constructor_is_not_verified() -> None:
    ev = verified()
    clone = forged_copy(ev, measurement=b"\x00" * 48)
    assert isinstance(clone, VerifiedEvidence)
    with pytest.raises(TypeError, match=f"this VerifiedEvidence {FORGED} a platform verifier"):
        bind(clone)
    with pytest.raises(TypeError, match=f"this VerifiedEvidence {FORGED} a platform verifier"):
        appraise_offline(clone, POLICY, now=NOW)
    with pytest.raises(TypeError, match=f"this VerifiedEvidence {FORGED}"):
        appraise(seal_bound(evidence=clone, tls_spki_sha256=b"", audit_pub=AUDIT, nonce=NONCE,
                            session_id=SESSION), POLICY, now=NOW)
    with pytest.raises(TypeError, match=f"this BoundEvidence {FORGED} check_binding"):
        appraise(forged_copy(bind(ev), nonce=b"\x00" * 32), POLICY, now=NOW)


def test_a_subclass_that_skips_the_check_is_not_verified() -> None:
    @dataclasses.dataclass(frozen=True)
    class Lenient(VerifiedEvidence):
        def __post_init__(self) -> None:
            pass

    fake = Lenient(**{f.name: getattr(verified(), f.name) for f in dataclasses.fields(VerifiedEvidence)})
    with pytest.raises(TypeError, match=f"this VerifiedEvidence {FORGED}"):
        require_sealed(fake, VerifiedEvidence)
    with pytest.raises(TypeError, match="expected a BoundEvidence from check_binding, got Lenient"):
        require_sealed(fake, BoundEvidence)


def test_building_one_directly_is_refused() -> None:
    fields = {f.name: getattr(verified(), f.name) for f in dataclasses.fields(VerifiedEvidence)}
    with pytest.raises(TypeError, match="VerifiedEvidence is only produced by a platform verifier"):
        VerifiedEvidence(**fields)
