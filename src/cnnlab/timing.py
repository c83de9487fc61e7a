"""Interleaved timing that notices when other work slowed the machine.

Every contender is timed once per round, in a fresh random order each round, so that other
load slows all of them alike and their per-round ratios hold. On a shared machine that is not
enough: while another job runs, multi-threaded PyTorch can be 20x slower for seconds at a
time (its threads wait for cores that are taken), and a median over such rounds is not a
result. So each round is bracketed by a *probe*, a small fp32 matrix multiply on the same
threads, timed just before and just after it. A round whose slower probe took more than
``SLOW_ROUND`` times the fastest probe of the whole timing ran during such a spell: it is
dropped and another round is run in its place, up to ``max_rounds``. The figures come from
the kept rounds only.

A spell that lasts the whole timing slows every probe alike, so the cores that other
processes kept busy meanwhile are recorded too (from ``/proc/stat``). A timing is
``contended`` when it could not get ``repeats`` clean rounds or other processes kept more than
``BUSY`` cores busy on average: its figures are still returned, flagged, for the caller to
say so.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "BUSY",
    "SLOW_ROUND",
    "WAIT_POLICIES",
    "Contender",
    "OtherLoad",
    "Timing",
    "interleave",
    "matmul_probe",
    "wait_policy",
]

SLOW_ROUND = 1.5  # a round whose probe took this many times the fastest probe is dropped
BUSY = 0.2  # cores other processes used on average while we timed: a busy machine
MIN_SAMPLE_S = 0.05  # a sample repeats the call until it lasts at least this long
PROBE_SIZE = 256  # n of the n x n x n fp32 matmul of the probe
PROBE_SAMPLE_S = 0.005  # the probe repeats its matmul until it lasts at least this long
WAIT_POLICIES = ("active", "passive")  # OMP_WAIT_POLICY: idle threads spin, or sleep


def wait_policy() -> str:
    """This process's OpenMP wait policy: ``OMP_WAIT_POLICY`` lower-cased, or "default"
    (threads spin a while before they sleep). The OpenMP runtime reads it once, when torch
    is imported."""
    return os.environ.get("OMP_WAIT_POLICY", "default").lower() or "default"


@dataclass
class Contender:
    """A function to time; ``sync`` waits for the device (CUDA runs asynchronously)."""

    name: str
    run: Callable[[], Any]
    sync: Callable[[], Any] = lambda: None
    number: int = 1  # calls per sample, set by :meth:`calibrate`

    def calibrate(self, warmup: int, min_sample_s: float) -> None:
        """Run ``warmup`` times, then choose the calls per sample (1 to 100) so that a sample
        lasts at least ``min_sample_s``."""
        for _ in range(warmup):
            self.run()
        self.sync()
        once = max(self.sample(), 1e-6)
        self.number = max(1, min(100, math.ceil(min_sample_s / once)))

    def sample(self) -> float:
        """Seconds per call, over ``number`` calls."""
        start = time.perf_counter()
        for _ in range(self.number):
            self.run()
        self.sync()
        return (time.perf_counter() - start) / self.number


def matmul_probe(size: int = PROBE_SIZE) -> Contender:
    """The probe: an fp32 ``size`` x ``size`` matmul on the CPU, on torch's current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    return Contender("probe", lambda: torch.mm(a, b, out=out))


@dataclass
class Timing:
    """What :func:`interleave` measured. ``samples``: seconds per call of each contender, in
    the kept rounds only (round ``i`` of every list is the same round)."""

    samples: dict[str, list[float]]
    repeats: int  # the clean rounds asked for
    rounds: int  # the rounds run, kept and dropped
    probe_ratios: list[float] = field(default_factory=list)  # per round run, in order
    other_cores: float | None = None  # cores other processes kept busy meanwhile

    @property
    def kept(self) -> int:
        return len(next(iter(self.samples.values()), []))

    @property
    def dropped(self) -> int:
        return self.rounds - self.kept

    @property
    def busy(self) -> bool:
        return self.other_cores is not None and self.other_cores > BUSY

    @property
    def contended(self) -> bool:
        """Too few clean rounds, or a machine that other processes kept busy."""
        return self.kept < self.repeats or self.busy

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def iqr(self, name: str) -> float:
        """The interquartile range of ``name``'s samples (0 with fewer than two)."""
        if len(self.samples[name]) < 2:
            return 0.0
        q = statistics.quantiles(self.samples[name], n=4)
        return q[2] - q[0]


def _clean(probes: list[float]) -> list[bool]:
    fastest = min(probes)
    return [p <= SLOW_ROUND * fastest for p in probes]


def interleave(
    contenders: Sequence[Contender],
    repeats: int,
    *,
    warmup: int = 3,
    min_sample_s: float = MIN_SAMPLE_S,
    max_rounds: int | None = None,
    probe: Contender | None = None,
    seed: int = 0,
) -> Timing:
    """Time ``contenders`` interleaved until ``repeats`` rounds are clean or ``max_rounds``
    (default ``3 * repeats``) have run; see the module docstring."""
    if repeats < 1 or not contenders or len({c.name for c in contenders}) != len(contenders):
        raise ValueError("interleave needs repeats >= 1 and contenders with distinct names")
    probe = probe or matmul_probe()
    for contender in contenders:
        contender.calibrate(warmup, min_sample_s)
    probe.calibrate(warmup, PROBE_SAMPLE_S)  # however short the contenders' samples are
    order, limit = random.Random(seed), max(repeats, max_rounds or 3 * repeats)
    rounds: list[dict[str, float]] = []
    probes: list[float] = []
    with OtherLoad() as load:
        while len(rounds) < repeats or (sum(_clean(probes)) < repeats and len(rounds) < limit):
            before = probe.sample()
            rounds.append({c.name: c.sample() for c in order.sample(contenders, len(contenders))})
            probes.append(max(before, probe.sample()))
    clean = _clean(probes)
    kept = [r for r, ok in zip(rounds, clean, strict=True) if ok][:repeats]
    fastest = min(probes)
    return Timing(
        samples={c.name: [r[c.name] for r in kept] for c in contenders},
        repeats=repeats,
        rounds=len(rounds),
        probe_ratios=[p / fastest for p in probes],
        other_cores=load.cores,
    )


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


def _own_seconds() -> float:
    """CPU seconds of this process and its children, those still running included (a
    contender may run in a worker process)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _live_children_seconds()


def _live_children_seconds() -> float:
    """CPU seconds of this process's running children (``/proc``; 0 where there is none)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:  # it has just exited
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after the command name
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


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
