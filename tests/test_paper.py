"""The paper's printed numbers carry where they came from, and every table or profile that shows one says so."""

import pandas as pd
import pytest

from ablation.config import load_experiment
from ablation.grid import expand_arms, expand_cells
from ablation.paper import FIELDS, PAPER_ROWS, SOURCES
from ablation.prepared import PreparedSweep
from ablation.profiler import profile_arms, render
from ablation.report import render_latex, render_markdown, summarize
from tests.conftest import EXPERIMENTS

RUN_COLUMNS = ["arm", "description", "seed", "run_id", "top1_err", "top5_err", "params", "gmacs", "img_per_s"]


def _table(name: str) -> tuple[PreparedSweep, pd.DataFrame]:
    experiment = load_experiment(EXPERIMENTS / f"{name}.yaml")
    arms = expand_arms(experiment, check_paths=False)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    return prepared, summarize(prepared, pd.DataFrame(columns=RUN_COLUMNS))


def test_every_printed_number_has_a_known_source():
    for row in PAPER_ROWS:
        for field in FIELDS:
            if getattr(row, field) is not None:
                assert row.source(field) in SOURCES, (row.label, field)
    # Nothing was checked against the PDF here: no number may claim a source that says otherwise.
    assert {row.source(f) for row in PAPER_ROWS for f in FIELDS} <= {"transcribed", "recalled", "disputed"}
    # Table 5: its errors and plain params are written in SPEC.md, its SE / CBAM params and all GFLOPs are not.
    table5 = [row for row in PAPER_ROWS if row.table == "table5"]
    assert {row.source("top1") for row in table5} == {"transcribed"}
    assert {row.source("gflops") for row in table5} == {"recalled"}
    assert {row.source("params_m") for row in table5 if row.baseline} == {"transcribed"}
    assert {row.source("params_m") for row in table5 if not row.baseline} == {"recalled"}


def test_table3s_first_row_is_disputed_and_shows_both_readings():
    prepared, summary = _table("table3_arrangement")
    first = summary.iloc[0]
    assert first["paper_top1_shown"] == "22.80 or 23.14§" and first["paper_top5_shown"] == "6.52 or 6.70§"
    assert summary.iloc[1]["paper_top1_shown"] == "22.66†"
    markdown = render_markdown(summary, prepared)
    assert "| 22.80 or 23.14§ | 6.52 or 6.70§ |" in markdown
    note = markdown.strip().splitlines()[-1]
    assert "§ disputed" in note and "ResNet50 + channel (SE), the avg-pool arm of Tables 1 and 4" in note
    assert "† transcribed from SPEC.md" in note and "not checked against the PDF" in note
    assert "‡" not in note  # only the marks the table uses are explained
    assert "22.80 or 23.14§" in render_latex(summary, prepared)


@pytest.mark.parametrize("fmt", ["md", "table"])
def test_the_profile_marks_recalled_numbers_and_explains_them(fmt):
    experiment = load_experiment(EXPERIMENTS / "table5_mobilenet.yaml")
    frame = profile_arms(expand_arms(experiment, check_paths=False))
    text = render(frame, fmt)
    assert "2.30M†" in text and "2.71M‡" in text and "0.283‡" in text
    assert text.strip().splitlines()[-1].startswith("Paper numbers: † transcribed")
    assert "‡ recalled from the paper" in text
    csv = render(frame, "csv")
    assert "paper_params_source" in csv.splitlines()[0] and ",recalled," in csv
