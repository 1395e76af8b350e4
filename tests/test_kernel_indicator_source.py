"""What the attestation indicator (labextension/) reads, from the real ``confidential-python-sim`` kernel.

The indicator trusts only the kernel process: IOPub ``display_data``/``update_display_data`` messages carrying
the badge's MIME type under the display id ``cc-kernel-attestation-<session>``, and
``kernel_info_reply.cc_kernel.badge``. So the kernel must publish every state change on IOPub even before any
cell showed the badge (parented to the latest ``kernel_info_request``, which frontends send on connecting and
after every restart), re-publish the state after each ``kernel_info_request``, and never let enclave output
claim that MIME type or display id (tests/test_kernel_integration.py and tests/test_kernel_widgets.py cover
the output and comm paths).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from kernel_env import BADGE_MIME, SIM, JupyterEnv, children_running, live_kernel

pytestmark = pytest.mark.slow

ENCLAVE_MODULE = "cc_kernel.enclave"


def state_updates(iopub: list[dict[str, Any]], session_id: str) -> list[dict[str, Any]]:
    """The badge messages an indicator accepts for ``session_id`` (same rule as labextension/src/index.ts)."""
    return [
        m for m in iopub
        if m["msg_type"] in ("display_data", "update_display_data")
        and BADGE_MIME in m["content"].get("data", {})
        and (m["content"].get("transient") or {}).get("display_id") == f"cc-kernel-attestation-{session_id}"
    ]


def test_state_reaches_iopub_without_any_cell(jupyter_env: JupyterEnv) -> None:
    with live_kernel(SIM) as k:
        info = k.request("kernel_info")
        session = info["content"]["cc_kernel"]["session_id"]

        def verified(msg: dict[str, Any]) -> bool:
            return bool(state_updates([msg], session)) and msg["content"]["data"][BADGE_MIME]["state"] == "simulation"

        assert any(verified(m) for m in k.iopub) or k.wait_iopub(verified, 60), "no state on IOPub"
        for msg in state_updates(k.iopub, session):
            assert msg["msg_type"] == "update_display_data"  # nothing is displayed in any cell
            assert msg["parent_header"]["msg_type"] == "kernel_info_request"
            assert msg["parent_header"]["msg_id"] in k.sent
        assert k.unparented() == []

        # each kernel_info_request is answered on IOPub too, with the current state and the same content as the
        # reply's cc_kernel.badge (what an indicator attaching late reads)
        reply = k.request("kernel_info")
        ask = reply["parent_header"]["msg_id"]
        def answered(msg: dict[str, Any]) -> bool:
            return msg["parent_header"].get("msg_id") == ask and bool(state_updates([msg], session))

        assert any(answered(m) for m in k.iopub) or k.wait_iopub(answered, 10)  # it may come with the reply
        published = [m for m in state_updates(k.iopub, session) if m["parent_header"]["msg_id"] == ask]
        assert len(published) == 1
        badge = published[0]["content"]["data"][BADGE_MIME]
        snapshot = reply["content"]["cc_kernel"]["badge"]
        assert badge["state"] == snapshot["state"] == reply["content"]["cc_kernel"]["state"] == "simulation"
        assert badge["session_id"] == snapshot["session_id"] == session
        assert badge["summary"] == snapshot["summary"]
        assert badge["summary"][0].startswith("Attestation: SIMULATION")

        # the claims are those of %attestation
        magic = next(o["content"]["data"] for o in k.ok("%attestation").of_type("display_data")
                     if "application/json" in o["content"]["data"])
        assert badge["summary"] == magic["text/plain"].splitlines()
        claims = dict(magic["application/json"])
        assert claims.pop("protections") == badge["protections"]  # the cell sandbox, as the monitor reported it
        assert claims.pop("datasets") == badge["datasets"] == []  # no data owner's dataset is open
        assert badge["result"] == claims


def test_enclave_stopped_reaches_iopub_without_any_cell(jupyter_env: JupyterEnv) -> None:
    with live_kernel(SIM) as k:
        session = k.request("kernel_info")["content"]["cc_kernel"]["session_id"]

        def state_is(state: str) -> Any:
            return lambda m: any(u["content"]["data"][BADGE_MIME]["state"] == state
                                 for u in state_updates([m], session))

        assert any(state_is("simulation")(m) for m in k.iopub) or k.wait_iopub(state_is("simulation"), 60)
        [enclave] = children_running(ENCLAVE_MODULE, k.pid)
        os.kill(enclave, signal.SIGKILL)
        assert k.wait_iopub(state_is("stopped"), 30), "the stop was not published"
        stopped = [m for m in state_updates(k.iopub, session) if state_is("stopped")(m)][-1]
        badge = stopped["content"]["data"][BADGE_MIME]
        assert badge["summary"][0] == "ENCLAVE STOPPED"
        assert "Restart the kernel" in badge["detail"]
        assert k.request("kernel_info")["content"]["cc_kernel"]["state"] == "stopped"


def test_refused_state_carries_the_reasons(jupyter_env: JupyterEnv) -> None:
    env = jupyter_env.kernel_env(CC_KERNEL_FAULTS="debug")
    with live_kernel(SIM, env=env) as k:
        session = k.request("kernel_info")["content"]["cc_kernel"]["session_id"]

        def refused(msg: dict[str, Any]) -> bool:
            return any(u["content"]["data"][BADGE_MIME]["state"] == "refused" for u in state_updates([msg], session))

        assert any(refused(m) for m in k.iopub) or k.wait_iopub(refused, 60)
        badge = next(m for m in k.iopub if refused(m))["content"]["data"][BADGE_MIME]
        assert badge["failures"] and any("policy.debug" in line for line in badge["failures"])
        assert badge["summary"][0] == "ATTESTATION REFUSED — no code was sent"
        assert "DEBUG" in badge["detail"]
