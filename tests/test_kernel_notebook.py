"""Notebook parity: tests/notebooks/parity.ipynb executed with nbclient on ``python3`` and on
``confidential-python-sim`` gives the same outputs, apart from the attestation badge.

Compared per code cell: execution count, output types, stream text, data keys and values (images: keys only,
PNG bytes are not the point), error name/value/traceback text. Normalised: ANSI colours (the enclave's
IPython colours the failing expression differently), memory addresses, timings, and the split of a stream
into messages (adjacent stream outputs of one name are joined; the kernels flush at different moments).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from kernel_env import BADGE_MIME, SIM, STOCK, JupyterEnv, strip_ansi
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).parent / "notebooks" / "parity.ipynb"
ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
DURATION = re.compile(r"\d+(?:\.\d+)?\s*(?:ns|\u00b5s|\u03bcs|us|ms|s)\b")  # IPython writes GREEK MU


def _normal_text(text: str) -> str:
    return DURATION.sub("<duration>", ADDRESS.sub("0x<address>", strip_ansi(text)))


def _normal_data(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if mime.startswith("image/"):
            out[mime] = "<image>"
        elif isinstance(value, str):
            out[mime] = _normal_text(value)
        else:
            out[mime] = value
    return out


def _normal_outputs(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for output in outputs:
        kind = output["output_type"]
        if kind == "stream":
            if result and result[-1]["output_type"] == "stream" and result[-1]["name"] == output["name"]:
                result[-1]["text"] += output["text"]
                continue
            result.append({"output_type": kind, "name": output["name"], "text": output["text"]})
        elif kind == "error":
            result.append({"output_type": kind, "ename": output["ename"], "evalue": output["evalue"],
                           "traceback": [_normal_text(line) for line in output["traceback"]]})
        else:
            entry = {"output_type": kind, "data": _normal_data(output["data"]), "metadata": output["metadata"]}
            if kind == "execute_result":
                entry["execution_count"] = output["execution_count"]
            result.append(entry)
    for entry in result:
        if entry["output_type"] == "stream":
            entry["text"] = _normal_text(entry["text"])
    return result


def _run(kernel_name: str, workdir: Path) -> Any:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=120, startup_timeout=60,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def _is_badge(output: dict[str, Any]) -> bool:
    return BADGE_MIME in output.get("data", {})


def test_parity_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_notebook_outputs_match_python3_apart_from_the_badge(jupyter_env: JupyterEnv, tmp_path: Path) -> None:
    stock = _run(STOCK, tmp_path)
    ours = _run(SIM, tmp_path)
    stock_cells = [c for c in stock.cells if c.cell_type == "code"]
    our_cells = [c for c in ours.cells if c.cell_type == "code"]

    badges = [(i, j) for i, c in enumerate(our_cells) for j, o in enumerate(c.outputs) if _is_badge(o)]
    assert badges == [(0, 0)], "one badge, the first output of the first cell"
    assert "SIMULATION" in our_cells[0].outputs[0]["data"]["text/plain"]
    assert not any(_is_badge(o) for c in stock_cells for o in c.outputs)

    for theirs, mine in zip(stock_cells, our_cells, strict=True):
        expected = _normal_outputs(copy.deepcopy(theirs.outputs))
        actual = _normal_outputs([o for o in copy.deepcopy(mine.outputs) if not _is_badge(o)])
        assert actual == expected, f"cell {theirs.source!r}"
        assert mine.execution_count == theirs.execution_count
    # the notebook really exercised what it is meant to: rich output, an update in place, an image, an error
    kinds = {o["output_type"] for c in stock_cells for o in c.outputs}
    assert kinds == {"stream", "execute_result", "display_data", "error"}
    assert any("image/png" in o.get("data", {}) for c in our_cells for o in c.outputs)
    assert any(o.get("data", {}).get("text/plain") == "'second version'" for c in our_cells for o in c.outputs)
