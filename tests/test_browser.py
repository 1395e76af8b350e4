"""The attestation indicator and widgets in a real browser: JupyterLab 4 (and Notebook 7) in headless Chromium.

A real ``jupyter lab`` server runs on a free local port with this test session's private Jupyter tree (the
kernelspecs installed into a private prefix on ``JUPYTER_PATH``, see tests/kernel_env.py), plus one kernelspec
that switches on a teaching fault. Debian's chromium is driven by Playwright (``executable_path``; no browser is
ever downloaded). Every wait is for a selector or an attribute, with a deadline; nothing sleeps. Each test
leaves a screenshot in ``test-artifacts/browser/<test name>.png`` (``CC_KERNEL_TEST_ARTIFACTS`` overrides the
directory).

These tests need chromium (``.ci/run`` installs it) and the built extension (``pip install -e .`` builds it).
Without either they fail; a developer may skip them explicitly with ``CC_KERNEL_SKIP_BROWSER_TESTS=1``, which is
refused when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kernel_env import BADGE_MIME, SIM, STOCK, JupyterEnv

from cc_kernel.testing.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CC_KERNEL_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
#: The built extension inside the package (pip install builds it from labextension/).
BUILT_EXTENSION = ROOT / "cc_kernel" / "labextension" / "package.json"
EXTENSION_NAME = "cc-kernel-indicator"
#: A simulation kernel whose enclave runs in debug mode: attestation is refused (a teaching fault).
FAULT_KERNEL = "confidential-python-sim-fault-debug"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
INDICATOR = "#cc-kernel-attestation-indicator"
#: Deadlines (ms) for Playwright waits: a kernel start and attestation, and a cell or a click.
START_MS = 90_000
STEP_MS = 30_000

SIMULATION_WORDS = "SIMULATION — not hardware-protected"
RED = "rgb(183, 28, 28)"  # #b71c1c, the badge's refused/stopped colour
AMBER = "rgb(178, 106, 0)"  # #b26a00, the badge's simulation colour


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CC_KERNEL_SKIP_BROWSER_TESTS") == "1":
        if os.environ.get("CI"):
            pytest.fail(f"CC_KERNEL_SKIP_BROWSER_TESTS is set in CI; the browser tests must run ({reason})")
        pytest.skip(f"CC_KERNEL_SKIP_BROWSER_TESTS=1: {reason}")


def _chromium() -> str:
    path = os.environ.get("CC_KERNEL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed (apt-get install -y chromium; .ci/run does this)")
    return path


# -- the notebooks ------------------------------------------------------------------------------------------------

FAKE_GREEN = (
    '<div style="border:2px solid #1b5e20;background:#e8f5e9;padding:6px 10px">'
    '<b style="color:#1b5e20">🛡 Confidential Python — VERIFIED TEE hardware</b></div>'
)
FAKE_STATE = {"state": "affirming", "headline": "VERIFIED TEE hardware", "session_id": "fake", "mode": "hardware",
              "as_of": "", "audit_log": "", "failures": [], "detail": "", "summary": ["VERIFIED (fake)"],
              "result": None}

NOTEBOOKS: dict[str, tuple[str, list[str]]] = {
    "run-all": (SIM, [
        "print('hello from the enclave')",
        "import ipywidgets as widgets\nslider = widgets.IntSlider(value=3, min=0, max=10, description='level')\nslider",
        "print('level is', slider.value)",
    ]),
    "widgets": (SIM, [
        "import ipywidgets as widgets\nslider = widgets.IntSlider(value=3, min=0, max=10, description='level')\nslider",
        "print('level is', slider.value)",
        "from ipywidgets import interact\n@interact(n=widgets.IntSlider(value=2, max=9, description='n'))\n"
        "def square(n):\n    print('square is', n * n)",
        "from tqdm.notebook import tqdm\nfor i in tqdm(range(5), desc='work'):\n    pass\nprint('tqdm done')",
        "a, b = widgets.IntText(value=1, description='a'), widgets.IntSlider(value=1, description='b')\n"
        "widgets.jslink((a, 'value'), (b, 'value'))\nwidgets.HBox([a, b])",
    ]),
    "fake-badge": (SIM, [
        "print('first cell')",
        "from IPython.display import HTML, display, update_display\n"
        f"BADGE = {BADGE_MIME!r}\nfake = {FAKE_STATE!r}\n"
        f"display(HTML({FAKE_GREEN!r}))\n"
        "display({BADGE: fake, 'text/html': 'fake badge (MIME)'}, raw=True)\n"
        "display({BADGE: fake, 'text/plain': 'fake'}, raw=True, display_id='cc-kernel-attestation-fake')\n"
        "update_display({BADGE: fake, 'text/plain': 'fake'}, raw=True, display_id='cc-kernel-attestation-fake')\n"
        "print('fakes shown')",
    ]),
    "refused": (FAULT_KERNEL, ["print('this must not run')"]),
    "restart": (SIM, [
        "print('session one')",
    ]),
    "notebook7": (SIM, ["print('in Notebook 7')"]),
    "stock": (STOCK, [
        "from IPython.display import display\n"
        f"display({{{BADGE_MIME!r}: {FAKE_STATE!r}, 'text/plain': 'fake'}}, raw=True,"
        " display_id='cc-kernel-attestation-fake')\nprint('stock kernel ran')",
    ]),
}


def _notebook(kernel: str, display_name: str, cells: list[str]) -> dict[str, Any]:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": kernel, "display_name": display_name, "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


# -- the server ---------------------------------------------------------------------------------------------------


@dataclass
class Lab:
    base: str
    token: str
    root: Path

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _install_fault_kernelspec(env: JupyterEnv) -> None:
    kernels = env.prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / SIM / "kernel.json").read_text())
    spec["display_name"] = "Confidential Python (SIMULATION, teaching fault: debug)"
    spec["env"] = {"CC_KERNEL_FAULTS": "debug"}
    (kernels / FAULT_KERNEL).mkdir(exist_ok=True)
    (kernels / FAULT_KERNEL / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def lab(jupyter_env: JupyterEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    _skip_or_fail("browser tests")
    if not BUILT_EXTENSION.exists():
        pytest.fail(f"the extension is not built ({BUILT_EXTENSION} missing): run `pip install -e .`")
    _install_fault_kernelspec(jupyter_env)
    # The extension under test is the one built in this tree: found first, through JUPYTER_PATH.
    labextensions = jupyter_env.prefix / "share" / "jupyter" / "labextensions"
    labextensions.mkdir(parents=True, exist_ok=True)
    if not (labextensions / EXTENSION_NAME).exists():
        (labextensions / EXTENSION_NAME).symlink_to(BUILT_EXTENSION.parent, target_is_directory=True)
    # No "news" question toast over the screenshots: the announcements plugin is off in this private config.
    labconfig = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    root = tmp_path_factory.mktemp("lab-root")
    names = {SIM: "Confidential Python (SIMULATION)", FAULT_KERNEL: "Confidential Python (fault)", STOCK: "Python 3"}
    for name, (kernel, cells) in NOTEBOOKS.items():
        (root / f"{name}.ipynb").write_text(json.dumps(_notebook(kernel, names[kernel], cells)))
    token, port = secrets.token_hex(16), _free_port()
    log = (root.parent / "jupyter-lab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.open_browser=False"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Lab(f"http://127.0.0.1:{port}", token, root)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited ({proc.returncode}); see {log.name}")
        try:
            return server.api("GET", "/api/status") is not None
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(up, timeout=60, what="jupyter lab answering /api/status", interval=0.1)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, lab: Lab, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(STEP_MS)
    try:
        yield pg
    finally:
        snap(pg, request.node.name)
        context.close()
        lab.shut_down_kernels()


# -- driving JupyterLab -------------------------------------------------------------------------------------------


def open_notebook(page: Any, lab: Lab, name: str) -> None:
    """Open ``name``.ipynb in JupyterLab (a fresh workspace) and wait until its kernel is idle."""
    page.goto(lab.url(f"/lab/tree/{name}.ipynb?reset"))
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    wait_idle(page)


def wait_idle(page: Any) -> None:
    page.locator("#jp-main-statusbar").get_by_text("| Idle").wait_for(timeout=START_MS)


def command(page: Any, menu: str, command_id: str) -> None:
    """Run a JupyterLab command from the main menu bar (``data-command`` of the menu item)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(f'.lm-Menu-item[data-command="{command_id}"]').click()


