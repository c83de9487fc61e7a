"""Command-line options generated from a config dataclass (its fields are the options)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import typing

__all__ = ["add_config_options", "config_from_args", "key_value"]


def add_config_options(
    parser: argparse.ArgumentParser, config: type, skip: tuple[str, ...] = ()
) -> None:
    """One ``--field-name`` option per field of the dataclass ``config``, with the field's
    default, type and ``metadata`` (help, choices, metavar); a bool field is a switch
    (``--no-field-name`` where it defaults to True), a dict field takes ``KEY=VALUE`` pairs
    (timm's ``--model-kwargs``)."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(f.metadata)
        if "help" in kwargs:  # plain text in the config; argparse formats it with %
            kwargs["help"] = kwargs["help"].replace("%", "%%")
        if hints[f.name] is bool and f.default is True:  # on by default: --no-NAME
            no_flag = "--no-" + f.name.replace("_", "-")
            parser.add_argument(no_flag, dest=f.name, action="store_false", **kwargs)
            continue
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if typing.get_origin(hints[f.name]) is dict:
            parser.add_argument(flag, nargs="+", type=key_value, metavar="KEY=VALUE", **kwargs)
            continue
        kind = next(t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if t is not None)
        if f.default is not None and "help" in kwargs:
            kwargs["help"] += f" (default {f.default})"
        parser.add_argument(flag, type=kind, default=f.default, **kwargs)


def key_value(text: str) -> tuple[str, typing.Any]:
    """``"KEY=VALUE"`` -> (KEY, VALUE as a Python literal: 0.1, True, None; else the text)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return key, value


def config_from_args(config: type, args: argparse.Namespace, **given: typing.Any) -> typing.Any:
    """``config(**given, **{field: args.field})`` for every field the parser has (``KEY=VALUE``
    pairs become a dict; a dict option not given keeps the field's default)."""
    names = {f.name for f in dataclasses.fields(config)} - set(given)
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    for name, value in list(values.items()):
        if isinstance(value, list) and all(isinstance(v, tuple) for v in value):
            values[name] = dict(value)
        elif value is None and typing.get_origin(typing.get_type_hints(config)[name]) is dict:
            del values[name]
    return config(**given, **values)
