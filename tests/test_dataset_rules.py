"""The owner's rules: a strict schema (every error named) and the release checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cc_kernel.audit.format import code_hash
from cc_kernel.dataset.rules import load_rules
from cc_kernel.errors import DatasetExpired, ReleaseRefused, RulesError

DIGEST = code_hash("df.describe()").hex()
INSPECT = 'version = 1\nmode = "inspect"\nnot_after = 2027-01-01T00:00:00Z\nmax_sessions = 3\n'
APPROVED = (
    'version = 1\nmode = "approved-code"\nnot_after = 2027-01-01T00:00:00+01:00\nmax_sessions = 1\n'
    f'approved_code_sha256 = ["{DIGEST}"]\n'
)


def test_inspect_rules() -> None:
    rules = load_rules(INSPECT)
    assert rules.mode == "inspect"
    assert rules.max_sessions == 3
    assert rules.not_after == datetime(2027, 1, 1, tzinfo=UTC)
    assert rules.approves(code_hash("anything"))


def test_approved_code_rules() -> None:
    rules = load_rules(APPROVED.encode())
    assert rules.mode == "approved-code"
    assert rules.approves(bytes.fromhex(DIGEST))
    assert not rules.approves(code_hash("df.describe() "))


def test_digest_is_stable_over_line_endings() -> None:
    assert load_rules(INSPECT).sha256 == load_rules(INSPECT.replace("\n", "\r\n")).sha256
    assert load_rules(INSPECT).sha256 != load_rules(INSPECT.replace("3", "4")).sha256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (INSPECT + "colour = 1\n", r"unknown key\(s\) \['colour'\]"),
        (INSPECT.replace('mode = "inspect"\n', ""), 'missing key "mode"'),
        (INSPECT.replace("version = 1", "version = 2"), "version must be 1"),
        (INSPECT.replace('"inspect"', '"anything"'), "mode must be one of"),
        (INSPECT.replace("2027-01-01T00:00:00Z", "2027-01-01T00:00:00"), "with a timezone"),
        (INSPECT.replace("2027-01-01T00:00:00Z", "2027-01-01"), "with a timezone"),
        (INSPECT.replace("max_sessions = 3", "max_sessions = 0"), "max_sessions must be an integer in 1.."),
        (INSPECT.replace("max_sessions = 3", 'max_sessions = "3"'), "max_sessions must be an integer"),
        (INSPECT + f'approved_code_sha256 = ["{DIGEST}"]\n', "forbidden with mode = \"inspect\""),
        (APPROVED.replace(f'["{DIGEST}"]', "[]"), "requires a non-empty approved_code_sha256"),
        (APPROVED.replace(f'approved_code_sha256 = ["{DIGEST}"]\n', ""), "requires a non-empty"),
        (APPROVED.replace(DIGEST, DIGEST[:-2]), r"approved_code_sha256\[0\] must be 64 hex"),
        (APPROVED.replace(DIGEST, "zz" + DIGEST[2:]), r"approved_code_sha256\[0\] is not hex"),
        ("mode = ", "not valid TOML"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_schema_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(RulesError, match=message) as info:
        load_rules(text, source="rules.toml")
    assert info.value.check == "rules.schema"
    assert str(info.value).startswith("[rules.schema] rules.toml: ")


def test_expiry_and_sessions() -> None:
    rules = load_rules(INSPECT)
    rules.check_release(now=datetime(2026, 12, 31, tzinfo=UTC), sessions_used=2)
    with pytest.raises(DatasetExpired, match="expired at 2027-01-01") as expired:
        rules.check_release(now=datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC), sessions_used=0)
    assert expired.value.check == "rules.not_after"
    with pytest.raises(ReleaseRefused, match="released 3 times, its owner allows 3") as many:
        rules.check_release(now=datetime(2026, 12, 31, tzinfo=UTC), sessions_used=3)
    assert many.value.check == "rules.max_sessions"
    with pytest.raises(ValueError, match="timezone-aware"):
        rules.check_release(now=datetime(2026, 12, 31), sessions_used=0)
