"""Shared test fixtures: vector files (tests/vectors/, copied byte for byte from ../shared/testvectors/) and one
session-scoped simulated TEE authority (RSA-4096 key generation costs ~0.3-1 s, so it is done once)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kernel_env import jupyter_env  # noqa: F401 - the isolated Jupyter environment for tests that start kernels

from cc_kernel.attestation.anchors import TrustAnchors, hardware_anchors
from cc_kernel.attestation.platforms.simulation import SimulationAuthority, create_authority

VECTORS_DIR = Path(__file__).parent / "vectors"
#: ../shared/testvectors/ beside the repository (present on developer machines and in CI, read-only).
SHARED_VECTORS_DIR = Path(__file__).resolve().parents[2] / "shared" / "testvectors"
#: Inside every SEV-SNP vector's certificate validity window (testvectors/README.md "Time: pin now=").
SNP_VERIFY_AT = datetime(2025, 6, 1, tzinfo=UTC)
#: When the session's simulated authority starts (its certificates are valid from then on).
SIM_CREATED_AT = datetime(2025, 6, 1, tzinfo=UTC)


def read_vector(relative: str) -> bytes:
    """Bytes of ``tests/vectors/<relative>``; ``*.hex`` files are decoded (ASCII hex of a report)."""
    data = (VECTORS_DIR / relative).read_bytes()
    if relative.endswith(".hex"):
        return bytes.fromhex(data.decode("ascii").strip())
    return data


@pytest.fixture(scope="session")
def vector() -> Callable[[str], bytes]:
    """``vector("sev-snp/ccf-milan-v3.report.bin")`` -> bytes (hex files decoded)."""
    return read_vector


@pytest.fixture(scope="session")
def hw_anchors() -> TrustAnchors:
    return hardware_anchors()


@dataclass(frozen=True)
class SimKeys:
    """Pre-generated keys for building more simulated authorities without paying for RSA generation again."""

    ark: rsa.RSAPrivateKey
    ask: rsa.RSAPrivateKey
    vcek: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="session")
def sim_keys() -> SimKeys:
    return SimKeys(
        ark=rsa.generate_private_key(public_exponent=65537, key_size=4096),
        ask=rsa.generate_private_key(public_exponent=65537, key_size=4096),
        vcek=ec.generate_private_key(ec.SECP384R1()),
    )


@pytest.fixture(scope="session")
def sim_authority(sim_keys: SimKeys) -> SimulationAuthority:
    """THE simulated authority of this test session (default TCB, created at ``SIM_CREATED_AT``)."""
    return create_authority(now=SIM_CREATED_AT, ark_key=sim_keys.ark, ask_key=sim_keys.ask, vcek_key=sim_keys.vcek)


@pytest.fixture(scope="session")
def sim_anchors(sim_authority: SimulationAuthority) -> TrustAnchors:
    return sim_authority.anchors()


# --- the attested channel (tests/test_channel*.py, tests/test_cli.py) ----------------------------------------


@pytest.fixture(scope="session")
def cc_data_dir(tmp_path_factory: pytest.TempPathFactory, sim_authority: SimulationAuthority) -> Path:
    """A private Jupyter data directory holding THE session's simulated authority (no key generation)."""
    from cc_kernel.testing.enclaves import install_authority

    data_dir = tmp_path_factory.mktemp("jupyter-data")
    install_authority(data_dir, sim_authority)
    return data_dir


@pytest.fixture(scope="session")
def sim_policy_path(cc_data_dir: Path) -> Path:
    """A policy file pinning this installation's simulated enclave (``cc-kernel policy init --simulation``)."""
    from cc_kernel.testing.enclaves import write_simulation_policy

    path = cc_data_dir / "simulation-policy.toml"
    write_simulation_policy(path)
    return path
