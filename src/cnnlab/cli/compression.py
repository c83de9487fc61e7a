"""``cnnlab compress``, ``cnnlab sensitivity`` and ``cnnlab decompress`` (Deep Compression).

cnnlab compress MODEL --checkpoint RUN --data fashion-mnist --out m.cnz   (the default recipe)
cnnlab sensitivity MODEL --checkpoint RUN --data fashion-mnist --plot sens.png
cnnlab decompress m.cnz --out m.safetensors
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import cnnlab
from cnnlab import plots
from cnnlab.cli.checks import check_numbers
from cnnlab.cli.config_options import add_config_options, config_from_args
from cnnlab.compress import CompressionConfig, compress, layer_table, model_bytes, save, sensitivity
from cnnlab.compress.pipeline import check_config, on_device
from cnnlab.compress.prune import parse_per_layer, prunable_layers
from cnnlab.devices import resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_bytes, check_output
from cnnlab.saved import read_cnz
from cnnlab.saved import save as save_checkpoint
from cnnlab.tables import format_table, note, print_json
from cnnlab.train import evaluate, model_and_loaders

# CompressionConfig fields with an option of their own below (per-layer lists, --float32-other).
_NOT_OPTIONS = ("quality", "sparsity", "bits", "half_precision_other", "extra")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name, e.g. lenet_300_100")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="any saved model: run folder, .safetensors, .cnz, torchvision:PATH, timm:PATH",
    )
    p.add_argument("--data", required=True, help="fashion-mnist, synthetic or an image folder")
    p.add_argument(
        "--img-size", type=int, default=None, help="input side (default: the checkpoint's)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use the first N images of each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: a GPU if there is one)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


class _Progress:
    """One ``cnnlab:`` line per step on stderr; a tqdm bar instead when stderr is a terminal."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.done, self.what, self.bar = total, 0, what, None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, file=sys.stderr, leave=False)

    def __call__(self, message: str) -> None:
        self.done += 1
        if self.bar is None:
            note(f"{self.what} [{self.done}/{self.total}] {message}")
        else:
            self.bar.set_postfix_str(message, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_common(args: argparse.Namespace) -> Any:
    """The numeric options every command here takes, and the device (before any work)."""
    check_numbers(args)
    return resolve_device(args.device)


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
    add_config_options(p, CompressionConfig, skip=_NOT_OPTIONS)
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
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=run_decompress)


def _log(args: argparse.Namespace) -> Any:
    return None if args.json else print


def run_compress(args: argparse.Namespace) -> int:
    device = _check_common(args)
    check_output(args.out)  # before the data, the baseline and the pipeline
    if not args.out.endswith(".cnz"):  # a .cnz named .safetensors fools other tools
        raise CnnlabError(f"--out must end in .cnz, got {args.out!r} (`cnnlab decompress` "
                          "writes .safetensors)")  # fmt: skip
    cfg = config_from_args(
        CompressionConfig,
        args,
        quality=parse_per_layer(args.quality, "quality"),
        sparsity=parse_per_layer(args.sparsity, "sparsity"),
        bits=parse_per_layer(args.bits, "bits", int),
        half_precision_other=not args.float32_other,
    )
    if cfg.bits and "*" in cfg.bits:
        raise ValueError("--bits takes LAYER=B; use --conv-bits / --fc-bits for all layers")
    model, meta, train, val = model_and_loaders(
        args.checkpoint, args.data, args.model, img_size=args.img_size,
        batch_size=args.batch_size, limit=args.limit, seed=args.seed, log=note,
    )  # fmt: skip
    check_config(model, cfg)  # every layer name, range and the recipe: before the baseline
    size_before = model_bytes(model)
    epochs = cfg.prune_steps * cfg.retrain_epochs + cfg.finetune_epochs
    progress = _Progress(epochs, "compress")
    try:
        result = compress(model, train, val, cfg, device=str(device), log=_log(args),
                          progress=progress)  # fmt: skip
    finally:
        progress.close()
    output = _store(model, meta, args, result, size_before)
    if args.json:
        print_json(output)
        return 0
    _print_compress(output, args.out)
    return 0


def _store(
    model: Any, meta: dict, args: argparse.Namespace, result: dict, size_before: int
) -> dict[str, Any]:
    """Write the .cnz file; the report: model, out, recipe, stages, layers and totals."""
    stored = result["stages"][-1]
    # What a user of the model needs travels in the file; the stage log is printed only.
    preprocess = {**meta["preprocess"], "size": args.img_size or meta["preprocess"]["size"]}
    extra = {
        "img_size": preprocess["size"],
        "top1": stored["top1"],
        "top5": stored["top5"],
        "class_names": meta["class_names"],
        "preprocess": preprocess,
        "recipe": result["recipe"],
    }
    report = save(model, args.out, extra=extra)
    table = layer_table(report, model, size_before)
    return {"model": meta["model"], "out": args.out, **result, **table}