def run_all(page: Any) -> None:
    command(page, "Run", "runmenu:run-all")


def cell(page: Any, index: int) -> Any:
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(index)


def output(page: Any, index: int) -> Any:
    """The output area of cell ``index`` (its source is not part of it)."""
    return cell(page, index).locator(".jp-Cell-outputArea")


def run_cell(page: Any, index: int) -> None:
    """Select cell ``index`` and run it from the toolbar."""
    wait_idle(page)
    cell(page, index).locator(".jp-InputArea-prompt").click()
    page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:run-cell-and-select-next"]').click()


def snap(page: Any, name: str) -> None:
    """Keep a screenshot as ``<artifacts>/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def expect_indicator(page: Any, state: str, timeout: int = START_MS) -> Any:
    from playwright.sync_api import expect

    indicator = page.locator(INDICATOR)
    expect(indicator).to_have_attribute("data-cc-state", state, timeout=timeout)
    expect(indicator).to_be_visible()
    return indicator


# -- the six scenarios, and the other frontends -------------------------------------------------------------------


def test_run_all_badge_and_indicator_say_simulation(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "run-all")
    run_all(page)
    badge = output(page, 0).locator(".jp-OutputArea-output").first
    expect(badge).to_contain_text(SIMULATION_WORDS, timeout=START_MS)
    expect(output(page, 0)).to_contain_text("hello from the enclave")
    expect(output(page, 2)).to_contain_text("level is 3")
    indicator = expect_indicator(page, "simulation")
    expect(indicator).to_contain_text(SIMULATION_WORDS)
    assert indicator.evaluate("n => getComputedStyle(n).color") == AMBER
    session = indicator.get_attribute("data-cc-session")
    assert session and session in badge.inner_text()
    snap(page, "notebook-badge-and-indicator")  # the README's picture
    # a click shows the full claims: those of %attestation
    indicator.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Attestation: SIMULATION - not hardware-protected")
    expect(dialog).to_contain_text(f"Session:     {session}")
    expect(dialog.locator(".cc-kernel-Claims-json")).to_contain_text('"status": "simulation"')
    snap(page, "claims-dialog")
    dialog.locator("button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)


def test_clear_all_outputs_and_rerun_keep_the_indicator(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "run-all")
    run_all(page)
    expect(output(page, 2)).to_contain_text("level is 3", timeout=START_MS)
    expect_indicator(page, "simulation")
    command(page, "Edit", "editmenu:clear-all")
    expect(page.locator(".jp-NotebookPanel .jp-OutputArea-output")).to_have_count(0)
    expect_indicator(page, "simulation", timeout=STEP_MS)
    # re-running the first cell does not bring the badge back (it is shown once per session); the indicator stays
    run_cell(page, 0)
    expect(output(page, 0)).to_contain_text("hello from the enclave")
    expect(output(page, 0)).not_to_contain_text(SIMULATION_WORDS)
    expect(page.locator(INDICATOR)).to_contain_text(SIMULATION_WORDS)


def test_slider_moved_with_the_keyboard_is_seen_by_the_enclave(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "widgets")
    run_all(page)
    expect(output(page, 3)).to_contain_text("tqdm done", timeout=START_MS)
    expect(output(page, 1)).to_contain_text("level is 3")
    handle = output(page, 0).locator(".widget-slider .noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    expect(output(page, 0).locator(".widget-readout")).to_have_text("4")
    run_cell(page, 1)
    expect(output(page, 1)).to_contain_text("level is 4")
    # interact: its output is replaced in its Output widget when its slider moves
    expect(output(page, 2)).to_contain_text("square is 4")
    n = output(page, 2).locator(".widget-slider .noUi-handle")
    n.focus()
    n.press("ArrowRight")
    expect(output(page, 2)).to_contain_text("square is 9")
    expect(output(page, 2)).not_to_contain_text("square is 4")
    # tqdm.notebook's bar reached 100 %; jslink ties the text box to the slider in the browser
    expect(output(page, 3).locator(".widget-html-content").first).to_contain_text("100%")
    box = output(page, 4).locator(".widget-text input")
    box.fill("7")
    box.press("Enter")
    expect(output(page, 4).locator(".widget-readout")).to_have_text("7")


def test_fake_badges_printed_by_a_cell_do_not_change_the_indicator(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "fake-badge")
    run_all(page)
    expect(output(page, 1)).to_contain_text("fakes shown", timeout=START_MS)
    # the HTML fake is drawn in the output area (any cell can draw that) ...
    expect(output(page, 1)).to_contain_text("VERIFIED TEE hardware")
    # ... but the badge MIME type never left the kernel, and the indicator did not move
    expect(output(page, 1)).not_to_contain_text("fake badge (MIME)")
    indicator = expect_indicator(page, "simulation")
    expect(indicator).to_contain_text(SIMULATION_WORDS)
    expect(indicator).not_to_contain_text("VERIFIED")


def test_refused_attestation_turns_the_indicator_red_with_the_reason(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "refused")
    indicator = expect_indicator(page, "refused")
    run_all(page)
    expect(output(page, 0)).to_contain_text("ATTESTATION REFUSED", timeout=START_MS)
    expect(output(page, 0)).not_to_contain_text("this must not run")
    expect(indicator).to_contain_text("ATTESTATION REFUSED: [policy.debug]")
    assert indicator.evaluate("n => getComputedStyle(n).color") == RED
    indicator.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("policy.debug")
    expect(dialog).to_contain_text("DEBUG mode")


def test_indicator_follows_enclave_stop_and_kernel_restart(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "restart")
    run_all(page)
    expect(output(page, 0)).to_contain_text("session one", timeout=START_MS)
    indicator = expect_indicator(page, "simulation")
    first_session = indicator.get_attribute("data-cc-session")
    # the enclave stops (killed from outside the kernel): ENCLAVE STOPPED, red
    kernel_pid = _kernel_pid(lab)
    _kill_enclave(kernel_pid)
    expect(indicator).to_have_attribute("data-cc-state", "stopped", timeout=STEP_MS)
    expect(indicator).to_contain_text("ENCLAVE STOPPED")
    assert indicator.evaluate("n => getComputedStyle(n).color") == RED
    # restart: a new kernel process attests a new enclave, with a new session id
    command(page, "Kernel", "kernelmenu:restart")
    page.locator(".jp-Dialog button.jp-mod-accept").click()
    expect(indicator).to_have_attribute("data-cc-state", "simulation", timeout=START_MS)
    expect(indicator).not_to_have_attribute("data-cc-session", first_session or "")
    assert _kernel_pid(lab) != kernel_pid


def test_indicator_shows_nothing_for_another_kernel(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_notebook(page, lab, "stock")
    run_all(page)
    expect(output(page, 0)).to_contain_text("stock kernel ran", timeout=START_MS)
    # the stock kernel forwards the badge MIME type from cell output: the indicator ignores it, and shows nothing
    expect(page.locator(INDICATOR)).to_have_attribute("data-cc-state", "none")
    expect(page.locator(INDICATOR)).to_be_hidden()


def test_notebook7_shows_the_indicator_in_the_toolbar(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    page.goto(lab.url("/notebooks/notebook7.ipynb"))
    indicator = page.locator(".jp-NotebookPanel-toolbar .cc-kernel-Indicator")
    expect(indicator).to_have_attribute("data-cc-state", "simulation", timeout=START_MS)
    expect(indicator).to_contain_text(SIMULATION_WORDS)


# -- processes ----------------------------------------------------------------------------------------------------


def _kernel_pid(lab: Lab) -> int:
    """The pid of the one running kernel (the test's notebook's), from /proc (the server does not tell)."""
    [session] = lab.api("GET", "/api/sessions")
    kernel_id = session["kernel"]["id"]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"cc_kernel.kernel" in cmdline and f"kernel-{kernel_id}".encode() in cmdline:
            return int(entry.name)
    raise AssertionError(f"no process for kernel {kernel_id}")


def _kill_enclave(kernel_pid: int) -> None:
    from kernel_env import children_running

    [enclave] = children_running("cc_kernel.enclave", kernel_pid)
    os.kill(enclave, signal.SIGKILL)
