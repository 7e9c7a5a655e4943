"""A fixed, class-stratified split of a training set into the part a job trains on and the part it is scored on.

Tuning trials (``data.holdout``) must never see the test set: they train on most of the training set and are
scored on the rest of it. The split has to be the same in every process that ever trains or resumes a trial
(workers on other hosts, a job resumed days later, every rank of a distributed job), so it is a pure function of
the labels, the fraction and the seed. Numpy only: the torch-free parts of the package can use it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["held_out_count", "stratified_holdout"]


def held_out_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` images are held out: ``round(fraction * n)`` (half to even), but at least 1
    when ``n >= 2`` and at most ``n - 1``, so every class keeps training images and, where it can, is scored too;
    a class of one image stays in training."""
    if n < 2:
        return 0
    return min(max(round(fraction * n), 1), n - 1)


def _entropy(value: int) -> list[int]:
    """A signed integer as the non-negative words a SeedSequence takes: sign, then magnitude."""
    return [int(value < 0), abs(int(value))]


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of ``labels``: sorted int64 arrays, disjoint, together every index.

    Per class ``c`` with ``n_c`` images, ``held_out_count(n_c, fraction)`` of them are held out. Which ones is
    decided by a generator of the class's own, a PCG64 seeded through ``np.random.SeedSequence`` from the
    integers ``(seed, c)`` alone: the choice is the same in every process, on every run and after any resume
    (nothing depends on the process's global random state, hash randomisation or the time), and it is
    independent of which other classes exist and of the order in which classes first appear in ``labels``. The
    images kept out are those with the smallest of ``n_c`` raw 64-bit PCG64 outputs, taken in the order of the
    class's indices (ties, practically impossible, broken by index): the raw bit stream is the part of numpy's
    random generation that its compatibility policy keeps fixed across versions, unlike ``choice`` or
    ``permutation``, whose algorithms may change.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    held: list[np.ndarray] = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)  # ascending
        count = held_out_count(len(members), fraction)
        if count == 0:
            continue
        generator = np.random.PCG64(np.random.SeedSequence([*_entropy(seed), *_entropy(int(value))]))
        keys = generator.random_raw(len(members))
        held.append(members[np.argsort(keys, kind="stable")[:count]])
    mask = np.zeros(len(labels), dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)
