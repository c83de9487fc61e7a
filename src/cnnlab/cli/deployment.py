"""``cnnlab export`` (ONNX, verified with onnxruntime) and ``cnnlab bench`` (inference speed)."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys

import cnnlab
from cnnlab.deploy import (
    BACKENDS,
    FORMATS,
    MATMUL_SIZE,
    TORCHVISION_DETECTORS,
    benchmark,
    export_onnx,
)
from cnnlab.devices import PRECISIONS, resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.tables import format_table, human, print_json
from cnnlab.timing import WAIT_POLICIES, wait_policy


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX (BatchNorm folded), verified with onnxruntime"
    )
    p.add_argument("model", help="model name, see `cnnlab models`")
    p.add_argument(
        "--checkpoint",
        help="any saved model: run folder, .safetensors, .cnz, torchvision:PATH, timm:PATH",
    )
    p.add_argument("--format", default="onnx", help="output format (only 'onnx')")
    p.add_argument("--out", required=True, help="output file, e.g. resnet50.onnx")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument(
        "--img-size", type=int, help="input side (default: the checkpoint's, else the model's)"
    )
    p.add_argument(
        "--external-data", action="store_true", help="weights in OUT.data beside the graph"
    )
    p.add_argument("--atol", type=float, default=1e-4, help="verification tolerance")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--csv", action="store_true", help="one comma-separated row")
    p.set_defaults(func=run_export)
    _register_bench(subparsers)


def _register_bench(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser("bench", help="inference / training speed, vs torchvision and peak")
    b.add_argument("patterns", nargs="*", default=["*"], metavar="PATTERN", help="model names")
    b.add_argument("--batch-size", default="1", help="comma-separated, e.g. 1,16")
    b.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    b.add_argument(
        "--wait-policy",
        choices=WAIT_POLICIES,
        help="OpenMP threads spin (active) or sleep (passive) while they wait; sets "
        "OMP_WAIT_POLICY for a fresh process (default: the environment's)",
    )
    b.add_argument(
        "--backend",
        default="eager",
        help="comma-separated from eager, fused, compile, onnxruntime; or 'all'",
    )
    b.add_argument("--vs", choices=["torchvision"], help="interleave the peer's model")
    b.add_argument("--checkpoint", help="time this saved model (any kind; one model pattern only)")
    b.add_argument(
        "--img-size", type=int, help="input side (default: the checkpoint's, else the model's)"
    )
    b.add_argument("--repeats", type=int, default=10, help="timed rounds")
    b.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    b.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (cuda: eager, fused and compile; the peak is the GPU's)",
    )
    b.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: eager, fused, compile, torchvision, training and the matmul peak under bf16 "
        "autocast (onnxruntime stays fp32); auto: bf16 where the device computes it natively",
    )
    b.add_argument("--no-train", action="store_true", help="skip the training throughput")
    b.add_argument(
        "--no-channels-last", action="store_true", help="fused/compile in NCHW, not NHWC"
    )
    out = b.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--csv", action="store_true", help="comma-separated output")
    b.set_defaults(func=run_bench)


def run_export(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise CnnlabError(f"unsupported format {args.format!r}; choose from {', '.join(FORMATS)}")
    if not args.out.endswith(".onnx"):  # what onnxruntime, Netron and the deploy tools expect
        raise CnnlabError(f"--out must end in .onnx, got {args.out!r}")
    img_size = args.img_size
    if args.checkpoint:
        model, meta = cnnlab.load(args.checkpoint, args.model)
        img_size = img_size or meta["preprocess"]["size"]
    else:
        model = cnnlab.create_model(args.model)
    result = export_onnx(
        model,
        args.out,
        img_size=img_size,
        dynamic_batch=args.dynamic_batch,
        external_data=args.external_data,
        atol=args.atol,
    )
    if args.json:
        print_json(vars(result))
        return 0
    if args.csv:
        row = {**vars(result), "input_shape": "x".join(map(str, result.input_shape))}
        writer = csv.DictWriter(sys.stdout, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
        return 0
    shape = "x".join("N" if d < 0 else str(d) for d in result.input_shape)
    where = result.path + (f" (+ {result.data_path})" if result.data_path else "")
    print(
        f"wrote {where}: input {shape}, {human(result.bytes, 'B')}, "
        f"onnxruntime vs PyTorch max |diff| {result.max_abs_diff:.2g}"
    )
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CnnlabError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise CnnlabError(f"{what} is empty")
    return values


def run_bench(args: argparse.Namespace) -> int:
    if args.wait_policy and wait_policy() != args.wait_policy:
        # OpenMP reads the policy once, when torch loads: the benchmark runs in a new process
        env = {**os.environ, "OMP_WAIT_POLICY": args.wait_policy.upper()}
        return subprocess.run([sys.executable, "-m", "cnnlab", *args.argv], env=env).returncode
    device = resolve_device(args.device)
    backends = list(BACKENDS) if args.backend == "all" else args.backend.split(",")
    quiet = args.json or args.csv
    results = benchmark(
        args.patterns,
        batch_sizes=_int_list(args.batch_size, "--batch-size"),
        backends=[b.strip() for b in backends],
        threads=args.threads,
        img_size=args.img_size,
        vs_torchvision=args.vs == "torchvision",
        train=not args.no_train,
        warmup=args.warmup,
        repeats=args.repeats,
        channels_last=not args.no_channels_last,
        checkpoint=args.checkpoint,
        progress=None if quiet else lambda m: print(f"... {m}", file=sys.stderr),
        device=device,
        precision=args.precision,
    )
    rows = [r.as_dict() for r in results]
    if args.json:
        print_json(rows)
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(_table(results, args.vs == "torchvision"))
        print(_peer_note(results, args.vs == "torchvision"), end="")
        print(_contention_note(results), end="")
    return 0


def _peer_note(results: list, vs: bool) -> str:
    """A line per detector timed against torchvision's peer (another network for SSDLite)."""
    peers = {r.model: TORCHVISION_DETECTORS[r.model] for r in results
             if vs and r.model in TORCHVISION_DETECTORS}  # fmt: skip
    return "".join(f"tv: {model} against torchvision's {peer} (raw outputs, no resize or NMS, "
                   "random weights)\n" for model, peer in peers.items())  # fmt: skip


