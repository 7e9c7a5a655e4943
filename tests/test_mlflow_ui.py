"""The MLflow dashboard as a review tool: a real `mlflow ui` on a tiny sweep, read in Debian's headless Chromium.

Playwright's Python package drives /usr/bin/chromium (no browser is downloaded). The page's screenshot is written
to the test's temporary folder; ``ABLATION_SCREENSHOT_TO=results/examples/mlflow_ui.png`` also copies it there
(how the committed example is refreshed; a test never writes into the checkout otherwise).
"""

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

from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment
from ablation.tracking.mlflow_store import dashboard_hint
from ablation.tracking.names import (
    DESCRIPTION,
    EXPERIMENT_KIND,
    FINAL_TOP1_ERR_LAST,
    ROLE_CELL,
    ROLE_SWEEP,
    role_filter,
)
from tests.support.tiny import sweep_in, tiny_experiment

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


def ui_rows(page) -> dict[int, str]:
    """The runs table's rows by index, the pinned name columns and the scrolled value columns joined (AG Grid draws
    them as separate rows with the same row-index)."""
    rows = page.locator("[role=row][row-index]")
    joined: dict[int, list[str]] = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        joined.setdefault(int(row.get_attribute("row-index")), []).append(row.inner_text())
    return {index: "\n".join(parts) for index, parts in joined.items()}


def ui_groups(rows: dict[int, str]) -> dict[str, str]:
    """The group rows of a grouped runs table: group name -> the value it shows as "(average)"."""
    groups = {}
    for text in rows.values():
        lines = text.splitlines()
        name = next((line.removeprefix("Group: ") for line in lines if line.startswith("Group: ")), None)
        average = next((line.removesuffix(" (average)") for line in lines if line.endswith("(average)")), None)
        if name is not None and average is not None:
            groups[name] = average
    return groups


def test_the_mlflow_ui_shows_the_sweep_grouped_by_arm_and_a_cells_final_error(tmp_path, tiny_npz):
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")

    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_experiment(tiny_npz, GRID, "[0, 1]", epochs=1))
    report, options = sweep_in(tmp_path, prepare_sweep(load_experiment(path)))
    tracking_uri = options.tracking_uri
    assert report.done == 4

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    experiment_id = experiment.experiment_id
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]  # a model-training experiment
    (sweep,) = client.search_runs([experiment_id], role_filter(ROLE_SWEEP))
    cells = client.search_runs([experiment_id], role_filter(ROLE_CELL), order_by=["attributes.run_name"])
    cell = cells[0]
    assert sweep.info.run_name == "tiny"  # the parent run is named after the experiment
    # What the UI must show per arm: the mean over seeds of the last epoch's top-1 error.
    means: dict[str, float] = {}
    for description in {c.data.tags[DESCRIPTION] for c in cells}:
        values = [c.data.metrics[FINAL_TOP1_ERR_LAST] for c in cells if c.data.tags[DESCRIPTION] == description]
        means[description] = sum(values) / len(values)

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
        # The link the harness prints after a sweep and a table (ablation.tracking.mlflow_store.dashboard_hint).
        link = dashboard_hint(tracking_uri, experiment_id).rsplit("then ", 1)[1].replace("http://127.0.0.1:5000", base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1800, "height": 1400})
                page.goto(link, wait_until="domcontentloaded")
                # The runs table of the "Model training" view: the sweep's parent run, and its four children.
                sweep_link = page.locator(f'a[href$="/runs/{sweep.info.run_id}"]').first
                expect(sweep_link).to_have_text("tiny", timeout=WAIT_MS)
                page.get_by_text("5 matching runs").wait_for(timeout=WAIT_MS)
                # The MLflow Assistant side panel opens on a first visit and covers a third of the page, whenever it
                # has loaded: closed before each action it would get in the way of, however late it comes.
                page.add_locator_handler(
                    page.get_by_role("button", name="Close").first, lambda close: close.click(), no_wait_after=True
                )

                # As the README says: the final error as a column, then the runs grouped by the arm tag.
                page.get_by_role("button", name="Columns").click()
                page.get_by_text(FINAL_TOP1_ERR_LAST, exact=True).click()
                page.keyboard.press("Escape")
                page.get_by_role("button", name="Group by").click()
                page.get_by_text(DESCRIPTION, exact=True).click()
                page.keyboard.press("Escape")
                # Every arm's group row drawn, not just the first one.
                deadline = time.monotonic() + WAIT_MS / 1000
                while not (groups := ui_groups(rows := ui_rows(page))).keys() >= means.keys():
                    assert time.monotonic() < deadline, f"the UI drew the groups {groups}, not every arm: {rows}"
                    page.wait_for_timeout(200)
                page.screenshot(path=str(screenshot), full_page=True)

                # One cell's run page: its name, its metrics table, and "Parent run" linking back to the sweep.
                page.goto(f"{base}/#/experiments/{experiment_id}/runs/{cell.info.run_id}?workflowType=machine_learning")
                page.get_by_text(cell.info.run_name, exact=True).first.wait_for(timeout=WAIT_MS)
                page.get_by_text(FINAL_TOP1_ERR_LAST, exact=True).first.wait_for(timeout=WAIT_MS)
                parent_link = page.locator(f'a[href$="/runs/{sweep.info.run_id}"]').first
                expect(parent_link).to_have_text("tiny", timeout=WAIT_MS)  # the parent's name loads last
                lines = [line.strip() for line in page.inner_text("body").splitlines()]
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)

    # One group row per arm, each with the mean the UI aggregated over its two seeds.
    assert ui_groups(rows) == {description: ui_number(mean) for description, mean in means.items()}, rows

    # The metrics table shows each name on one line and its value on the next.
    top1 = cell.data.metrics[FINAL_TOP1_ERR_LAST]
    name_at = lines.index(FINAL_TOP1_ERR_LAST)
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
