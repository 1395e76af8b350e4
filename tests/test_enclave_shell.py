"""Tests for cc_kernel.worker.shell: IPython without ipykernel, output to an in-process sink.

InteractiveShell is a process-wide singleton that patches sys and builtins, so one shell serves the whole
module (``capture_fds=False``: pytest owns fds 1/2). Scenarios that need fd capture, a clean HOME or process
hardening run in a subprocess. pytest runs tests on the main thread, so interrupts are tested in-process; the
interrupt is triggered by the sink when the cell's first output arrives, never by a sleep.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_kernel.worker.shell import EnclaveShell
from cc_kernel.worker.streams import DEFAULT_MAX_CHUNK, OutputRouter

REPO = Path(__file__).resolve().parents[1]

Msg = tuple[float, str, dict[str, Any]]


class RecordingSink:
    """Thread-safe OutputSink recording (monotonic time, kind, content); an optional hook sees each one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[Msg] = []
        self.hook: Callable[[str, dict[str, Any]], None] | None = None

    def emit(self, kind: str, content: dict[str, Any]) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), kind, content))
        hook = self.hook
        if hook is not None:
            hook(kind, content)

    def take(self) -> list[Msg]:
        with self._lock:
            messages, self.messages = self.messages, []
        return messages


class Harness:
    def __init__(self, shell: EnclaveShell, sink: RecordingSink, inputs: list[tuple[str, bool]]) -> None:
        self.shell = shell
        self.sink = sink
        self.inputs = inputs
        self.count = 0

    def run(self, code: str, **kwargs: Any) -> tuple[dict[str, Any], list[Msg]]:
        """Execute like a Jupyter kernel would: the counter advances for every non-silent request."""
        self.sink.take()
        if not kwargs.get("silent", False):
            self.count += 1
        kwargs.setdefault("execution_count", self.count)
        reply = self.shell.execute(code, **kwargs)
        return reply, self.sink.take()


def kinds(messages: list[Msg]) -> list[str]:
    return [kind for _, kind, _ in messages]


def stream_text(messages: list[Msg], name: str = "stdout") -> str:
    return "".join(c["text"] for _, k, c in messages if k == "stream" and c["name"] == name)


def only(messages: list[Msg], kind: str) -> dict[str, Any]:
    found = [c for _, k, c in messages if k == kind]
    assert len(found) == 1, kinds(messages)
    return found[0]


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    sink = RecordingSink()
    inputs: list[tuple[str, bool]] = []

    def input_fn(prompt: str, password: bool) -> str:
        inputs.append((prompt, password))
        return "s3cret" if password else "Ada"

    shell = EnclaveShell(sink, input_fn, capture_fds=False)
    try:
        yield Harness(shell, sink, inputs)
    finally:
        ipython_dir = shell.ipython_dir
        shell.close()
        assert not os.path.exists(ipython_dir)


# --- execution and output ----------------------------------------------------------------------------------


def test_hello_world_stream(harness: Harness) -> None:
    reply, messages = harness.run("print('hello, world')")
    assert reply["status"] == "ok"
    assert reply["execution_count"] == harness.count
    assert reply["payload"] == []
    assert reply["user_expressions"] == {}
    assert messages[0][1:] == ("stream", {"name": "stdout", "text": "hello, world\n"})
    assert kinds(messages) == ["stream"]


def test_stderr_stream(harness: Harness) -> None:
    reply, messages = harness.run("import sys; print('oops', file=sys.stderr)")
    assert reply["status"] == "ok"
    assert stream_text(messages, "stderr") == "oops\n"
    assert stream_text(messages, "stdout") == ""


def test_stdout_and_stderr_keep_their_relative_order(harness: Harness) -> None:
    _, messages = harness.run("import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')")
    assert [(c["name"], c["text"]) for _, k, c in messages] == [
        ("stdout", "a\n"),
        ("stderr", "b\n"),
        ("stdout", "c\n"),
    ]


def test_execute_result_carries_the_frontend_execution_count(harness: Harness) -> None:
    harness.count = 41
    reply, messages = harness.run("6 * 7")
    assert reply["execution_count"] == 42
    result = only(messages, "execute_result")
    assert result == {"execution_count": 42, "data": {"text/plain": "42"}, "metadata": {}}
    reply, messages = harness.run("(In[42], Out[42], _42)")
    assert only(messages, "execute_result")["data"]["text/plain"] == "('6 * 7', 42, 42)"


