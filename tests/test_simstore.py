"""The data directory's private files: the lock, the whole-or-nothing write, and reading the simulation anchors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cc_kernel.errors import ConfigError
from cc_kernel.simstore import (
    ANCHOR_FILES,
    load_or_create_authority,
    load_simulation_anchors,
    locked_private_dir,
    read_simulation_anchors,
    write_private,
)


def test_locked_private_dir_creates_a_private_directory(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with locked_private_dir(directory):
        assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_locked_private_dir_makes_an_existing_directory_private(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    with locked_private_dir(directory):
        pass
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_write_private_writes_a_0600_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    write_private(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_write_private_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "count"
    path.write_bytes(b"old contents that are longer")
    path.chmod(0o644)
    write_private(path, b"1\n")
    assert path.read_bytes() == b"1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_read_simulation_anchors_names_a_missing_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the simulated TEE anchors"):
        read_simulation_anchors(tmp_path)


def test_read_simulation_anchors_refuses_invalid_certificates(tmp_path: Path) -> None:
    for name in ANCHOR_FILES:
        (tmp_path / name).write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match="are invalid"):
        read_simulation_anchors(tmp_path)


def test_load_simulation_anchors_creates_then_reads_the_same_anchors(tmp_path: Path) -> None:
    created = load_simulation_anchors(tmp_path)
    assert all((tmp_path / name).is_file() for name in ANCHOR_FILES)
    assert read_simulation_anchors(tmp_path) == created
    assert load_or_create_authority(tmp_path).anchors() == created
