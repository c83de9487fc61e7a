"""``cnnlab experiment list | run NAME``: the seed articles' claims, measured, with verdicts."""

from __future__ import annotations

import argparse
from typing import Any

from cnnlab.experiments import list_experiments, run_experiment
from cnnlab.tables import format_table, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="the seeds' claims, measured, with a verdict")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="the experiments: name, seed, claim")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)
    run = sub.add_parser("run", help="run one experiment, write NAME.json and NAME.png")
    run.add_argument("name", help="an experiment name (see `cnnlab experiment list`)")
    scale = run.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="the smoke-test scale (CI)")
    scale.add_argument("--full", action="store_true", help="the paper-scale version")
    run.add_argument("--out", default="runs/experiments", help="folder for NAME.json, NAME.png")
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.set_defaults(func=run_one)


def run_list(args: argparse.Namespace) -> int:
    rows = [e.describe() for e in list_experiments()]
    if args.json:
        print_json(rows)
        return 0
    table = [(r["name"], r["seed"], _shorten(r["claim"], 90)) for r in rows]
    print(format_table(["experiment", "seed", "claim"], table))
    return 0


def run_one(args: argparse.Namespace) -> int:
    scale = "quick" if args.quick else "full" if args.full else "default"
    result = run_experiment(args.name, scale, args.out)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['name']} (seed {result['seed']}; {result['source']})")
    print(f"claim: {result['claim']}\n")
    print(format_table(["figure", "value"], list(_flatten(result["figures"]))))
    print(f"(per-layer and per-row lists: {result['json']})")
    print(f"\nrule: {result['rule']}")
    print(f"verdict: {result['verdict'].upper()}: {result['reason']}")
    print(f"written: {result['json']}, {result['png']}")
    return 0


def _flatten(data: Any, prefix: str = "") -> Any:
    """(dotted key, value) rows of nested figures; lists of rows (per layer, per table row)
    are left to the JSON file."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not (isinstance(value, list) and value and isinstance(value[0], dict)):
                yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, _format(data)


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