def test_error_reply_and_single_error_output(harness: Harness) -> None:
    reply, messages = harness.run("def f():\n    raise ValueError('bad value')\nf()")
    assert reply["status"] == "error"
    assert reply["ename"] == "ValueError"
    assert reply["evalue"] == "bad value"
    assert reply["execution_count"] == harness.count
    error = only(messages, "error")
    assert kinds(messages) == ["error"]
    assert error["ename"] == "ValueError" and error["evalue"] == "bad value"
    assert error["traceback"] == reply["traceback"]
    joined = "\n".join(error["traceback"])
    assert "\x1b[" in joined  # ANSI colours, as ipykernel sends them
    assert "raise ValueError" in re.sub(r"\x1b\[[0-9;]*m", "", joined)


def test_syntax_error(harness: Harness) -> None:
    reply, messages = harness.run("def (:")
    assert reply["status"] == "error"
    assert reply["ename"] == "SyntaxError"
    assert only(messages, "error")["ename"] == "SyntaxError"


def test_output_order_is_preserved(harness: Harness) -> None:
    code = "from IPython.display import display\nprint('one')\ndisplay('two')\nprint('three')\n1/0"
    reply, messages = harness.run(code)
    assert reply["status"] == "error"
    assert kinds(messages) == ["stream", "display_data", "stream", "error"]
    assert [c.get("text") for _, _, c in messages][::2] == ["one\n", "three\n"]


def test_display_id_then_update(harness: Harness) -> None:
    code = (
        "from IPython.display import display, HTML\n"
        "h = display(HTML('<b>first</b>'), display_id=True)\n"
        "h.update(HTML('<i>second</i>'))"
    )
    reply, messages = harness.run(code)
    assert reply["status"] == "ok"
    assert kinds(messages) == ["display_data", "update_display_data"]
    first, second = messages[0][2], messages[1][2]
    assert first["data"]["text/html"] == "<b>first</b>"
    assert second["data"]["text/html"] == "<i>second</i>"
    display_id = first["transient"]["display_id"]
    assert display_id and second["transient"] == {"display_id": display_id}


def test_clear_output(harness: Harness) -> None:
    code = "from IPython.display import clear_output\nprint('x')\nclear_output(wait=True)"
    _, messages = harness.run(code)
    assert kinds(messages) == ["stream", "clear_output"]
    assert messages[1][2] == {"wait": True}


def test_mimebundles_pass_through_unchanged(harness: Harness) -> None:
    code = textwrap.dedent(
        """\
        from IPython.display import display, HTML, Markdown, Latex, JSON
        display(HTML('<table><tr><td>1</td></tr></table>'))
        display(Markdown('# Title *x*'))
        display(Latex(r'$\\alpha^2$'))
        display(JSON({'a': [1, 2, {'b': None}]}))
        display({'application/x-custom+json': {'k': [1, 'two']}, 'text/plain': 'custom'}, raw=True,
                metadata={'application/x-custom+json': {'m': 1}})
        """
    )
    reply, messages = harness.run(code)
    assert reply["status"] == "ok"
    datas = [c["data"] for _, k, c in messages if k == "display_data"]
    assert datas[0]["text/html"] == "<table><tr><td>1</td></tr></table>"
    assert datas[1]["text/markdown"] == "# Title *x*"
    assert datas[2]["text/latex"] == "$\\alpha^2$"
    assert datas[3]["application/json"] == {"a": [1, 2, {"b": None}]}
    assert datas[4] == {"application/x-custom+json": {"k": [1, "two"]}, "text/plain": "custom"}
    assert messages[4][2]["metadata"] == {"application/x-custom+json": {"m": 1}}


def test_matplotlib_inline_png(harness: Harness) -> None:
    reply, messages = harness.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);")
    assert reply["status"] == "ok"
    png = only(messages, "display_data")["data"]["image/png"]
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "execute_result" not in kinds(messages)  # the trailing ';' silences the Line2D repr


def test_numpy_repr(harness: Harness) -> None:
    _, messages = harness.run("import numpy as np\nnp.arange(3)")
    assert only(messages, "execute_result")["data"]["text/plain"] == "array([0, 1, 2])"


