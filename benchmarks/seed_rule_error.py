#!/usr/bin/env python
"""The seed rule's error rate and cost, by Monte Carlo: the old rule ("ci95 excludes 0" after every round) against
the sequential one (the level spent over the planned looks), with the harness's own rule code.

Each simulated sweep is one arm against the baseline, per-seed top-1 errors drawn from normal distributions with
the same standard deviation; the rule (``ablation.stats.seed_rule``: ``verdicts`` and ``next_round``) starts both
at ``min`` seeds and adds one seed to each per round until it resolves the difference or reaches ``max``.

- No true difference: the share of sweeps the rule declares "resolved", its false-resolution rate, which a rule at
  level alpha keeps at or below alpha.
- A true difference of ``--effect`` standard deviations (the README's example: CBAM's ~0.3-point gain on a seed
  spread of ~0.2 points is 1.5): how often each rule resolves it, and the seeds per arm it spends on average.

Prints one line per setting and, last, ``false resolution rate: old <r>, new <r> at level <alpha>``.

    python benchmarks/seed_rule_error.py [--sweeps 20000] [--min 3] [--max 10] [--alpha 0.05] [--effect 1.5]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout, installed or not

from ablation.experiment.tune import SeedRule
from ablation.stats.seed_rule import RESOLVED, next_round, verdicts


def one_sweep(rule: SeedRule, effect: float, rng: np.random.Generator) -> tuple[bool, int]:
    """(resolved, seeds the arm ran) for one simulated sweep: arm 1 against baseline 0, standard deviation 1."""
    draws = {0: rng.normal(0.0, 1.0, rule.max), 1: rng.normal(-effect, 1.0, rule.max)}
    queued = {arm: list(range(rule.min)) for arm in (0, 1)}
    while True:
        results = {arm: [float(draws[arm][seed]) for seed in seeds] for arm, seeds in queued.items()}
        plan = next_round(results, queued, 0, rule)
        if not plan:
            verdict = verdicts(results, queued, 0, rule)[1]
            return verdict.state == RESOLVED, len(queued[1])
        for arm, seed in plan.items():
            queued[arm].append(seed)


def simulate(rule: SeedRule, effect: float, sweeps: int, seed: int) -> tuple[float, float]:
    """(share of sweeps resolved, mean seeds per arm)."""
    rng = np.random.default_rng(seed)
    outcomes = [one_sweep(rule, effect, rng) for _ in range(sweeps)]
    return sum(r for r, _ in outcomes) / sweeps, sum(n for _, n in outcomes) / sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=20000)
    parser.add_argument("--min", type=int, default=3)
    parser.add_argument("--max", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--effect", type=float, default=1.5, help="true difference, in seed standard deviations")
    args = parser.parse_args()
    rules = {
        "old (ci95 excludes 0)": SeedRule(min=args.min, max=args.max, until="ci95 excludes 0"),
        "new (sequential)": SeedRule(min=args.min, max=args.max, until="sequential", alpha=args.alpha),
    }
    margin = 3 * math.sqrt(args.alpha * (1 - args.alpha) / args.sweeps)
    print(
        f"{args.sweeps} simulated sweeps per line; seeds {args.min}..{args.max}; 3 standard errors of a rate "
        f"near {args.alpha:g}: {margin:.3f}"
    )
    null = {}
    for name, rule in rules.items():
        null[name], seeds = simulate(rule, 0.0, args.sweeps, seed=1)
        print(f"no true difference, {name}: resolved (falsely) in {null[name]:.3f} of sweeps, {seeds:.2f} seeds/arm")
    for name, rule in rules.items():
        power, seeds = simulate(rule, args.effect, args.sweeps, seed=2)
        print(
            f"a true difference of {args.effect:g} sd, {name}: resolved in {power:.3f} of sweeps, "
            f"{seeds:.2f} seeds/arm on average"
        )
    old, new = null["old (ci95 excludes 0)"], null["new (sequential)"]
    print(f"false resolution rate: old {old:.3f}, new {new:.3f} at level {args.alpha:g}")


if __name__ == "__main__":
    main()
