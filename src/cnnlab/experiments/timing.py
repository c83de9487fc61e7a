"""Interleaved CPU timing: every contender sampled once per round, in a fresh order each
round, so that other load on the machine slows all of them alike and their ratios hold.

Reported per contender: the median and spread (:func:`cnnlab.analysis.compare.spread`); per
pair, the median of the per-round ratios (each pair ran back to back under the same load) and
its interquartile range as a fraction of it, the figure that says whether a ratio can be
trusted on a busy machine.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from cnnlab.analysis.compare import spread

__all__ = ["ROUNDS", "UNSTABLE", "race", "ratio", "summary"]

ROUNDS = {"quick": 5, "default": 25, "full": 60}  # timing rounds per scale
MIN_SAMPLE_S = 0.02  # a sample repeats the call until it lasts at least this long
UNSTABLE = 0.25  # a ratio whose IQR exceeds this fraction of its median is not trusted


def _calls_per_sample(fn: Callable[[], Any], warmup: int) -> int:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, min(200, math.ceil(MIN_SAMPLE_S / once)))


@torch.no_grad()
def race(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2) -> dict[str, list]:
    """Seconds per call of each function, ``rounds`` samples each, interleaved."""
    number = {name: _calls_per_sample(fn, warmup) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(list(fns), len(fns)):
            start = time.perf_counter()
            for _ in range(number[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - start) / number[name])
    return samples


def ratio(slow: list[float], fast: list[float]) -> dict[str, Any]:
    """The median of the per-round ratios ``slow / fast`` and its spread."""
    ratios = [s / f for s, f in zip(slow, fast, strict=True)]
    median = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [median] * 3
    relative_iqr = (q[2] - q[0]) / median
    return {
        "ratio": median,
        "ratio_iqr_fraction": relative_iqr,
        "ratio_unstable": relative_iqr > UNSTABLE,
        "rounds": len(ratios),
    }


def summary(samples: list[float]) -> dict[str, Any]:
    """:func:`cnnlab.analysis.compare.spread` of one contender's samples (ms)."""
    return spread(samples)
