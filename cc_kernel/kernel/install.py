"""Kernel side: install the two kernelspecs (``cc-kernel install``), with ``argv[0]`` = this interpreter.

The wheel also ships them as shared-data (``share/jupyter/kernels``), where Jupyter replaces ``python`` with
its own interpreter; this command is for a Jupyter that lives in another environment.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

KERNEL_NAMES = ("confidential-python-sim", "confidential-python")


#: The kernelspecs in a source tree (a checkout, or an editable install): ``kernelspec/`` beside the package.
SOURCE_DIR = Path(__file__).resolve().parents[2] / "kernelspec"


def spec_dir(name: str) -> Path:
    """The kernelspec directory for ``name``: the copy a wheel carries in the package
    (``cc_kernel/kernel/kernelspecs/<name>``, built from ``kernelspec/``), else ``kernelspec/<name>`` of the source
    tree this package runs from.

    Raises:
        FileNotFoundError: neither holds a ``kernel.json`` for ``name``.
    """
    packaged = Path(str(resources.files("cc_kernel.kernel").joinpath("kernelspecs", name)))
    for candidate in (packaged, SOURCE_DIR / name):
        if (candidate / "kernel.json").is_file():
            return candidate
    raise FileNotFoundError(f"no kernelspec {name!r} in {packaged} or {SOURCE_DIR / name}")


def install(*, user: bool = False, prefix: str | None = None, names: tuple[str, ...] = KERNEL_NAMES) -> list[str]:
    """Install the kernelspecs; return the directories written."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    written = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / name
            shutil.copytree(spec_dir(name), dest)
            spec = json.loads((dest / "kernel.json").read_text())
            spec["argv"][0] = sys.executable
            (dest / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
            written.append(ksm.install_kernel_spec(str(dest), kernel_name=name, user=user, prefix=prefix))
    return written


def simulation_policy_path() -> Path:
    """Where the simulation kernel finds its pinned policy (unless CC_KERNEL_POLICY says otherwise)."""
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "cc_kernel" / "policy-simulation.toml"


def pin_simulation_policy(*, note: str = "pinned by `cc-kernel install`") -> Path:
    """Write the simulation kernel's policy pinning the installed enclave's measurement (atomically)."""
    import os

    from cc_kernel.attestation.policy import render_policy
    from cc_kernel.measure import enclave_measurement

    path = simulation_policy_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_policy("simulation", [enclave_measurement()], note=note)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
