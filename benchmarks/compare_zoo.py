"""Time of ``cnnlab compare '*'`` (the whole zoo, no latency); target: under 60 s.

Run: ``.venv/bin/python benchmarks/compare_zoo.py``. Prints the time of the Python call and
of the command itself (a fresh process, imports included), side by side, and the slowest
models.
"""

from __future__ import annotations

import subprocess
import sys
import time

from cnnlab.analysis import compare_models
from cnnlab.registry import list_models


def main() -> None:
    names = list_models()
    start = time.perf_counter()
    per_model = []
    for name in names:
        t = time.perf_counter()
        compare_models([name])
        per_model.append((time.perf_counter() - t, name))
    api = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cnnlab", "compare", "*"], check=True, capture_output=True
    )
    cli = time.perf_counter() - start
    print(f"models: {len(names)}")
    print(f"compare_models, one model at a time: {api:.1f} s")
    print(f"cnnlab compare '*' (fresh process):  {cli:.1f} s  (limit 60 s: {cli / 60:.0%} of it)")
    print("slowest:", ", ".join(f"{n} {t:.2f} s" for t, n in sorted(per_model)[::-1][:5]))


if __name__ == "__main__":
    main()
