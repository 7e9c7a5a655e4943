#!/usr/bin/env python
"""One prepared check of every CUDA path of the harness, to run in one go when a GPU machine is lent (minutes).

Parts (each bounded in time; a part that fails or runs out of time is reported and the next one runs):

1. ``variants``: every CBAM variant (channel pooling subsets, kernels 1/3/7, the five arrangements and the parallel
   sum-of-logits merge, the 1x1 conv descriptor), SE and ECA, in the reference and the fast implementation, in
   float32 and under bf16 autocast, in training mode: output, input gradient and parameter gradients on CUDA
   against the float64 CPU reference of the same module (same weights, randomised first, BN running statistics
   too), with the tolerances ``TOLERANCE`` states (relative to the largest magnitude of each tensor).
2. ``overhead``: ``benchmarks/cbam_overhead.py`` on CUDA (ResNet-50, 224 px, batch 64): plain, CBAM fast, CBAM
   reference and timm's CBAM where installed; eager float32, eager bf16 + channels_last, and compiled (bf16 +
   channels_last; plain and CBAM fast only, compiling is minutes): each row's step, ratio to plain, images/s.
3. ``sweep``: the demo grid for 2 epochs as ``ablation sweep --device cuda --workers auto``, then again (new
   stores) with ``--jobs-per-gpu 2``: every cell finishes, which cells ran at the same time on the device (from
   their runs' recorded device tag and start / end times), and the per-cell figures.
4. ``ddp``: one cell with ``--gpus-per-job 2`` (a torchrun launch, NCCL) where the machine has two or more GPUs;
   with one GPU it says so and skips only this part.
5. ``loader``: a generated ImageFolder of JPEGs (ImageNet-like sizes) read by the training loader (decode,
   RandomResizedCrop 224, flip, to the device) with 0, 2, 4, ... workers, next to the GPU's ResNet-50 training rate
   from part 2: whether a real ImageNet ablation would be loader-bound, and how many loader workers per GPU it needs.

Writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (the summary, printed too) into ``--out``. Without CUDA
it refuses in one line (exit code 2); ``--dry-run`` runs its CPU-side pieces instead (argument parsing, the generated
ImageFolder and the loader's CPU rate, the report), which CI does so that the check cannot rot.

    python benchmarks/gpu_check.py [--out results/gpu_check] [--budget-s 480] [--parts variants,overhead,...]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

PARTS = ("variants", "overhead", "sweep", "ddp", "loader")
# Seconds of the budget each part may take at most (scaled down when --budget-s is smaller than their sum).
SHARE = {"variants": 60, "overhead": 210, "sweep": 120, "ddp": 60, "loader": 45}
# The largest |device - cpu float64| allowed, relative to the largest |float64 value| of the tensor. float32: every
# tensor (output, input gradient, parameter gradients) within 5e-4 (float32 rounds at ~6e-8, the gates' reductions
# add a few thousand terms and a parameter's gradient can cancel to a small fraction of its terms; with TF32 off, as
# the check sets it: TF32's 10-bit mantissa would be bf16-like). bf16 autocast keeps 8 bits of mantissa (~4e-3 per
# rounding) in the MLP and the conv: the output within 5e-2; gradients, which sum thousands of such products and
# cancel, are held to the straightforward formulation's own bf16 error instead: the fast path's error at most twice
# the reference path's, plus 1e-2.
TOLERANCE = {"float32": 5e-4, "bf16": 5e-2}
BF16_GRADIENTS = (2.0, 1e-2)  # (factor over the reference path's bf16 error, absolute slack)


@dataclass
class Part:
    name: str
    status: str = "skipped"  # ok, failed, skipped, timed out
    summary: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


# ---- 1. variants


def variants() -> list[tuple[str, dict[str, Any]]]:
    """(label, attention options) for every variant the check runs."""
    cbam: list[tuple[str, dict[str, Any]]] = []
    for pools in (["avg"], ["max"], ["avg", "max"], ["avg", "max", "lp"], ["lse"]):
        cbam.append((f"cbam pools {'+'.join(pools)}", {"channel_pool": pools}))
    for kernel in (1, 3, 7):
        cbam.append((f"cbam k={kernel}", {"kernel_size": kernel}))
    for order in ("channel-first", "spatial-first", "parallel", "channel-only", "spatial-only"):
        cbam.append((f"cbam {order}", {"order": order}))
    cbam.append(("cbam parallel sum-logits", {"order": "parallel", "parallel_combine": "sum-logits"}))
    cbam.append(("cbam conv descriptor", {"spatial": "conv"}))
    conv_first = {"spatial": "conv", "order": "spatial-first", "kernel_size": 3}
    cbam.append(("cbam conv descriptor spatial-first k=3", conv_first))
    out = [(label, {"type": "cbam", "reduction": 4, **options}) for label, options in cbam]
    return [*out, ("se", {"type": "se", "reduction": 4}), ("eca", {"type": "eca"})]


def _randomise(module) -> None:
    """Every parameter and BN running statistic random: with the official init the spatial BN weight is 0, which
    would hide the whole spatial branch (the gate is then the constant 0.5)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            # Weights at the scale of a trained layer (1 / sqrt(fan-in)): larger ones saturate the sigmoids, and
            # their gradients then cancel to nothing that any precision could resolve.
            scale = 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=generator, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=generator, dtype=b.dtype) * 0.1)