def test_timeit_magic(harness: Harness) -> None:
    reply, messages = harness.run("%timeit -n1 -r1 pass")
    assert reply["status"] == "ok"
    assert "per loop" in stream_text(messages)


def test_time_cell_magic(harness: Harness) -> None:
    reply, messages = harness.run("%%time\nx_timed = sum(range(10))")
    assert reply["status"] == "ok"
    assert "Wall time" in stream_text(messages)


def test_who_magic(harness: Harness) -> None:
    harness.run("who_marker_variable = 1")
    _, messages = harness.run("%who")
    assert "who_marker_variable" in stream_text(messages)


def test_question_mark_produces_a_page_payload(harness: Harness) -> None:
    reply, messages = harness.run("len?")
    assert reply["status"] == "ok"
    assert messages == []
    (payload,) = reply["payload"]
    assert payload["source"] == "page"
    assert payload["start"] == 0
    assert "Return the number of items" in payload["data"]["text/plain"]


def test_user_expressions(harness: Harness) -> None:
    harness.run("ue_value = 21")
    reply, _ = harness.run("pass", user_expressions={"double": "ue_value * 2", "bad": "1/0"})
    assert reply["user_expressions"]["double"]["status"] == "ok"
    assert reply["user_expressions"]["double"]["data"] == {"text/plain": "42"}
    assert reply["user_expressions"]["bad"]["status"] == "error"
    assert reply["user_expressions"]["bad"]["ename"] == "ZeroDivisionError"


def test_silent_execution_has_no_result_and_no_history(harness: Harness) -> None:
    before = harness.count
    reply, messages = harness.run("silent_marker = 5\nsilent_marker", silent=True)
    assert reply["status"] == "ok"
    assert reply["execution_count"] == before
    assert messages == []
    search = harness.shell.history("search", pattern="silent_marker*")
    assert search["history"] == []
    reply, messages = harness.run("silent_marker")
    assert reply["execution_count"] == before + 1
    assert only(messages, "execute_result")["execution_count"] == before + 1


def test_top_level_await(harness: Harness) -> None:
    reply, messages = harness.run("import asyncio\nawait asyncio.sleep(0)\n'awaited'")
    assert reply["status"] == "ok"
    assert only(messages, "execute_result")["data"]["text/plain"] == "'awaited'"


def test_exit_asks_the_frontend(harness: Harness) -> None:
    # Run last-but-safe: exit only sets a flag and a payload; the shell keeps working.
    reply, _ = harness.run("exit")
    assert reply["payload"] == [{"source": "ask_exit", "keepkernel": False}]
    assert harness.shell.exit_requested
    harness.shell.ipython.exit_now = False


def test_formatter_error_marks_the_request_failed(harness: Harness) -> None:
    code = "class BadRepr:\n    def __repr__(self):\n        raise ValueError('repr boom')\nBadRepr()"
    reply, messages = harness.run(code)
    assert reply["status"] == "error"  # as ipykernel: an error while formatting Out[n] fails the request
    assert reply["ename"] == "ValueError"
    assert only(messages, "error")["evalue"] == "repr boom"


def test_capture_magic_and_streams_afterwards(harness: Harness) -> None:
    reply, messages = harness.run("%%capture captured\nprint('hidden')")
    assert reply["status"] == "ok" and messages == []
    _, messages = harness.run("print(captured.stdout, end='')")
    assert stream_text(messages) == "hidden\n"


def test_requests_off_the_main_thread_are_refused(harness: Harness) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            harness.shell.execute("1")
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


# --- stdin ------------------------------------------------------------------------------------------------


def test_input_goes_to_input_fn(harness: Harness) -> None:
    harness.inputs.clear()
    reply, messages = harness.run("print('before')\nname = input('Name? ')\nname", allow_stdin=True)
    assert reply["status"] == "ok"
    assert harness.inputs == [("Name? ", False)]
    assert kinds(messages) == ["stream", "execute_result"]
    assert messages[1][2]["data"]["text/plain"] == "'Ada'"


def test_getpass_goes_to_input_fn_as_password(harness: Harness) -> None:
    harness.inputs.clear()
    reply, messages = harness.run("import getpass\nlen(getpass.getpass('PIN: '))", allow_stdin=True)
    assert reply["status"] == "ok"
    assert harness.inputs == [("PIN: ", True)]
    assert only(messages, "execute_result")["data"]["text/plain"] == "6"


