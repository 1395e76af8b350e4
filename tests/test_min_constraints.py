"""The declared minimum versions: ``scripts/min_constraints.py`` pins each one for the lowest-versions run of
``scripts/test.sh``, and the APIs that set a minimum exist in the installed versions (in that run: the minimums)."""

from __future__ import annotations

import importlib.util
import io
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import cbor2
import pytest

ROOT = Path(__file__).resolve().parent.parent


def Version(text: str) -> tuple[int, ...]:
    """A release version as numbers (``6.2`` -> (6, 2, 0)); enough to compare the releases named here."""
    parts = [int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit()]
    return (*parts, *[0] * (3 - len(parts)))


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("min_constraints", ROOT / "scripts" / "min_constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_requirement_is_pinned_to_its_declared_minimum() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in load_script().minimum_pins(ROOT / "pyproject.toml"))
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for requirement in requirements:
        name, minimum = (part.strip() for part in requirement.split(">="))
        if name in ("ruff", "mypy"):
            assert name not in pins  # lint tools do not run in the lowest-versions environment
        else:
            assert pins[name] == minimum


def test_a_requirement_without_a_minimum_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["cbor2"]\n[project.optional-dependencies]\ntest = []\n'
    )
    with pytest.raises(SystemExit, match="'cbor2' is not of the form name>=X"):
        load_script().minimum_pins(tmp_path / "pyproject.toml")


@pytest.mark.parametrize(
    ("name", "at_least"),
    [("cbor2", "6.2"), ("ipython", "9.1"), ("ipykernel", "7.2"), ("jupyter-client", "8.9"), ("matplotlib", "3.10.7"),
     ("pytest-timeout", "2.3.1")],
)
def test_raised_minimums_are_declared(name: str, at_least: str) -> None:
    pins = dict(line.split("==") for line in load_script().minimum_pins(ROOT / "pyproject.toml"))
    assert Version(pins[name]) >= Version(at_least)
    assert Version(version(name)) >= Version(at_least)


def test_the_cbor_decoder_options_the_ratls_parser_needs_exist() -> None:
    """cbor2 6.2 added ``strict_hashable_types`` (6.1 ``allow_duplicate_keys``): an older cbor2 would make every
    RA-TLS certificate look like invalid CBOR."""
    decoder = cbor2.CBORDecoder(
        io.BytesIO(b"\xa1\x61a\x02"), allow_indefinite=False, allow_duplicate_keys=False, strict_hashable_types=True,
        max_depth=4,
    )
    assert decoder.decode() == {"a": 2}
