"""``cnnlab summary``, ``cnnlab compare`` and ``cnnlab gradients``: measuring models."""

from __future__ import annotations

import argparse
import csv
import re
import sys

import torch

import cnnlab
from cnnlab.analysis.compare import SPREAD_FLAG, compare_models
from cnnlab.analysis.gradients import AUX_WEIGHT, batches_for, gradient_norms
from cnnlab.analysis.profile import (
    Profile,
    check_input_size,
    check_memory,
    measure_memory,
    profile,
)
from cnnlab.cli.checks import check_numbers
from cnnlab.cli.config_options import key_value
from cnnlab.devices import resolve_device
from cnnlab.plots import check_plot_path, plot_comparison, plot_gradients
from cnnlab.registry import COMMON_KEYWORDS, build_model, model_info
from cnnlab.tables import format_table, human, print_json

MIB = 2**20
RANDOM_CLASSES = 10  # labels of the fixed random batch (--data random) of a fresh model
DEVICE_HELP = "cpu, cuda or cuda:N (default: a GPU if there is one)"
# create_model's keywords that summary sets itself (--input the channels), or that do not
# give a classifier to profile; num_classes and init are fine as model keywords here.
SUMMARY_FIXED = tuple(k for k in COMMON_KEYWORDS if k not in ("num_classes", "init"))


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_summary(subparsers)
    _register_compare(subparsers)
    _register_gradients(subparsers)


def _register_summary(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary", help="per-layer params, MACs, activations and memory of a model"
    )
    p.add_argument("model", help="registered model name (see `cnnlab models`)")
    p.add_argument("--input", help="input size CxHxW (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--depth", type=int, default=2, help="show modules down to this depth (2)")
    p.add_argument(
        "--model-kwargs",
        nargs="+",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="the model's own keywords, e.g. shortcut=A (see `cnnlab models NAME`)",
    )
    p.add_argument(
        "--checkpoint",
        help="any saved model (run folder, .safetensors, .cnz, torchvision:PATH, timm:PATH)",
    )
    p.add_argument(
        "--measure-memory",
        action="store_true",
        help="also run a real forward and training step on --device and report their peak memory",
    )
    p.add_argument("--device", default=None, help=f"for --measure-memory: {DEVICE_HELP}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_summary)


def _register_compare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="one row per model: params, MACs, memory, latency")
    p.add_argument("patterns", nargs="*", default=["*"], help="model names or wildcards")
    p.add_argument(
        "--measure-latency",
        action="store_true",
        help="time a CPU forward at batch 1 and images/s at --batch-size",
    )
    p.add_argument("--batch-size", type=int, default=8, help="throughput batch (default 8)")
    p.add_argument("--plot", help="write a bubble chart to this .png/.svg/.pdf file")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=run_compare)


