"""The ``cnnlab`` command: thin argument parsing over the Python API.

Each sub-command lives in a module of this package with ``register(subparsers)``, which adds
its parser and sets ``func`` to a function ``(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.signals import Terminated, sigterm_as_interrupt

COMMAND_MODULES = ["zoo", "analysis", "training", "compression", "deployment", "experiment", "data"]
# A full disk, a quota or a read-only file system: what the machine says, as one line.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_INPUT_ERRORS = (CnnlabError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError)
_PACKAGE = Path(cnnlab.__file__).resolve().parent
_python_format_warning = warnings.formatwarning


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there
    is none to show (a switch, or ``None`` meaning 'not given')."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or action.help is None or not _shows(default):
            return action.help
        if not action.option_strings and action.nargs not in ("?", "*"):
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


def _shows(default: object) -> bool:
    """A default worth printing: not a switch's False or True, not None ('not given'), not
    empty."""
    return not (default is None or isinstance(default, bool) or default is argparse.SUPPRESS) and (
        default not in ([], ())
    )


class _Parser(argparse.ArgumentParser):
    """Refuses an empty value (``--checkpoint ""`` is a script's unset variable, not a choice)
    and records the last usage error, so that ``main`` can repeat it as JSON (``--json``)."""

    last_error: str | None = None

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        if arg_string == "" and not isinstance(action, argparse._SubParsersAction):
            raise argparse.ArgumentError(action, "empty value")
        return super()._get_value(action, arg_string)

    def error(self, message: str):  # type: ignore[override]
        _Parser.last_error = message
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnlab",
        description="The classic CNNs from their papers: build, measure, train, compress, deploy.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {cnnlab.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"cnnlab.cli.{name}").register(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = HelpFormatter
        for action in sub._actions:  # an option without help still shows its default
            if action.help is None and action.option_strings and _shows(action.default):
                action.help = "(default: %(default)s)"
    return parser


def _check_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A mistyped sub-command (``cnnlab sumary``) gets the nearest name."""
    command = next((a for a in argv if not a.startswith("-")), None)
    choices = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command is None or command in choices:
        return
    near = difflib.get_close_matches(command, list(choices), n=1)
    hint = f"; did you mean {near[0]}?" if near else f" (choose from {', '.join(choices)})"
    parser.error(f"unknown command {command!r}{hint}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors in the input give one line on stderr and exit code 2 (and, with
    ``--json``, ``{"error": ..., "code": 2}`` on stdout)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["compress", "sensitivity"]:  # the spelling of `cnnlab sensitivity`
        argv = argv[1:]
    _Parser.last_error = None
    try:
        parser = build_parser()  # imports every command module: Ctrl-C here is common
        _check_command(parser, argv)
        args = parser.parse_args(argv)
        args.argv = argv  # what a command that re-runs itself (bench --wait-policy) passes on
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 2 and "--json" in argv and _Parser.last_error:
            _json_error(_Parser.last_error)
        raise
    return _run(args)


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    line: str | None = None,
) -> str:  # fmt: skip
    """cnnlab's own warnings as one line, as its errors are; others as Python shows them."""
    if Path(filename).resolve().is_relative_to(_PACKAGE):
        return f"cnnlab: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def _run(args: argparse.Namespace) -> int:
    shown, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _run_command(args)
    finally:
        warnings.formatwarning = shown


def _run_command(args: argparse.Namespace) -> int:
    try:
        with sigterm_as_interrupt() as terminated:
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        if not terminated.is_set():
            return code
        raise Terminated  # a run that stopped as on Ctrl-C (its weights saved) and returned
    except Terminated:
        print("cnnlab: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`cnnlab eval ... | head`): stop as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 141  # 128 + SIGPIPE
    except (*_INPUT_ERRORS, OSError) as exc:
        if not isinstance(exc, _INPUT_ERRORS) and not _explained(exc):
            raise  # not the input's fault nor the disk's: a bug, with its traceback
        return _error(_one_line(exc), getattr(args, "json", False))


def _explained(exc: OSError) -> bool:
    """A full disk, a quota, a read-only file system, or any error naming its file."""
    return exc.errno in _DISK_ERRNOS or bool(exc.filename)


def _error(message: str, as_json: bool) -> int:
    print(f"cnnlab: error: {message}", file=sys.stderr)
    if as_json:
        _json_error(message)
    return 2


def _json_error(message: str) -> None:
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps({"error": message, "code": 2}), flush=True)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename or getattr(exc, "cnnlab_path", None)
        return f"{exc.strerror}: {where}" if where else f"{exc.strerror} (writing the output)"
    return " ".join(str(exc).split())
