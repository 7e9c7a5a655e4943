#!/usr/bin/env python
"""Command line of the CBAM ablation harness: argument parsing and dispatch only; the work is in ``ablation``.

python runner.py profile experiments/table4_backbones.yaml --format md
"""

from __future__ import annotations

import argparse
import sys

from ablation.errors import ConfigError


def _add_experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="an experiment file, e.g. experiments/demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key (dotted, value read as YAML), e.g. --set train.epochs=2; repeatable",
    )


def cmd_profile(args: argparse.Namespace) -> None:
    from ablation.config import load_experiment
    from ablation.grid import expand_arms
    from ablation.profiler import profile_arms, render

    experiment = load_experiment(args.experiment, args.overrides)
    arms = expand_arms(experiment, check_paths=False)
    sys.stdout.write(render(profile_arms(arms), args.format))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profile = commands.add_parser(
        "profile",
        help="params and GMACs of every arm, beside the paper's numbers; no training",
        description="Print one row per arm of the grid: description, arch, attention, layout, params and GMACs "
        "(multiply-accumulates at the experiment's input size, the paper's 'GFLOPs'), and the paper's printed "
        "params / GFLOPs where the arm is one of its rows. Nothing is trained and no data is read.",
    )
    _add_experiment_args(profile)
    profile.add_argument("--format", choices=("table", "csv", "md"), default="table")
    profile.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