def _forward_backward(module, x, grad):
    """Output, input gradient and parameter gradients of one training-mode step (``grad`` on the output)."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out.float() * grad).sum().backward()
    return out.detach(), x.grad.detach(), [p.grad.detach() for p in module.parameters()]


def _relative(got, expected) -> float:
    """max |got - expected| over max |expected|: a tensor's error relative to its own scale."""
    scale = max(expected.abs().max().item(), 1e-12)
    return (got.double().cpu() - expected).abs().max().item() / scale if got.numel() else 0.0


def check_variants(device: str, quick: bool = False) -> Part:
    import torch

    from ablation.attention import build_attention
    from ablation.attention.accel import accelerate

    part, worst, failures = Part("variants"), {"float32": 0.0, "bf16": 0.0}, []
    rows = []
    # float32 means float32: CUDA would otherwise run the convs (and matmuls) in TF32 by default.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    chosen = variants()
    if quick:  # one of each kind: the default CBAM, a single pooling, a conv descriptor, SE, ECA
        kept = ("cbam pools avg+max", "cbam pools lse", "cbam conv descriptor", "se", "eca")
        chosen = [(label, options) for label, options in chosen if label in kept]
    for label, options in chosen:
        torch.manual_seed(0)
        reference = build_attention(options, 32).double().train()
        _randomise(reference)
        x = torch.randn(4, 32, 14, 18, dtype=torch.float64)  # H != W catches a transposed pool or conv
        grad = torch.randn(4, 32, 14, 18, dtype=torch.float64)
        expected = _forward_backward(copy.deepcopy(reference), x, grad)
        errors_of: dict[tuple[str, str], list[float]] = {}
        for impl in ("reference", "fast"):
            for precision in ("float32", "bf16"):
                module = copy.deepcopy(reference).float().to(device)
                if impl == "fast":
                    module = accelerate(module, device)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    got = _forward_backward(module, x.float().to(device), grad.float().to(device))
                errors = [_relative(got[0], expected[0]), _relative(got[1], expected[1])]
                errors += [_relative(g, e) for g, e in zip(got[2], expected[2], strict=True)]
                errors_of[(impl, precision)] = errors
        for (impl, precision), errors in errors_of.items():
            if precision == "float32":
                ok, error = max(errors) <= TOLERANCE["float32"], max(errors)
            else:  # the output against float64; each gradient against the reference path's own bf16 error
                factor, slack = BF16_GRADIENTS
                bound = [factor * e + slack for e in errors_of[("reference", "bf16")][1:]]
                ok = errors[0] <= TOLERANCE["bf16"] and all(e <= b for e, b in zip(errors[1:], bound, strict=True))
                error = errors[0]
            worst[precision] = max(worst[precision], error)
            row = {"variant": label, "impl": impl, "precision": precision, "max_rel_error": error, "ok": ok}
            row["gradient_errors"] = errors[1:]
            rows.append(row)
            if not ok:
                failures.append(f"{label} {impl} {precision}: output {errors[0]:.2e}, gradients {max(errors[1:]):.2e}")
    part.details = {"tolerance": TOLERANCE, "rows": rows}
    part.status = "failed" if failures else "ok"
    part.summary = (
        f"{len(rows)} checks ({len(chosen)} variants x fast/reference x float32/bf16), worst relative error "
        f"float32 {worst['float32']:.1e} (tolerance {TOLERANCE['float32']:g}), bf16 output {worst['bf16']:.1e} "
        f"(tolerance {TOLERANCE['bf16']:g}; gradients within {BF16_GRADIENTS[0]:g}x the reference path's bf16 error "
        f"+ {BF16_GRADIENTS[1]:g})" + (f"; FAILED: {'; '.join(failures[:5])}" if failures else "")
    )
    return part


