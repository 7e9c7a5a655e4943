"""benchmarks/gpu_check.py, the prepared check for the first GPU machine: without CUDA it refuses in one line, and its
CPU-side pieces (arguments, the variants' comparison with the float64 reference, the generated ImageFolder and the
loader's rate, the report) run here, so that the check cannot rot while it waits for a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.folders import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        ([], "error: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or pass"),
        (["--parts", "variants,speed"], "--parts: 'speed' is not allowed; allowed: variants, overhead, sweep, ddp"),
        (["--budget-s", "5"], "--budget-s: 5 is not allowed; allowed: a number of seconds >= 30"),
    ],
)
def test_it_refuses_in_one_line(tmp_path, argv, line):
    import torch

    if torch.cuda.is_available() and not argv:
        pytest.skip("this machine has CUDA: the check would run")
    done = _run("--out", str(tmp_path / "report"), *argv)
    assert done.returncode == 2 and line in done.stderr, done.stderr
    assert done.stdout == "" and not (tmp_path / "report").exists()


def test_the_busiest_moment_of_a_sweep_is_counted_from_its_runs_times():
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import most_at_once

    cells = [{"start_s": s, "end_s": e} for s, e in ((0, 10), (2, 5), (4, 12), (11, 20), (20, 21))]
    assert most_at_once(cells) == 3  # at 4 s: the first, the second and the third
    assert most_at_once([{"start_s": s, "end_s": s + 1} for s in range(4)]) == 1  # one after the other (touching)
    assert most_at_once([]) == 0


@pytest.mark.slow
def test_a_dry_run_checks_the_variants_and_the_loader_on_the_cpu_and_writes_its_report(tmp_path):
    done = _run("--dry-run", "--quick", "--out", str(tmp_path), "--parts", "variants,loader,sweep")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = {part["name"]: part for part in report["parts"]}
    variants = parts["variants"]
    assert variants["status"] == "ok", variants["summary"]
    rows = variants["details"]["rows"]
    assert len(rows) == 4 * len({row["variant"] for row in rows}) == 4 * 5  # fast/reference x float32/bf16
    assert max(r["max_rel_error"] for r in rows if r["precision"] == "float32") < 5e-4
    loader = parts["loader"]
    assert loader["status"] == "ok" and set(loader["details"]["rates"]) >= {"0", "2"}
    assert all(rate > 0 for rate in loader["details"]["rates"].values())
    assert parts["sweep"]["status"] == "skipped" and "dry run" in parts["sweep"]["summary"]
    assert "| variants | ok |" in (tmp_path / "gpu_check.md").read_text()
    assert loader["details"]["images"] == 128 and not list(tmp_path.glob("gpu-check-images-*"))  # cleaned up
