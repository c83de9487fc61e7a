"""Deploy speed against its targets, measured side by side in one run (docs/results/deploy.md).

1. Fastest cnnlab backend vs torchvision eager, same architecture, batch 1 and 16, for
   resnet50, mobilenet_v2 and googlenet_tv (targets: >= 1.5x at batch 1, >= 1.2x at batch 16),
   and resnet50's achieved fraction of the fp32 matmul peak at batch 16 (aim: >= 60%).
2. The papers' speed claims: MobileNetV1 vs VGG-16 and MobileNetV2 vs V1, latency ratio
   beside MAC ratio.

    .venv/bin/python benchmarks/deploy_speed.py [--repeats 10] [--backends eager,fused,...]
"""

from __future__ import annotations

import argparse
import sys

from cnnlab.deploy import BACKENDS, benchmark
from cnnlab.tables import format_table

PEERS = ["resnet50", "mobilenet_v2", "googlenet_tv"]
CLAIMS = [("mobilenet_v1", "vgg16"), ("mobilenet_v2", "mobilenet_v1")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    backends = args.backends.split(",")
    log = lambda m: print(f"... {m}", file=sys.stderr)  # noqa: E731

    results = benchmark(
        PEERS,
        batch_sizes=(1, 16),
        backends=backends,
        threads=args.threads,
        vs_torchvision=True,
        train=False,
        repeats=args.repeats,
        progress=log,
    )

    def row(r) -> list:
        return [
            r.model,
            r.batch_size,
            r.backend,
            f"{r.latency_ms:.1f}",
            f"{r.torchvision_latency_ms:.1f}",
            f"{r.speedup_vs_torchvision:.2f}x",
        ]

    rows = []
    for r in results:
        best = max(
            (o for o in results if (o.model, o.batch_size) == (r.model, r.batch_size)),
            key=lambda o: o.speedup_vs_torchvision,
        )
        if r is best:
            target = 1.5 if r.batch_size == 1 else 1.2
            met = "yes" if r.speedup_vs_torchvision >= target else "no"
            rows.append([*row(r), f">= {target}x", met, f"{100 * r.peak_fraction:.0f}%"])
    print("All backends (speedup = torchvision eager latency / ours, per interleaved round):")
    print(
        format_table(
            ["model", "batch", "backend", "ms", "tv ms", "speedup", "of peak"],
            [[*row(r), f"{100 * r.peak_fraction:.0f}%"] for r in results],
        )
    )
    print("\nFastest cnnlab backend vs torchvision eager:")
    print(
        format_table(
            ["model", "batch", "backend", "ms", "tv ms", "speedup", "target", "met", "of peak"],
            rows,
        )
    )
    print(
        f"matmul peak (fp32 1024^3, same rounds): {results[0].matmul_peak_gflops:.1f} GFLOP/s, "
        f"{results[0].threads} threads"
    )

    names = sorted({n for pair in CLAIMS for n in pair})
    claims = benchmark(
        names,
        batch_sizes=(1,),
        backends=backends,
        threads=args.threads,
        train=False,
        repeats=args.repeats,
        progress=log,
    )
    print("\nPaper claims, batch 1 (ratio = first / second; MACs from our counts):")
    table = []
    for backend in backends:
        by_name = {r.model: r for r in claims if r.backend == backend}
        for a, b in CLAIMS:
            ra, rb = by_name[a], by_name[b]
            table.append(
                [
                    f"{a} / {b}",
                    backend,
                    f"{ra.macs / rb.macs:.3f}",
                    f"{ra.latency_ms / rb.latency_ms:.3f}",
                    f"{ra.gflops:.1f} / {rb.gflops:.1f}",
                ]
            )
    print(format_table(["pair", "backend", "MAC ratio", "latency ratio", "GFLOP/s"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
