"""The ``cnnlab`` command: thin argument parsing over the Python API.

Each sub-command lives in a module of this package with ``register(subparsers)``, which adds
its parser and sets ``func`` to a function ``(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cnnlab.io import CnnlabError

COMMAND_MODULES = ["zoo", "compression", "analysis", "training"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="The classic CNNs from their papers: build, measure, train, compress, deploy.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"cnnlab.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors in the input give one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CnnlabError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        message = exc.strerror + f": {exc.filename}" if isinstance(exc, OSError) and exc.filename else exc
        print(f"cnnlab: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
