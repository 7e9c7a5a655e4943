"""Training-step cost of CBAM-ResNet-50 against plain ResNet-50 (shared/SPEC.md, "The cost that FLOPs hide").

Rows: plain ResNet-50, our CBAM on the default (fast) path, on the reference path, and timm's CBAM (if timm is
installed), each eager and, with --compile, torch.compile'd. One step = forward + cross-entropy + backward + SGD
step. CPU: batch 16, 112 px, float32, all cores. CUDA: batch 64, 224 px, AMP (bf16) + channels_last.
Repetitions are interleaved across models (so load drift hits every row alike), warm-up excluded; medians.
Memory: CUDA max_memory_allocated per step; CPU the bytes of the tensors autograd saves for backward
(saved_tensors_hooks, numel * element_size, each storage counted once).

    python benchmarks/cbam_overhead.py [--reps 7] [--warmup 2] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.models import build_model


def models() -> dict[str, Callable[[], nn.Module] | str]:
    """name -> constructor, or a message why the row is skipped."""
    rows: dict[str, Callable[[], nn.Module] | str] = {
        "plain": lambda: build_model("resnet50", num_classes=1000, attention={"type": "none"}),
        "cbam fast (default)": lambda: build_model("resnet50", num_classes=1000, attention={"type": "cbam"}),
        "cbam reference": lambda: build_model(
            "resnet50", num_classes=1000, attention={"type": "cbam", "impl": "reference"}
        ),
    }
    try:
        import timm

        rows["timm cbam"] = lambda: timm.create_model("resnet50", block_args={"attn_layer": "cbam"})
    except ImportError:
        rows["timm cbam"] = "skipped: timm is not installed (pip install timm)"
    return rows


def saved_bytes(step: Callable[[], None]) -> int:
    """Bytes of the distinct tensors autograd saves during one forward (CPU stand-in for peak training memory)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
        except (RuntimeError, NotImplementedError):
            key = (id(t), 0)
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models (slow to build)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (64 if cuda else 16)
    size = args.size or (224 if cuda else 112)
    if not cuda:
        torch.set_num_threads(torch.get_num_threads() if torch.get_num_threads() > 1 else 1)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, {size} px, "
        f"{'AMP bf16 + channels_last' if cuda else 'float32'}, reps {args.reps} (warm-up {args.warmup}), medians"
    )
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)

    rows = models()
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    steps: dict[tuple[str, str], Callable[[], None]] = {}
    memory: dict[str, int] = {}
    for name, make in rows.items():
        if isinstance(make, str):
            print(f"{name}: {make}")
            continue
        model = make().to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for mode in modes:
            net = torch.compile(model) if mode == "compiled" else model

            def step(net: nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            steps[(name, mode)] = step
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            steps[(name, "eager")]()
            torch.cuda.synchronize()
            memory[name] = torch.cuda.max_memory_allocated()
        else:
            fwd = model

            def forward_only(fwd: nn.Module = fwd) -> None:
                nn.functional.cross_entropy(fwd(x), y)

            memory[name] = saved_bytes(forward_only)

    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for key, step in steps.items():  # warm-up (and compilation) outside the timed repetitions
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if key[1] == "compiled":
            print(f"compiled + warm-up {key[0]}: {time.perf_counter() - t0:.0f} s")
    for _ in range(args.reps):
        for key, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t0)

    what = "peak allocated" if cuda else "autograd-saved"
    print(f"{'model':22s} {'mode':9s} {'step ms':>9s} {'x plain':>8s} {'x timm':>7s} {what + ' MiB':>20s}")
    for (name, mode), ts in times.items():
        med = statistics.median(ts)
        plain = statistics.median(times[("plain", mode)])
        timm_key = ("timm cbam", mode)
        vs_timm = f"{med / statistics.median(times[timm_key]):7.2f}" if timm_key in times else f"{'-':>7s}"
        print(
            f"{name:22s} {mode:9s} {med * 1e3:9.1f} {med / plain:8.2f} {vs_timm} {memory[name] / 2**20:20.1f}"
            f"   (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})"
        )
    print("targets: CBAM step <= 1.10x plain; <= 0.80x timm's CBAM step")


if __name__ == "__main__":
    main()