def _register_gradients(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gradients", help="per-layer gradient norms at init and after N training steps"
    )
    p.add_argument("models", nargs="+", help="one or more registered model names")
    p.add_argument(
        "--checkpoint",
        help="start from these weights (one model only): any saved model",
    )
    p.add_argument("--steps", type=int, default=0, help="SGD steps before the second look")
    p.add_argument(
        "--data",
        default="random",
        help="'random' (a fixed random batch), 'fashion-mnist', 'synthetic' or an image folder",
    )
    p.add_argument("--input", help="input size CxHxW (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    p.add_argument("--clip-grad-norm", type=float, default=None, help="clip the total norm")
    p.add_argument(
        "--aux-weight",
        type=float,
        default=AUX_WEIGHT,
        metavar="W",
        help=f"weight of each auxiliary loss (GoogLeNet's heads; default {AUX_WEIGHT} as in "
        "training, Szegedy et al. 2015 Sec. 5); 0 leaves them out",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--plot", help="write the per-layer norms to this .png/.svg/.pdf file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_gradients)


def parse_input(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """'3x224x224' -> (3, 224, 224); '224' -> the default channels at 224x224."""
    if text is None:
        return tuple(default)
    if re.fullmatch(r"\d+", text):
        return (default[0], int(text), int(text))
    if not re.fullmatch(r"\d+x\d+x\d+", text):
        raise ValueError(f"--input must look like 3x224x224 (CxHxW), got {text!r}")
    size = tuple(int(v) for v in text.split("x"))
    if 0 in size:
        raise ValueError(f"--input sizes must be positive, got {text!r}")
    return size


def _build(name: str, input_text: str | None, **kwargs) -> tuple[torch.nn.Module, tuple]:
    """The model on ``meta`` (no weights allocated) and its checked input size (default: the
    built model's own, which keywords such as a detector's ``image_size`` set)."""
    size = parse_input(input_text, model_info(name)["input_size"])  # unknown names fail here
    with torch.device("meta"):
        model = build_model(name, in_chans=size[0], **kwargs)
    if input_text is None:
        size = tuple(model.input_size)
    return model, check_input_size(model, size)


def _load(name: str, checkpoint: str, input_text: str | None) -> tuple[torch.nn.Module, tuple]:
    """A saved model and its checked input size (default: the size it was trained at)."""
    model, meta = cnnlab.load(checkpoint, name)
    pre = meta["preprocess"]
    size = parse_input(input_text, (pre["in_chans"], pre["size"], pre["size"]))
    return model, check_input_size(model, size)


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def summary_text(name: str, prof: Profile, depth: int) -> str:
    rows = []
    shown = [r for r in prof.layers if r.depth <= depth]
    for r in shown:
        collapsed = r.is_leaf or r.depth == depth
        rows.append(
            (
                "  " * (r.depth - 1)
                + f"{r.name.rsplit('.', 1)[-1]} ({r.type}{'' if r.ran else ', not run'})",
                "x".join(map(str, r.output_shape)) if r.output_shape else "-",
                f"{r.params:,}" if collapsed else "--",
                human(r.macs) if collapsed else "--",
                f"{r.activations:,}" if collapsed else "--",
            )
        )
    table = format_table(["layer (type)", "output shape", "params", "MACs", "activations"], rows)
    size = "x".join(map(str, prof.input_size))
    lines = [
        f"{name}: input {prof.batch_size}x{size}",
        table,
        "",
        f"params:            {prof.params:,} ({prof.trainable_params:,} trainable)",
        f"MACs:              {prof.macs:,} ({human(prof.macs)}); FLOPs = 2 x MACs = "
        f"{human(prof.flops)}",
        f"activations:       {prof.activations:,} values (input included)",
        f"param size:        {_mib(prof.param_bytes)} (+ {_mib(prof.buffer_bytes)} buffers)",
        f"forward memory:    {_mib(prof.forward_bytes)} (activations kept for backward)",
        f"training memory:   {_mib(prof.training_bytes['sgd_momentum'])} SGD-momentum, "
        f"{_mib(prof.training_bytes['adam'])} Adam (activations, params, grads, state)",
    ]
    if not all(r.ran for r in prof.layers):
        lines.append(
            "not run:           modules the eval-mode forward does not call (params counted, "
            "no MACs or activations)"
        )
    if prof.uncounted:
        kinds = ", ".join(f"{k} x{v}" for k, v in prof.uncounted.items())
        lines.append(
            f"NOT COUNTED:       {kinds} (neither Conv/Linear nor known free: MACs missing)"
        )
    if prof.measured:
        m = prof.measured
        rest = prof.param_bytes + prof.buffer_bytes + prof.input_bytes
        lines += [
            f"measured forward:  {_mib(m['forward_held_bytes'])} held at the end, "
            f"{_mib(m['forward_peak_bytes'])} peak (analytic "
            f"{_mib(prof.forward_bytes - prof.input_bytes)}, input excluded)",
            f"measured training: {_mib(m['training_peak_bytes'])} peak above params+input "
            f"(analytic {_mib(prof.training_bytes['sgd_momentum'] - rest)})",
        ]
    return "\n".join(lines)


def run_summary(args: argparse.Namespace) -> int:
    if args.depth < 1:
        raise ValueError(f"--depth must be >= 1, got {args.depth}")
    device = resolve_device(args.device)
    kwargs = dict(args.model_kwargs)
    if fixed := [k for k in SUMMARY_FIXED if k in kwargs]:
        raise ValueError(
            f"--model-kwargs takes the model's own keywords (see `cnnlab models {args.model}`), "
            f"not {', '.join(fixed)}; --input sets the channels"
        )
    if args.checkpoint and kwargs:
        raise ValueError("--model-kwargs builds a fresh model; a --checkpoint carries its own")
    if args.checkpoint:
        model, size = _load(args.model, args.checkpoint, args.input)
    else:
        model, size = _build(args.model, args.input, **kwargs)
    prof = profile(model, size, args.batch_size)
    if args.measure_memory:
        torch.manual_seed(0)
        real = model if args.checkpoint else build_model(args.model, in_chans=size[0], **kwargs)
        prof.measured = measure_memory(real, size, args.batch_size, device=device)
    if args.json:
        print_json({"model": args.model, **prof.to_dict()})
    else:
        print(summary_text(args.model, prof, args.depth))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    check_numbers(args)
    if args.plot:
        check_plot_path(args.plot)
    rows = compare_models(
        args.patterns, latency=args.measure_latency, throughput_batch=args.batch_size
    )
    if args.plot:
        plot_comparison(rows, args.plot)
    if args.json:
        print_json(rows)
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "input_size": "x".join(map(str, r["input_size"]))})
    else:
        headers = [
            "model",
            "input",
            "params",
            "MMACs",
            "activations",
            "fp32 size",
            "forward/img",
            "train/img (SGD)",
        ]
        if args.measure_latency:
            headers += ["latency b1 (ms)", "±IQR", f"img/s b{args.batch_size}"]
        table = []
        for r in rows:
            line = [
                r["model"],
                "x".join(map(str, r["input_size"])),
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:,.1f}",
                f"{r['activations']:,}",
                _mib(r["param_bytes"]),
                _mib(r["forward_bytes"]),
                _mib(r["training_bytes"]),
            ]
            if args.measure_latency:
                flag = " !" if r["latency_unstable"] else ""
                line += [f"{r['latency_ms']:.2f}", f"{r['latency_iqr_ms']:.2f}{flag}"]
                line.append(f"{r['images_per_s']:.1f}")
            table.append(line)
        print(format_table(headers, table))
        print("MACs = multiply-accumulates of Conv+Linear at batch 1 (FLOPs = 2 x MACs)")
        if args.measure_latency:
            print(_latency_note(rows))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _latency_note(rows: list[dict]) -> str:
    """What the latency columns mean, and a warning when a row's spread is large."""
    text = (
        f"latency: median of {rows[0]['latency_rounds']} rounds on this CPU, ±IQR its "
        "interquartile range"
    )
    unstable = [r["model"] for r in rows if r["latency_unstable"]]
    if unstable:
        text += (
            f"\n! spread above {SPREAD_FLAG:.0%} of the median ({', '.join(unstable)}): the "
            "machine was busy; rerun before trusting those rows"
        )
    return text