def _print_compress(result: dict[str, Any], out: str) -> None:
    recipe = result["recipe"]
    print(f"\nrecipe: {recipe['source']}")
    print(
        format_table(
            ["layer", "kept", "bits"],
            [
                (n, f"{100 * (1 - recipe['sparsity'].get(n, 0.0)):.1f}%", b)
                for n, b in recipe["bits"].items()
            ],
        )
    )
    print()
    print(format_layer_table(result))
    print()
    rows = [
        (s["stage"], f"{s['top1']:.2f}", f"{s['top5']:.2f}", f"{100 * s['kept']:.1f}%")
        for s in result["stages"]
    ]
    print(format_table(["stage", "top-1", "top-5", "weights kept"], rows))
    t = result["total"]
    print(
        f"\nsize {t['size_before']:,} B -> {t['size_after']:,} B ({t['ratio']:.1f}x; "
        f"pruning only {t['ratio_pruning_only']:.1f}x, pruning + quantization "
        f"{t['ratio_pruning_quantization']:.1f}x, computed); wrote {out}"
    )


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


def _fractions(text: str) -> list[float]:
    try:
        fractions = [float(f) for f in text.split(",")]
    except ValueError:
        raise ValueError(f"--fractions must be comma-separated numbers, got {text!r}") from None
    bad = [f for f in fractions if not (math.isfinite(f) and 0 <= f < 1)]
    if bad:
        raise ValueError(f"--fractions must lie in [0, 1), got {bad}")
    return fractions


def run_sensitivity(args: argparse.Namespace) -> int:
    device = _check_common(args)
    fractions = _fractions(args.fractions)
    if args.plot:  # before the sweep, not after it
        plots.check_plot_path(args.plot)
    model, _, _, val = model_and_loaders(
        args.checkpoint, args.data, args.model, img_size=args.img_size,
        batch_size=args.batch_size, limit=args.limit, seed=args.seed, log=note,
    )  # fmt: skip
    known = list(prunable_layers(model))
    layers = args.layers.split(",") if args.layers else known
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r}; prunable layers: {known}")
    curves = _sweep(model, val, fractions, layers, device)
    if args.plot:
        plots.plot_sensitivity(curves, args.plot, args.model)
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


def _sweep(model: Any, val: Any, fractions: list[float], layers: list[str], device: Any) -> dict:
    """:func:`cnnlab.compress.sensitivity` with one progress line per evaluation; the model
    is pruned on the CPU and each evaluation runs on ``device``."""
    steps = iter([(n, f) for n in layers for f in fractions])
    progress = _Progress(len(layers) * len(fractions), "sensitivity")

    def top1(m: Any) -> float:
        acc = 100 * evaluate(on_device(m, device), val, device=device)["top1"]
        name, fraction = next(steps)
        progress(f"{name} {100 * fraction:g}% pruned: top-1 {acc:.2f}")
        return acc

    try:
        return sensitivity(model, top1, fractions, layers)
    finally:
        progress.close()


def run_decompress(args: argparse.Namespace) -> int:
    """A registry model becomes a full cnnlab checkpoint (every command takes it); a .cnz of
    some other network becomes plain safetensors."""
    from safetensors.torch import save as st_save

    if not args.out.endswith(".safetensors"):
        raise CnnlabError(f"--out must end in .safetensors, got {args.out!r}")
    check_output(args.out)
    header, state = read_cnz(args.file)  # shapes checked against the model before decoding
    name = header.get("model")
    if isinstance(name, str):
        model, meta = cnnlab.load(args.file)
        kept = {k: meta[k] for k in ("img_size", "top1", "top5", "recipe") if k in meta}
        save_checkpoint(
            model, args.out, class_names=meta["class_names"], preprocess=meta["preprocess"],
            meta={**kept, "source": str(args.file)},
        )  # fmt: skip
    else:
        atomic_write_bytes(args.out, st_save({k: v.contiguous() for k, v in state.items()}))
    n = sum(t.numel() for t in state.values())
    if args.json:
        print_json({"out": args.out, "model": name, "tensors": len(state), "values": n})
        return 0
    print(f"wrote {args.out}: {len(state)} tensors, {n:,} values" + (f" ({name})" if name else ""))
    return 0