def test_input_without_stdin_raises_stdin_not_implemented(harness: Harness) -> None:
    harness.inputs.clear()
    reply, messages = harness.run("input('x')", allow_stdin=False)
    assert reply["status"] == "error"
    assert reply["ename"] == "StdinNotImplementedError"
    assert only(messages, "error")["ename"] == "StdinNotImplementedError"
    assert harness.inputs == []


def test_input_is_restored_between_requests(harness: Harness) -> None:
    import builtins
    import getpass

    harness.run("pass", allow_stdin=True)
    assert builtins.input.__module__ == "builtins"
    assert getpass.getpass.__module__ == "getpass"


# --- completion, inspection, is_complete, history ---------------------------------------------------------


def test_complete_import(harness: Harness) -> None:
    reply = harness.shell.complete("import o", 8)
    assert reply["status"] == "ok"
    assert "os" in reply["matches"]
    assert reply["cursor_start"] == 7 and reply["cursor_end"] == 8
    types = reply["metadata"]["_jupyter_types_experimental"]
    assert {t["text"] for t in types} == set(reply["matches"])


def test_complete_cursor_bounds(harness: Harness) -> None:
    harness.run("completion_target_value = 1")
    code = "completion_tar + 1"
    reply = harness.shell.complete(code, len("completion_tar"))
    assert "completion_target_value" in reply["matches"]
    assert 0 <= reply["cursor_start"] <= reply["cursor_end"] <= len(code)
    assert harness.shell.complete("", 0)["status"] == "ok"
    assert harness.shell.complete("pri")["cursor_end"] == 3  # None means the end of the code
    for bad in (-1, len(code) + 1):
        with pytest.raises(ValueError, match="cursor_pos"):
            harness.shell.complete(code, bad)


def test_inspect(harness: Harness) -> None:
    reply = harness.shell.inspect("len(x)", 2, 0)
    assert reply["status"] == "ok" and reply["found"] is True
    assert "Return the number of items" in reply["data"]["text/plain"]
    assert "text/html" not in reply["data"]
    missing = harness.shell.inspect("no_such_name_here", 5)
    assert missing == {"status": "ok", "found": False, "data": {}, "metadata": {}}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("1 + 1", "complete"),
        ("print('hello')", "complete"),
        ("for i in range(3):", "incomplete"),
        ("def f(x):\n    x *", "invalid"),
        ("print('''hello", "incomplete"),
        ("import = 7q", "invalid"),
    ],
)
def test_is_complete(harness: Harness, code: str, status: str) -> None:
    reply = harness.shell.is_complete(code)
    assert reply["status"] == status
    if status == "incomplete":
        assert isinstance(reply["indent"], str)


def test_is_complete_indent(harness: Harness) -> None:
    assert harness.shell.is_complete("if True:") == {"status": "incomplete", "indent": "    "}


def test_history_tail_search_and_range(harness: Harness) -> None:
    harness.run("history_marker_a = 1")
    harness.run("history_marker_b = 2")
    tail = harness.shell.history("tail", n=2)
    assert tail["status"] == "ok"
    assert [entry[2] for entry in tail["history"]] == ["history_marker_a = 1", "history_marker_b = 2"]
    session, line_b = tail["history"][1][0], tail["history"][1][1]
    assert line_b == harness.count  # history lines are the frontend's execution counts
    search = harness.shell.history("search", pattern="history_marker_*")
    assert [entry[2] for entry in search["history"]] == ["history_marker_a = 1", "history_marker_b = 2"]
    ranged = harness.shell.history("range", session=session, start=line_b, stop=line_b + 1)
    assert ranged["history"] == [[session, line_b, "history_marker_b = 2"]]
    with_output = harness.shell.history("range", session=0, start=line_b, stop=line_b + 1, output=True)
    assert with_output["history"] == [[session, line_b, ["history_marker_b = 2", None]]]
    assert harness.shell.history("nonsense")["history"] == []


def test_no_history_database_on_disk(harness: Harness) -> None:
    hm = harness.shell.ipython.history_manager
    assert str(hm.hist_file) == ":memory:"
    private = Path(harness.shell.ipython_dir)
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    assert list(private.rglob("*.sqlite")) == []
    assert os.environ["IPYTHONDIR"] == str(private)
    jedi_settings = pytest.importorskip("jedi.settings")
    assert Path(jedi_settings.cache_directory).is_relative_to(private)  # no pickles from the host's disk


