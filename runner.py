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


def _add_tracking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)",
    )


def cmd_sweep(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ablation.config import load_experiment
    from ablation.mlflow_store import resolve_tracking_uri
    from ablation.sweep import SweepOptions, prepare_sweep, run_sweep

    prepared = prepare_sweep(load_experiment(args.experiment, args.overrides))
    options = SweepOptions(
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
        device=args.device,
        checkpoint_dir=Path(args.checkpoint_dir),
        log_checkpoints=args.log_checkpoints,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        workers=args.loader_workers,
    )
    report = run_sweep(prepared, options)
    print(
        f"sweep {prepared.experiment.name}: {report.finished} cells trained, {report.already_done} already done, "
        f"{len(report.failed)} failed, {report.skipped_failed} failed earlier and skipped; "
        f"wall {report.wall_s:.1f}s, training {report.train_s:.1f}s"
    )
    for name, reason in report.failed.items():
        print(f"  failed: {name}: {reason}")
    if report.finished or report.already_done:
        args.format, args.out = "md", None
        cmd_table(args, prepared)
    if report.failed:
        raise SystemExit(1)


def cmd_table(args: argparse.Namespace, prepared=None) -> None:
    from pathlib import Path

    from ablation.config import load_experiment
    from ablation.grid import expand_arms, expand_cells
    from ablation.mlflow_store import resolve_tracking_uri
    from ablation.report import collect_runs, render_csv, render_latex, render_markdown, summarize, write_outputs
    from ablation.sweep import PreparedSweep

    if prepared is None:
        experiment = load_experiment(args.experiment, args.overrides)
        arms = expand_arms(experiment, check_paths=False)
        prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    summary = summarize(prepared, collect_runs(prepared, resolve_tracking_uri(args.tracking_uri)))
    out_dir = Path(args.out) if args.out else Path("results") / prepared.experiment.name
    written = write_outputs(summary, prepared, out_dir)
    render = {"md": lambda: render_markdown(summary, prepared), "latex": lambda: render_latex(summary, prepared)}
    sys.stdout.write(render.get(args.format, lambda: render_csv(summary))())
    print(f"written: {', '.join(str(p) for p in written)}", file=sys.stderr)


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

    sweep = commands.add_parser(
        "sweep",
        help="train every cell (arm x seed) of an experiment, tracked in MLflow; reruns resume",
        description="Train every cell of the grid on one device, one MLflow child run per cell under a parent "
        "run per sweep. Everything is validated before the first run starts. Running it again starts nothing for "
        "finished cells (same config hash), resumes interrupted ones from their last epoch checkpoint, and skips "
        "failed ones unless --retry-failed. Prints the table at the end.",
    )
    _add_experiment_args(sweep)
    _add_tracking_arg(sweep)
    sweep.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1")
    sweep.add_argument("--checkpoint-dir", default="checkpoints", help="epoch checkpoints (default: checkpoints/)")
    sweep.add_argument("--log-checkpoints", action="store_true", help="log each cell's final checkpoint to MLflow")
    sweep.add_argument("--retry-failed", action="store_true", help="run cells that failed before again")
    sweep.add_argument("--loader-workers", type=int, default=4, help="DataLoader workers for ImageNet (default 4)")
    sweep.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    sweep.set_defaults(func=cmd_sweep)

    table = commands.add_parser(
        "table",
        help="the paper-style table of an experiment's runs, from MLflow",
        description="Description | n | Params | GMACs | Top-1 err | Top-5 err (mean ± std over seeds), with the "
        "paper's printed numbers beside ours for the paper's tables. Writes table.md, table.tex, table.csv and a "
        "bar chart to results/<experiment>/ (or --out) and prints the chosen format.",
    )
    _add_experiment_args(table)
    _add_tracking_arg(table)
    table.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    table.add_argument("--out", default=None, help="output folder (default: results/<experiment>/)")
    table.set_defaults(func=cmd_table)
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
