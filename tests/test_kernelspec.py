"""The two kernelspecs: kept in kernelspec/ at the top of the repository, shipped by the wheel as shared data (where
Jupyter finds them) and inside the package (for ``cc-kernel install``), and found at run time in both layouts."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from cc_kernel.kernel import install as install_module
from cc_kernel.kernel.install import KERNEL_NAMES, install, spec_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = {"confidential-python": "hardware", "confidential-python-sim": "simulation"}


def test_the_kernelspecs_live_at_the_top_of_the_repository() -> None:
    assert sorted(p.name for p in (ROOT / "kernelspec").iterdir()) == sorted(KERNEL_NAMES)
    assert not (ROOT / "cc_kernel" / "kernel" / "kernelspecs").exists()
    for name in KERNEL_NAMES:
        spec = json.loads((ROOT / "kernelspec" / name / "kernel.json").read_text())
        assert spec["metadata"]["cc_kernel"]["mode"] == MODES[name]
        assert spec["argv"][:4] == ["python", "-m", "cc_kernel.kernel", "--mode"]
        assert {p.name for p in (ROOT / "kernelspec" / name).iterdir()} == {
            "kernel.json", "logo-32x32.png", "logo-64x64.png", "logo-svg.svg"}


def test_the_wheel_installs_them_as_shared_data_and_carries_them_in_the_package() -> None:
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    for name in KERNEL_NAMES:
        assert wheel["shared-data"][f"kernelspec/{name}"] == f"share/jupyter/kernels/{name}"
    assert wheel["force-include"]["kernelspec"] == "cc_kernel/kernel/kernelspecs"


def test_a_source_tree_uses_its_kernelspec_folder() -> None:
    for name in KERNEL_NAMES:
        assert spec_dir(name) == ROOT / "kernelspec" / name


def test_a_wheel_uses_the_copy_in_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = tmp_path / "kernelspecs" / "confidential-python"
    packaged.mkdir(parents=True)
    (packaged / "kernel.json").write_text("{}")
    monkeypatch.setattr(install_module.resources, "files", lambda _package: tmp_path)
    assert spec_dir("confidential-python") == packaged
    assert spec_dir("confidential-python-sim") == ROOT / "kernelspec" / "confidential-python-sim"


def test_an_unknown_kernelspec_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(install_module, "SOURCE_DIR", tmp_path / "kernelspec")
    with pytest.raises(FileNotFoundError, match=r"no kernelspec 'confidential-python' in .*kernelspecs/confidential"
                                                r"-python or .*kernelspec/confidential-python$"):
        spec_dir("confidential-python")


def test_install_writes_both_with_this_interpreter(tmp_path: Path) -> None:
    written = install(prefix=str(tmp_path))
    assert sorted(Path(p).name for p in written) == sorted(KERNEL_NAMES)
    for name in KERNEL_NAMES:
        spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / name / "kernel.json").read_text())
        assert spec["argv"][0] == sys.executable
        assert spec["metadata"]["cc_kernel"]["mode"] == MODES[name]
        assert (tmp_path / "share" / "jupyter" / "kernels" / name / "logo-64x64.png").is_file()
