"""runner.py as a user runs it: real subprocesses, real exit codes, real output."""

import csv
import io
import subprocess
import sys

import pytest

from tests.support.folders import EXPERIMENTS, ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.mark.slow
def test_profile_csv_has_the_columns_and_the_papers_numbers():
    result = run("profile", str(EXPERIMENTS / "table4_backbones.yaml"), "--format", "csv", "--set", "model.layout=v1")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {"description", "arch", "attention", "params", "gmacs", "paper_params_m", "paper_gflops"} <= set(rows[0])
    assert len(rows) == 24
    by_label = {r["description"]: r for r in rows}
    cbam50 = by_label["ResNet50 + CBAM"]
    assert int(cbam50["params"]) == 28_089_624
    assert abs(float(cbam50["gmacs"]) - float(cbam50["paper_gflops"])) < 0.001
    # With the v1 layout every Table 4 row agrees with the paper: no mismatch note anywhere.
    assert all(r["note"] == "" for r in rows)


@pytest.mark.slow
def test_profile_explains_a_mismatch_instead_of_hiding_it():
    result = run("profile", str(EXPERIMENTS / "table1_channel_pooling.yaml"), "--format", "md")
    assert result.returncode == 0, result.stderr
    se_like = next(line for line in result.stdout.splitlines() if "AvgPool (SE-like)" in line)
    assert "25.92M" in se_like and "28.09M" in se_like
    assert "disagree with its Table 4" in se_like
    assert "v1 layout" in se_like  # v1.5 GMACs are not the paper's v1 count, and the table says so


def test_bad_config_is_one_line_on_stderr_and_exit_2(write_experiment):
    path = write_experiment("base: {model: {arch: resnet18, attention: {type: cbam, kernel_size: 4}}}\n")
    result = run("profile", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: model.attention.kernel_size: 4")


def test_missing_experiment_file_and_bad_set():
    result = run("profile", "experiments/nope.yaml")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run("profile", str(EXPERIMENTS / "table3_arrangement.yaml"), "--set", "model.attention.order=parallel")
    assert result.returncode == 2 and "varied by the grid" in result.stderr


def test_every_command_has_help():
    result = run("--help")
    assert result.returncode == 0 and "profile" in result.stdout
    for command in ("profile", "sweep", "worker", "status", "slurm", "run-cell", "gradcam", "table"):
        assert run(command, "--help").returncode == 0
