"""Provenance of the copied vectors and of the packaged trust anchors; TrustAnchors construction rules."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
from conftest import SHARED_VECTORS_DIR, VECTORS_DIR

from cc_kernel.attestation import anchors as anchors_mod
from cc_kernel.attestation.anchors import (
    AMD_ARK_SHA256,
    AWS_NITRO_ROOT_G1_SHA256,
    INTEL_SGX_ROOT_CA_SHA256,
    PinnedRoot,
    hardware_anchors,
    simulation_anchors,
)
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.crypto.x509load import load_certificate_bundle

VECTOR_FILES = sorted(p for p in VECTORS_DIR.rglob("*") if p.is_file() and p.name != "README.md")
PACKAGED_ROOTS = resources.files("cc_kernel.attestation").joinpath("roots")


def test_vector_copies_match_the_shared_manifest() -> None:
    manifest_path = SHARED_VECTORS_DIR / "manifest.json"
    if not manifest_path.exists():
        pytest.skip("../shared/testvectors/manifest.json is not present on this machine")
    manifest = json.loads(manifest_path.read_text())
    for path in VECTOR_FILES:
        rel = path.relative_to(VECTORS_DIR).as_posix()
        entry = manifest["files"][rel]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], rel
        assert path.stat().st_size == entry["size"], rel


def test_every_vector_file_has_a_provenance_line() -> None:
    readme = (VECTORS_DIR / "README.md").read_text()
    for path in VECTOR_FILES:
        stem = path.name.split(".")[0]
        if path.parent.name == "roots":
            assert path.name in readme or "amd-{milan,genoa,turin}" in readme, path.name
        else:
            assert f"`{stem}`" in readme, path.name
    assert len(VECTOR_FILES) == 19


def test_packaged_roots_are_the_vector_roots_byte_for_byte() -> None:
    packaged = {p.name for p in PACKAGED_ROOTS.iterdir() if p.name.endswith(".pem")}
    copied = {p.name for p in (VECTORS_DIR / "roots").iterdir()}
    assert packaged == copied
    for name in packaged:
        assert PACKAGED_ROOTS.joinpath(name).read_bytes() == (VECTORS_DIR / "roots" / name).read_bytes()
    assert PACKAGED_ROOTS.joinpath("README.md").is_file()


def test_hardware_anchors_pin_the_documented_roots() -> None:
    ha = hardware_anchors()
    assert ha is hardware_anchors()  # loaded once
    for product, sha in AMD_ARK_SHA256.items():
        root = ha.get("sev-snp", product)
        assert root is not None
        assert root.sha256 == sha
        assert set(root.intermediates) == {"ask", "asvk"}
        assert root.certificate.subject.rfc4514_string().startswith(f"CN=ARK-{product},")
    assert AMD_ARK_SHA256["Milan"].hex().startswith("69d063b4")
    assert AMD_ARK_SHA256["Genoa"].hex().startswith("4c6598d1")
    assert AMD_ARK_SHA256["Turin"].hex().startswith("1f084161")
    assert ha.by_sha256(platforms=["intel-dcap"]).keys() == {INTEL_SGX_ROOT_CA_SHA256}
    assert ha.by_sha256(platforms=["nitro"]).keys() == {AWS_NITRO_ROOT_G1_SHA256}
    assert ha.platforms == {"sev-snp", "intel-dcap", "nitro"}
    assert ha.root_for_sha256(AMD_ARK_SHA256["Genoa"]) is ha.get("sev-snp", "Genoa")


def test_a_tampered_packaged_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = anchors_mod._read_root_file
    genoa = real("amd-genoa-vcek-ask-ark.pem")

    def swapped(name: str) -> bytes:
        return genoa if name == "amd-milan-vcek-ask-ark.pem" else real(name)

    monkeypatch.setattr(anchors_mod, "_read_root_file", swapped)
    hardware_anchors.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="ARK-Milan"):
            hardware_anchors()
    finally:
        monkeypatch.undo()
        hardware_anchors.cache_clear()
    assert hardware_anchors().get("sev-snp", "Milan") is not None


def test_a_hardware_label_needs_the_pinned_root(sim_authority: SimulationAuthority) -> None:
    milan_ask, milan_ark = load_certificate_bundle((VECTORS_DIR / "roots/amd-milan-vcek-ask-ark.pem").read_bytes())
    genoa_ark = load_certificate_bundle((VECTORS_DIR / "roots/amd-genoa-vcek-ask-ark.pem").read_bytes())[1]
    PinnedRoot(platform="sev-snp", product="Milan", certificate=milan_ark)  # the pinned one: fine
    with pytest.raises(ValueError, match="only the pinned hardware root"):
        PinnedRoot(platform="sev-snp", product="Milan", certificate=genoa_ark)
    with pytest.raises(ValueError, match="only the pinned hardware root"):
        PinnedRoot(platform="sev-snp", product="Milan", certificate=milan_ask)
    with pytest.raises(ValueError, match="only the pinned hardware root"):
        PinnedRoot(platform="sev-snp", product="Simulated", certificate=sim_authority.ark_cert)
    with pytest.raises(ValueError, match="hardware root cannot be used as a simulation anchor"):
        PinnedRoot(platform="simulation", product="Simulated", certificate=milan_ark)
    with pytest.raises(ValueError, match="hardware product name"):
        PinnedRoot(platform="simulation", product="Milan", certificate=sim_authority.ark_cert)
    with pytest.raises(ValueError, match="unknown root platform"):
        PinnedRoot(platform="tpm", product="x", certificate=sim_authority.ark_cert)
    milan_der = (VECTORS_DIR / "roots/amd-milan-vcek-ask-ark.pem").read_bytes()
    with pytest.raises(ValueError, match="hardware root cannot be used"):
        simulation_anchors(
            milan_der.split(b"-----END CERTIFICATE-----")[1] + b"-----END CERTIFICATE-----\n",
            milan_der.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n",
        )


def test_trust_anchors_refuse_duplicates(sim_authority: SimulationAuthority) -> None:
    sim = sim_authority.anchors()
    with pytest.raises(ValueError, match="two roots"):
        sim.merged(sim)
    merged = hardware_anchors().merged(sim)
    assert merged.find_product("Simulated", platforms=["sev-snp"]) is None
    found = merged.find_product("Simulated", platforms=["sev-snp", "simulation"])
    assert found is not None
    assert found.platform == "simulation"
    assert found.intermediates["ask"] == sim_authority.ask_cert


def test_simulation_anchors_validate_their_input(sim_authority: SimulationAuthority) -> None:
    with pytest.raises(ValueError, match="do not parse"):
        simulation_anchors(b"garbage", sim_authority.ask_der)
    with pytest.raises(ValueError, match="do not form a chain"):
        simulation_anchors(sim_authority.ask_der, sim_authority.ark_der)  # swapped roles
    with pytest.raises(ValueError, match="must differ"):
        simulation_anchors(sim_authority.ark_der, sim_authority.ark_der)
