"""Print a pip constraints file pinning every dependency (and the test extra) to its declared minimum.

`pyproject.toml` is the one place minimums are written; this turns each ``name>=X`` into ``name==X`` so that
`scripts/test.sh` can install the lowest allowed versions and run the tests against them. Lint and type-check
tools (ruff, mypy) are left out: they do not run in that environment.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SKIP = frozenset({"ruff", "mypy"})
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def minimum_pins(pyproject: Path) -> list[str]:
    """``name==minimum`` for each runtime and test requirement; every one must be written ``name>=X``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    pins: list[str] = []
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        match = _REQ.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: requirement {requirement!r} is not of the form name>=X")
        if match.group(1).lower() not in SKIP:
            pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    print("\n".join(minimum_pins(root / "pyproject.toml")))
