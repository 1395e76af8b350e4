"""Intel collateral fetched on the trusted side: ``cc-kernel attest --collateral DIR`` and the kernel's
``collateral_dir`` (``CC_KERNEL_DCAP_COLLATERAL``) reach ``verify_peer``; a bad directory is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import VECTORS_DIR

from cc_kernel import cli
from cc_kernel.attestation.platforms.intel_collateral import DcapCollateral
from cc_kernel.errors import PolicyError

SIGNING_CHAIN = VECTORS_DIR / "tdx/collateral/intel-sgx-tcb-signing-chain.pem"
ROOT_CRL = VECTORS_DIR / "tdx/collateral/intel-sgx-root-ca-crl-2023-04-03.der"


def collateral_dir(tmp_path: Path, *files: Path) -> Path:
    directory = tmp_path / "collateral"
    directory.mkdir()
    for f in files:
        shutil.copy(f, directory / f.name)
    return directory


def test_attest_passes_the_collateral_to_the_verifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cc_kernel.channel import client

    seen: list[object] = []

    async def fake_connect(*args: object, collateral: object = None, **kwargs: object) -> object:
        seen.append(collateral)
        raise PolicyError("stop here")

    monkeypatch.setattr(client, "connect_attested", fake_connect)
    code = cli.main(["attest", "127.0.0.1:9", "--collateral", str(collateral_dir(tmp_path, ROOT_CRL, SIGNING_CHAIN))])
    assert code == 2  # the stand-in's PolicyError
    (collateral,) = seen
    assert isinstance(collateral, DcapCollateral)
    assert collateral.root_crl is not None and collateral.missing == ("tcb_info", "qe_identity", "pck_crl")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "cannot read the collateral directory"),
        ("unknown-file", "unknown collateral file 'README.txt'"),
        ("empty", "no collateral files"),
    ],
)
def test_attest_rejects_a_bad_collateral_directory(
    setup: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "collateral"
    if setup != "missing":
        directory.mkdir()
    if setup == "unknown-file":
        (directory / "README.txt").write_text("fetched from PCCS")
    code = cli.main(["attest", "127.0.0.1:9", "--collateral", str(directory)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_kernel_loads_its_collateral_directory(tmp_path: Path) -> None:
    from cc_kernel.kernel.kernel import ConfidentialKernel

    kernel = ConfidentialKernel.__new__(ConfidentialKernel)  # only the loader is exercised, not a session
    kernel.collateral_dir = str(collateral_dir(tmp_path, ROOT_CRL))
    loaded = kernel._load_collateral()
    assert isinstance(loaded, DcapCollateral) and loaded.root_crl is not None

    kernel.collateral_dir = str(tmp_path / "nowhere")
    with pytest.raises(PolicyError, match="cannot read the collateral directory"):
        kernel._load_collateral()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tcb_info.json").write_text("{}")
    kernel.collateral_dir = str(tmp_path / "bad")
    with pytest.raises(PolicyError, match="needs the TCB signing chain"):
        kernel._load_collateral()


def test_one_loader_reads_a_collateral_directory_for_the_kernel_and_the_cli(tmp_path: Path) -> None:
    from cc_kernel.kernel.collateral import load_collateral_dir

    loaded = load_collateral_dir(collateral_dir(tmp_path, ROOT_CRL, SIGNING_CHAIN))
    assert loaded.root_crl is not None and loaded.tcb_signing_chain
    with pytest.raises(ValueError, match=f"cannot read the collateral directory {tmp_path / 'nowhere'}: "):
        load_collateral_dir(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "notes.txt").write_text("fetched from PCCS")
    bad = f"collateral directory {tmp_path / 'bad'}: unknown collateral file 'notes.txt'"
    with pytest.raises(ValueError, match=bad):
        load_collateral_dir(tmp_path / "bad")
