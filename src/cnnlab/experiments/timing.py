"""Interleaved CPU timing for the experiments (:mod:`cnnlab.timing`): every contender sampled
once per round, in a fresh order each round, so that other load on the machine slows all of
them alike and their ratios hold; rounds that a probe shows were slowed are run again.

Reported per contender: the median and spread (:func:`cnnlab.analysis.compare.spread`); per
pair, the median of the per-round ratios (each pair ran back to back under the same load) and
its interquartile range as a fraction of it, the figure that says whether a ratio can be
trusted on a busy machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from cnnlab.analysis.compare import spread
from cnnlab.timing import BUSY, Contender, OtherLoad, interleave

__all__ = ["BUSY", "ROUNDS", "UNSTABLE", "OtherLoad", "race", "ratio", "summary"]

ROUNDS = {"quick": 5, "default": 25, "full": 60}  # timing rounds per scale
MIN_SAMPLE_S = 0.02  # a sample repeats the call until it lasts at least this long
UNSTABLE = 0.25  # a ratio whose IQR exceeds this fraction of its median is not trusted


@torch.no_grad()
def race(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2) -> dict[str, list]:
    """Seconds per call of each function, ``rounds`` clean samples each, interleaved (rounds
    that other work slowed are run again: :func:`cnnlab.timing.interleave`)."""
    contenders = [Contender(name, fn) for name, fn in fns.items()]
    return interleave(contenders, rounds, warmup=warmup, min_sample_s=MIN_SAMPLE_S).samples


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
