"""Config dataclass fields that carry their command-line help (one source for both)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["MAX_FACTOR", "option"]

# float32's largest value: the optimizers scale float32 weights by the learning rate and the
# weight decay, and PyTorch refuses a factor above it (a RuntimeError at the first step).
MAX_FACTOR = 3.4028234663852886e38


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with ``default`` and, in its metadata, the help text and argparse
    keywords (``choices``, ``metavar``) of its ``--field-name`` option."""
    return field(default=default, metadata={"help": help, **cli})
