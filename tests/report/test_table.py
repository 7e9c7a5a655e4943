"""The results table (ablation/report/table.py) marks the paper's numbers by source and explains the marks it uses."""

import pandas as pd

from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.prepared import PreparedSweep
from ablation.experiment.schema import load_experiment
from ablation.report import columns as C
from ablation.report.table import render_latex, render_markdown, summarize
from tests.support.folders import EXPERIMENTS


def _table(name: str) -> tuple[PreparedSweep, pd.DataFrame]:
    experiment = load_experiment(EXPERIMENTS / f"{name}.yaml")
    arms = expand_arms(experiment, check_paths=False)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    return prepared, summarize(prepared, pd.DataFrame(columns=list(C.RUN_COLUMNS)))


def test_table3s_first_row_is_disputed_and_shows_both_readings():
    prepared, summary = _table("table3_arrangement")
    first = summary.iloc[0]
    assert first[C.PAPER_TOP1_SHOWN] == "22.80 or 23.14§" and first[C.PAPER_TOP5_SHOWN] == "6.52 or 6.70§"
    assert summary.iloc[1][C.PAPER_TOP1_SHOWN] == "22.66†"
    markdown = render_markdown(summary, prepared)
    assert "| 22.80 or 23.14§ | 6.52 or 6.70§ |" in markdown
    note = markdown.strip().splitlines()[-1]
    assert "§ disputed" in note and "ResNet50 + channel (SE), the avg-pool arm of Tables 1 and 4" in note
    assert "† transcribed from the project's notes on the paper" in note and "not checked against the PDF" in note
    assert "‡" not in note  # only the marks the table uses are explained
    assert "22.80 or 23.14§" in render_latex(summary, prepared)


def test_the_summary_has_exactly_its_declared_columns_in_their_order():
    """The columns are declared once (ablation/report/columns.py); the summary, and so table.csv, is made of them."""
    _, summary = _table("demo")
    assert list(summary.columns) == list(C.SUMMARY_COLUMNS)
