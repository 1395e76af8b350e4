"""The tests wait for events and assert behaviour: no test sleeps to synchronise (a loop turn, ``sleep(0)``, is
fine; waiting is ``cc_kernel.testing.waiting.wait_until``) and no assertion bounds a wall-clock time from above
(timings are measured in benchmarks/). Checked on every test module's source (with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SLEEPS = {"time.sleep", "asyncio.sleep", "sleep"}
#: Names and calls that hold or read a wall-clock time.
TIME_WORDS = ("elapsed", "latency", "seconds", "took", "duration", "monotonic", "perf_counter", "time.time",
              "reply_at", "output_at")


def _timed(node: ast.expr) -> bool:
    return any(word in ast.unparse(node) for word in TIME_WORDS)


def hygiene_problems(source: str, name: str) -> list[str]:
    """Each sleep that is not a loop turn, and each upper bound on a time, as ``"<name>:<line> ..."``."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in SLEEPS:
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and arg.value == 0):
                problems.append(f"{name}:{node.lineno} sleeps ({ast.unparse(node)}): wait for an event instead")
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
            sides = [node.test.left, *node.test.comparators]
            for i, op in enumerate(node.test.ops):
                if (isinstance(op, ast.Lt | ast.LtE) and _timed(sides[i])) or (
                        isinstance(op, ast.Gt | ast.GtE) and _timed(sides[i + 1])):
                    problems.append(f"{name}:{node.lineno} bounds a time from above ({ast.unparse(node.test)}): "
                                    "measure it in benchmarks/")
    return problems


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_sleeping_and_no_upper_bound_on_time(path: Path) -> None:
    assert hygiene_problems(path.read_text(), path.name) == []


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("import time\ntime.sleep(0.3)\n", "t.py:2 sleeps (time.sleep(0.3)): wait for an event instead"),
        ("async def f():\n    await asyncio.sleep(0.05)\n",
         "t.py:2 sleeps (asyncio.sleep(0.05)): wait for an event instead"),
        ("assert latency < 0.25, latency\n",
         "t.py:1 bounds a time from above (latency < 0.25): measure it in benchmarks/"),
        ("assert time.monotonic() - start < 4.0\n",
         "t.py:1 bounds a time from above (time.monotonic() - start < 4.0): measure it in benchmarks/"),
        ("assert 60 > executed.seconds\n",
         "t.py:1 bounds a time from above (60 > executed.seconds): measure it in benchmarks/"),
    ],
)
def test_each_rule_fires_with_its_message(source: str, expect: str) -> None:
    assert hygiene_problems(source, "t.py") == [expect]


def test_loop_turns_lower_bounds_and_sleeping_cells_pass() -> None:
    source = (
        "async def f():\n    await asyncio.sleep(0)\n"
        "assert cell.reply_at >= 3.0\n"  # a lower bound cannot fail from load
        "kernel.execute('import time; time.sleep(30)')\n"  # the cell's code sleeps, not the test
        "assert count < 64\n"
    )
    assert hygiene_problems(source, "t.py") == []
