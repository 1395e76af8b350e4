"""Conformance by someone else's suite: jupyter_kernel_test's ``KernelTests`` on ``confidential-python-sim``,
and the same suite on the stock ``python3`` kernel as a control (the samples are right if python3 passes).

Every sample attribute jupyter_kernel_test 0.7 offers is filled in, so no test is skipped for want of one.
Traps (/work/shared/JUPYTER.md §3.3):

* ``test_error`` wants exactly one output, and the attestation badge is the first output of a session's first
  cell: ``setUpClass`` runs one warm-up cell, as a real session would.
* History ``range``: jkt asks for ``range(session=<number from tail>)`` and expects that number back. Stock
  ipykernel answers the current session as 0 and fails, so the control claims only ``tail`` and ``search``
  (as ipykernel's own test_ipykernel.py does); the enclave shell normalises session numbers and claims all three.
* jkt's message validator knows ``abort`` but not ipykernel's ``aborted`` status: the suite runs one request
  at a time with ``stop_on_error``, so no request is ever aborted.
* jkt 0.7 has no stdin sample; ``input()``/``getpass()`` are tested in test_kernel_integration.py.

jkt's classes are unittest TestCases, collected by pytest: the module imports the package, never the classes
(a TestCase imported by name would be collected and run against jkt's default kernel).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jupyter_kernel_test as jkt
import pytest
from kernel_env import SIM, STOCK

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]


class _PythonSamples(jkt.KernelTests):
    """Samples valid for any IPython-based kernel."""

    __test__ = False

    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import itertoo", "matches": {"itertools"}},
        {"text": "str.isdeci", "matches": {"isdecimal"}},
    ]
    complete_code_samples: ClassVar[list[str]] = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "print?"
    code_generate_error = "raise ValueError('conformance')"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n * n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "from IPython.display import HTML; HTML('<b>r</b>')", "mime": "text/html", "result": "<b>r</b>"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math(r'\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations: ClassVar[tuple[str, ...]] = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # A session's first cell carries the badge; jkt's own tests then see only their outputs.
        reply = cls.kc.execute_interactive("print('warm-up')", timeout=60, output_hook=lambda _msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]


class TestConfidentialPythonSim(_PythonSamples):
    __test__ = True
    kernel_name = SIM


class TestStockPython(_PythonSamples):
    """The control. Differs in one place: stock ipykernel fails history ``range`` (see module docstring)."""

    __test__ = True
    kernel_name = STOCK
    supported_history_operations = ("tail", "search")


class _Welcome(jkt.IopubWelcomeTests):
    __test__ = False
    support_iopub_welcome = True  # ipykernel 7's XPUB IOPub greets each subscriber; ours inherits it


class TestConfidentialPythonSimWelcome(_Welcome):
    __test__ = True
    kernel_name = SIM


class TestStockPythonWelcome(_Welcome):
    __test__ = True
    kernel_name = STOCK
