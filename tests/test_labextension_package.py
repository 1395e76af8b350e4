"""The attestation indicator extension as shipped: built into the package, installed as shared data, never
measured as enclave code, and in agreement with the kernel's badge (MIME type, display id, colours, words).

The extension is TypeScript (labextension/src/index.ts); the constants it shares with cc_kernel/kernel/badge.py
are read from its source here, so a change on one side without the other fails.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from cc_kernel.kernel import badge
from cc_kernel.kernel.kernel import ConfidentialKernel
from cc_kernel.measure import enclave_source_files

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "labextension" / "src" / "index.ts").read_text()
BUILT = ROOT / "cc_kernel" / "labextension"


def _ts_string(name: str) -> str:
    found = re.search(rf"export const {name} = '([^']*)';", SOURCE)
    assert found, name
    return found.group(1)


def test_built_extension_is_shipped_as_shared_data() -> None:
    package = json.loads((ROOT / "labextension" / "package.json").read_text())
    built = json.loads((BUILT / "package.json").read_text())
    assert built["name"] == package["name"] == "cc-kernel-indicator"
    assert (BUILT / "static" / "style.js").is_file()
    assert any(p.name.startswith("remoteEntry.") for p in (BUILT / "static").iterdir())
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "shared-data"]
    assert shared["cc_kernel/labextension"] == f"share/jupyter/labextensions/{package['name']}"


def test_extension_is_not_part_of_the_enclave_measurement() -> None:
    measured = enclave_source_files()
    assert measured, "no enclave files"
    assert not [p for p in measured if BUILT in p.parents]


def test_extension_and_badge_agree() -> None:
    assert _ts_string("BADGE_MIME") == badge.BADGE_MIME
    assert _ts_string("DISPLAY_ID_PREFIX") == badge.DISPLAY_ID_PREFIX + "-"
    assert _ts_string("IMPLEMENTATION") == ConfidentialKernel.implementation
    for state, (background, colour, words) in badge.STYLES.items():
        entry = re.search(rf"\n  {state}: \['([^']*)', '([^']*)', '([^']*)'\]", SOURCE)
        assert entry, state
        assert (entry.group(1), entry.group(2)) == (background, colour), state
        # the indicator's words are the badge's headline, or its first part (before " — ")
        assert words.startswith(entry.group(3)) or entry.group(3).startswith(words.split(" — ")[0]), state
