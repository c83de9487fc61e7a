"""Command-line options generated from a config dataclass (its fields are the options)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

__all__ = ["add_config_options", "config_from_args"]


def add_config_options(
    parser: argparse.ArgumentParser, config: type, skip: tuple[str, ...] = ()
) -> None:
    """One ``--field-name`` option per field of the dataclass ``config``, with the field's
    default, type and ``metadata`` (help, choices, metavar); a bool field is a switch."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(f.metadata)
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        kind = next(t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if t is not None)
        if f.default is not None and "help" in kwargs:
            kwargs["help"] += f" (default {f.default})"
        parser.add_argument(flag, type=kind, default=f.default, **kwargs)


def config_from_args(config: type, args: argparse.Namespace, **given: typing.Any) -> typing.Any:
    """``config(**given, **{field: args.field})`` for every field the parser has."""
    names = {f.name for f in dataclasses.fields(config)} - set(given)
    return config(**given, **{n: getattr(args, n) for n in names if hasattr(args, n)})
