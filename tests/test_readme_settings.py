"""The README's configuration table lists every setting: each configurable traitlet of the kernel and each
``CC_KERNEL_*`` environment variable the package reads, and nothing that no longer exists."""

from __future__ import annotations

import re
from pathlib import Path

from cc_kernel.kernel.config import KernelSettings

ROOT = Path(__file__).resolve().parent.parent
ENV_NAME = re.compile(r"\bCC_KERNEL_[A-Z0-9_]*[A-Z0-9]\b")


def code_settings() -> tuple[set[str], set[str]]:
    """(traitlets, environment variables) that the code has."""
    traitlets = set(KernelSettings.class_trait_names(config=True))
    env = {name for path in (ROOT / "cc_kernel").rglob("*.py") for name in ENV_NAME.findall(path.read_text())}
    return traitlets, env


def table_settings(readme: str) -> tuple[set[str], set[str]]:
    """(traitlets, environment variables) that the table under "## Configuration" names."""
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    traitlets: set[str] = set()
    env: set[str] = set()
    for row in section.splitlines():
        cells = row.split("|")
        if len(cells) != 5 or set(cells[2].strip()) <= {"-"}:
            continue  # not a row, or the header's rule
        traitlets.update(re.findall(r"`([a-z_]+)`", cells[2]))
        env.update(ENV_NAME.findall(cells[3]))
    return traitlets, env


def table_problems(readme: str, code: tuple[set[str], set[str]]) -> list[str]:
    """What the table lacks, and what it names that the code no longer has."""
    listed = table_settings(readme)
    problems: list[str] = []
    for kind, have, shown in (("traitlet", code[0], listed[0]), ("environment variable", code[1], listed[1])):
        problems += [f"the configuration table lacks the {kind} {name}" for name in sorted(have - shown)]
        problems += [f"the configuration table lists the {kind} {name}, which the code does not have"
                     for name in sorted(shown - have)]
    return problems


def test_the_readme_lists_every_setting() -> None:
    traitlets, env = code_settings()
    assert {"show_badge", "audit", "mode"} <= traitlets  # the scan finds what it should
    assert {"CC_KERNEL_AUDIT", "CC_KERNEL_EVIDENCE_PROVIDER", "CC_KERNEL_SNP_CERTS_DIR"} <= env
    assert table_problems((ROOT / "README.md").read_text(), (traitlets, env)) == []


SYNTHETIC = """# X

## Configuration

| setting | traitlet | environment |
|---|---|---|
| the policy | `policy_file` | `CC_KERNEL_POLICY` |
| the badge | `show_badge` | — |

## Next
| not | the `table` | `CC_KERNEL_ELSEWHERE` |
"""


def test_a_setting_missing_from_the_table_is_named() -> None:
    code = ({"policy_file", "show_badge", "audit"}, {"CC_KERNEL_POLICY", "CC_KERNEL_AUDIT"})
    assert table_problems(SYNTHETIC, code) == [
        "the configuration table lacks the traitlet audit",
        "the configuration table lacks the environment variable CC_KERNEL_AUDIT",
    ]


def test_a_setting_the_code_no_longer_has_is_named() -> None:
    code = ({"policy_file"}, set[str]())
    assert table_problems(SYNTHETIC, code) == [
        "the configuration table lists the traitlet show_badge, which the code does not have",
        "the configuration table lists the environment variable CC_KERNEL_POLICY, which the code does not have",
    ]
