"""The ``cnnlab`` command: thin argument parsing over the Python API.

Each sub-command lives in a module of this package with ``register(subparsers)``, which adds
its parser and sets ``func`` to a function ``(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cnnlab.errors import CnnlabError

COMMAND_MODULES = ["zoo", "analysis", "training", "compression", "deployment"]


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["compress", "sensitivity"]:  # the spelling of `cnnlab sensitivity`
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except (CnnlabError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"cnnlab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`cnnlab eval ... | head`): stop as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 141  # 128 + SIGPIPE


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return " ".join(str(exc).split())
