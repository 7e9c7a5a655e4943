"""The results table (ablation/report/table.py) marks the paper's numbers by source and explains the marks it uses."""

import numpy as np
import pandas as pd
import yaml

from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.prepared import PreparedSweep
from ablation.experiment.schema import load_experiment
from ablation.report import columns as C
from ablation.report.table import render_html, render_latex, render_markdown, summarize
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


def _prepared_with(stats: dict | None = None, seeds=(0, 1, 2)) -> PreparedSweep:
    from ablation.experiment.schema import experiment_from_mapping

    raw = yaml.safe_load((EXPERIMENTS / "demo.yaml").read_text())
    raw.update(name="demo", seeds=list(seeds), **({"stats": stats} if stats else {}))
    experiment = experiment_from_mapping(raw, "<test>")
    arms = expand_arms(experiment, check_paths=False)
    return PreparedSweep(experiment, arms, expand_cells(experiment, arms))


def _runs(prepared: PreparedSweep, missing: tuple[int, int] | None = None) -> pd.DataFrame:
    """Finished runs of every arm and seed (but ``missing``: (arm, seed)): each arm 0.4 points better than the last,
    each seed 0.3 worse than the one before, plus noise."""
    noise = np.random.default_rng(0).normal(0, 0.2, (len(prepared.arms), len(prepared.experiment.seeds)))
    rows = [
        {
            C.ARM: arm.index,
            C.DESCRIPTION: arm.description,
            C.SEED: seed,
            C.RUN_ID: f"r{arm.index}{seed}",
            C.TOP1: 30.0 - 0.4 * arm.index + 0.3 * seed + noise[arm.index, seed],
            **{C.TOP5: 10.0, C.TOP1_BEST: 29.0, C.PARAMS: 1e6, C.GMACS: 0.1, C.IMG_PER_S: 100.0, C.TRAIN_TIME: 1.0},
        }
        for arm in prepared.arms
        for seed in prepared.experiment.seeds
        if (arm.index, seed) != missing
    ]
    return pd.DataFrame(rows, columns=list(C.RUN_COLUMNS))


def test_every_comparison_has_its_interval_and_the_family_is_corrected_as_the_note_says():
    from ablation.stats.compare import compare_arms

    for correction, words in (
        ("holm", "Holm-adjusted over"),
        ("bh", "Benjamini-Hochberg-adjusted over"),
        ("none", "not adjusted for"),
    ):
        prepared = _prepared_with({"correction": correction})
        runs = _runs(prepared)
        summary = summarize(prepared, runs)
        errors = {a: dict(zip(g[C.SEED], g[C.TOP1], strict=True)) for a, g in runs.groupby(C.ARM)}
        expected = compare_arms(errors, prepared.baseline, correction=correction)
        for arm, comparison in expected.items():
            row = summary.iloc[arm]
            assert (row[C.DIFF], row[C.DIFF_LOW], row[C.DIFF_HIGH]) == (
                comparison.difference,
                comparison.low,
                comparison.high,
            )
            assert (row[C.T], row[C.DF], row[C.VS_BASELINE_P]) == (comparison.t, comparison.df, comparison.p)
            assert row[C.P_ADJUSTED] == comparison.p_adjusted and row[C.EFFECT] == comparison.effect
            assert row[C.VS_BASELINE].startswith(f"{comparison.difference:+.2f} [{comparison.low:+.2f}, ")
        markdown = render_markdown(summary, prepared)
        assert f"{words} the 4 comparisons with the baseline" in markdown
        title = {"holm": "(Welch, Holm)", "bh": "(Welch, BH)", "none": "(Welch)"}[correction]
        assert f"| Δ top-1 [95% CI], p {title} |" in markdown
    html = render_html(summary, prepared)
    assert (
        '<table class="comparisons">' in html and "<th>p (adjusted)</th>" in html and "<th>Hedges&#x27; g</th>" in html
    )


def test_a_paired_table_is_refused_in_one_line_where_seeds_do_not_pair():
    import pytest

    from ablation.core.errors import ConfigError

    prepared = _prepared_with({"test": "paired"})
    paired = summarize(prepared, _runs(prepared))
    assert paired.loc[1, C.TEST] == "paired" and paired.attrs["comparisons"] == 4
    with pytest.raises(ConfigError) as raised:
        summarize(prepared, _runs(prepared, missing=(2, 1)))
    message = str(raised.value)
    assert message.startswith("stats.test: 'paired' is not allowed for these runs: ") and "\n" not in message
    assert f"'{prepared.arms[2].description}' finished seeds []" in message and "lacks [1]" in message
    assert message.endswith("allowed: welch")


def test_latex_escapes_all_ten_special_characters_in_one_pass():
    from ablation.report.table import latex_escape

    assert latex_escape(r"& % $ # _ { } ~ ^ \ ") == (
        r"\& \% \$ \# \_ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{} "
    )
    assert latex_escape("Δ ± †") == r"$\Delta$ $\pm$ \textdagger{}"
