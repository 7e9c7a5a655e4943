"""Every mistake is one line: a table of bad inputs, each refused before anything is created.

Each case runs the real command line (``runner.main``, in this process) in an empty working folder holding only
its inputs, and asserts: exit code 2; exactly one line on stderr, ``error: ...``, naming the key or flag and the
bad value, and saying what is allowed (or, for a store, why it cannot be used); no traceback; and no file or
folder created (no MLflow store or run, no sweep state, no checkpoint folder). A config error is also checked in a
fresh process: it must appear before torch, MLflow, Optuna or SciPy is imported (so in well under a second).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import runner
from ablation.attention import ATTENTION_TYPES
from tests.support.folders import ROOT

GOOD = {
    "model": "{arch: resnet18, width: 0.125, stem: cifar, attention: {type: cbam, reduction: 4}}",
    "data": "{dataset: npz, root: data.npz}",
    "train": "{epochs: 1, batch_size: 10, lr: 0.05}",
}


def experiment(grid: str = "model.attention.order: [channel-first, parallel]", seeds: str = "[0]", **sections) -> str:
    """A valid experiment text, with any section (model, data, train) or top-level line replaced."""
    parts = {**GOOD, **{k: v for k, v in sections.items() if k in GOOD}}
    extra = "".join(f"{k}: {v}\n" for k, v in sections.items() if k not in GOOD)
    base = "".join(f"  {k}: {v}\n" for k, v in parts.items())
    return f"name: bad\n{extra}base:\n{base}grid:\n  {grid}\nseeds: {seeds}\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED = _closed_port()
LR_GRID = "train.lr: [0.05, 0.1]"  # a grid that leaves the model section as the case writes it


@dataclass
class Case:
    name: str
    argv: list[str]  # after the command; "EXP" is replaced by the experiment file's path
    words: tuple[str, ...]  # what the one line must say: the key or flag, the value, what is allowed
    text: str = field(default_factory=experiment)  # the experiment file
    command: str = "sweep"
    data: dict | None = None  # changes to the valid data.npz (None: the valid one)
    raw_data: bytes | None = None  # data.npz's bytes as they are


CASES = [
    # ---- the experiment file: every section's keys and value ranges
    Case("unknown top-level key", [], ("bases", "unknown top-level key", "allowed"), experiment(bases="{}")),
    Case("bad name", [], ("name", "a/b", "must be letters"), experiment().replace("name: bad", "name: a/b")),
    Case("no seeds", [], ("seeds", "[]", "non-empty list"), experiment(seeds="[]")),
    Case("repeated seeds", [], ("seeds", "[1, 1]", "distinct"), experiment(seeds="[1, 1]")),
    Case("seed not a number", [], ("seeds", "'a'", "integers"), experiment(seeds="[a]")),
    Case("seed rule alpha", [], ("seeds", "alpha", "(0, 0.5)"), experiment(seeds="{min: 3, max: 5, alpha: 0.9}")),
    Case("stats test", [], ("stats.test", "'t'", "allowed: welch, paired"), experiment(stats="{test: t}")),
    Case(
        "stats correction", [], ("stats.correction", "'bonf'", "holm, bh, none"), experiment(stats="{correction: bonf}")
    ),
    Case(
        "stats unknown key",
        [],
        ("stats.level", "allowed here: test, correction, alpha"),
        experiment(stats="{level: 1}"),
    ),
    Case(
        "paired with a seed rule",
        [],
        ("stats.test", "'paired'", "seed rule", "allowed: welch"),
        experiment(seeds="{min: 3, max: 5}", stats="{test: paired}"),
    ),
    Case(
        "custom arch without target",
        [],
        ("model.target", "required with arch custom"),
        experiment(model="{arch: custom, attention: {type: none}}", grid=LR_GRID),
    ),
    Case(
        "custom dataset without target",
        [],
        ("data.target", "required with dataset custom"),
        experiment(data="{dataset: custom}"),
    ),
    Case("negative seed", [], ("seeds", "-1", ">= 0"), experiment(seeds="[-1]")),
    Case("grid value not a list", [], ("grid[0].train.lr", "0.1", "list"), experiment(grid="train.lr: 0.1")),
    Case("unknown paper table", [], ("paper", "table9", "allowed: table1"), experiment(paper="[table9]")),
    Case("unknown arch", [], ("model.arch", "resnet19", "allowed: resnet18"), experiment(model="{arch: resnet19}")),
    Case("zero width", [], ("model.width", "0", "> 0"), experiment(model="{arch: resnet18, width: 0}")),
    Case("unknown stem", [], ("model.stem", "foo", "allowed: imagenet, cifar"), experiment(model="{stem: foo}")),
    Case("unknown layout", [], ("model.layout", "v2", "allowed: v1, v1.5"), experiment(model="{layout: v2}")),
    Case(
        "zero classes",
        [],
        ("model.num_classes", "0", ">= 2"),
        experiment(model="{arch: resnet18, width: 0.125, stem: cifar, num_classes: 0}", grid=LR_GRID),
    ),
    Case(
        "unknown attention",
        [],
        ("model.attention.type", "gcnet", f"allowed: {', '.join(ATTENTION_TYPES)}"),
        experiment(model="{attention: {type: gcnet}}", grid=LR_GRID),
    ),
    Case(
        "even ECA kernel",
        [],
        ("model.attention.kernel_size", "4", "odd integer"),
        experiment(model="{attention: {type: eca, kernel_size: 4}}", grid=LR_GRID),
    ),
    Case(
        "custom module without a target",
        [],
        ("model.attention.target", "Field required"),
        experiment(model="{attention: {type: custom}}", grid=LR_GRID),
    ),
    Case(
        "custom target not a path",
        [],
        ("model.attention.target", "mypkg.MyAttention", "package.module:Name"),
        experiment(model="{stem: cifar, attention: {type: custom, target: mypkg.MyAttention}}", grid=LR_GRID),
    ),
    Case(
        "custom target not importable",
        [],
        ("model.attention.target", "nosuchpkg.attn:Gate", "cannot be imported", "No module named 'nosuchpkg'"),
        experiment(model="{stem: cifar, attention: {type: custom, target: 'nosuchpkg.attn:Gate'}}", grid=LR_GRID),
    ),
    Case(
        "custom target not callable",
        [],
        ("model.attention.target", "math:pi", "not a class or callable"),
        experiment(model="{stem: cifar, attention: {type: custom, target: 'math:pi'}}", grid=LR_GRID),
    ),
    Case(
        "custom placement",
        [],
        ("model.attention.placement", "everywhere", "allowed: block, stage"),
        experiment(
            model="{stem: cifar, attention: {type: custom, target: 'math:pi', placement: everywhere}}", grid=LR_GRID
        ),
    ),
    Case(
        "even kernel",
        [],
        ("model.attention.kernel_size", "4", "odd integer"),
        experiment(model="{attention: {type: cbam, kernel_size: 4}}"),
    ),
    Case(
        "zero reduction",
        [],
        ("model.attention.reduction", "0", ">= 1"),
        experiment(model="{attention: {type: se, reduction: 0}}"),
    ),
    Case(
        "empty pooling",
        [],
        ("model.attention.channel_pool", "[]", "subset of [avg, max, lp, lse]"),
        experiment(model="{attention: {type: cbam, channel_pool: []}}"),
    ),
    Case(
        "unknown order",
        [],
        ("model.attention.order", "sideways", "allowed: channel-first"),
        experiment(model="{stem: cifar, attention: {type: cbam, order: sideways}}", grid=LR_GRID),
    ),
    Case(
        "key of another attention",
        [],
        ("model.attention.kernel_size", "unknown key", "allowed here: reduction"),
        experiment(model="{attention: {type: se, kernel_size: 3}}"),
    ),
    Case(
        "unknown dataset",
        [],
        ("data.dataset", "mnist9", "allowed: cifar10-micro"),
        experiment(data="{dataset: mnist9}"),
    ),
    Case(
        "zero image size",
        [],
        ("data.image_size", "0", ">= 1"),
        experiment(data="{dataset: npz, root: data.npz, image_size: 0}"),
    ),
    Case("negative image size", [], ("data.image_size", "-1", ">= 1"), experiment(data="{image_size: -1}")),
    Case(
        "image too small for the stem",
        [],
        ("data.image_size", "16", "imagenet stem", ">= 32"),
        experiment(
            model="{arch: resnet18, stem: imagenet}", data="{dataset: cifar10-micro, image_size: 16}", grid=LR_GRID
        ),
    ),
    Case("augment not a bool", [], ("data.augment", "'maybe'", "bool"), experiment(data="{augment: maybe}")),
    Case("zero epochs", [], ("train.epochs", "0", ">= 1"), experiment(train="{epochs: 0}")),
    Case("zero batch", [], ("train.batch_size", "0", ">= 1"), experiment(train="{batch_size: 0}")),
    Case("negative lr", [], ("train.lr", "-0.1", ">= 0"), experiment(train="{lr: -0.1}")),
    Case("negative warm-up", [], ("train.warmup_epochs", "-1", ">= 0"), experiment(train="{warmup_epochs: -1}")),
    Case(
        "warm-up longer than training",
        [],
        ("train.warmup_epochs", "5", "fewer than train.epochs (2)"),
        experiment(train="{epochs: 2, warmup_epochs: 5}"),
    ),
    Case(
        "label smoothing 1", [], ("train.label_smoothing", "1.0", "[0, 1)"), experiment(train="{label_smoothing: 1.0}")
    ),
    Case("momentum 1.5", [], ("train.momentum", "1.5", "[0, 1)"), experiment(train="{momentum: 1.5}")),
    Case(
        "unknown schedule",
        [],
        ("train.schedule", "linear", "allowed: step, cosine"),
        experiment(train="{schedule: linear}"),
    ),
    Case("unknown amp", [], ("train.amp", "fp8", "allowed: auto, off"), experiment(train="{amp: fp8}")),
    Case("epochs as text", [], ("train.epochs", "'ten'", "integer"), experiment(train="{epochs: ten}")),
    Case(
        "batch larger than the data",
        [],
        ("train.batch_size", "500", "training images"),
        experiment(train="{batch_size: 500}"),
    ),
    # ---- the file itself
    Case("empty file", [], ("bad.yaml", "empty"), ""),
    Case("not YAML", [], ("bad.yaml", "line", "not valid YAML"), "base: {model: [\n"),
    Case("a list, not a mapping", [], ("bad.yaml", "mapping"), "- 1\n- 2\n"),
    # ---- --set, every form
    Case("--set without =", ["--set", "train.lr"], ("--set", "train.lr", "key=value")),
    Case("--set without key", ["--set", "=3"], ("--set", "'=3'", "key=value")),
    Case("--set bad YAML", ["--set", "train.lr=[1,"], ("--set train.lr", "not valid YAML")),
    Case("--set unknown section", ["--set", "foo.bar=1"], ("--set foo.bar", "model., data., train.")),
    Case("--set unknown key", ["--set", "train.speed=1"], ("train.speed", "unknown key", "allowed here: epochs")),
    Case("--set a key the grid varies", ["--set", "model.attention.order=parallel"], ("--set", "varied by the grid")),
    Case("--set seeds of text", ["--set", "seeds=[a]"], ("seeds", "'a'", "integers")),
    Case("--set under a value", ["--set", "train.lr.x=1"], ("train.lr", "cannot be set under it")),
    Case("--set a bad value", ["--set", "train.epochs=0"], ("train.epochs", "0", ">= 1")),
    # ---- command-line flags
    Case("--workers 0", ["--workers", "0"], ("--workers", "'0'", "allowed: auto or a positive integer")),
    Case("--workers text", ["--workers", "many"], ("--workers", "'many'", "allowed: auto or a positive integer")),
    Case("--jobs-per-gpu 0", ["--jobs-per-gpu", "0"], ("--jobs-per-gpu", "0", "integer >= 1")),
    Case("--gpus-per-job 0", ["--gpus-per-job", "0"], ("--gpus-per-job", "0", "integer >= 1")),
    Case("--gpus-per-job without GPUs", ["--gpus-per-job", "2"], ("--gpus-per-job", "2", "allowed here: 1")),
    Case("--loader-workers -1", ["--loader-workers", "-1"], ("--loader-workers", "-1", "integer >= 0")),
    Case("--heartbeat-interval 0", ["--heartbeat-interval", "0"], ("--heartbeat-interval", "0", "integer >= 1")),
    Case(
        "--grace-period not above the heartbeat",
        ["--heartbeat-interval", "15", "--grace-period", "10"],
        ("--grace-period", "10", "more than --heartbeat-interval (15)"),
    ),
    Case("--store-wait -1", ["--store-wait", "-1"], ("--store-wait", "'-1'", "a number of seconds >= 0")),
    Case("--store-wait text", ["--store-wait", "long"], ("--store-wait", "'long'", "a number of seconds >= 0")),
    Case("--store-wait inf", ["--store-wait", "inf"], ("--store-wait", "'inf'", "a number of seconds >= 0")),
    Case("--device foo", ["--device", "foo"], ("--device", "'foo'", "allowed here: auto, cpu")),
    Case("--device cuda:9", ["--device", "cuda:9"], ("--device", "'cuda:9'", "allowed")),
    Case("--workers not a number", ["--jobs-per-gpu", "x"], ("--jobs-per-gpu", "'x'", "integer")),
    Case(
        "table --format", ["--format", "pdf"], ("--format", "'pdf'", "allowed: md, latex, csv, html"), command="table"
    ),
    Case("profile --format", ["--format", "xml"], ("--format", "'xml'", "allowed: table, csv, md"), command="profile"),
    Case("gradcam --images 0", ["--images", "0"], ("--images", "0", "integer >= 1"), command="gradcam"),
    Case("gradcam --seed-index", ["--seed-index", "3"], ("--seed-index", "3", "allowed: 0..0"), command="gradcam"),
    Case(
        "slurm --tasks 0",
        ["--tasks", "0", "--storage", "postgresql+psycopg2://u@h/db"],
        ("--tasks", "0", "integer >= 1"),
        command="slurm",
    ),
    Case(
        "slurm --time",
        ["--time", "forever", "--storage", "postgresql+psycopg2://u@h/db"],
        ("--time", "'forever'", "D-HH:MM:SS"),
        command="slurm",
    ),
    Case(
        "slurm --sbatch an owned option",
        ["--sbatch=--array=0-3", "--storage", "postgresql+psycopg2://u@h/db"],
        ("--sbatch", "'--array=0-3'", "use --tasks"),
        command="slurm",
    ),
    Case(
        "slurm --gpus-per-task below --gpus-per-job",
        ["--gpus-per-task", "1", "--gpus-per-job", "2", "--storage", "postgresql+psycopg2://u@h/db"],
        ("--gpus-per-task", "1", "at least --gpus-per-job (2)"),
        command="slurm",
    ),
    Case(
        "slurm --signal-grace over the limit",
        ["--time", "5", "--signal-grace", "300", "--storage", "postgresql+psycopg2://u@h/db"],
        ("--signal-grace", "300", "fewer seconds than the time limit"),
        command="slurm",
    ),
    Case("unknown command flag", ["--wokers", "2"], ("--wokers", "unrecognized")),
    # ---- data files
    Case("data file empty", [], ("data.root", "data.npz", "not a readable .npz"), raw_data=b""),
    Case("data with no images", [], ("data.root", "holds no images"), data={"n_train": 0}),
    Case("data of mixed sizes", [], ("data.root", "mixed sizes"), data={"x_test_size": 16}),
    Case("label out of range", [], ("data.root", "label 10, outside the 10 classes"), data={"label": 10}),
    Case("images not uint8", [], ("data.root", "dtype float32", "uint8"), data={"dtype": "float32"}),
    Case(
        "data.root a folder", [], ("data.root", "is a folder", ".npz file"), experiment(data="{dataset: npz, root: .}")
    ),
    Case(
        "data.root missing",
        [],
        ("data.root", "nowhere.npz", "does not exist"),
        experiment(data="{dataset: npz, root: nowhere.npz}"),
    ),
    # ---- stores
    Case("tracking URI scheme", ["--tracking-uri", "ftp://host/x"], ("--tracking-uri", "ftp://host/x", "http(s)://")),
    Case(
        "storage URL scheme", ["--storage", "mongodb://host/x"], ("--storage", "mongodb://host/x", "not a database URL")
    ),
    Case(
        "tracking server down",
        ["--tracking-uri", f"http://127.0.0.1:{CLOSED}"],
        ("--tracking-uri", f"http://127.0.0.1:{CLOSED}", "cannot be reached"),
    ),
    Case(
        "storage server down",
        ["--storage", f"postgresql+psycopg2://u@127.0.0.1:{CLOSED}/db"],
        ("--storage", f"127.0.0.1:{CLOSED}", "cannot be reached"),
    ),
]


def _write_data(path: Path, changes: dict | None) -> None:
    changes = changes or {}
    rng = np.random.default_rng(0)
    n_train = changes.get("n_train", 20)
    size = 8
    x_train = rng.integers(0, 255, (n_train, size, size, 3), dtype=np.uint8).astype(changes.get("dtype", "uint8"))
    y_train = np.arange(n_train) % 10
    test_size = changes.get("x_test_size", size)
    y_test = np.arange(10) % 10
    if "label" in changes:
        y_test[3] = changes["label"]
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=rng.integers(0, 255, (10, test_size, test_size, 3), dtype=np.uint8),
        y_test=y_test,
        classes=np.array([f"class{i}" for i in range(10)]),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_is_one_line_and_creates_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(case.text)
    if case.raw_data is not None:
        (tmp_path / "data.npz").write_bytes(case.raw_data)
    else:
        _write_data(tmp_path / "data.npz", case.data)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = runner.main([case.command, str(tmp_path / "bad.yaml"), *case.argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err, line
    for word in case.words:
        assert word in line, f"{word!r} not in {line!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no state, no checkpoint folder


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


def test_a_config_error_appears_before_the_heavy_imports(tmp_path):
    """In a fresh process, as a user types it: the error must not wait for torch, MLflow, Optuna or SciPy. Asserted
    by what the process had imported when it gave the error, not by a clock (that would depend on the machine)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(experiment(train="{epochs: 0}"))
    (tmp_path / "data.npz").write_bytes(b"")  # never read: the config error comes first
    heavy = ("torch", "mlflow", "optuna", "scipy", "pandas", "matplotlib")
    script = (
        "import sys, runner\n"
        f"code = runner.main(['sweep', {str(bad)!r}])\n"
        f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=_env_with_root()
    )
    assert done.stderr.startswith("error: train.epochs: 0"), done.stderr
    assert done.stdout.strip() == "2 []", done.stdout


def _env_with_root() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
