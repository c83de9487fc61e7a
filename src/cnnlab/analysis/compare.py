"""Side-by-side figures of several registered models, and the bubble chart that shows them.

``compare_models`` profiles each model on the ``meta`` device (shapes only), so the whole zoo
takes seconds; ``measure_latency=True`` adds a real CPU forward timing per model.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from cnnlab.analysis.macs import count_macs
from cnnlab.analysis.profile import check_memory, profile
from cnnlab.registry import (
    build_model,
    build_on_meta,
    keyword_defaults,
    list_models,
    match_models,
    model_info,
)
from cnnlab.timing import Contender, Timing, interleave

__all__ = [
    "compare_models",
    "latency_samples",
    "latency_timing",
    "measure_latency",
    "spread",
    "zoo_table",
]


SPREAD_FLAG = 0.25  # a latency whose interquartile range exceeds this fraction of its median


@torch.no_grad()
def latency_timing(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_size: int = 1,
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> Timing:
    """Eval-mode forward passes on CPU (fp32), one per round, ``repeats`` clean rounds after
    ``warmup`` untimed ones; rounds that other work slowed are run again
    (:func:`cnnlab.timing.interleave`). A batch memory cannot hold is refused first."""
    check_memory(model, input_size, batch_size, torch.device("cpu"), train=False,
                 fix="use a smaller --batch-size")  # fmt: skip
    was_training = model.training
    model.eval()
    x = torch.randn((batch_size, *input_size))
    try:
        forward = Contender("forward", lambda: model(x))
        return interleave([forward], repeats, warmup=warmup, min_sample_s=0)
    finally:
        model.train(was_training)


def latency_samples(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_size: int = 1,
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> list[float]:
    """Seconds of each clean round of :func:`latency_timing`."""
    timing = latency_timing(model, input_size, batch_size, repeats=repeats, warmup=warmup)
    return timing.samples["forward"]


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_size: int = 1,
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """Median wall-clock seconds of an eval-mode forward pass on CPU (fp32)."""
    samples = latency_samples(model, input_size, batch_size, repeats=repeats, warmup=warmup)
    return statistics.median(samples)


def spread(samples: list[float]) -> dict[str, float]:
    """Median, interquartile range, min and max of ``samples`` (seconds) in ms, and
    ``unstable``: the IQR is more than ``SPREAD_FLAG`` of the median (a busy machine)."""
    median = statistics.median(samples)
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [median, median, median]
    iqr = q[2] - q[0]
    return {
        "latency_ms": 1000 * median,
        "latency_iqr_ms": 1000 * iqr,
        "latency_min_ms": 1000 * min(samples),
        "latency_max_ms": 1000 * max(samples),
        "latency_rounds": len(samples),
        "latency_unstable": iqr > SPREAD_FLAG * median,
    }


def compare_models(
    patterns: list[str] | tuple[str, ...] = ("*",),
    *,
    latency: bool = False,
    throughput_batch: int = 8,
    repeats: int = 7,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """One dict per registered model matching any of ``patterns`` (shell wildcards).

    Keys: ``model``, ``input_size``, ``params``, ``macs``, ``activations`` (elements per image),
    ``param_bytes`` (fp32 size), ``forward_bytes`` and ``training_bytes`` (SGD with momentum,
    batch 1), and with ``latency=True`` the batch-1 latency over ``repeats`` rounds after
    ``warmup`` calls (:func:`spread`: ``latency_ms`` the median, ``latency_iqr_ms``, min, max,
    ``latency_unstable``: a wide spread, or a machine that other work kept busy) and
    ``images_per_s`` (at batch ``throughput_batch``), measured on
    this machine's CPU.
    """
    rows = []
    for name in match_models(patterns):
        model = build_on_meta(name)
        prof = profile(model, tuple(model.input_size), 1)
        row: dict[str, Any] = {
            "model": name,
            "input_size": list(prof.input_size),
            "params": prof.params,
            "macs": prof.macs,
            "activations": prof.activations,
            "param_bytes": prof.param_bytes,
            "forward_bytes": prof.forward_bytes,
            "training_bytes": prof.training_bytes["sgd_momentum"],
        }
        if latency:
            torch.manual_seed(0)
            real = build_model(name)
            size = prof.input_size
            timing = latency_timing(real, size, 1, repeats=repeats, warmup=warmup)
            row |= spread(timing.samples["forward"])
            row["latency_rounds_run"] = timing.rounds  # slowed rounds included
            row["latency_unstable"] = row["latency_unstable"] or timing.contended
            seconds = measure_latency(real, size, throughput_batch, repeats=repeats, warmup=1)
            row["images_per_s"] = throughput_batch / seconds
        rows.append(row)
    return rows


def zoo_table(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per model of any task (classifiers and detectors): metadata, params and MACs
    counted on the built model, its own keywords with their defaults and its feature levels
    (a detector's: the maps it predicts from)."""
    rows = []
    for name in list_models(pattern, task=None):
        info = model_info(name)
        model = build_on_meta(name)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        macs = count_macs(model, model.input_size)
        rows.append({
            **info, "params": params, "macs": macs, "input_size": list(model.input_size),
            "keywords": keyword_defaults(name), "feature_info": model.feature_info,
        })  # fmt: skip
    return rows
