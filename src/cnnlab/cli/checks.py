"""The numeric options that several commands share, checked before any work (one error line)."""

from __future__ import annotations

import argparse

from cnnlab.devices import max_parallel
from cnnlab.errors import CnnlabError
from cnnlab.saved import MAX_IMG_SIZE
from cnnlab.train.trainer import MAX_SEED

__all__ = ["check_numbers"]


def check_numbers(args: argparse.Namespace) -> None:
    """Each of these options that ``args`` has and was given must be in its range."""
    rules = {
        "batch_size": (lambda v: v >= 1, "an integer >= 1"),
        "workers": (lambda v: 0 <= v <= max_parallel(), f"an integer in 0..{max_parallel()}"),
        "seed": (lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**63 - 1]"),
        "img_size": (lambda v: 1 <= v <= MAX_IMG_SIZE, f"an integer in 1..{MAX_IMG_SIZE}"),
        "limit": (lambda v: v >= 1, "an integer >= 1"),
        "val_split": (lambda v: 0 < v < 1, "a number in (0, 1)"),
        "top": (lambda v: v >= 1, "an integer >= 1"),
    }
    for name, (ok, rule) in rules.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise CnnlabError(f"--{name.replace('_', '-')} must be {rule}, got {value}")
