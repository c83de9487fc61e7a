"""``torch.compile`` after a second input shape: symbolic shapes (torch's default) or static.

By default, once a compiled model meets a second input shape, dynamo recompiles it with
symbolic sizes, and that graph then serves every shape. ``cnnlab.devices.compiled`` passes
``dynamic=False`` instead: one static graph per shape. This times resnet18's channels-last
training step (batch 64, 224 px) compiled both ways, each after a first call at 32 px, the
two interleaved by ``cnnlab.timing.interleave``; it prints the median ms per step and the
ratio default / static (> 1: static is faster).

    .venv/bin/python benchmarks/compile_shapes.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import cnnlab
from cnnlab.deploy import training_step
from cnnlab.timing import Contender, interleave


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = cnnlab.create_model("resnet18", num_classes=10).to(memory_format=torch.channels_last)
    small, big = torch.randn(64, 3, 32, 32), torch.randn(64, 3, 224, 224)
    contenders = []
    for label, dynamic in (("default (symbolic after a second shape)", None), ("static", False)):
        model = torch.compile(copy.deepcopy(base), dynamic=dynamic)
        training_step(model, small)()  # the first shape
        contenders.append(Contender(label, training_step(model, big)))
    timing = interleave(contenders, args.repeats, warmup=2, min_sample_s=0)
    default, static = (timing.samples[c.name] for c in contenders)
    for c in contenders:
        print(f"{c.name:42s} {timing.median(c.name) * 1e3:8,.0f} ms/step")
    ratio = statistics.median(d / s for d, s in zip(default, static, strict=True))
    print(f"default / static: {ratio:.2f}x; rounds {timing.kept}/{timing.rounds}, "
          f"other cores {timing.other_cores or 0:.2f}, torch {torch.__version__}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
