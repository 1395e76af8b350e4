"""Pure: domain-separated, length-prefixed hashing (every hash input starts with a tag, parts are prefixed).

Invariant: ``tagged_hash(tag, a, b) != tagged_hash(tag, a + b[:1], b[1:])`` because every part is
length-prefixed with a 4-byte big-endian length, and tags are distinct per use.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

HashName = Literal["sha256", "sha384", "sha512"]

#: Every domain tag cc_kernel uses, in one place so no two uses can collide.
TAG_REPORT_DATA = b"cc-kernel/report-data/v1"
TAG_MEASUREMENT = b"cc-kernel/enclave-measurement/v1"
TAG_POLICY = b"cc-kernel/policy/v1"
TAG_AUDIT_ENTRY = b"cc-kernel/audit-entry/v1"
TAG_AUDIT_CODE = b"cc-kernel/audit-code/v1"
TAG_AUDIT_OUTPUT = b"cc-kernel/audit-output/v1"
TAG_AUDIT_SIGNATURE = b"cc-kernel/audit-signature/v1"
TAG_DATASET_HEADER = b"cc-kernel/dataset-header/v1"
TAG_DATASET_CHUNK = b"cc-kernel/dataset-chunk/v1"
TAG_DATASET_RULES = b"cc-kernel/dataset-rules/v1"
TAG_DATASET_RELEASE = b"cc-kernel/dataset-release/v1"
TAG_DATASET_WRAP = b"cc-kernel/dataset-wrap/v1"
TAG_BROKER_LOG_ENTRY = b"cc-kernel/broker-log-entry/v1"
TAG_BROKER_LOG_SIGNATURE = b"cc-kernel/broker-log-signature/v1"


def lp(part: bytes) -> bytes:
    """Return ``part`` prefixed with its length as a 4-byte big-endian integer."""
    if len(part) > 0xFFFFFFFF:
        raise ValueError("part too long to length-prefix")
    return len(part).to_bytes(4, "big") + part


def tagged_hash(tag: bytes, *parts: bytes, algorithm: HashName = "sha256") -> bytes:
    """Hash ``tag`` then each part length-prefixed. Returns the raw digest."""
    h = hashlib.new(algorithm)
    h.update(lp(tag))
    for part in parts:
        h.update(lp(part))
    return h.digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings without leaking where they differ."""
    return hmac.compare_digest(a, b)
