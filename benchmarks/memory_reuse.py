"""What keeping freed memory for reuse changes in a training step: time, page faults, peak RSS.

``cnnlab train`` calls ``cnnlab.devices.reuse_freed_memory`` (``--no-reuse-memory`` to skip):
glibc's ``malloc`` then keeps large freed blocks in its heap instead of unmapping them. The
setting lasts for a process, so each configuration runs in a fresh one, alternating ``--cycles``
times: torchvision's model (channels-last, fp32, batch 64) runs ``--steps`` training steps
(``cnnlab.deploy.training_step``) after two untimed ones. Printed per configuration, the
median over the cycles of: the median ms per step, the system (kernel) CPU ms and minor page
faults per step, and the process's peak resident memory; and the ratio of the step times,
default / reuse, per cycle.

    .venv/bin/python benchmarks/memory_reuse.py [--models resnet18,mobilenet_v2] [--size 224]
        [--cycles 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from cnnlab.deploy import torchvision_model, training_step
from cnnlab.tables import format_table

BATCH = 64
CONFIGS = ("default", "reuse")


def measure(name: str, size: int, steps: int, reuse: bool) -> dict[str, float]:
    """Time ``steps`` training steps of torchvision's ``name`` in this process."""
    if reuse:
        from cnnlab.devices import reuse_freed_memory

        if not reuse_freed_memory():
            raise SystemExit("reuse_freed_memory does not apply here (glibc only)")
    torch.manual_seed(0)
    model = torchvision_model(name, num_classes=10).to(memory_format=torch.channels_last)
    run = training_step(model, torch.randn(BATCH, 3, size, size))

    def step() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    step(), step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [step() for _ in range(steps)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms": statistics.median(times) * 1e3,
        "sys_ms": (after.ru_stime - before.ru_stime) / steps * 1e3,
        "faults": (after.ru_minflt - before.ru_minflt) / steps,
        "peak_mib": after.ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.models, args.size, args.steps, args.child == "reuse")))
        return 0
    rows = []
    for name in args.models.split(","):
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
        for cycle in range(args.cycles):
            for config in CONFIGS:
                print(f"... {name}, cycle {cycle + 1}, {config}", file=sys.stderr, flush=True)
                out = subprocess.run(
                    [sys.executable, __file__, "--child", config, "--models", name, "--size",
                     str(args.size), "--steps", str(args.steps)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs[config].append(json.loads(out.stdout.splitlines()[-1]))
        ratios = [d["ms"] / r["ms"] for d, r in zip(runs["default"], runs["reuse"], strict=True)]
        per_cycle = {"default": ("1.00x", ""),
                     "reuse": (f"{statistics.median(ratios):.2f}x",
                               " ".join(f"{r:.2f}" for r in ratios))}  # fmt: skip
        for config, found in runs.items():
            med = {k: statistics.median(r[k] for r in found) for k in found[0]}
            rows.append((name, config, f"{med['ms']:,.0f}", f"{med['sys_ms']:,.0f}",
                         f"{med['faults']:,.0f}", f"{med['peak_mib']:,.0f}",
                         *per_cycle[config]))  # fmt: skip
    headers = ["model", "memory", "ms/step", "sys ms/step", "faults/step", "peak MiB",
               "vs default", "per cycle"]  # fmt: skip
    print(format_table(headers, rows))
    print(f"torchvision models, channels-last, fp32, batch {BATCH}, {args.size} px, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
