"""The reference documents are complete enough to implement from: every check name the verifiers can report,
every policy key and every verdict reason is documented, the documented built-in policy is the real one, and no
user-facing text cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from audit_support import manifest

import cc_kernel.attestation.appraisal as appraisal
import cc_kernel.attestation.platforms.intel_collateral as intel_collateral
import cc_kernel.attestation.platforms.intel_dcap as intel_dcap
import cc_kernel.attestation.platforms.nitro as nitro
import cc_kernel.attestation.platforms.ratls_interop as ratls_interop
import cc_kernel.attestation.platforms.sev_snp as sev_snp
from cc_kernel.attestation import policy
from cc_kernel.attestation.appraisal import engine, intel, registry, snp
from cc_kernel.attestation.appraisal import nitro as nitro_entry
from cc_kernel.audit.verify import VERDICT_FAILURES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = "\n".join((DOCS / name).read_text() for name in ("audit-log.md", "evidence.md", "policy.md"))
#: User-facing text: the documentation, the README, the notebooks and the package (whose docstrings, messages
#: and rendered policy files users read).
USER_FACING = [
    ROOT / "README.md",
    *DOCS.rglob("*.md"),
    *(ROOT / "notebooks").glob("*.ipynb"),
    *(ROOT / "cc_kernel").rglob("*.py"),
]


def documented_checks(module: object) -> list[str]:
    """The check names a module's docstring lists in its "Check names" paragraph."""
    doc = module.__doc__ or ""
    start = doc.index("heck names")
    paragraph = doc[start:].split("\n\n")[0]
    return re.findall(r"``([a-z][a-z0-9_]*(?:\.[a-z0-9_<>]+)+)``", paragraph)


@pytest.mark.parametrize("module", [sev_snp, nitro, intel_dcap, intel_collateral, ratls_interop, appraisal],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_check_a_verifier_lists_is_in_the_reference(module: object) -> None:
    names = documented_checks(module)
    assert len(names) >= 10
    missing = [n for n in names if f"`{n}`" not in REFERENCE]
    assert not missing, f"not documented in docs/: {missing}"


def test_the_appraisal_lists_the_checks_its_entry_types_list() -> None:
    """The package's list of policy checks is the union of what the engine and each platform's entry type name."""
    parts = [documented_checks(m) for m in (engine, snp, intel, nitro_entry)]
    assert set(documented_checks(appraisal)) == {name for names in parts for name in names}


def test_every_check_the_conformance_vectors_report_is_in_the_log_spec() -> None:
    spec = (DOCS / "audit-log.md").read_text() + (DOCS / "evidence.md").read_text()
    seen = {check for case in manifest()["cases"] for _index, check in case["findings"]}
    assert {"entry.decode", "record.length", "snp.presented_ark", "opening.chain"} <= seen
    missing = sorted(c for c in seen if f"`{c}`" not in spec and not c.startswith("policy."))
    assert not missing


def test_every_verdict_reason_and_option_is_documented() -> None:
    spec = (DOCS / "audit-log.md").read_text()
    for reason in VERDICT_FAILURES:
        assert f"`{reason}`" in spec
    for option in ("--allow-simulation", "--accept notebook.edited", "--accept notebook.unaccounted"):
        assert option in spec


def test_every_policy_key_is_documented() -> None:
    text = (DOCS / "policy.md").read_text()
    keys = set(policy.TOP_KEYS) | set(registry.ALL_ENTRY_KEYS)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing
    for bit in sev_snp.POLICY_BITS:
        assert f"`{bit}`" in text


def test_the_documented_built_in_policy_is_the_real_one() -> None:
    text = (DOCS / "policy.md").read_text()
    block = text.split("## 6. The built-in policy", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert policy.load_policy(block).accept == policy.default_hardware_policy().accept


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_user_facing_text_cites_a_file_outside_the_repository(path: Path) -> None:
    assert "ATTESTATION.md" not in path.read_text()


def test_policy_init_points_to_the_policy_reference() -> None:
    text = policy.render_policy("simulation", [bytes(48)])
    assert "docs/policy.md" in text and "ATTESTATION" not in text
