"""Threads and OpenMP wait policy, on a quiet machine and beside another multi-threaded job.

Each configuration (``--threads`` 1 or 2; the OpenMP wait policy unset, active or passive, or
unset with libgomp's spin count lowered by ``GOMP_SPINCOUNT``)
runs ``cnnlab bench MODEL --vs torchvision --backend eager,onnxruntime --no-train`` in a fresh
process (OpenMP reads its wait policy when torch loads), once on the quiet machine and once
while a second job runs beside it: a process doing 2-thread fp32 matrix products without
pause, as another user's training would. Configurations and the two conditions alternate in
cycles, the configurations in reverse order every other cycle, so slow drifts of the machine
(or of the job beside it) reach all of them alike. Printed per configuration:
the median over cycles of cnnlab eager, torchvision eager and onnxruntime latency (ms), the
busy / quiet ratio, and whether ``bench`` flagged the busy runs as contended.

    .venv/bin/python benchmarks/contention.py [--model resnet50] [--cycles 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from cnnlab.tables import format_table

LOAD = """
import torch
torch.set_num_threads(2)
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
while True:
    a @ b
"""
# "default": OMP_WAIT_POLICY unset (libgomp's threads spin a while, then sleep); "spin N":
# unset, with GOMP_SPINCOUNT=N (libgomp's spins before sleeping; its default is 300,000)
CONFIGS = [(2, "default"), (2, "active"), (2, "passive"), (2, "spin 3000"), (2, "spin 300"),
           (1, "default"), (1, "passive")]  # fmt: skip


def bench(model: str, threads: int, policy: str, repeats: int) -> dict:
    """One ``cnnlab bench`` run in a fresh process: {backend: result row}."""
    args = [sys.executable, "-m", "cnnlab", "bench", model, "--vs", "torchvision", "--backend",
            "eager,onnxruntime", "--no-train", "--threads", str(threads), "--repeats",
            str(repeats), "--json"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("spin "):
        env["GOMP_SPINCOUNT"] = policy.split()[1]
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return {row["backend"]: row for row in json.loads(out)}


def measure(model: str, cycles: int, repeats: int) -> dict:
    """{(threads, policy, condition): [rows of each cycle]}."""
    found: dict = defaultdict(list)
    for cycle in range(cycles):
        for condition in ("quiet", "busy"):
            load = None
            if condition == "busy":
                load = subprocess.Popen([sys.executable, "-c", LOAD])
                time.sleep(2)  # the job is running before the benchmark starts
            try:
                for threads, policy in CONFIGS[:: 1 if cycle % 2 == 0 else -1]:
                    print(f"... cycle {cycle + 1}: {threads} threads, {policy}, {condition}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    found[threads, policy, condition].append(bench(model, threads, policy, repeats))
            finally:
                if load is not None:
                    load.kill()
                    load.wait()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    found = measure(args.model, args.cycles, args.repeats)

    def median(key: tuple, backend: str, field: str) -> float:
        return statistics.median(run[backend][field] for run in found[key])

    rows = []
    for threads, policy in CONFIGS:
        quiet, busy = (threads, policy, "quiet"), (threads, policy, "busy")
        cells = [threads, policy]
        for backend, field in (("eager", "latency_ms"), ("eager", "torchvision_latency_ms"),
                               ("onnxruntime", "latency_ms")):  # fmt: skip
            q, b = median(quiet, backend, field), median(busy, backend, field)
            cells += [f"{q:,.1f}", f"{b:,.1f}", f"{b / q:.1f}x"]
        flagged = sum(run["eager"]["contended"] for run in found[busy])
        cells.append(f"{flagged}/{len(found[busy])}")
        rows.append(cells)
    headers = ["threads", "wait policy", "cnnlab quiet", "busy", "ratio", "torchvision quiet",
               "busy", "ratio", "onnxruntime quiet", "busy", "ratio", "busy flagged"]  # fmt: skip
    print(format_table(headers, rows))
    print(f"{args.model}, batch 1, ms (median of {args.cycles} cycles of `cnnlab bench "
          f"--repeats {args.repeats}`); busy: a 2-thread matmul job beside it")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
