"""``cnnlab models [PATTERN]``: the registered models with params, MACs, input size, paper."""

from __future__ import annotations

import argparse

from cnnlab.analysis import zoo_table
from cnnlab.tables import format_table, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the models (params, MACs, input size, paper)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = zoo_table(args.pattern)
    if not rows:
        raise ValueError(f"no model matches {args.pattern!r}; see `cnnlab models`")
    if args.json:
        print_json(rows)
        return 0
    table = [
        (
            r["name"],
            f"{r['params']:,}",
            _mmacs(r["macs"]),
            "x".join(map(str, r["input_size"])),
            r["year"],
            _shorten(r["paper"], 60),
        )
        for r in rows
    ]
    print(format_table(["model", "params", "MMACs", "input", "year", "paper"], table))
    if len(rows) == 1:
        print(_details(rows[0]))
    return 0


def _details(row: dict) -> str:
    """The keywords (``create_model`` / ``--model-kwargs``) and feature levels of one model."""
    keywords = ", ".join(f"{k}={v!r}" for k, v in row["keywords"].items()) or "none"
    levels = ", ".join(
        f"{f['module']} ({f['num_chs']} ch, /{f['reduction']})" for f in row["feature_info"]
    )
    lr = row.get("train_lr")
    lr_line = f"\ntraining: SGD lr {lr} unless --lr is given (the default 0.05 diverges)"
    return (
        f"\nkeywords: {keywords}\n"
        f"feature levels: {levels or 'none (no feature maps: features_only is refused)'}"
        + (lr_line if lr else "")
    )


def _mmacs(macs: int) -> str:
    millions = macs / 1e6
    return f"{millions:,.1f}" if millions >= 10 else f"{millions:.3f}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
