"""Top-k error on hand-made logits with known answers."""

import pytest
import torch

from ablation.engine.metrics import topk_correct, topk_error


def test_topk_on_hand_made_logits():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # target 0: rank 1
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 1: rank 5 (0.6, 0.5, 0.4, 0.3, 0.2)
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 0: rank 6, outside the top 5
            [0.0, 0.0, 5.0, 1.0, 0.0, 0.0],  # target 3: rank 2
        ]
    )
    targets = torch.tensor([0, 1, 0, 3])
    assert topk_correct(logits, targets, (1, 2, 5)).tolist() == [1, 2, 3]
    top1, top5 = topk_error(logits, targets, (1, 5))
    assert top1 == pytest.approx(75.0)
    assert top5 == pytest.approx(25.0)


def test_k_beyond_the_number_of_classes_counts_everything():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    targets = torch.tensor([0, 0])
    assert topk_error(logits, targets, (1, 5)) == pytest.approx([50.0, 0.0])


def test_matches_a_sort_based_count_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=generator)
    targets = torch.randint(0, 20, (500,), generator=generator)
    ranks = (logits > logits.gather(1, targets[:, None])).sum(1)  # how many logits beat the target's
    for k in (1, 3, 5):
        assert topk_correct(logits, targets, (k,)).item() == (ranks < k).sum().item()
