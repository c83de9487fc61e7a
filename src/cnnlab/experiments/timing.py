"""Interleaved CPU timing: every contender sampled once per round, in a fresh order each
round, so that other load on the machine slows all of them alike and their ratios hold.

Reported per contender: the median and spread (:func:`cnnlab.analysis.compare.spread`); per
pair, the median of the per-round ratios (each pair ran back to back under the same load) and
its interquartile range as a fraction of it, the figure that says whether a ratio can be
trusted on a busy machine.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from cnnlab.analysis.compare import spread

__all__ = ["BUSY", "ROUNDS", "UNSTABLE", "OtherLoad", "race", "ratio", "summary"]

ROUNDS = {"quick": 5, "default": 25, "full": 60}  # timing rounds per scale
MIN_SAMPLE_S = 0.02  # a sample repeats the call until it lasts at least this long
UNSTABLE = 0.25  # a ratio whose IQR exceeds this fraction of its median is not trusted
BUSY = 0.2  # cores that other processes used on average while we timed: a busy machine


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (``/proc/stat``: user, nice, system, irq,
    softirq, steal), or None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """``with OtherLoad() as load:`` ... then ``load.cores``: how many cores other processes
    kept busy on average meanwhile (the machine's busy time less this process's), or None
    where the OS does not say."""

    cores: float | None = None

    def __enter__(self) -> OtherLoad:
        self._busy, self._own, self._wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = _busy_seconds()
        if busy is None or self._busy is None:
            return
        others = (busy - self._busy) - (_own_seconds() - self._own)
        self.cores = max(0.0, others / max(time.perf_counter() - self._wall, 1e-9))


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


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
