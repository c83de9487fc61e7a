"""How fast can an fp32 training step get? A ceiling for the ratio to torchvision's eager step.

For one model (default resnet18, batch 64, 224 px) this measures, interleaved in one run by
``cnnlab.timing.interleave``: torchvision's eager NCHW training step, cnnlab's channels-last
step (the default of ``cnnlab train``) and an fp32 matmul (``--matmul`` cubed) on the same
threads. It then counts the step's convolution FLOPs (``torch.utils.flop_counter``:
forward, grad-input and grad-weight) and profiles one channels-last step
(``torch.profiler``) for the time spent inside the convolutions. Printed:

* the two step times and their ratio;
* the convolutions' FLOPs, their measured GFLOP/s and the matmul's (the best dense fp32 rate
  these cores reach);
* two ceilings for torchvision's step time over any fp32 step that computes the same thing:
  "everything but the convolutions free" (eager / convolution time as measured) and
  "convolutions at the matmul's rate and nothing else" (eager / (FLOPs / matmul rate)).

    .venv/bin/python benchmarks/train_bound.py [--model resnet18] [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnlab
from cnnlab.deploy import torchvision_model, training_step
from cnnlab.interop import from_torchvision
from cnnlab.timing import Contender, interleave

BATCH = 64
CONV_OPS = ("convolution", "conv2d")


def matmul(n: int):
    """One fp32 n x n x n matmul, and its FLOPs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2 * n**3


def conv_flops(step) -> int:
    """FLOPs of the convolutions (forward and both backward products) in one call of step."""
    with FlopCounterMode(display=False) as counter:
        step()
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if any(c in str(op) for c in CONV_OPS))


def conv_seconds(step, calls: int = 2) -> float:
    """Median seconds per call of step spent in convolution operators (self time)."""
    times = []
    for _ in range(calls):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        times.append(sum(e.self_cpu_time_total for e in prof.key_averages()
                         if any(c in e.key for c in CONV_OPS)) / 1e6)  # fmt: skip
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    tv = torchvision_model(args.model, num_classes=10)
    ours = cnnlab.create_model(args.model, num_classes=10)
    ours.load_state_dict(from_torchvision(args.model, tv.state_dict()))
    ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 3, args.size, args.size)
    eager = training_step(tv, x)
    channels_last = training_step(copy.deepcopy(ours), x)
    mm, mm_flops = matmul(args.matmul)
    timing = interleave([Contender("torchvision eager", eager),
                         Contender("cnnlab channels-last", channels_last),
                         Contender("matmul", mm)], args.repeats, warmup=2)  # fmt: skip
    t_eager, t_cl = timing.median("torchvision eager"), timing.median("cnnlab channels-last")
    peak = mm_flops / timing.median("matmul")
    flops = conv_flops(channels_last)
    t_conv = conv_seconds(channels_last)
    print(f"{args.model}, batch {BATCH}, {args.size} px, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; rounds {timing.kept}/{timing.rounds}, "
          f"other cores {timing.other_cores or 0:.2f}")  # fmt: skip
    print(f"torchvision eager step      {t_eager * 1e3:9,.0f} ms")
    print(f"cnnlab channels-last step   {t_cl * 1e3:9,.0f} ms   {t_eager / t_cl:.2f}x")
    print(f"convolution FLOPs per step  {flops / 1e9:9,.1f} GFLOP")
    print(
        f"convolutions (profiled)     {t_conv * 1e3:9,.0f} ms   "
        f"{flops / t_conv / 1e9:6.1f} GFLOP/s ({t_conv / t_cl:.0%} of the channels-last step)"
    )
    print(f"fp32 matmul {args.matmul}^3           {peak / 1e9:9.1f} GFLOP/s")
    print(f"ceiling, all but convolutions free:        {t_eager / t_conv:.2f}x")
    print(f"ceiling, convolutions at the matmul rate:  {t_eager / (flops / peak):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
