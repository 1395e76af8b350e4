"""I/O: the simulated TEE authority's files, created on first use in the user's Jupyter data directory.

Layout: ``<data dir>/cc_kernel/simulation/`` (mode 0700) holding the ``authority_to_pem`` blobs (mode 0600).
Creation is serialised with an exclusive lock so two kernels starting at once agree on one authority.
Both sides use it: the enclave (simulated evidence provider) signs with the VCEK key, the kernel pins the
ARK/ASK as the *simulation* trust anchors. The simulation protects nothing; the files say SIMULATION.

It also owns the private-file primitives every store of secrets uses (the client key, the broker's key store):
``locked_private_dir`` (a 0700 directory held under an exclusive lock) and ``write_private`` (a 0600 file
written whole, synced and renamed into place, so nobody ever reads a half-written key).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cc_kernel.attestation.anchors import TrustAnchors, simulation_anchors
from cc_kernel.attestation.platforms.simulation import (
    SimulationAuthority,
    authority_from_pem,
    authority_to_pem,
    create_authority,
)
from cc_kernel.errors import ConfigError

ENV_DATA_DIR = "JUPYTER_DATA_DIR"
_SUBDIR = ("cc_kernel", "simulation")
#: The simulation trust anchors' certificates in the authority's directory: the ARK (the root), the ASK it signed.
ANCHOR_FILES = ("ark-cert.pem", "ask-cert.pem")


def default_data_dir() -> Path:
    """The Jupyter data directory (``JUPYTER_DATA_DIR``, else the platform default), without importing Jupyter."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if os.uname().sysname == "Darwin":
        return home / "Library" / "Jupyter"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / "jupyter"


def simulation_dir(data_dir: Path | None = None) -> Path:
    """Where the simulated authority lives."""
    return (data_dir or default_data_dir()).joinpath(*_SUBDIR)


@contextlib.contextmanager
def locked_private_dir(directory: Path) -> Iterator[None]:
    """Create ``directory`` (mode 0700, also when it exists) and hold an exclusive lock on it while inside.

    Raises OSError as the system calls do.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600): into a new temporary file beside it, synced, then renamed over
    ``path``, so a reader sees the old file or the whole new one, never a part.

    Raises OSError as the system calls do (the temporary name already existing included).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read(directory: Path) -> SimulationAuthority | None:
    blobs = {}
    for path in directory.glob("*.pem"):
        blobs[path.name] = path.read_bytes()
    if not blobs:
        return None
    return authority_from_pem(blobs)


def load_or_create_authority(directory: Path | None = None, *, now: datetime | None = None) -> SimulationAuthority:
    """Load the simulated authority, creating it (keys and certificates) on first use.

    Raises:
        ConfigError: the files exist but are inconsistent or unreadable (delete the directory to recreate).
    """
    directory = directory or simulation_dir()
    try:
        with locked_private_dir(directory):
            existing = _read(directory)
            if existing is not None:
                return existing
            authority = create_authority(now=now or datetime.now(UTC))
            for name, blob in authority_to_pem(authority).items():
                write_private(directory / name, blob)
            return authority
    except ConfigError as exc:
        raise ConfigError(f"{exc} (simulated TEE files in {directory}; delete them to start afresh)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot use the simulated TEE directory {directory}: {exc}") from exc


def load_simulation_anchors(directory: Path | None = None) -> TrustAnchors:
    """The simulation trust anchors (ARK and ASK certificates), creating the authority on first use.

    Reads only the two certificates: the verifier never needs the simulated private keys.

    Raises:
        ConfigError: the certificates cannot be read or are invalid, or the authority cannot be created.
    """
    directory = directory or simulation_dir()
    if not all((directory / name).is_file() for name in ANCHOR_FILES):
        return load_or_create_authority(directory).anchors()
    return read_simulation_anchors(directory)


def read_simulation_anchors(directory: Path) -> TrustAnchors:
    """The simulation trust anchors from the ``ANCHOR_FILES`` in ``directory`` (never creates anything).

    Raises:
        ConfigError: a certificate cannot be read (a missing one included) or the two are not valid anchors.
    """
    ark_file, ask_file = ANCHOR_FILES
    try:
        ark, ask = (directory / ark_file).read_bytes(), (directory / ask_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the simulated TEE anchors in {directory}: {exc.strerror or exc}") from exc
    try:
        return simulation_anchors(ark, ask)
    except ValueError as exc:
        raise ConfigError(f"simulated TEE anchors in {directory} are invalid: {exc}") from exc