# ---- 2. overhead


def check_overhead(out: Path, timeout_s: float) -> Part:
    part = Part("overhead")
    runs = {
        "eager float32": ["--mode", "eager", "--precision", "fp32"],
        "eager bf16 + channels_last": ["--mode", "eager", "--precision", "bf16-cl"],
        "compiled bf16 + channels_last": ["--mode", "compiled", "--precision", "bf16-cl", "--rows", "plain,cbam-fast"],
    }
    began, rows, problems = time.monotonic(), [], []
    for label, extra in runs.items():
        left = timeout_s - (time.monotonic() - began)
        if left < 20:
            problems.append(f"{label}: no time left")
            continue
        path = out / f"overhead-{label.split()[0]}-{extra[-1].replace(',', '-')}.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "cbam_overhead.py"), "--reps", "8", "--warmup", "2"]
        command += ["--no-memory", "--json", str(path), *extra]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            problems.append(f"{label}: timed out")
            continue
        (out / f"{path.stem}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not path.exists():
            problems.append(f"{label}: exit code {done.returncode}")
            continue
        for row in json.loads(path.read_text())["rows"]:
            rows.append({"run": label, **row})
    part.details = {"rows": rows, "problems": problems}
    part.status = "ok" if rows and not problems else ("failed" if not rows else "partial")
    cbam = [r for r in rows if r["model"] == "cbam fast (default)"]
    part.summary = "; ".join(
        f"{r['run']}: CBAM fast {r['x_plain']:.3f}x plain, {r['img_per_s']:.0f} img/s" for r in cbam if r["x_plain"]
    ) + (f"; problems: {'; '.join(problems)}" if problems else "")
    return part


def training_rate(overhead: Part) -> float | None:
    """The GPU's training images/s for plain ResNet-50 under bf16 + channels_last (what ImageNet training runs)."""
    for row in overhead.details.get("rows", []):
        if row["model"] == "plain" and row["run"] == "eager bf16 + channels_last":
            return row["img_per_s"]
    return None


# ---- 3. sweep and 4. ddp


def _sweep(folder: Path, experiment: str, extra: list[str], timeout_s: float) -> tuple[int, str]:
    command = [sys.executable, "-m", "ablation", "sweep", experiment, "--device", "cuda", "--no-progress"]
    command += ["--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--storage", f"sqlite:///{folder}/sweeps.db"]
    command += ["--checkpoint-dir", str(folder / "checkpoints"), *extra]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        return 124, (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc)
    return done.returncode, done.stdout + done.stderr


def cell_runs(folder: Path, name: str) -> list[dict[str, Any]]:
    """Each cell run of experiment ``name`` in the folder's store: device, start and end (s), its figures."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    found = client.get_experiment_by_name(name)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], "tags.`ablation.role` = 'cell'")
    return [
        {
            "cell": run.info.run_name,
            "status": run.info.status,
            "device": run.data.tags.get("ablation.device", ""),
            "start_s": run.info.start_time / 1000,
            "end_s": (run.info.end_time or run.info.start_time) / 1000,
            "train_time_s": run.data.metrics.get("final/train_time_s"),
            "img_per_s": run.data.metrics.get("throughput/img_per_s"),
            "top1_err": run.data.metrics.get("final/top1_err_last"),
        }
        for run in runs
    ]


def most_at_once(cells: list[dict[str, Any]]) -> int:
    """The largest number of cells whose runs were open at the same moment."""
    events = sorted([(c["start_s"], 1) for c in cells] + [(c["end_s"], -1) for c in cells])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def check_sweep(out: Path, timeout_s: float) -> Part:
    part = Part("sweep")
    began, results, problems = time.monotonic(), {}, []
    runs = {"--workers auto": ["--workers", "auto"], "--jobs-per-gpu 2": ["--workers", "auto", "--jobs-per-gpu", "2"]}
    for label, extra in runs.items():
        left = timeout_s - (time.monotonic() - began)
        folder = out / f"sweep-{extra[-1]}"
        code, log = _sweep(folder, "demo", ["--set", "train.epochs=2", *extra], max(left, 1))
        (out / f"sweep-{extra[-1]}.log").write_text(log)
        cells = cell_runs(folder, "demo")
        finished = sum(c["status"] == "FINISHED" for c in cells)
        results[label] = {
            "exit_code": code,
            "finished": finished,
            "at_once": most_at_once(cells),
            "devices": sorted({c["device"] for c in cells}),
            "cells": cells,
        }
        if code != 0 or finished != 5:
            problems.append(f"{label}: exit code {code}, {finished}/5 cells finished")
        if extra[-1] == "2" and results[label]["at_once"] < 2:
            problems.append(f"{label}: the cells never ran two at a time")
    part.details = results
    part.status = "failed" if problems else "ok"
    part.summary = "; ".join(
        f"{label}: {r['finished']}/5 cells on {','.join(r['devices']) or '-'}, at most {r['at_once']} at once"
        for label, r in results.items()
    ) + (f"; FAILED: {'; '.join(problems)}" if problems else "")
    return part


def check_ddp(out: Path, timeout_s: float, gpus: int) -> Part:
    part = Part("ddp")
    if gpus < 2:
        part.summary = f"skipped: this machine has {gpus} GPU; DDP through torchrun with NCCL needs two or more"
        return part
    folder = out / "ddp"
    experiment = folder / "ddp.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    demo = (ROOT / "experiments" / "demo.yaml").read_text()
    demo = demo.replace("[{type: none}, {type: se}]", "[{type: cbam}]").replace(
        "[channel-first, spatial-first, parallel]", "[channel-first]"
    )
    experiment.write_text("name: ddp\n" + demo)
    code, log = _sweep(folder, str(experiment), ["--set", "train.epochs=2", "--gpus-per-job", "2"], timeout_s)
    (out / "ddp.log").write_text(log)
    cells = cell_runs(folder, "ddp")
    ok = code == 0 and [c["status"] for c in cells] == ["FINISHED"]
    part.status, part.details = ("ok" if ok else "failed"), {"exit_code": code, "cells": cells}
    part.summary = f"one cell on 2 GPUs (torchrun, NCCL): exit code {code}, runs {[c['status'] for c in cells]}"
    return part


# ---- 5. loader


def make_image_folder(root: Path, images: int = 400, classes: int = 8, seed: int = 0) -> Path:
    """An ImageFolder of JPEGs with ImageNet's typical sizes (about 400 x 350 px, quality 90): smooth colour
    gradients with noise, which compress and decode like photographs rather than like pure noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(images):
        folder = root / "train" / f"class{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = int(rng.integers(300, 420)), int(rng.integers(340, 500))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, size=3).astype(np.float32)
        slope = rng.uniform(-0.4, 0.4, size=(2, 3)).astype(np.float32)
        image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1] + rng.normal(0, 12, (height, width, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{index:05d}.jpg", quality=90)
    (root / "val").mkdir(exist_ok=True)
    return root


def loader_rate(root: Path, workers: int, device: str, batches: int = 6, batch_size: int = 64) -> float:
    """Images/s of the training loader (decode + RandomResizedCrop 224 + flip + to the device), after a warm-up
    batch (worker start-up excluded, as an epoch's steady state)."""
    import torch

    from ablation.data.loaders import FolderLoader

    loader = FolderLoader(
        root, train=True, batch_size=batch_size, image_size=224, seed=0, device=torch.device(device), workers=workers
    )
    seen, began = 0, None
    for index, (images, _) in enumerate(loader):
        if index == 0:
            if device == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            continue
        seen += images.shape[0]
        if index >= batches:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - began)


def check_loader(out: Path, timeout_s: float, device: str, gpu_rate: float | None, images: int = 400) -> Part:
    part = Part("loader")
    began = time.monotonic()
    root = make_image_folder(Path(tempfile.mkdtemp(prefix="gpu-check-images-", dir=out)), images)
    cores = os.cpu_count() or 1
    counts = [0, *[k for k in (2, 4, 8, 16, 32) if k <= cores]]
    rates: dict[int, float] = {}
    try:
        for workers in counts:
            if time.monotonic() - began > timeout_s * 0.8:
                break
            rates[workers] = loader_rate(root, workers, device)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # ~20 MB of generated JPEGs: not part of the report
    best = max(rates.values())
    part.details = {"images": images, "cores": cores, "rates": rates, "gpu_rate": gpu_rate}
    part.status = "ok"
    text = ", ".join(f"{k} workers {v:.0f} img/s" for k, v in rates.items())
    if gpu_rate:
        enough = next((k for k, v in rates.items() if v >= 1.2 * gpu_rate), None)
        per_worker = max((v / k for k, v in rates.items() if k), default=0.0)
        need = (gpu_rate * 1.2 / per_worker) if per_worker else float("inf")
        verdict = (
            f"{enough} loader workers per GPU keep up (>= 1.2x the GPU's {gpu_rate:.0f} img/s)"
            if enough is not None
            else f"loader-bound on this machine: the best, {best:.0f} img/s, is below the GPU's {gpu_rate:.0f} img/s; "
            f"about {need:.0f} workers' worth of cores (or GPU decoding, DALI) would keep up"
        )
        part.details["verdict"] = verdict
        part.summary = f"{text}; ResNet-50 bf16 trains {gpu_rate:.0f} img/s: {verdict}"
    else:
        part.summary = f"{text}; no GPU training rate to compare with"
    return part


# ---- the report


def write_report(out: Path, environment: dict[str, Any], parts: list[Part]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {"environment": environment, "parts": [asdict(p) for p in parts]}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(data, indent=1, default=str))
    lines = [
        "# GPU check",
        "",
        f"{environment.get('device', '?')}; torch {environment.get('torch')}, CUDA {environment.get('cuda')}; "
        f"{environment.get('date')}",
        "",
        "| part | status | seconds | summary |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {p.name} | {p.status} | {p.seconds:.0f} | {p.summary} |" for p in parts]
    md_path = out / "gpu_check.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def environment(device: str) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores), dry run",
        "cores": os.cpu_count(),
    }


