"""Notebook 00 in JupyterLab in a real browser (headless Chromium driven by selenium).

With the cpu preset: run every cell, then move the θ slider; no cell may show an error,
and the widget's figure after the change must be a drawn figure, not a blank image.
Needs Debian's `chromium` and `chromium-driver` (scripts/setup.sh installs them in CI);
skipped where they are missing. About a minute on 2 CPU cores.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "00_quickstart.ipynb"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver "
                                "(apt-get install chromium chromium-driver)")

TOKEN = "adafuse-browser-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a folder holding 00 with preset = "cpu"; yields (url, folder)."""
    import nbformat
    root = tmp_path_factory.mktemp("lab")
    (root / "nb").mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'preset = "auto"' in params.source
    params.source = params.source.replace('preset = "auto"', 'preset = "cpu"', 1)
    nb.metadata.pop("jupytext", None)  # no paired script in the test folder
    nbformat.write(nb, root / "nb" / NOTEBOOK.name)
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "ADAFUSE_HEADLESS": "0"}
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.disable_check_xsrf=True", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited: {(root / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what, fn, timeout: float, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _prompts(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))"
        ".map(e => e.textContent.trim())")


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def _widget_png(driver) -> bytes:
    img = driver.find_element("css selector", ".adafuse-interactive img")
    return img.screenshot_as_png


def test_quickstart_in_jupyterlab(lab, browser):
    url, root = lab
    browser.get(f"{url}/lab/tree/nb/{NOTEBOOK.name}?token={TOKEN}")
    _wait("the notebook and its kernel", lambda: browser.execute_script(
        "const app = window.jupyterapp; if (!app) return false;"
        "const w = app.shell.currentWidget; return !!(w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle');"), 120)
    # JupyterLab renders cells progressively: on a busy machine the kernel can be idle first
    _wait("the code cells to render", lambda: len(_prompts(browser)) >= 8, 60)
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # every code cell has run when each prompt shows a number ("[*]" while running, "[ ]" before)
    _wait("every cell to run", lambda: all(p.strip("[]: ").isdigit() for p in _prompts(browser)), 420, every=1)
    browser.execute_script("window.jupyterapp.commands.execute('docmanager:save')")

    def saved():
        nb = json.loads((root / "nb" / NOTEBOOK.name).read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
        return cells if all(c.get("execution_count") for c in cells) else None
    cells = _wait("the executed notebook to be saved", saved, 30)
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors)

    # the widget: drawn once with the parameters
    status = _wait("the widget's first figure", lambda: browser.execute_script(
        "const s = document.querySelector('.adafuse-interactive .widget-html-content');"
        "return s && s.textContent.includes('done in') ? s.textContent : false;"), 60)
    before = _widget_png(browser)
    assert (_pixels(before) < 250).mean() > 0.05, "the widget's first figure is blank"

    # move the θ slider one step down with the keyboard (released: continuous_update is off)
    handle = browser.find_element("css selector", ".adafuse-interactive .widget-slider .noUi-handle")
    handle.click()
    from selenium.webdriver.common.keys import Keys
    handle.send_keys(Keys.ARROW_LEFT)
    _wait("the slider to change θ", lambda: browser.execute_script(
        "const r = document.querySelector('.adafuse-interactive .widget-readout');"
        "return r && r.textContent.trim() !== '0.70' ? r.textContent : false;"), 20)
    # re-decoding: the status goes busy, then done again with the new figure
    _wait("the re-decoded figure", lambda: browser.execute_script(
        "const s = document.querySelector('.adafuse-interactive .widget-html-content');"
        "const d = document.querySelector('.adafuse-interactive .widget-slider');"
        "return s && s.textContent.includes('done in') && !d.classList.contains('mod-disabled')"
        " ? s.textContent : false;") and _widget_png(browser) != before, 120)
    after = _widget_png(browser)
    px = _pixels(after)
    # a drawn figure: its bars and lines cover a good share of the image (a blank one, or one cut
    # down to a strip of its title, leaves < 1 % of the pixels non-white)
    assert px.std() > 10 and (px < 250).mean() > 0.05, "the figure after the change is blank"
    assert "failed" not in browser.find_element("css selector", ".adafuse-interactive").text
    assert status  # the first render reported its time
