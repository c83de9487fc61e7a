"""Inference in NCHW against channels-last (NHWC) weights, the same model and weights, interleaved.

``cnnlab eval`` and ``cnnlab predict`` put the weights channels-last (``--no-channels-last``
keeps them NCHW), as ``cnnlab train`` does. For each case, a forward pass of the eval-mode
model under ``torch.inference_mode`` in each layout, timed by ``cnnlab.timing.interleave``
(one sample of each per round; rounds that other work slowed are dropped and re-run).
Printed: the median ms per batch, images/s and the median of the per-round ratios
NCHW / channels-last (> 1: channels-last is faster). Cases: the demo's Caffe LeNet at 28 px
and ``cnnlab eval``'s batch 256; resnet18 and mobilenet_v2 at 32 px, batch 256; resnet18 at
224 px, batch 32.

    .venv/bin/python benchmarks/eval_layout.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch

import cnnlab
from cnnlab.devices import reuse_freed_memory
from cnnlab.tables import format_table
from cnnlab.timing import Contender, interleave

CASES = [("lenet5_caffe", 28, 256), ("resnet18", 32, 256), ("mobilenet_v2", 32, 256),
         ("resnet18", 224, 32)]  # fmt: skip


def forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    reuse_freed_memory()  # as in `cnnlab train`; the batches here are the same in each layout
    rows = []
    for name, size, batch in CASES:
        torch.manual_seed(0)
        model = cnnlab.create_model(name, num_classes=10).eval()
        x = torch.randn(batch, model.input_size[0], size, size)
        nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        found = [Contender("NCHW", forward(model, x)), Contender("channels-last", forward(nhwc, x))]
        timing = interleave(found, args.repeats, warmup=2)
        nchw = timing.samples["NCHW"]
        for label, samples in timing.samples.items():
            ratio = statistics.median(a / b for a, b in zip(nchw, samples, strict=True))
            ms = timing.median(label) * 1e3
            rows.append((name, size, batch, label, f"{ms:,.1f}", f"{batch / ms * 1e3:,.0f}",
                         f"{ratio:.2f}x", f"{timing.kept}/{timing.rounds}",
                         f"{timing.other_cores or 0:.2f}"))  # fmt: skip
    headers = ["model", "px", "batch", "weights", "ms/batch", "img/s", "vs NCHW", "rounds",
               "other cores"]  # fmt: skip
    print(format_table(headers, rows))
    print(f"eval mode, inference_mode, fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
