"""Top-k error, the paper's metric (single 224 crop, top-1 and top-5 error in percent)."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many samples have their target among the k highest logits, for each k (a tensor, no host sync).

    k larger than the number of classes counts every sample as correct, as a top-5 error on a 3-class problem
    would be 0. Ties are broken by ``torch.topk``'s order, which is the convention of every ImageNet script.
    """
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (B, k_max), best first
    hits = top.eq(targets[:, None])  # at most one True per row
    cumulative = hits.cumsum(dim=1)  # cumulative[:, k-1]: target within the top k
    return torch.stack([cumulative[:, min(k, k_max) - 1].sum() for k in ks])


def topk_error(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k error in percent for each k."""
    correct = topk_correct(logits, targets, ks).double()
    return (100.0 * (1.0 - correct / len(targets))).tolist()
