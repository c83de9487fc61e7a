"""How fast can an fp32 training step get? A ceiling for the ratio to torchvision's eager step.

For one model (default resnet18, batch 64, 224 px) this measures, interleaved in one run by
``cnnlab.timing.interleave``: torchvision's eager NCHW training step in a process of its own
with glibc's default allocator (``train_speed.OwnProcess``: the baseline of
``benchmarks/train_speed.py``), cnnlab's channels-last step in this process with freed memory
kept for reuse (the defaults of ``cnnlab train``), an fp32 matmul (``--matmul`` cubed) and a
256 MiB fp32 add on the same threads. It then counts the step's convolution FLOPs
(``torch.utils.flop_counter``: forward, grad-input and grad-weight) and the BatchNorm
outputs' bytes, and profiles one channels-last step (``torch.profiler``) for the time spent
inside the convolutions. Printed:

* the two step times and their ratio;
* the convolutions' FLOPs, their measured GFLOP/s and the matmul's (the best dense fp32 rate
  these cores reach), and the time the step spends outside them;
* the memory bandwidth (the add's bytes read and written per second) and the least time the
  BatchNorm + ReLU passes could take: 8 passes over every BatchNorm output (forward: read
  for the statistics, read and write to normalise; backward: read the gradient and the
  output for the sums, read both again and write the input's gradient), ReLU fused in;
* three ceilings for the baseline's step time over any fp32 step that computes the same
  thing: everything but the convolutions free; the convolutions as measured and BatchNorm +
  ReLU at that floor (everything else free); convolutions at the matmul's rate and nothing
  else.

    .venv/bin/python benchmarks/train_bound.py [--model resnet18] [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode
from train_speed import OwnProcess

import cnnlab
from cnnlab.deploy import torchvision_model, training_step
from cnnlab.devices import reuse_freed_memory
from cnnlab.interop import from_torchvision
from cnnlab.timing import Contender, interleave

BN_PASSES = 8  # passes over a BatchNorm output in one training step, ReLU fused (above)

BATCH = 64
ADD_SIZE = 2**26  # values in each operand of the bandwidth probe (256 MiB)
CONV_OPS = ("convolution", "conv2d")


def matmul(n: int):
    """One fp32 n x n x n matmul, and its FLOPs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2 * n**3


def add():
    """One fp32 add of ADD_SIZE values, and the bytes it reads and writes."""
    a, b, c = torch.randn(ADD_SIZE), torch.randn(ADD_SIZE), torch.empty(ADD_SIZE)
    return (lambda: torch.add(a, b, out=c)), 3 * ADD_SIZE * 4


def batchnorm_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of all the BatchNorm layers' outputs in one forward pass of ``model`` on ``x``."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.nbytes))
             for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # fmt: skip
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return sum(sizes)


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
    reuse = reuse_freed_memory()
    torch.manual_seed(0)
    tv = torchvision_model(args.model, num_classes=10)
    ours = cnnlab.create_model(args.model, num_classes=10)
    ours.load_state_dict(from_torchvision(args.model, tv.state_dict()))
    ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 3, args.size, args.size)
    channels_last = training_step(copy.deepcopy(ours), x)
    (mm, mm_flops), (plus, plus_bytes) = matmul(args.matmul), add()
    baseline = OwnProcess(args.model, tv, x)
    timing = interleave([baseline, Contender("cnnlab channels-last", channels_last),
                         Contender("matmul", mm), Contender("add", plus)], args.repeats,
                        warmup=2)  # fmt: skip
    baseline.close()
    t_base, t_cl = timing.median(baseline.name), timing.median("cnnlab channels-last")
    peak, bandwidth = mm_flops / timing.median("matmul"), plus_bytes / timing.median("add")
    flops, t_conv = conv_flops(channels_last), conv_seconds(channels_last)
    bn_floor = BN_PASSES * batchnorm_bytes(ours, x) / bandwidth
    print(f"{args.model}, batch {BATCH}, {args.size} px, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, freed memory {'reused' if reuse else 'returned'}; "
          f"rounds {timing.kept}/{timing.rounds}, "
          f"other cores {timing.other_cores or 0:.2f}")  # fmt: skip
    print(f"torchvision eager step (own process)  {t_base * 1e3:9,.0f} ms")
    print(f"cnnlab channels-last step             {t_cl * 1e3:9,.0f} ms   {t_base / t_cl:.2f}x")
    print(f"convolution FLOPs per step            {flops / 1e9:9,.1f} GFLOP")
    print(
        f"convolutions (profiled)               {t_conv * 1e3:9,.0f} ms   "
        f"{flops / t_conv / 1e9:6.1f} GFLOP/s ({t_conv / t_cl:.0%} of the channels-last step)"
    )
    print(f"outside the convolutions              {(t_cl - t_conv) * 1e3:9,.0f} ms")
    print(f"fp32 matmul {args.matmul}^3                     {peak / 1e9:9.1f} GFLOP/s")
    print(f"memory bandwidth (fp32 add)           {bandwidth / 1e9:9.1f} GB/s")
    print(f"BatchNorm + ReLU at that bandwidth    {bn_floor * 1e3:9,.0f} ms")
    print(f"ceiling, all but convolutions free:                    {t_base / t_conv:.2f}x")
    print(f"ceiling, convolutions + BatchNorm/ReLU at bandwidth:   "
          f"{t_base / (t_conv + bn_floor):.2f}x")  # fmt: skip
    print(f"ceiling, convolutions at the matmul rate:              {t_base / (flops / peak):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
