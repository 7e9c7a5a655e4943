"""The results table (ablation/report.py) marks the paper's numbers by source and explains the marks it uses."""

import pandas as pd

from ablation.config import load_experiment
from ablation.grid import expand_arms, expand_cells
from ablation.prepared import PreparedSweep
from ablation.report import render_latex, render_markdown, summarize
from tests.conftest import EXPERIMENTS

RUN_COLUMNS = ["arm", "description", "seed", "run_id", "top1_err", "top5_err", "params", "gmacs", "img_per_s"]


def _table(name: str) -> tuple[PreparedSweep, pd.DataFrame]:
    experiment = load_experiment(EXPERIMENTS / f"{name}.yaml")
    arms = expand_arms(experiment, check_paths=False)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    return prepared, summarize(prepared, pd.DataFrame(columns=RUN_COLUMNS))


def test_table3s_first_row_is_disputed_and_shows_both_readings():
    prepared, summary = _table("table3_arrangement")
    first = summary.iloc[0]
    assert first["paper_top1_shown"] == "22.80 or 23.14§" and first["paper_top5_shown"] == "6.52 or 6.70§"
    assert summary.iloc[1]["paper_top1_shown"] == "22.66†"
    markdown = render_markdown(summary, prepared)
    assert "| 22.80 or 23.14§ | 6.52 or 6.70§ |" in markdown
    note = markdown.strip().splitlines()[-1]
    assert "§ disputed" in note and "ResNet50 + channel (SE), the avg-pool arm of Tables 1 and 4" in note
    assert "† transcribed from the project's notes on the paper" in note and "not checked against the PDF" in note
    assert "‡" not in note  # only the marks the table uses are explained
    assert "22.80 or 23.14§" in render_latex(summary, prepared)
