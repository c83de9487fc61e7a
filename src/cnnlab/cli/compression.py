"""``cnnlab compress``, ``cnnlab sensitivity`` and ``cnnlab decompress`` (Deep Compression).

cnnlab compress MODEL --checkpoint RUN --data fashion-mnist --quality 1.0 --out m.cnz
cnnlab sensitivity MODEL --checkpoint RUN --data fashion-mnist --plot sens.png
cnnlab decompress m.cnz --out m.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from cnnlab.cli._format import format_table, print_json
from cnnlab.compress.pipeline import OPTIMIZERS, SCHEDULES, CompressionConfig
from cnnlab.compress.quantize import INITS
from cnnlab.io import CnnlabError, atomic_path

# The CompressionConfig fields set by an option of the same name: (field, help, argparse keywords).
_CONFIG_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("prune_steps", "prune/retrain rounds", {"type": int}),
    ("schedule", "sparsity per round: linear, or Zhu & Gupta's cubic ramp", {"choices": SCHEDULES}),
    ("retrain_epochs", "retraining epochs per round", {"type": int}),
    ("finetune_epochs", "centroid fine-tuning epochs", {"type": int}),
    ("conv_bits", "weight-sharing bits for conv layers", {"type": int}),
    ("fc_bits", "weight-sharing bits for fc layers", {"type": int}),
    ("init", "k-means centroid initialisation", {"choices": INITS}),
    (
        "optimizer",
        "retraining optimizer: SGD + momentum + L2 (the paper's) or AdamW",
        {"choices": OPTIMIZERS},
    ),
    ("lr", "retraining learning rate", {"type": float}),
    (
        "finetune_optimizer",
        "centroid fine-tuning optimizer (default: --optimizer); adamw suits layers of very many"
        " weights per centroid",
        {"choices": OPTIMIZERS},
    ),
    ("finetune_lr", "centroid fine-tuning lr", {"type": float}),
    ("weight_decay", "weight decay in retraining", {"type": float}),
    (
        "distill",
        "weight of distillation from the uncompressed model in retraining (0: off)",
        {"type": float},
    ),
    ("distill_temperature", "distillation temperature", {"type": float}),
)


def _per_layer(values: list[str] | None, what: str, cast: type = float) -> Any:
    """``["0.9", "conv1=0.4"]`` -> ``{"*": 0.9, "conv1": 0.4}`` (None when not given)."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for item in values:
        pattern, sep, value = item.rpartition("=")
        try:
            out[pattern if sep else "*"] = cast(value)
        except ValueError:
            raise ValueError(f"--{what} takes VALUE or LAYER_PATTERN=VALUE, got {item!r}") from None
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name, e.g. lenet_300_100")
    p.add_argument("--checkpoint", required=True, help="trained weights (.safetensors or run dir)")
    p.add_argument("--data", required=True, help="fashion-mnist, synthetic or an image folder")
    p.add_argument(
        "--img-size", type=int, default=None, help="input side (default: the checkpoint's)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use the first N images of each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compress", help="Deep Compression: prune, share weights, Huffman-code into a .cnz file"
    )
    _common(p)
    p.add_argument(
        "--quality",
        action="append",
        metavar="[LAYER=]Q",
        help="prune |w| < Q x std per layer (repeatable; shell patterns for LAYER)",
    )
    p.add_argument(
        "--sparsity",
        action="append",
        metavar="[LAYER=]S",
        help="prune the fraction S of smallest weights per layer (repeatable)",
    )
    defaults = CompressionConfig()  # the config's own defaults, not a second copy here
    for name, text, kwargs in _CONFIG_OPTIONS:
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, default=getattr(defaults, name), help=text, **kwargs)
    p.add_argument("--bits", action="append", metavar="LAYER=B", help="bits for one layer")
    p.add_argument(
        "--float32-other",
        action="store_true",
        help="keep biases/BN in float32 (default: rounded to float16)",
    )
    p.add_argument("--out", required=True, help="the .cnz file to write")
    p.set_defaults(func=run_compress)

    s = subparsers.add_parser(
        "sensitivity", help="accuracy vs fraction pruned, one layer at a time (Deep Compression)"
    )
    _common(s)
    s.add_argument(
        "--fractions",
        default="0,0.25,0.5,0.75,0.85,0.9,0.95",
        help="comma-separated fractions to prune",
    )
    s.add_argument("--layers", default=None, help="comma-separated layer names (default: all)")
    s.add_argument("--plot", default=None, help="write the curves to this image (PNG/SVG/PDF)")
    s.set_defaults(func=run_sensitivity)

    d = subparsers.add_parser("decompress", help="decode a .cnz file to plain safetensors")
    d.add_argument("file", help="the .cnz file")
    d.add_argument("--out", required=True, help="the .safetensors file to write")
    d.set_defaults(func=run_decompress)


def _model_and_data(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, Any, int]:
    """The checkpoint's model and the data's loaders, at the checkpoint's input size and channels
    (a run's stored preprocessing; else the data's channels and the model's native size)."""
    from cnnlab.data import Preprocess, build_loaders, data_channels
    from cnnlab.registry import create_model, model_info
    from cnnlab.train import load_weights, read_meta

    torch.manual_seed(args.seed)
    stored = read_meta(args.checkpoint).get("preprocess")
    if stored is not None:
        pre = Preprocess.from_dict(stored)
        in_chans, img_size = pre.in_chans, args.img_size or pre.size
    else:
        in_chans = data_channels(args.data)
        img_size = args.img_size or model_info(args.model)["input_size"][1]
    train, val, classes = build_loaders(
        args.data,
        img_size=img_size,
        in_chans=in_chans,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
    )
    model = create_model(args.model, num_classes=len(classes), in_chans=in_chans)
    load_weights(model, args.checkpoint)
    return model, train, val, img_size


