"""The badge and ``%attestation`` show the data owners' datasets open in the session, as the monitor reports them
(``DatasetInfo``); the status indicator shows the badge's ``summary`` lines."""

from __future__ import annotations

from cc_kernel.kernel import badge

OPEN = {"name": "records", "owner": "St Example", "dataset_id": "ab" * 16, "broker": "127.0.0.1:7900",
        "mode": "approved-code", "not_after": "2099-01-01T00:00:00+00:00", "session": 2, "max_sessions": 5,
        "rules_sha256": "cd" * 32, "size": 10, "owner_log": "open"}
LINE = ("records of 'St Example': mode approved-code, release 2 of 5, until 2099-01-01T00:00:00+00:00; "
        "owner's log open")


def test_no_dataset_no_line() -> None:
    state = badge.BadgeState(state="simulation", session_id="s", mode="local")
    assert "dataset" not in badge.render(state)["text/plain"]
    assert badge.machine(state)["datasets"] == []


def test_an_open_dataset_is_on_the_badge_its_json_and_the_claims() -> None:
    state = badge.BadgeState(state="refused", session_id="s", mode="local", datasets=[OPEN])
    bundle = badge.render(state)
    assert f"dataset: {LINE}" in bundle["text/plain"]
    assert "approved-code" in bundle["text/html"]
    assert bundle[badge.BADGE_MIME]["datasets"] == [OPEN]


def test_a_lost_owners_log_is_shown() -> None:
    lost = {**OPEN, "owner_log": "lost: the connection to the owner's broker was lost"}
    lines = badge.datasets_text([lost, "not a dataset"])
    assert lines == [LINE.replace("owner's log open", "owner's log lost: the connection to the owner's broker was "
                                                     "lost")]
