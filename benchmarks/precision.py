"""bf16 autocast against fp32, the same model and weights, timed in alternation.

For each case both precisions run one sample per round, in alternating order, so that other
load slows both alike (a 1024^3 matmul in each precision is timed in the same rounds as a
peak). Printed: median times, the median of the per-round ratios fp32 / bf16 (> 1: bf16 is
faster) and the maximum absolute difference of the logits. Cases (issue 15's targets):
inference of resnet50 at batch 16, 224 px, channels-last, and a training step (forward,
cross-entropy, backward, SGD) of resnet18 at batch 32, 224 px and at batch 64, 32 px.

    .venv/bin/python benchmarks/precision.py [--repeats 7] [--threads N] [--cases 1,2,3]

On a CPU without AMX / AVX512-BF16 bf16 is emulated: expect it to be many times slower
(``--cases 3``, the smallest, keeps such a run short).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

import cnnlab
from cnnlab.deploy import training_step
from cnnlab.devices import native_bf16
from cnnlab.tables import format_table

MIN_SAMPLE_S = 0.05  # repeat a call within one sample until the sample lasts this long


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def inference(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    model = model.eval().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), _autocast(bf16):
            model(x)

    return run


def train_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    step = training_step(model.to(memory_format=torch.channels_last), x)

    def run() -> None:
        with _autocast(bf16):
            step()

    return run


def matmul(bf16: bool) -> Callable[[], None]:
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    return lambda: torch.mm(a, b)


def interleaved(fns: list[Callable[[], None]], repeats: int) -> list[list[float]]:
    """Seconds per call of each of ``fns``, one sample each per round, order rotating."""
    calls = []
    for fn in fns:  # warm up, and find how many calls make one sample
        fn()
        start = time.perf_counter()
        fn()
        calls.append(max(1, round(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-6))))
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(repeats):
        order = list(range(len(fns)))
        order = order[round_ % len(fns) :] + order[: round_ % len(fns)]
        for i in order:
            start = time.perf_counter()
            for _ in range(calls[i]):
                fns[i]()
            times[i].append((time.perf_counter() - start) / calls[i])
    return times


def logit_difference(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        ref = model.eval()(x)
        with _autocast(True):
            low = model(x).float()
    return float((ref - low).abs().max())


CASES = [
    ("resnet50", "inference b16 224px", inference, (16, 3, 224, 224)),
    ("resnet18", "train step b32 224px", train_step, (32, 3, 224, 224)),
    ("resnet18", "train step b64 32px", train_step, (64, 3, 32, 32)),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    parser.add_argument("--cases", default="1,2,3", help="which of the cases, counted from 1")
    args = parser.parse_args()
    chosen = [CASES[int(i) - 1] for i in args.cases.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"native bf16 on this CPU: {native_bf16(torch.device('cpu'))}", file=sys.stderr)
    rows = []
    for name, label, make, shape in chosen:
        torch.manual_seed(0)
        x = torch.randn(*shape)
        fp32_model, bf16_model = cnnlab.create_model(name), cnnlab.create_model(name)
        bf16_model.load_state_dict(fp32_model.state_dict())
        diff = logit_difference(fp32_model, x[:4]) if make is inference else float("nan")
        fns = [make(fp32_model, x, False), make(bf16_model, x, True), matmul(False), matmul(True)]
        t32, t16, m32, m16 = interleaved(fns, args.repeats)
        ratio = statistics.median(a / b for a, b in zip(t32, t16, strict=True))
        peak = statistics.median(a / b for a, b in zip(m32, m16, strict=True))
        rows.append((name, label, f"{statistics.median(t32) * 1e3:.1f}",
                     f"{statistics.median(t16) * 1e3:.1f}", f"{ratio:.2f}x", f"{peak:.2f}x",
                     "-" if diff != diff else f"{diff:.3f}"))  # fmt: skip
        print(*rows[-1], file=sys.stderr, flush=True)
    print(f"\nthreads: {torch.get_num_threads()}, repeats: {args.repeats}")
    headers = ["model", "case", "fp32 ms", "bf16 ms", "fp32/bf16", "matmul fp32/bf16",
               "max |logit diff|"]  # fmt: skip
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