# --- streaming ------------------------------------------------------------------------------------------


def test_output_streams_while_the_cell_runs(harness: Harness, tmp_path: Path) -> None:
    """The flusher thread emits output while the cell still runs: the cell waits until the test has seen its first
    line, which it never would if output were sent only when the cell ends. (Latency: benchmarks/kernel.py.)"""
    seen = tmp_path / "seen"

    def hook(kind: str, content: dict[str, Any]) -> None:
        if kind == "stream" and content["text"] == "x\n":
            seen.touch()

    harness.sink.hook = hook
    try:
        reply, messages = harness.run(
            "import os, time\nprint('x')\n"
            f"for _ in range(6000):\n    if os.path.exists({str(seen)!r}):\n        print('seen')\n        break\n"
            "    time.sleep(0.01)\n"
        )
    finally:
        harness.sink.hook = None
    assert reply["status"] == "ok"
    assert stream_text(messages) == "x\nseen\n"


def test_one_megabyte_arrives_complete_and_in_order(harness: Harness) -> None:
    code = "for i in range(16384):\n    print(f'{i:08d}' + 'x' * 55)"
    expected = "".join(f"{i:08d}" + "x" * 55 + "\n" for i in range(16384))
    assert len(expected) == 1024 * 1024
    reply, messages = harness.run(code)
    assert reply["status"] == "ok"
    assert set(kinds(messages)) == {"stream"}
    assert stream_text(messages) == expected
    sizes = [len(c["text"]) for _, _, c in messages]
    assert max(sizes) <= DEFAULT_MAX_CHUNK
    assert len(messages) < 30  # coalesced into a few large messages, not one per print


def test_flush_emits_immediately(harness: Harness) -> None:
    harness.sink.take()
    code = "import sys, time\nprint('now', flush=True)\nt_flushed = time.monotonic()"
    harness.shell.execute(code, execution_count=harness.count + 1)
    harness.count += 1
    messages = harness.sink.take()
    flushed_at = harness.shell.ipython.user_ns["t_flushed"]
    (emitted,) = [t for t, k, c in messages if k == "stream"]
    assert emitted <= flushed_at  # emitted synchronously, before the next statement ran


def test_router_chunks_orders_and_closes() -> None:
    sink = RecordingSink()
    router = OutputRouter(sink, flush_interval=10.0, max_buffer=1000, max_chunk=300)
    try:
        router.write("stdout", "a" * 999)  # below max_buffer: stays buffered (the deadline is 10 s away)
        assert sink.messages == []
        router.write("stderr", "b")  # reaches max_buffer: flushed synchronously by the writer
        router.write("stdout", "c")
        router.emit("clear_output", {"wait": False})  # pending text goes first
    finally:
        router.close()
    messages = sink.take()
    assert [(k, c.get("name"), len(c.get("text", ""))) for _, k, c in messages] == [
        ("stream", "stdout", 300),
        ("stream", "stdout", 300),
        ("stream", "stdout", 300),
        ("stream", "stdout", 99),
        ("stream", "stderr", 1),
        ("stream", "stdout", 1),
        ("clear_output", None, 0),
    ]
    assert router.write("stdout", "late") is False
    assert sink.messages == []
    with pytest.raises(ValueError, match="rich output kind"):
        router.emit("stream", {})


# --- interrupt ------------------------------------------------------------------------------------------


def _interrupt_on_first_output(harness: Harness) -> list[bool]:
    results: list[bool] = []

    def hook(kind: str, content: dict[str, Any]) -> None:
        if kind == "stream" and not results:
            results.append(harness.shell.interrupt())

    harness.sink.hook = hook
    return results


def test_interrupt_sleeping_cell(harness: Harness) -> None:
    results = _interrupt_on_first_output(harness)
    try:
        reply, messages = harness.run("import time\nprint('go')\ntime.sleep(10)\nprint('not reached')")
    finally:
        harness.sink.hook = None
    assert results == [True]
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"
    error = only(messages, "error")
    assert error["ename"] == "KeyboardInterrupt"
    # the user's frame is the last one shown, as with the stock kernel: no frame of the enclave's handler
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
    assert "time.sleep(10)" in traceback and "_on_sigint" not in traceback and "shell.py" not in traceback
    assert "not reached" not in stream_text(messages)
    reply, _ = harness.run("'still alive'")
    assert reply["status"] == "ok"


