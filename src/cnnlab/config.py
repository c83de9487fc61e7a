"""Config dataclass fields that carry their command-line help (one source for both)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["option"]


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with ``default`` and, in its metadata, the help text and argparse
    keywords (``choices``, ``metavar``) of its ``--field-name`` option."""
    return field(default=default, metadata={"help": help, **cli})
