"""The MLflow dashboard as a review tool: a real `mlflow ui` on a tiny sweep, read in Debian's headless Chromium.

Playwright's Python package drives /usr/bin/chromium (no browser is downloaded). The page's screenshot is written
to the test's temporary folder; ``ABLATION_SCREENSHOT_TO=results/examples/mlflow_ui.png`` also copies it there
(how the committed example is refreshed; a test never writes into the checkout otherwise).
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from ablation.config import load_experiment
from ablation.sweep import prepare_sweep
from tests.conftest import sweep_in, tiny_experiment

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GRID = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"
WAIT_MS = 30_000  # the UI is a React app that loads its data after the page: wait for what it renders
KEPT = Path(os.environ["ABLATION_SCREENSHOT_TO"]) if os.environ.get("ABLATION_SCREENSHOT_TO") else None


def missing(reason: str):
    """A missing browser or driver fails the test in CI (.ci/run installs both) and skips it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run should have installed it)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow ui did not answer {url} within {timeout_s:.0f} s")


def ui_number(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's Number.toString: 85.0 -> "85", 92.5 -> "92.5")."""
    return str(int(value)) if value.is_integer() else repr(value)


def test_the_mlflow_ui_shows_the_sweep_and_a_cells_final_error(tmp_path, tiny_npz):
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")

    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    report, options = sweep_in(tmp_path, prepare_sweep(load_experiment(path)))
    tracking_uri = options.tracking_uri
    assert report.done == 2

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    (sweep,) = client.search_runs([experiment_id], "tags.`ablation.role` = 'sweep'")
    cell = client.search_runs([experiment_id], "tags.`ablation.role` = 'cell'", order_by=["attributes.run_name"])[0]
    assert sweep.info.run_name == "tiny"  # the parent run is named after the experiment

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Its own session, so that stopping it also stops the server processes it starts.
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
    )
    screenshot = tmp_path / "mlflow_ui.png"
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
            try:
                # Tall enough for the run page's details and metrics table without scrolling.
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                # The experiment's runs table in the UI's "Model training" view (its default landing page is the
                # GenAI overview, which lists no runs): the sweep is the row whose name links to the parent run.
                experiment_page = f"{base}/#/experiments/{experiment_id}"
                page.goto(f"{experiment_page}/runs?workflowType=machine_learning", wait_until="domcontentloaded")
                sweep_link = page.locator(f'a[href$="/runs/{sweep.info.run_id}"]').first
                expect(sweep_link).to_have_text("tiny", timeout=WAIT_MS)
                # The MLflow Assistant side panel opens on a first visit and covers a third of the page.
                with contextlib.suppress(PlaywrightTimeout):
                    page.get_by_role("button", name="Close").first.click(timeout=5_000)

                # One cell's run page: its name, its metrics table, and "Parent run" linking back to the sweep.
                page.goto(f"{experiment_page}/runs/{cell.info.run_id}?workflowType=machine_learning")
                page.get_by_text(cell.info.run_name, exact=True).first.wait_for(timeout=WAIT_MS)
                page.get_by_text("final/top1_err_last", exact=True).first.wait_for(timeout=WAIT_MS)
                parent_link = page.locator(f'a[href$="/runs/{sweep.info.run_id}"]').first
                expect(parent_link).to_have_text("tiny", timeout=WAIT_MS)  # the parent's name loads last
                lines = [line.strip() for line in page.inner_text("body").splitlines()]
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)

    # The metrics table shows each name on one line and its value on the next.
    top1 = cell.data.metrics["final/top1_err_last"]
    name_at = lines.index("final/top1_err_last")
    assert lines[name_at + 1] == ui_number(top1), lines[name_at : name_at + 2]

    if KEPT is not None:
        KEPT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, KEPT)
    for png in (screenshot, *([KEPT] if KEPT else [])):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.verify()  # the whole file decodes
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 1000 and image.height >= 600
