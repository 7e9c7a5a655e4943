"""The MLflow dashboard as a review tool, in a real browser: Debian's Chromium driven by Playwright."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from ablation.cell import CellOptions
from ablation.config import load_experiment
from ablation.sweep import prepare_sweep, run_sweep
from ablation.worker import WorkerOptions
from tests.conftest import ROOT, tiny_experiment

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_dashboard_shows_the_sweep_and_a_cells_top1(tmp_path, tiny_npz, write_experiment):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI (.ci/run installs chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")

    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=1))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = WorkerOptions(
        tracking, f"sqlite:///{tmp_path / 'sweeps.db'}", CellOptions(tmp_path / "c", progress=False)
    )
    options.cell.device, options.cell.checkpoint_dir = "cpu", tmp_path / "ckpt"
    run_sweep(prepare_sweep(load_experiment(path)), options)
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    (cell,) = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")
    top1 = cell.data.metrics["final/top1_err_last"]

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            tracking,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    screenshot = tmp_path / "mlflow_ui.png"
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/health")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # The dashboard keeps polling its API, so "network idle" may never come: wait for content instead.
            page.goto(f"{base}/#/experiments/{experiment.experiment_id}", wait_until="domcontentloaded", timeout=90_000)
            page.get_by_text("tiny", exact=False).first.wait_for(timeout=90_000)  # the sweep's parent run
            page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{cell.info.run_id}", timeout=90_000)
            page.get_by_text("final/top1_err_last").first.wait_for(timeout=90_000)
            body = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert cell.info.run_name in body
    # The metrics table of the run page: the metric's name, then its value as the UI formats it.
    shown = body[body.index("final/top1_err_last") :].split("\n", 2)
    assert re.match(rf"final/top1_err_last\s+{re.escape(f'{top1:g}')}", " ".join(shown[:2])), shown[:2]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = ROOT / "results" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, keep / "mlflow_ui.png")
