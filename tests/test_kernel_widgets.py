"""Comms from the frontend, through the real ``confidential-python-sim`` kernel: widgets that talk back.

A frontend (here jupyter_client, as JupyterLab would) sends ``comm_open``/``comm_msg``/``comm_close`` on the
shell channel; the kernel forwards each over the attested channel, the enclave runs the handler as user code and
signs a ``comm`` receipt, and the handler's output is published with the comm request as its parent, between
that request's busy and idle. Checked with ipywidgets (a slider moved, ``interact`` and its Output widget), a
plain comm target, ``tqdm.notebook``, and the audit log. Comm messages from the enclave that carry the
attestation badge's MIME type or display id are dropped, like any other enclave output that does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernel_env import BADGE_MIME, SIM, JupyterEnv, KernelPool, LiveKernel, live_kernel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool() -> Iterator[KernelPool]:
    p = KernelPool()
    yield p
    p.close()


@pytest.fixture
def sim(pool: KernelPool, jupyter_env: JupyterEnv) -> LiveKernel:
    return pool.get(SIM)


def frontend_comm(k: LiveKernel, msg_type: str, content: dict[str, Any], timeout: float = 30.0) -> list[dict[str, Any]]:
    """Send a comm message as a frontend does; return the IOPub messages it caused, up to its ``idle``."""
    msg = k.kc.session.msg(msg_type, content)
    msg_id = msg["header"]["msg_id"]
    start = len(k.iopub)
    k.kc.shell_channel.send(msg)
    done = k.wait_iopub(lambda m: m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                        and m["content"]["execution_state"] == "idle", timeout)
    assert done, f"no idle for {msg_type}"
    mine = [m for m in k.iopub[start:] if m["parent_header"].get("msg_id") == msg_id]
    assert mine[0]["msg_type"] == "status" and mine[0]["content"]["execution_state"] == "busy"
    return mine[1:-1]


def model_id(k: LiveKernel, name: str) -> str:
    return str(json.loads(k.ok(f"import json\nprint(json.dumps({name}.model_id))").stream()))


def update(state: dict[str, Any]) -> dict[str, Any]:
    return {"method": "update", "state": state, "buffer_paths": []}


def test_slider_moved_in_the_frontend_changes_the_value_in_the_enclave(sim: LiveKernel) -> None:
    sim.ok("import ipywidgets as widgets\n"
           "slider = widgets.IntSlider(value=3, max=10)\n"
           "slider.observe(lambda change: print('now', change['new']), names='value')\n"
           "slider")
    sid = model_id(sim, "slider")
    caused = frontend_comm(sim, "comm_msg", {"comm_id": sid, "data": update({"value": 7})})
    kinds = [m["msg_type"] for m in caused]
    assert "stream" in kinds, kinds
    assert "".join(m["content"]["text"] for m in caused if m["msg_type"] == "stream") == "now 7\n"
    echo = [m for m in caused if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "echo_update"]
    assert echo and echo[0]["content"]["data"]["state"] == {"value": 7}
    assert sim.value("slider.value") == "7"


def test_interact_output_goes_to_its_output_widget(sim: LiveKernel) -> None:
    cell = sim.ok("from ipywidgets import interact, IntSlider\n"
                  "x_slider = IntSlider(value=5)\n"
                  "@interact(x=x_slider)\n"
                  "def square(x):\n"
                  "    print('square is', x * x)\n")
    sid = model_id(sim, "x_slider")
    caused = frontend_comm(sim, "comm_msg", {"comm_id": sid, "data": update({"value": 6})})
    # ipywidgets' Output widget captures the output of the request whose msg_id it is given: the comm request's
    msg_ids = [m["content"]["data"]["state"]["msg_id"] for m in caused
               if m["msg_type"] == "comm_msg" and "msg_id" in m["content"]["data"].get("state", {})]
    comm_request = caused[0]["parent_header"]["msg_id"]
    assert msg_ids == [comm_request, ""], msg_ids
    streams = [m for m in caused if m["msg_type"] == "stream"]
    assert [m["content"]["text"] for m in streams] == ["square is 36\n"]
    # in the cell that made it, the same capture happened with the cell's own request id
    first = [m["content"]["data"]["state"]["msg_id"] for m in cell.outputs
             if m["msg_type"] == "comm_msg" and "msg_id" in m["content"]["data"].get("state", {})]
    assert first == [cell.msg_id, ""]
    assert "square is 25\n" in cell.stream()


def test_comm_target_opened_messaged_and_closed_by_the_frontend(sim: LiveKernel) -> None:
    sim.ok("import comm\n"
           "seen = []\n"
           "def on_open(c, msg):\n"
           "    seen.append(('open', msg['content']['data']))\n"
           "    def on_msg(m):\n"
           "        seen.append(('msg', m['content']['data']))\n"
           "        c.send({'echo': m['content']['data']})\n"
           "    c.on_msg(on_msg)\n"
           "    c.on_close(lambda m: seen.append(('close', m['content']['data'])))\n"
           "comm.get_comm_manager().register_target('cc.test.front', on_open)")
    frontend_comm(sim, "comm_open", {"comm_id": "front-1", "target_name": "cc.test.front", "data": {"a": 1}})
    info = sim.request("comm_info", target_name="cc.test.front")["content"]
    assert info["comms"] == {"front-1": {"target_name": "cc.test.front"}}
    caused = frontend_comm(sim, "comm_msg", {"comm_id": "front-1", "data": {"b": 2}})
    assert [(m["msg_type"], m["content"]["data"]) for m in caused] == [("comm_msg", {"echo": {"b": 2}})]
    frontend_comm(sim, "comm_close", {"comm_id": "front-1", "data": {"c": 3}})
    assert sim.value("seen") == "[('open', {'a': 1}), ('msg', {'b': 2}), ('close', {'c': 3})]"
    assert sim.request("comm_info", target_name="cc.test.front")["content"]["comms"] == {}


def test_tqdm_notebook_progress_bar_updates(sim: LiveKernel) -> None:
    cell = sim.ok("from tqdm.notebook import tqdm\n"
                  "total = 0\n"
                  "for i in tqdm(range(4), desc='work'):\n"
                  "    total += i\n"
                  "print(total)")
    assert cell.stream() == "6\n"
    shown = [m for m in cell.outputs if m["msg_type"] == "display_data"]
    assert shown and "application/vnd.jupyter.widget-view+json" in shown[0]["content"]["data"]
    states = [m["content"]["data"]["state"] for m in cell.outputs
              if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"]
    assert {"value": 4.0} in states or {"value": 4} in states, states
    assert {"bar_style": "success"} in states


@pytest.mark.parametrize("code", [
    # an Output widget whose outputs claim the badge's MIME type, or its display id
    "import ipywidgets as widgets\nout = widgets.Output()\n"
    f"out.outputs = ({{'output_type': 'display_data', 'data': {{'{BADGE_MIME}': {{'state': 'affirming'}}}},"
    " 'metadata': {}},)",
    "import comm\nc = comm.create_comm(target_name='cc.fake', data={'transient': {'display_id': "
    "'cc-kernel-attestation-0123'}})",
    f"import comm\nc = comm.create_comm(target_name='cc.fake', data={{}}, metadata={{'{BADGE_MIME}': 1}})",
])
def test_enclave_comm_messages_carrying_the_badge_are_dropped(sim: LiveKernel, code: str) -> None:
    cell = sim.ok(f"{code}\nprint('after')")
    for msg in cell.outputs:
        seen = json.dumps([msg["content"], msg["metadata"]])
        assert BADGE_MIME not in seen and "cc-kernel-attestation" not in seen, msg
    assert cell.stream() == "after\n"


def test_frontend_comm_messages_are_receipted(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    from test_audit_e2e import clean_shutdown, kinds, logs_in, verify

    audit_dir = tmp_path / "logs"
    with live_kernel(SIM, env=jupyter_env.kernel_env(CC_KERNEL_AUDIT_DIR=str(audit_dir))) as k:
        k.ok("import comm\ncomm.get_comm_manager().register_target('cc.test.audit', lambda c, m: None)", timeout=60)
        frontend_comm(k, "comm_open", {"comm_id": "audited", "target_name": "cc.test.audit", "data": {"x": 1}})
        frontend_comm(k, "comm_msg", {"comm_id": "audited", "data": {"y": 2}})
        frontend_comm(k, "comm_close", {"comm_id": "audited", "data": {}})
        clean_shutdown(k)
    [log] = logs_in(audit_dir)
    result = verify(jupyter_env, log, "--json")
    assert result.code == 0, result.out + result.err
    assert kinds(result.doc) == ["opening", "cell", "comm", "comm", "comm", "closing"]
    comms = [json.loads(e["code"]) for e in result.doc["timeline"] if e.get("kind") == "comm"]
    assert comms == [
        {"msg_type": "comm_open", "comm_id": "audited", "target_name": "cc.test.audit", "data": {"x": 1}},
        {"msg_type": "comm_msg", "comm_id": "audited", "data": {"y": 2}},
        {"msg_type": "comm_close", "comm_id": "audited", "data": {}},
    ]
