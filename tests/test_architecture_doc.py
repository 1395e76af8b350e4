"""docs/architecture.md matches the tree: its package layout names every part of cc_kernel and every module of
each package, and every file path it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cc_kernel"
DOC = (ROOT / "docs" / "architecture.md").read_text()
#: Built, not in git (the indicator extension), so not in every checkout's tree.
BUILT = {"labextension"}


def layout_block(doc: str) -> dict[str, str]:
    """The package layout (the code block that starts with ``cc_kernel/``): entry -> its description."""
    block = doc[doc.index("```\ncc_kernel/\n") + 4:]
    block = block[: block.index("```")]
    entries: dict[str, str] = {}
    name = ""
    for line in block.splitlines()[1:]:
        match = re.match(r"^(  )?(\S+)\s*(.*)$", line)
        if match:
            name = ("cc_kernel/" if match.group(1) else "") + match.group(2)
            entries[name] = match.group(3)
        elif name:
            entries[name] += " " + line.strip()
    return entries


def layout_problems(doc: str, package: Path) -> list[str]:
    """Parts of ``package`` the layout does not name, modules its package's description leaves out, and entries
    that name nothing."""
    entries = layout_block(doc)
    problems: list[str] = []
    parts = sorted(p for p in package.iterdir() if (p.is_dir() and (p / "__init__.py").exists())
                   or (p.suffix == ".py" and not p.name.startswith("__")))
    for part in parts:
        key = f"cc_kernel/{part.name}" + ("/" if part.is_dir() else "")
        if key not in entries:
            problems.append(f"the layout does not name {key}")
            continue
        if part.is_dir():
            words = set(re.findall(r"[a-z_0-9]+", entries[key]))
            problems += [f"the layout's {key} does not name {module.name}"
                         for module in sorted(part.glob("*.py"))
                         if not module.name.startswith("__") and module.stem not in words]
    for key in entries:
        if key.removeprefix("cc_kernel/").rstrip("/") in BUILT:
            continue
        if not (ROOT / key if not key.startswith("cc_kernel/") else package.parent / key).exists():
            problems.append(f"the layout names {key}, which does not exist")
    return problems


def test_the_layout_names_every_part_and_module() -> None:
    assert layout_problems(DOC, PACKAGE) == []


def test_a_missing_module_or_a_stale_entry_is_named(tmp_path: Path) -> None:
    package = tmp_path / "cc_kernel"
    (package / "core").mkdir(parents=True)
    for name in ("__init__.py", "alpha.py", "beta.py"):
        (package / "core" / name).write_text("")
    (package / "tool.py").write_text("")
    doc = "x\n```\ncc_kernel/\n  core/   alpha\n  gone.py   removed\n```\n"
    assert layout_problems(doc, package) == [
        "the layout's cc_kernel/core/ does not name beta.py",
        "the layout does not name cc_kernel/tool.py",
        "the layout names cc_kernel/gone.py, which does not exist",
    ]


CITED = sorted(set(re.findall(r"`((?:cc_kernel/|tests/|docs/|benchmarks/)?[a-z_]+/[a-z_/]+\.py)`", DOC)))


@pytest.mark.parametrize("path", CITED)
def test_every_cited_module_exists(path: str) -> None:
    assert any((base / path).is_file() for base in (ROOT, PACKAGE)), f"docs/architecture.md cites {path}"