def run_compress(args: argparse.Namespace) -> int:
    from cnnlab.compress import compress, layer_table, model_bytes, save

    cfg = CompressionConfig(
        quality=_per_layer(args.quality, "quality"),
        sparsity=_per_layer(args.sparsity, "sparsity"),
        bits=_per_layer(args.bits, "bits", int),
        half_precision_other=not args.float32_other,
        **{name: getattr(args, name) for name, _, _ in _CONFIG_OPTIONS},
    )
    if cfg.bits and "*" in cfg.bits:
        raise ValueError("--bits takes LAYER=B; use --conv-bits / --fc-bits for all layers")
    cfg.check()
    model, train, val, img_size = _model_and_data(args)
    size_before = model_bytes(model)
    stages = compress(model, train, val, cfg, log=None if args.json else print)
    # The file carries what a user of the model needs (its input size, its accuracy); the
    # stage-by-stage log is printed, not shipped: every header byte counts in the ratio.
    stored = stages[-1]
    extra = {"img_size": img_size, "top1": stored["top1"], "top5": stored["top5"]}
    report = save(model, args.out, extra=extra)
    table = layer_table(report, model, size_before)
    result = {"model": args.model, "out": args.out, "stages": stages, **table}
    if args.json:
        print_json(result)
        return 0
    print()
    print(format_layer_table(table))
    print()
    print(
        format_table(
            ["stage", "top-1", "top-5", "weights kept"],
            [
                (s["stage"], f"{s['top1']:.2f}", f"{s['top5']:.2f}", f"{100 * s['kept']:.1f}%")
                for s in stages
            ],
        )
    )
    t = table["total"]
    print(
        f"\nsize {t['size_before']:,} B -> {t['size_after']:,} B ({t['ratio']:.1f}x; "
        f"pruning only {t['ratio_pruning_only']:.1f}x, pruning + quantization "
        f"{t['ratio_pruning_quantization']:.1f}x, computed); wrote {args.out}"
    )
    return 0


def format_layer_table(table: dict[str, Any]) -> str:
    """Deep Compression's Tables 2-3 layout."""

    def bits(fixed: Any, coded: Any) -> str:
        return "-" if coded is None else f"{fixed} -> {coded:.1f}"

    rows = [
        (
            r["layer"],
            f"{r['weights']:,}",
            f"{100 * r['kept']:.1f}%",
            bits(r["weight_bits"], r["weight_bits_huffman"]),
            bits(r["index_bits"], r["index_bits_huffman"]),
            f"{r['bytes']:,}",
            f"{100 * r['ratio']:.2f}%",
        )
        for r in table["layers"]
    ]
    t = table["total"]
    rows.append(("other (bias, BN, header)", "", "", "", "", f"{t['other_bytes']:,}", ""))
    rows.append(
        (
            "total",
            f"{t['weights']:,}",
            f"{100 * t['kept']:.1f}%",
            f"{t['weight_bits_huffman']:.1f}",
            f"{t['index_bits_huffman']:.1f}",
            f"{t['size_after']:,}",
            f"{100 / t['ratio']:.2f}% ({t['ratio']:.1f}x)",
        )
    )
    headers = [
        "layer",
        "weights",
        "kept",
        "weight bits P+Q -> H",
        "index bits -> H",
        "bytes",
        "size",
    ]
    return format_table(headers, rows)


def run_sensitivity(args: argparse.Namespace) -> int:
    from cnnlab.analysis.compare import check_plot_path
    from cnnlab.compress import sensitivity
    from cnnlab.train import evaluate

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise ValueError(
            f"--fractions must be comma-separated numbers, got {args.fractions!r}"
        ) from None
    if args.plot:  # before the sweep, not after it
        check_plot_path(args.plot)
    model, _, val, _ = _model_and_data(args)
    layers = args.layers.split(",") if args.layers else None
    curves = sensitivity(model, lambda m: 100 * evaluate(m, val)["top1"], fractions, layers)
    if args.plot:
        _plot(curves, args.plot, args.model)
    if args.json:
        print_json({"model": args.model, "curves": curves})
        return 0
    headers = ["layer", *(f"{100 * f:g}%" for f in fractions)]
    print(
        format_table(
            headers, [(name, *(f"{acc:.2f}" for _, acc in curve)) for name, curve in curves.items()]
        )
    )
    print("top-1 (%) with the given fraction of the layer's smallest weights pruned")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _plot(curves: dict[str, list[tuple[float, float]]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([100 * f for f, _ in curve], [a for _, a in curve], marker="o", label=name)
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title}: pruning sensitivity per layer")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".").lower())
    plt.close(fig)


def run_decompress(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from cnnlab.compress import read, rebuild_model
    from cnnlab.train import save_weights

    if not args.out.endswith(".safetensors"):
        raise CnnlabError(f"--out must end in .safetensors, got {args.out!r}")
    header, state = read(args.file)
    name = header.get("model")
    if isinstance(name, str):  # a registry model: a checkpoint `cnnlab eval` / `train` read
        model = rebuild_model(header, state, source=str(args.file))
        save_weights(model, args.out, meta={"model": name, "source": str(args.file)})
    else:
        with atomic_path(args.out) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    n = sum(t.numel() for t in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {n:,} values" + (f" ({name})" if name else ""))
    return 0
