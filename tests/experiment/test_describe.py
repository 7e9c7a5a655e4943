"""Arm labels (ablation/experiment/describe.py): they read like the paper's rows, and a template names config keys."""

from ablation.experiment.grid import expand_arms
from ablation.experiment.schema import load_experiment
from tests.support.base_experiment import BASE
from tests.support.folders import EXPERIMENTS


def test_descriptions_read_like_the_papers_rows(write_experiment):
    table1 = expand_arms(load_experiment(EXPERIMENTS / "table1_channel_pooling.yaml"), check_paths=False)
    assert [a.description for a in table1] == [
        "ResNet50 (baseline)",
        "ResNet50 + AvgPool (SE-like)",
        "ResNet50 + MaxPool",
        "ResNet50 + AvgPool & MaxPool",
    ]
    text = (
        BASE
        + """
grid:
  - model.attention: [{type: none}]
  - model.attention.order: [spatial-first]
    model.attention.kernel_size: [3]
  - description: "CBAM k={model.attention.kernel_size}, pools {model.attention.channel_pool}"
    model.attention.kernel_size: [5]
  - train.lr: [0.05]
"""
    )
    labels = [a.description for a in expand_arms(load_experiment(write_experiment(text)))]
    assert labels == [
        "ResNet18",
        "ResNet18 + CBAM (spatial + channel, k=3)",
        "CBAM k=5, pools AvgPool & MaxPool",
        "ResNet18 + CBAM, lr=0.05",
    ]