class _OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line (no usage block), as everywhere in the harness."""

    def error(self, message: str) -> None:
        print(f"error: {message.removeprefix('argument ')}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu_check"), help="report folder")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for all parts together (480)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--dry-run", action="store_true", help="no CUDA: the CPU-side pieces only (CI)")
    parser.add_argument(
        "--quick", action="store_true", help="a sample of the variants and a small ImageFolder (CI's dry run)"
    )
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown or not wanted:
        parser.error(f"--parts: {(unknown or [''])[0]!r} is not allowed; allowed: {', '.join(PARTS)}")
    if args.budget_s < 30:
        parser.error(f"--budget-s: {args.budget_s:g} is not allowed; allowed: a number of seconds >= 30")
    args.parts = wanted
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "error: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or pass "
            "--dry-run for its CPU-side pieces",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    env = environment(device)
    scale = min(1.0, args.budget_s / sum(SHARE[p] for p in args.parts))
    checks: dict[str, Callable[[float], Part]] = {
        "variants": lambda t: check_variants(device, quick=args.quick),
        "overhead": lambda t: check_overhead(out, t),
        "sweep": lambda t: check_sweep(out, t),
        "ddp": lambda t: check_ddp(out, t, env["gpus"]),
        "loader": lambda t: check_loader(
            out, t, device, training_rate(done.get("overhead", Part("overhead"))), images=128 if args.quick else 400
        ),
    }
    done: dict[str, Part] = {}
    for name in args.parts:
        if not cuda and name not in ("variants", "loader"):  # the parts that mean something on a CPU too
            done[name] = Part(name, summary="skipped: dry run (no CUDA)")
            continue
        began = time.monotonic()
        try:
            part = checks[name](SHARE[name] * scale)
        except Exception as exc:  # one part's failure is reported, the next part still runs
            part = Part(name, "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        part.seconds = time.monotonic() - began
        done[name] = part
        print(f"[gpu-check] {name}: {part.status} ({part.seconds:.0f} s): {part.summary}", flush=True)
    json_path, md_path = write_report(out, env, list(done.values()))
    print(md_path.read_text())
    print(f"written: {json_path}, {md_path}")
    return 0 if all(p.status in ("ok", "skipped") for p in done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
