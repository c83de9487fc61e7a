"""Where a training step's convolution time goes: forward, grad-input and grad-weight, per layer.

For each distinct convolution of a model (default resnet18, batch 64, 224 px; found by
forward hooks), this times the three passes of its training step (``aten.convolution`` and
``aten.convolution_backward`` with one output asked for at a time) in channels-last and in
NCHW, interleaved by ``cnnlab.timing.interleave`` with an fp32 matmul (``--matmul`` cubed, the
best dense fp32 rate these cores reach). The first convolution's grad-input is left out: its
input needs no gradient, so a step never computes it. For ungrouped convolutions the weight
gradient is also timed another way, "grad-weight swapped": as a forward convolution of the
input with batch and channels swapped, the output gradient as its kernel (the transposes'
copies counted), checked against oneDNN's. Printed: per layer and pass, the milliseconds in
each layout and the GFLOP/s; then the whole step's convolution time per pass, summed over the
layers (times their count), in channels-last, in NCHW and with each layer in its faster layout
(conversions not counted), with oneDNN's grad-weight and with the faster of the two ways.

    .venv/bin/python benchmarks/conv_grads.py [--model resnet18] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from train_bound import matmul

import cnnlab
from cnnlab.devices import reuse_freed_memory
from cnnlab.tables import format_table
from cnnlab.timing import Contender, Timing, interleave

BATCH = 64
ONEDNN_PASSES = ("forward", "grad-input", "grad-weight")
PASSES = (*ONEDNN_PASSES, "grad-weight swapped")
COLUMNS = ("channels-last", "NCHW", "each layer's faster")
FASTER_GRAD_WEIGHT = "grad-weight, the faster way"  # oneDNN's or swapped, per layer
LAYOUTS = {"channels-last": torch.channels_last, "NCHW": torch.contiguous_format}


def convolutions(model: torch.nn.Module, x: torch.Tensor) -> Counter:
    """Each distinct convolution as (input shape, weight shape, stride, padding, dilation,
    groups, whether its input needs a gradient), with how many times a forward pass runs it."""
    found: Counter = Counter()

    def record(conv: torch.nn.Conv2d, args: tuple) -> None:
        found[(tuple(args[0].shape), tuple(conv.weight.shape), conv.stride, conv.padding,
               conv.dilation, conv.groups, args[0].requires_grad)] += 1  # fmt: skip

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    model(x)  # with autograd on, as in a step: only the model's input needs no gradient
    for hook in hooks:
        hook.remove()
    return found


def passes(key: tuple, layout: torch.memory_format) -> tuple[dict[str, Callable], int]:
    """The step's passes of one convolution, as calls on random tensors in ``layout``, and
    the FLOPs of each pass (the three do the same)."""
    in_shape, w_shape, stride, padding, dilation, groups, _ = key
    x = torch.randn(in_shape).contiguous(memory_format=layout)
    w = torch.randn(w_shape).contiguous(memory_format=layout)
    y = torch.conv2d(x, w, None, stride, padding, dilation, groups)
    grad = torch.randn_like(y)
    args = (list(stride), list(padding), list(dilation), False, [0, 0], groups)

    def backward(mask: list[bool]) -> Callable:
        return lambda: torch.ops.aten.convolution_backward(grad, x, w, None, *args, mask)

    def swapped() -> torch.Tensor:
        """grad-weight as a forward convolution: batch and channels swapped, the gradient as
        the kernel, the stride as its dilation (and the dilation as its stride)."""
        xt = x.transpose(0, 1).contiguous(memory_format=layout)
        gt = grad.transpose(0, 1).contiguous(memory_format=layout)
        out = torch.conv2d(xt, gt, None, dilation, padding, stride)
        return out[..., : w_shape[2], : w_shape[3]].transpose(0, 1)

    calls = {
        "forward": lambda: torch.conv2d(x, w, None, stride, padding, dilation, groups),
        "grad-input": backward([True, False, False]),
        "grad-weight": backward([False, True, False]),
    }
    if groups == 1:
        reference = calls["grad-weight"]()[1]  # sums of many products: compare to their scale
        assert (swapped() - reference).abs().max() <= 1e-4 * reference.abs().max()
        calls["grad-weight swapped"] = swapped
    return calls, 2 * y.numel() * w[0].numel()


def per_column(timing: Timing, names: list[str]) -> dict[str, float]:
    """The seconds of the fastest of ``names`` (ways to run one pass), in each layout and in
    the faster of the two; 0 where ``names`` is empty."""
    cl = min((timing.median(f"{n} channels-last") for n in names), default=0.0)
    nchw = min((timing.median(f"{n} NCHW") for n in names), default=0.0)
    return dict(zip(COLUMNS, (cl, nchw, min(cl, nchw)), strict=True))


def describe(key: tuple) -> str:
    (_, ci, h, _), (co, _, kh, kw), stride, _, _, groups, _ = key
    grouped = f" g{groups}" if groups > 1 else ""
    return f"{ci}->{co} {kh}x{kw}/{stride[0]}{grouped} @{h}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=2048)
    args = parser.parse_args()
    reuse_freed_memory()
    torch.manual_seed(0)
    model = cnnlab.create_model(args.model, num_classes=10)
    x = torch.randn(BATCH, model.input_size[0], args.size, args.size)
    mm, mm_flops = matmul(args.matmul)
    rows, totals, rates = [], Counter(), []
    for key, count in convolutions(model, x).items():
        calls, flops = {}, 0
        for layout, fmt in LAYOUTS.items():
            calls[layout], flops = passes(key, fmt)
        wanted = [p for p in PASSES if p in calls["NCHW"] and (p != "grad-input" or key[-1])]
        found = [Contender(f"{p} {layout}", calls[layout][p]) for layout in LAYOUTS
                 for p in wanted] + [Contender("matmul", mm)]  # fmt: skip
        timing = interleave(found, args.repeats, warmup=2)
        rates.append(mm_flops / timing.median("matmul"))
        for p in wanted:
            cl, nchw = timing.median(f"{p} channels-last"), timing.median(f"{p} NCHW")
            rows.append((describe(key), count, p, f"{cl * 1e3:,.1f}", f"{flops / cl / 1e9:,.0f}",
                         f"{nchw * 1e3:,.1f}", f"{flops / nchw / 1e9:,.0f}",
                         f"{timing.kept}/{timing.rounds}"))  # fmt: skip
        for p in ONEDNN_PASSES:  # a pass this layer does not run costs nothing
            for column, seconds in per_column(timing, [p] if p in wanted else []).items():
                totals[p, column] += count * seconds
        ways = [p for p in wanted if p.startswith("grad-weight")]
        for column, seconds in per_column(timing, ways).items():
            totals[FASTER_GRAD_WEIGHT, column] += count * seconds
    headers = ["convolution @map", "count", "pass", "channels-last ms", "GFLOP/s", "NCHW ms",
               "GFLOP/s", "rounds"]  # fmt: skip
    print(format_table(headers, rows))
    print()
    steps = {
        "all, oneDNN's grad-weight": ONEDNN_PASSES,
        "all, the faster grad-weight": ("forward", "grad-input", FASTER_GRAD_WEIGHT),
    }
    summary = [(p, *(totals[p, c] for c in COLUMNS)) for p in (*ONEDNN_PASSES, FASTER_GRAD_WEIGHT)]
    summary += [(name, *(sum(totals[p, c] for p in parts) for c in COLUMNS))
                for name, parts in steps.items()]  # fmt: skip
    summary = [(name, *(f"{seconds * 1e3:,.0f}" for seconds in row)) for name, *row in summary]
    print(format_table(["step's convolutions, ms", *COLUMNS], summary))
    print(f"{args.model}, batch {BATCH}, {args.size} px, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; fp32 matmul {args.matmul}^3: "
          f"{min(rates) / 1e9:.0f}-{max(rates) / 1e9:.0f} GFLOP/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
