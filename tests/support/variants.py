"""The CBAM ablation variants the attention tests sweep, written out literally (not read from the package), and
their shared tolerances: one list for the tests of tests/attention/ and tests/attention/accel/."""

from __future__ import annotations

import itertools

import pytest

TOL = 1e-5
C = 32  # channels of the test maps; reduction 4 leaves 8 hidden units
POOLS = ("avg", "max", "lp", "lse")
POOL_SUBSETS = [list(s) for n in range(1, len(POOLS) + 1) for s in itertools.combinations(POOLS, n)]
ARRANGEMENTS = [
    ("channel-first", "product"),
    ("spatial-first", "product"),
    ("parallel", "product"),
    ("parallel", "sum-logits"),
    ("channel-only", "product"),
    ("spatial-only", "product"),
]
MODES = pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