def _contention_note(results: list) -> str:
    """Lines on the results that contention may have slowed (none on a quiet machine)."""
    lines = []
    for r in results:
        if r.contended:
            load = (
                "" if r.other_cores is None else f", other processes used {r.other_cores:.2f} cores"
            )
            lines.append(f"* {r.model} {r.backend} batch {r.batch_size}: {r.clean_rounds} clean "
                         f"rounds of {r.rounds}{load}")  # fmt: skip
    if not lines:
        return ""
    return ("\n".join(["", "* contended: other work slowed this machine while it was timed; "
                        "these figures may be too slow. Re-run when it is quiet (see "
                        "docs/performance.md on --threads and --wait-policy under load):",
                        *lines]) + "\n")  # fmt: skip


def _table(results: list, vs: bool) -> str:
    headers = ["model", "backend", "batch", "ms/batch", "±IQR", "rounds", "img/s", "train img/s"]
    headers += ["GFLOP/s", "of peak"] + (["tv ms", "speedup"] if vs else [])
    rows = []
    shown = set()  # the training figure (eager, once per model and batch): on its first row
    for r in results:
        first = (r.model, r.batch_size) not in shown
        shown.add((r.model, r.batch_size))
        train = "" if not first else "-" if r.train_images_per_s is None else r.train_images_per_s
        row = [
            r.model,
            r.backend,
            r.batch_size,
            f"{r.latency_ms:.2f}",
            f"{r.latency_iqr_ms:.2f}",
            f"{r.clean_rounds}/{r.rounds}" + ("*" if r.contended else ""),
            f"{r.images_per_s:.1f}",
            train if isinstance(train, str) else f"{train:.1f}",
            f"{r.gflops:.1f}",
            f"{100 * r.peak_fraction:.0f}%",
        ]
        if vs:
            row += [f"{r.torchvision_latency_ms:.2f}", f"{r.speedup_vs_torchvision:.2f}x"]
        rows.append(row)
    note = (
        f"\nGFLOP/s = 2 x MACs x batch / latency; peak = {_peak_precision(results)} "
        f"{MATMUL_SIZE}^3 matmul "
        f"({results[0].matmul_peak_gflops:.1f} GFLOP/s, measured in the same rounds); "
        f"{results[0].threads} threads, wait policy {results[0].wait_policy}; rounds: clean / run; "
        f"train img/s: the eager model, once per model and batch"
    )
    return format_table(headers, rows) + note


def _peak_precision(results: list) -> str:
    """The matmul peak's precision: bf16 when any backend ran under bf16 autocast."""
    return "bf16" if any(r.precision == "bf16" for r in results) else "fp32"
