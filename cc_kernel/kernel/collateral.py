"""Kernel side (I/O): read a directory of Intel collateral fetched on this side, for the kernel and the CLI.

Invariants: the files are read here and nowhere else; naming them (``offline.collateral_from_files``) and
parsing them (``intel_collateral.load_collateral``) stay pure; nothing is verified here — every item is
signature-checked when a quote is verified against it.
"""

from __future__ import annotations

from pathlib import Path

from cc_kernel.attestation.offline import collateral_from_files
from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral, load_collateral

__all__ = ["load_collateral_dir"]


def load_collateral_dir(directory: Path) -> DcapCollateral:
    """Load every file of ``directory`` (``~`` expanded) as one platform's Intel collateral, parsed not verified.

    Raises:
        ValueError: the directory or a file cannot be read (``cannot read the collateral directory ...``), or
            the files are not one platform's collateral (``collateral directory ...: <why>``).
        MalformedEvidence: an item does not parse (``collateral.<item>.*``).
    """
    directory = directory.expanduser()
    try:
        files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    except OSError as exc:
        raise ValueError(f"cannot read the collateral directory {directory}: {exc.strerror or exc}") from exc
    try:
        return load_collateral(collateral_from_files(files))
    except ValueError as exc:
        raise ValueError(f"collateral directory {directory}: {exc}") from exc