def _thirds(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last third of the layers."""
    third = max(1, len(values) // 3)
    return sum(values[:third]) / third, sum(values[-third:]) / third


def run_gradients(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.plot:
        check_plot_path(args.plot)
    check_numbers(args)
    if args.checkpoint and len(args.models) != 1:
        raise ValueError("--checkpoint holds one model; name only that one")
    if not 0 <= args.aux_weight < float("inf"):
        raise ValueError(f"--aux-weight must be >= 0 and finite, got {args.aux_weight}")
    reports = {}
    for name in args.models:
        if args.checkpoint:
            model, size = _load(name, args.checkpoint, args.input)
        else:
            model, size = _build(name, args.input)
        check_memory(model, size, args.batch_size, device)
        n = model.num_classes if args.checkpoint else RANDOM_CLASSES
        batches, num_classes = batches_for(
            args.data, size, args.batch_size, args.steps, args.seed, num_classes=n
        )
        if args.checkpoint and num_classes != n:
            raise ValueError(f"{args.checkpoint} has {n} classes, {args.data!r} has {num_classes}")
        if not args.checkpoint:
            torch.manual_seed(args.seed)
            model = build_model(name, num_classes=num_classes, in_chans=size[0])
        reports[name] = gradient_norms(
            model,
            batches,
            args.steps,
            lr=args.lr,
            clip_grad_norm=args.clip_grad_norm,
            device=device,
            aux_weight=args.aux_weight,
        )
    if args.plot:
        plot_gradients(reports, args.plot)
    if args.json:
        print_json({name: r.to_dict() for name, r in reports.items()})
        return 0
    _print_gradients(reports)
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _ratio(first: float, last: float) -> str:
    """first / last, or why there is none (a loss of 0, as on data of one class, has no
    gradient to compare)."""
    if last == 0:
        return "undefined (no gradient in the last third)"
    return f"{first / last:.3g}"


def _print_gradients(reports: dict) -> None:
    """Each model's first third of layers against its last third, at init and after."""
    for name, r in reports.items():
        first, last = _thirds(r.init)
        aux = f"; {r.aux_outputs} auxiliary losses x {r.aux_weight:g}" if r.aux_outputs else ""
        print(f"{name}: {len(r.layers)} weight layers, mean ||dL/dW|| at init{aux}")
        rows = [("first third (input side)", f"{first:.3g}"), ("last third", f"{last:.3g}")]
        print(format_table(["layers", "mean grad norm"], rows))
        print(f"  ratio first/last at init: {_ratio(first, last)}")
        if r.final is not None:
            first, last = _thirds(r.final)
            clipped = f" (clipped to {r.clip_grad_norm:g})" if r.clip_grad_norm else ""
            print(
                f"  after {r.steps} steps: first/last {_ratio(first, last)}; loss "
                f"{r.losses[0]:.3f} -> {r.losses[-1]:.3f}; max total norm "
                f"{max(r.total_norms):.3g}{clipped}"
            )
