"""Pure: the simulated enclave measurement — SHA-384 over a manifest of trusted files (Gramine's idea).

Invariant: the digest changes if any manifest entry (path, file digest), the Python version or the entry set
changes; entries are sorted so collection order does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable

from cc_kernel.crypto.hashing import TAG_MEASUREMENT, tagged_hash

MEASUREMENT_SIZE = 48


def measurement_of_manifest(entries: Iterable[tuple[str, bytes]], *, python_version: str) -> bytes:
    """SHA-384 over the domain tag, the Python version and the sorted (name, sha256) entries."""
    parts: list[bytes] = [python_version.encode()]
    for name, digest in sorted(entries):
        parts.append(name.encode())
        parts.append(digest)
    return tagged_hash(TAG_MEASUREMENT, *parts, algorithm="sha384")
