"""Our eager models against torchvision's, same architecture and the same weights.

For each architecture both models get identical weights (converted with
``cnnlab.interop.from_torchvision``) and are timed in alternation, one sample each per round,
so that other load on the machine slows both alike: inference at batch 1 and 16, and one
training step (forward, cross-entropy, backward, SGD step) at batch 16. Printed: median
times and the median of the per-round ratios torchvision / ours (>= 1 means ours is at least
as fast; target: >= 0.97, i.e. not slower than torchvision).

    .venv/bin/python benchmarks/eager_vs_torchvision.py [--repeats 9] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

import cnnlab
from cnnlab.deploy import torchvision_model, training_step
from cnnlab.interop import from_torchvision
from cnnlab.tables import format_table

MODELS = ["resnet50", "mobilenet_v2", "vgg16", "googlenet_tv"]
MIN_SAMPLE_S = 0.05  # repeat a call within one sample until the sample lasts this long


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    theirs = torchvision_model(name)
    ours = cnnlab.create_model(name)
    ours.load_state_dict(from_torchvision(name, theirs.state_dict()))
    return ours, theirs


def inference(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def interleaved(ours: Callable[[], None], theirs: Callable[[], None], repeats: int) -> tuple:
    """Median seconds per call of each, and the median per-round ratio theirs / ours."""
    calls = []
    for fn in (ours, theirs):  # warm up, and find how many calls make one sample
        fn()
        start = time.perf_counter()
        fn()
        calls.append(max(1, round(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-6))))
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(repeats):
        # Alternate who goes first, so that neither always runs in the other's wake.
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for i in order:
            fn, n = (ours, theirs)[i], calls[i]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[i].append((time.perf_counter() - start) / n)
    ratio = statistics.median(t / o for o, t in zip(*times, strict=True))
    return statistics.median(times[0]), statistics.median(times[1]), ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    parser.add_argument("models", nargs="*", default=MODELS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        ours, theirs = pair(name)
        side = ours.input_size[-1]
        cases = [
            ("inference b1", inference, torch.randn(1, 3, side, side)),
            ("inference b16", inference, torch.randn(16, 3, side, side)),
            ("train step b16", training_step, torch.randn(16, 3, side, side)),
        ]
        for label, make, x in cases:
            mine, tv, ratio = interleaved(make(ours, x), make(theirs, x), args.repeats)
            rows.append((name, label, f"{mine * 1e3:.1f}", f"{tv * 1e3:.1f}", f"{ratio:.3f}"))
            print(*rows[-1], file=sys.stderr, flush=True)
    print()
    print(f"threads: {torch.get_num_threads()}, repeats: {args.repeats}")
    print(format_table(["model", "case", "ours ms", "torchvision ms", "tv/ours"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