def test_interrupt_busy_loop(harness: Harness) -> None:
    results = _interrupt_on_first_output(harness)
    try:
        reply, _ = harness.run("print('go')\nwhile True:\n    pass")
    finally:
        harness.sink.hook = None
    assert results == [True]
    assert reply["ename"] == "KeyboardInterrupt"


def test_interrupt_async_cell_cancels_it(harness: Harness) -> None:
    results = _interrupt_on_first_output(harness)
    try:
        reply, _ = harness.run("import asyncio\nprint('go')\nawait asyncio.sleep(10)")
    finally:
        harness.sink.hook = None
    assert results == [True]
    assert reply["status"] == "error"
    assert reply["ename"] == "CancelledError"  # as in ipykernel: the awaiting task is cancelled
    reply, messages = harness.run("await asyncio.sleep(0)\n'loop still usable'")
    assert only(messages, "execute_result")["data"]["text/plain"] == "'loop still usable'"


def test_interrupt_when_idle_is_a_no_op(harness: Harness) -> None:
    assert harness.shell.interrupt() is False
    reply, _ = harness.run("'fine'")
    assert reply["status"] == "ok"


# --- comms ----------------------------------------------------------------------------------------------


def test_comm_open_and_msg_from_the_enclave(harness: Harness) -> None:
    code = (
        "import comm\n"
        "c = comm.create_comm(target_name='cc.test', data={'hello': 1})\n"
        "c.send({'n': 2}, buffers=[b'ab', memoryview(b'cd')])\n"
        "c.close()"
    )
    reply, messages = harness.run(code)
    assert reply["status"] == "ok"
    assert kinds(messages) == ["comm_open", "comm_msg", "comm_close"]
    opened, sent, closed = (c for _, _, c in messages)
    assert opened["target_name"] == "cc.test" and opened["data"] == {"hello": 1}
    assert sent["comm_id"] == opened["comm_id"] == closed["comm_id"]
    assert sent["data"] == {"n": 2}
    assert sent["buffers"] == [b"ab", b"cd"]
    assert harness.shell.comm_info()["comms"] == {}


def test_comm_from_the_frontend(harness: Harness) -> None:
    code = (
        "received = []\n"
        "def on_open(comm, msg):\n"
        "    received.append(('open', msg['content']['data']))\n"
        "    def on_msg(m):\n"
        "        received.append(('msg', m['content']['data'], m['buffers']))\n"
        "        print('got')\n"
        "    comm.on_msg(on_msg)\n"
        "    comm.send({'ack': True})\n"
        "import comm\n"
        "comm.get_comm_manager().register_target('cc.front', on_open)"
    )
    assert harness.run(code)[0]["status"] == "ok"
    shell = harness.shell
    harness.sink.take()
    shell.handle_comm("comm_open", {"comm_id": "c1", "target_name": "cc.front", "data": {"x": 1}})
    assert shell.comm_info("cc.front")["comms"] == {"c1": {"target_name": "cc.front"}}
    shell.handle_comm("comm_msg", {"comm_id": "c1", "data": {"y": 2}}, buffers=[b"\x00"])
    shell.handle_comm("comm_close", {"comm_id": "c1", "data": {}})
    messages = harness.sink.take()
    assert kinds(messages) == ["comm_msg", "stream"]
    assert messages[0][2]["data"] == {"ack": True}
    assert stream_text(messages) == "got\n"
    assert shell.ipython.user_ns["received"] == [("open", {"x": 1}), ("msg", {"y": 2}, [b"\x00"])]
    assert shell.comm_info()["comms"] == {}
    with pytest.raises(ValueError, match="comm message type"):
        shell.handle_comm("execute_request", {})


def test_kernel_shim(harness: Harness) -> None:
    _, messages = harness.run("get_ipython().kernel.comm_manager is __import__('comm').get_comm_manager()")
    assert only(messages, "execute_result")["data"]["text/plain"] == "True"


# --- subprocess scenarios -------------------------------------------------------------------------------


