"""Training-step cost of CBAM-ResNet-50 against plain ResNet-50 (shared/SPEC.md, "The cost that FLOPs hide").

Rows: plain ResNet-50, our CBAM on the default path (impl="fast": the network set up by
``ablation.attention.accel.accelerate`` as training does, one C++ op per block on CPU), on the straightforward
path (impl="reference": the modules as built), and timm's CBAM (if timm is installed), eager and/or
torch.compile'd (--mode). Compiled, both of our CBAM rows trace the straightforward formulation, which the
compiler fuses with the BN before it and the ReLU after it (an opaque C++ op in the graph measured slower: see the
README); the fast row's spatial conv then runs on the direct C++ kernel.
One step = forward + cross-entropy + backward + SGD step. CPU: batch 16, 112 px, float32, all cores.
CUDA: batch 64, 224 px, AMP (bf16) + channels_last (--precision fp32: float32, contiguous).

Timing: repetitions are interleaved across rows (rep 1 of every row, then rep 2, ...), warm-up excluded. The
"x plain" column is the median over repetitions of (this row's step / plain's step in the same repetition), so
slow drifts of a shared machine cancel; the step column is the plain median.

Memory: peak training memory of each row, measured in a fresh process per row (--memory, on by default):
CUDA torch.cuda.max_memory_allocated over two steps; CPU the growth of the process's peak RSS over two steps
(ru_maxrss after - RSS before the first step; weights and optimiser state exist before). Also, per row, the bytes
of the tensors autograd saves for backward (saved_tensors_hooks, each storage once), the part CBAM changes.

Host malloc: by default the settings training runs with (ablation/engine/host_memory.py: freed memory stays in the
process); --malloc default shows glibc's own behaviour, and the "faults" column the page faults it costs.

    python benchmarks/cbam_overhead.py [--reps 15] [--warmup 2] [--mode eager|compiled|both] [--no-memory]
                                       [--malloc default]
                                       [--size 224] [--order spatial-first]
                                       [--precision auto|fp32|bf16-cl] [--rows plain,cbam-fast] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.attention.accel import accelerate
from ablation.engine.host_memory import keep_freed_memory
from ablation.models import build_model

TIMM_ROW = "timm cbam"
# A row: the network's constructor, and whether it is accelerated (impl=fast) as training sets it up.
Row = tuple[Callable[[], nn.Module], bool]


def models(order: str = "channel-first") -> dict[str, Row | str]:
    """name -> row, or a message why the row is skipped. ``order``: our CBAM rows' arrangement (timm's CBAM is
    channel-first whatever it is)."""
    cbam = {"type": "cbam", "order": order}
    rows: dict[str, Row | str] = {
        "plain": (lambda: build_model("resnet50", num_classes=1000, attention={"type": "none"}), True),
        "cbam fast (default)": (lambda: build_model("resnet50", num_classes=1000, attention=cbam), True),
        "cbam reference": (lambda: build_model("resnet50", num_classes=1000, attention=cbam), False),
    }
    try:
        import timm

        rows[TIMM_ROW] = (lambda: timm.create_model("resnet50", block_args={"attn_layer": "cbam"}), False)
    except ImportError:
        rows[TIMM_ROW] = "skipped: timm is not installed (pip install timm)"
    return rows


# --rows: short names of the rows, for a run that times only some of them (the GPU check compiles two).
ROW_NAMES = {"plain": "plain", "cbam-fast": "cbam fast (default)", "cbam-reference": "cbam reference", "timm": TIMM_ROW}


class Setup:
    """Device, shapes and one batch, the same for every row."""

    def __init__(self, batch: int | None, size: int | None, precision: str = "auto") -> None:
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.batch = batch or (64 if self.cuda else 16)
        self.size = size or (224 if self.cuda else 112)
        # auto: bf16 autocast + channels_last on CUDA (what training does there), float32 contiguous on CPU.
        self.amp = precision == "bf16-cl" or (precision == "auto" and self.cuda)
        self.fmt = torch.channels_last if self.amp else torch.contiguous_format
        torch.manual_seed(0)
        self.x = torch.randn(self.batch, 3, self.size, self.size, device=self.device).to(memory_format=self.fmt)
        self.y = torch.randint(0, 1000, (self.batch,), device=self.device)

    def describe(self) -> str:
        precision = "AMP bf16 + channels_last" if self.amp else "float32"
        return (
            f"device {self.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"batch {self.batch}, {self.size} px, {precision}"
        )

    def model(self, row: Row, compiled: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The row's network on the device, set up as training does (for torch.compile when ``compiled``)."""
        make, accelerated = row
        model = make().to(self.device, memory_format=self.fmt).train()
        if accelerated:
            model = accelerate(model, self.device, compiled=compiled)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step_fn(self, net: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = nn.functional.cross_entropy(net(self.x), self.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def saved_bytes(setup: Setup, model: nn.Module) -> int:
    """Bytes of the distinct tensors autograd saves during one forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
        except (RuntimeError, NotImplementedError):
            key = (id(t), 0)
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.amp):
        nn.functional.cross_entropy(model(setup.x), setup.y)
    return sum(seen.values())


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def set_malloc(mode: str) -> str:
    """Set host malloc: "kept" is what training processes run with (ablation/engine/host_memory.py), "default" glibc's
    own thresholds. Returns the setting, for the header line."""
    return keep_freed_memory() if mode == "kept" else "glibc defaults"


def peak_memory_child(name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: two training steps of one row; print its peak memory growth as JSON."""
    set_malloc(args.malloc)
    setup = Setup(args.batch, args.size, args.precision)
    row = models(args.order)[name]
    assert not isinstance(row, str), row
    model, opt = setup.model(row)
    step = setup.step_fn(model, opt)
    if setup.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = rss_bytes()
        step()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak": peak}))


def peak_memory(name: str, args: argparse.Namespace) -> int | None:
    command = [sys.executable, __file__, "--peak-memory-of", name]
    command += [f"--batch={args.batch}"] if args.batch else []
    command += [f"--size={args.size}"] if args.size else []
    command += [f"--malloc={args.malloc}", f"--order={args.order}", f"--precision={args.precision}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["peak"]
    print(f"peak memory of {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--mode",
        choices=["eager", "compiled", "both"],
        default="eager",
        help="eager models, torch.compile'd ones (slow to build), or both interleaved",
    )
    parser.add_argument("--compile", action="store_true", help="the same as --mode both")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument(
        "--order",
        choices=["channel-first", "spatial-first", "parallel"],
        default="channel-first",
        help="our CBAM rows' arrangement (paper Table 3); timm's row stays channel-first",
    )
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument(
        "--malloc",
        choices=["kept", "default"],
        default="kept",
        help="host malloc: freed memory kept in the process, as training runs (default), or glibc's defaults",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16-cl"],
        default="auto",
        help="auto: bf16 autocast + channels_last on CUDA, float32 on CPU; or either, explicitly",
    )
    parser.add_argument("--rows", default=None, help=f"only these rows, comma-separated: {', '.join(ROW_NAMES)}")
    parser.add_argument("--json", default=None, help="also write the rows' figures to this JSON file")
    parser.add_argument("--peak-memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_of:
        peak_memory_child(args.peak_memory_of, args)
        return

    malloc = set_malloc(args.malloc)
    setup = Setup(args.batch, args.size, args.precision)
    unknown = [r for r in (args.rows or "").split(",") if r.strip() and r.strip() not in ROW_NAMES]
    if unknown:
        parser.error(f"--rows: {unknown[0]!r} is not allowed; allowed: {', '.join(ROW_NAMES)}")
    wanted = None if args.rows is None else {ROW_NAMES[r.strip()] for r in args.rows.split(",") if r.strip()}
    print(
        f"{setup.describe()}, reps {args.reps} (warm-up {args.warmup}), interleaved, host malloc: {malloc}, "
        f"our CBAM {args.order}"
    )
    mode = "both" if args.compile else args.mode
    modes = ["eager", "compiled"] if mode == "both" else [mode]
    steps: dict[tuple[str, str], Callable[[], None]] = {}
    saved: dict[str, int] = {}
    peaks: dict[str, int | None] = {}
    for name, row in models(args.order).items():
        if wanted is not None and name not in wanted:
            continue
        if isinstance(row, str):
            print(f"{name}: {row}")
            continue
        eager = setup.model(row)  # also where the saved-tensor bytes are counted, in every mode
        saved[name] = saved_bytes(setup, eager[0])
        for run_mode in modes:
            # Each mode its own network: an accelerated one is set up for the mode it runs in.
            model, opt = eager if run_mode == "eager" else setup.model(row, compiled=True)
            # dynamic=False: every row compiled for its static shapes, as training compiles them. Should a graph
            # break ever split the blocks into frames of their own, dynamo's automatic dynamic shapes would
            # otherwise recompile later blocks for symbolic shapes (seen while developing: slower code, and on
            # this PyTorch a failing backward compilation); whole-model graphs were static either way.
            net = torch.compile(model, dynamic=False) if run_mode == "compiled" else model
            steps[(name, run_mode)] = setup.step_fn(net, opt)
        peaks[name] = peak_memory(name, args) if args.memory else None

    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    faults: dict[tuple[str, str], list[int]] = {key: [] for key in steps}
    for key, step in steps.items():  # warm-up (and compilation) outside the timed repetitions
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if key[1] == "compiled":
            print(f"compiled + warm-up {key[0]}: {time.perf_counter() - t0:.0f} s")
    for _ in range(args.reps):
        for key, step in steps.items():
            setup.sync()
            f0, t0 = minor_faults(), time.perf_counter()
            step()
            setup.sync()
            times[key].append(time.perf_counter() - t0)
            faults[key].append(minor_faults() - f0)

    def paired(key: tuple[str, str], base: tuple[str, str]) -> str:
        if base not in times:
            return f"{'-':>7s}"
        return f"{statistics.median(a / b for a, b in zip(times[key], times[base], strict=True)):7.3f}"

    if args.json:
        rows_out = [
            {
                "model": name,
                "mode": mode,
                "step_ms": statistics.median(ts) * 1e3,
                "x_plain": float(paired((name, mode), ("plain", mode))) if ("plain", mode) in times else None,
                "img_per_s": setup.batch / statistics.median(ts),
                "peak_mib": peaks.get(name) / 2**20 if peaks.get(name) is not None else None,
            }
            for (name, mode), ts in times.items()
        ]
        Path(args.json).write_text(json.dumps({"setup": setup.describe(), "rows": rows_out}, indent=1))
    print(
        f"{'model':20s} {'mode':8s} {'step ms':>8s} {'x plain':>7s} {'x timm':>7s} "
        f"{'peak MiB':>9s} {'saved MiB':>9s} {'faults':>7s}   step ms min / max"
    )
    for (name, mode), ts in times.items():
        peak = peaks.get(name)
        peak_text = f"{peak / 2**20:9.0f}" if peak is not None else f"{'-':>9s}"
        print(
            f"{name:20s} {mode:8s} {statistics.median(ts) * 1e3:8.1f} {paired((name, mode), ('plain', mode))} "
            f"{paired((name, mode), (TIMM_ROW, mode))} {peak_text} {saved[name] / 2**20:9.0f}"
            f" {statistics.median(faults[(name, mode)]):7.0f}"
            f"   {min(ts) * 1e3:.0f} / {max(ts) * 1e3:.0f}"
        )
    what = "CUDA max allocated" if setup.cuda else "peak RSS growth"
    print(f"peak = {what} over two steps in a fresh process; saved = tensors autograd keeps for backward")
    print("faults = minor page faults per step (host memory handed back to the kernel and faulted in again)")
    print("targets: CBAM step <= 1.10x plain in the same mode; <= 0.80x timm's CBAM step")


if __name__ == "__main__":
    main()
