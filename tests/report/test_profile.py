"""The profile (ablation/report/profile.py) marks the paper's recalled numbers and explains them."""

import pytest

from ablation.experiment.grid import expand_arms
from ablation.experiment.schema import load_experiment
from ablation.report.profile import profile_arms, render
from tests.support.folders import EXPERIMENTS


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