def _run_script(script: str, tmp_path: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["HOME"] = str(tmp_path / "home")
    env.pop("IPYTHONDIR", None)
    env.pop("MPLBACKEND", None)  # set by the module's live shell
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_stdout"] = proc.stdout
    result["_stderr"] = proc.stderr
    return result


FD_SCRIPT = """
import builtins, ctypes, json, os, signal, sys
from pathlib import Path
from IPython.core.interactiveshell import InteractiveShell
from cc_kernel.worker.shell import EnclaveShell
from cc_kernel.worker.streams import OutputRouter

class Sink:
    def __init__(self):
        self.messages = []
    def emit(self, kind, content):
        self.messages.append((kind, content))

sink = Sink()
original_stdout = sys.stdout
shell = EnclaveShell(sink, capture_fds=True)
code = (
    "import ctypes, os, subprocess, sys\\n"
    "print('py-out')\\n"
    "ctypes.CDLL(None).printf(b'c-printf\\\\n')\\n"
    "os.write(1, b'fd1-raw\\\\n')\\n"
    "os.write(2, b'fd2-raw\\\\n')\\n"
    "subprocess.run(['sh', '-c', 'echo child-out; echo child-err >&2'])\\n"
    "print('fileno', sys.stdout.fileno())"
)
reply = shell.execute(code)
ipython_dir = Path(shell.ipython_dir)
home = Path(os.environ['HOME'])
sqlite_files = [str(p) for p in list(home.rglob('*.sqlite')) + list(ipython_dir.rglob('*.sqlite'))]
dir_mode = oct(ipython_dir.stat().st_mode & 0o777)
shell.close()
os.write(1, b'after-close-fd1\\n')
streams = {}
for kind, content in sink.messages:
    if kind == 'stream':
        streams[content['name']] = streams.get(content['name'], '') + content['text']
print(json.dumps({
    'status': reply['status'],
    'streams': streams,
    'kinds': sorted({k for k, _ in sink.messages}),
    'sqlite': sqlite_files,
    'dir_mode': dir_mode,
    'dir_removed': not ipython_dir.exists(),
    'stdout_restored': sys.stdout is original_stdout,
    'shell_cleared': not InteractiveShell.initialized(),
    'sigint_restored': signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    'builtins_clean': not hasattr(builtins, 'display') and not hasattr(builtins, '__IPYTHON__'),
    'ipythondir_env': os.environ.get('IPYTHONDIR'),
    'mplbackend_env': os.environ.get('MPLBACKEND'),
}))
"""


def test_fd_capture_and_cleanup_in_a_subprocess(tmp_path: Path) -> None:
    result = _run_script(FD_SCRIPT, tmp_path)
    assert result["status"] == "ok"
    out, err = result["streams"]["stdout"], result["streams"].get("stderr", "")
    for expected in ("py-out\n", "c-printf\n", "fd1-raw\n", "child-out\n", "fileno 1\n"):
        assert expected in out, out
    for expected in ("fd2-raw\n", "child-err\n"):
        assert expected in err, err
    assert out.index("py-out") < out.index("fileno 1")
    assert result["kinds"] == ["stream"]
    assert result["sqlite"] == []
    assert result["dir_mode"] == "0o700"
    assert result["dir_removed"] is True
    assert result["stdout_restored"] is True
    assert result["shell_cleared"] is True
    assert result["sigint_restored"] is True
    assert result["builtins_clean"] is True
    assert result["ipythondir_env"] is None and result["mplbackend_env"] is None
    # Nothing leaked to the real fds while captured; the fd is back after close().
    real_stdout = result["_stdout"].splitlines()[:-1]  # the last line is the JSON result
    assert real_stdout == ["after-close-fd1"]
    assert "fd2-raw" not in result["_stderr"]


HARDEN_SCRIPT = """
import ctypes, json, resource, sys
from cc_kernel.enclave.hardening import harden_process

report = harden_process()
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_DUMPABLE = 3
print(json.dumps({
    'report': [report.not_dumpable, report.core_dumps_disabled, report.bytecode_writing_disabled],
    'dumpable': libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
    'core': list(resource.getrlimit(resource.RLIMIT_CORE)),
    'dont_write_bytecode': sys.dont_write_bytecode,
}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")
def test_harden_process_in_a_subprocess(tmp_path: Path) -> None:
    result = _run_script(HARDEN_SCRIPT, tmp_path)
    assert result["report"] == [True, True, True]
    assert result["dumpable"] == 0
    assert result["core"] == [0, 0]
    assert result["dont_write_bytecode"] is True
