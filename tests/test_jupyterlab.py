"""A real browser check of the JupyterLab path: start a Jupyter server on localhost, open the
quickstart (with the tiny models) in headless Chromium, run all cells from JupyterLab's Run
menu, and find the edited answer in the page. Skipped without Chromium (`apt-get install
chromium`) or the driver (`pip install -r requirements-browser.txt`)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from medrek.config import REPO_ROOT

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")]
TINY = {"editor": None, "method": "medrek", "lm": "tiny-llama", "encoder": "tiny-bert", "max_new_tokens": 8,
        "score_n": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Jupyter server at {url} after {seconds} s")


def test_quickstart_runs_in_jupyterlab(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    import papermill

    # the expected answers: the same notebook and parameters, executed by papermill
    reference = tmp_path / "reference"
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "00_quickstart.ipynb"), str(tmp_path / "ref.ipynb"),
                               parameters={**TINY, "run_dir": str(reference)}, cwd=str(REPO_ROOT / "notebooks"),
                               progress_bar=False)
    answers = pd.read_csv(reference / "metrics" / "quickstart_answers.csv", keep_default_na=False)
    edited = next(a.strip() for a in answers["edited"] if len(a.strip()) >= 4)

    # the notebook JupyterLab opens: parameters injected, nothing executed
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "00_quickstart.ipynb"), str(lab_dir / "quickstart.ipynb"),
                               parameters={**TINY, "run_dir": str(tmp_path / "browser")}, prepare_only=True)
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab_dir}", "--allow-root"],
        env={**os.environ, "MPLBACKEND": "Agg"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api?token={token}", 60)
        with sync_api.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 2000})  # every cell rendered (no windowing)
            page.goto(f"http://127.0.0.1:{port}/lab/tree/quickstart.ipynb?token={token}", timeout=60_000)
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            try:  # JupyterLab may ask which kernel to start: the kit's Python 3
                page.locator(".jp-Dialog-button", has_text="Select").first.click(timeout=10_000)
            except sync_api.TimeoutError:
                pass
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # the last cell's output (its source has the same words, so look in outputs only)
            deadline, text = time.monotonic() + 180, ""
            while "methods scored on" not in text and time.monotonic() < deadline:
                time.sleep(1)
                text = "\n".join(page.locator(".jp-OutputArea-output").all_text_contents())
            if "methods scored on" not in text:
                page.screenshot(path=str(tmp_path / "lab.png"))
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert "UNTRAINED medrek editor" in text
    assert edited in text, f"the edited answer {edited!r} is not in the page"
