"""Inference benchmark: backends side by side, against torchvision, against the matmul peak.

Method. Everything measured for one model and batch size (each backend, torchvision's model
of the same architecture, and an fp32 matrix multiply that stands for this machine's peak) is
timed *interleaved*: one sample of each per round, ``repeats`` rounds after a warm-up. Other
processes that share the CPU then slow all of them alike, and the ratios stay meaningful.
A round that a probe shows was slowed by other work is dropped and run again, and a result
that could not get enough clean rounds, or ran while other processes kept the CPU busy, is
flagged ``contended`` (:mod:`cnnlab.timing`).
Reported: median latency and its spread (interquartile range), images/s, achieved GFLOP/s
from our MAC count (FLOPs = 2 x MACs, Conv + Linear only) and its fraction of the matmul
GFLOP/s measured in the same rounds (its best round), and the training throughput
(forward, backward, SGD step).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis import count_macs, profile
from cnnlab.deploy.export import export_onnx, onnxruntime_session
from cnnlab.deploy.fuse import fuse
from cnnlab.detect.loss import multibox_loss
from cnnlab.detect.train import batch_targets
from cnnlab.devices import (
    PARALLEL_PER_CPU,
    autocast,
    autocast_dtype,
    available_memory,
    max_parallel,
    require_memory,
)
from cnnlab.devices import compiled as compile_model
from cnnlab.interop import TORCHVISION_NAMES, convert_by_position, from_torchvision
from cnnlab.registry import build_model, match_models, model_info
from cnnlab.saved import load
from cnnlab.timing import Contender, Timing, interleave, wait_policy
from cnnlab.weight_grads import small_map_grads_wanted, small_map_weight_grads

__all__ = [
    "BACKENDS",
    "TORCHVISION_DETECTORS",
    "BenchResult",
    "available_memory",
    "benchmark",
    "matmul_peak",
    "memory_needed",
    "torchvision_model",
    "training_step",
]

BACKENDS = ("eager", "fused", "compile", "onnxruntime")
# torchvision's detector each of ours is timed against (`--vs torchvision`): the same network
# for SSD300; for the SSDLites the one torchvision has, on MobileNetV3-Large (another backbone).
TORCHVISION_DETECTORS = {
    "ssdlite_mobilenet_v2": "ssdlite320_mobilenet_v3_large",
    "ssdlite_mobilenet_v1": "ssdlite320_mobilenet_v3_large",
    "ssd300_vgg16": "ssd300_vgg16",
}
MATMUL_SIZE = 1024  # n of the n x n x n fp32 matmul that measures the peak


@dataclass
class BenchResult:
    """One (model, backend, batch size) measurement. Times in ms, rates per second."""

    model: str
    backend: str
    batch_size: int
    img_size: int
    threads: int
    latency_ms: float  # median time of one batch
    latency_iqr_ms: float  # interquartile range of the samples
    images_per_s: float
    macs: int  # per image, Conv + Linear
    gflops: float  # achieved, 2 * MACs * batch / latency
    matmul_peak_gflops: float  # matmul of the same precision, measured in the same rounds
    peak_fraction: float
    precision: str = "fp32"  # "bf16": eager, fused, compile and torchvision under autocast
    train_images_per_s: float | None = None
    torchvision_latency_ms: float | None = None
    speedup_vs_torchvision: float | None = None
    clean_rounds: int = 0  # rounds the figures come from
    rounds: int = 0  # rounds run, those dropped as slowed by other load included
    other_cores: float | None = None  # cores other processes kept busy meanwhile
    contended: bool = False  # too few clean rounds or a busy machine: figures may be slow
    wait_policy: str = "default"  # OMP_WAIT_POLICY of this process

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RawDetector(nn.Module):
    """A torchvision SSD without its resize and NMS: images in, ``(box_regression,
    class_logits)`` out, what cnnlab's detectors return."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"]


def torchvision_model(name: str, num_classes: int = 1000) -> nn.Module:
    """torchvision's model of the same architecture as cnnlab's ``name`` (random weights); for
    a detector, its peer in :data:`TORCHVISION_DETECTORS` for ``num_classes`` classes plus the
    background, returning its raw outputs (:class:`_RawDetector`)."""
    import torchvision

    if name in TORCHVISION_DETECTORS:
        build = getattr(torchvision.models.detection, TORCHVISION_DETECTORS[name])
        tv = build(weights=None, weights_backbone=None, num_classes=num_classes + 1)
        return _RawDetector(tv).eval()
    if name not in TORCHVISION_NAMES:
        raise ValueError(
            f"{name!r} has no torchvision counterpart; these do: {', '.join(TORCHVISION_NAMES)}"
        )
    tv_name = TORCHVISION_NAMES[name]
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if tv_name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True
    return torchvision.models.get_model(tv_name, **kwargs).eval()


def matmul_peak(threads: int | None = None, size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """GFLOP/s of an fp32 ``size`` x ``size`` matmul on this machine (best clean round of
    ``repeats``)."""
    with _threads(threads):
        timing = interleave([_matmul(size)], repeats, warmup=2)
    return 2 * size**3 / min(timing.samples["matmul"]) / 1e9


def _matmul(
    size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Contender:
    device, dtype = device or torch.device("cpu"), dtype or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    return Contender("matmul", lambda: torch.mm(a, b, out=out), sync=_sync(device))


def _sync(device: torch.device) -> Callable[[], Any]:
    """What waits for ``device`` to finish its queued work (nothing on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def memory_needed(model: nn.Module, size: tuple[int, ...], batch: int, train: bool) -> int:
    """Bytes one benchmark of ``model`` at ``batch`` x ``size`` holds at least: the input (and
    its channels-last copy), every activation of a forward pass, the weights twice (the model
    and its fused copy), and with ``train`` a training step (activations, weights, gradients,
    momentum): :func:`cnnlab.analysis.profile`'s figures, counted on ``meta``."""
    prof = profile(model, size, batch)
    need = 2 * prof.input_bytes + prof.forward_bytes + 2 * (prof.param_bytes + prof.buffer_bytes)
    if train:
        need = max(need, prof.training_bytes["sgd_momentum"] + prof.param_bytes)
    return need


def _check_memory(model: nn.Module, size: tuple[int, ...], batch: int, train: bool,
                  device: torch.device) -> None:  # fmt: skip
    """Refuse, before allocating anything, a batch or image size the device cannot hold."""
    name = getattr(model, "model_name", type(model).__name__)
    what = f"{name} at batch {batch}, input {'x'.join(map(str, size))}"
    need = memory_needed(model, size, batch, train)
    require_memory(need, device, what, "use a smaller --batch-size or --img-size")


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if threads is not None:
        if not 1 <= threads <= max_parallel():
            raise ValueError(f"--threads must be in 1..{max_parallel()} ({PARALLEL_PER_CPU} "
                             f"per CPU this process may use), got {threads}")  # fmt: skip
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def benchmark(
    patterns: Sequence[str] = ("*",),
    *,
    batch_sizes: Sequence[int] = (1,),
    backends: Sequence[str] = ("eager",),
    threads: int | None = None,
    img_size: int | None = None,
    vs_torchvision: bool = False,
    train: bool = True,
    warmup: int = 3,
    repeats: int = 10,
    channels_last: bool = True,
    checkpoint: str | None = None,
    progress: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> list[BenchResult]:
    """Benchmark every model matching ``patterns`` with each backend and batch size.

    ``backends``: ``eager`` (the model as built), ``fused`` (BatchNorm folded, channels-last
    memory format unless ``channels_last=False``), ``compile`` (``torch.compile`` of the fused
    model, inductor with weight freezing) and ``onnxruntime`` (exported, all graph
    optimisations). ``vs_torchvision`` interleaves torchvision's model of the same architecture
    (eager) and fills ``speedup_vs_torchvision`` = its latency / ours. ``checkpoint``: any
    saved model (:func:`cnnlab.load`) of the one model named, timed at the size it was trained
    at unless ``img_size`` says otherwise. ``device``: ``cpu`` or a CUDA GPU (eager, fused and
    compile; the matmul peak is then the GPU's). A batch or image size whose activations and
    weights (:func:`memory_needed`) exceed the device's free memory is refused before anything
    is allocated. ``precision`` (:func:`cnnlab.devices.autocast_dtype`; default fp32 here):
    ``bf16`` or ``auto`` run eager, fused, compile, torchvision and the training step under
    bf16 autocast and measure the peak with a bf16 matmul; onnxruntime stays fp32.
    """
    names = match_models(patterns or ["*"])
    device = torch.device(device)
    dtype = autocast_dtype(precision or "fp32", device)
    _check_options(names, batch_sizes, backends, vs_torchvision, warmup, repeats)
    _check_placement(names, batch_sizes, backends, img_size, train, checkpoint, device)
    results: list[BenchResult] = []
    with _threads(threads) as n_threads:
        for name in names:
            for batch in batch_sizes:
                if progress:
                    progress(f"{name} batch {batch}: {', '.join(backends)}")
                results += _bench_one(
                    name, batch, backends, n_threads, img_size, vs_torchvision, train, warmup,
                    repeats, channels_last, checkpoint, device, dtype,
                )  # fmt: skip
    return results


def _check_placement(
    names: Sequence[str], batch_sizes: Sequence[int], backends: Sequence[str],
    img_size: int | None, train: bool, checkpoint: str | None, device: torch.device,
) -> None:  # fmt: skip
    """Refuse, before anything is allocated: a checkpoint with several models, onnxruntime off
    the CPU, any model and batch size the device's memory cannot hold (a checkpoint's model
    is checked once it is loaded)."""
    if checkpoint is not None and len(names) != 1:
        raise ValueError(f"a checkpoint holds one model; the patterns match {len(names)}")
    if device.type != "cpu" and "onnxruntime" in backends:
        raise ValueError(f"the onnxruntime backend runs on the CPU only, not {device}")
    if checkpoint is not None:
        return
    for name in names:
        with torch.device("meta"):
            meta = _build(name, img_size)
        size = _size(meta.input_size, img_size)
        for batch in batch_sizes:
            _check_memory(meta, size, batch, train, device)


def _build(name: str, img_size: int | None) -> nn.Module:
    """The model ``name`` as built; a detector for ``img_size``, as its default boxes must be."""
    if img_size and model_info(name).get("task") == "detection":
        return build_model(name, image_size=img_size)
    return build_model(name)


def _size(input_size: Sequence[int], img_size: int | None) -> tuple[int, int, int]:
    chans, height, width = input_size
    if img_size is not None:
        if img_size < 1:
            raise ValueError(f"--img-size must be at least 1, got {img_size}")
        height = width = img_size
    return chans, height, width


def _check_options(
    names: Sequence[str],
    batch_sizes: Sequence[int],
    backends: Sequence[str],
    vs_torchvision: bool,
    warmup: int,
    repeats: int,
) -> None:
    """Every :func:`benchmark` option checked before any work starts (``ValueError``)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(
            f"unknown backend {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}"
        )
    if any(not isinstance(b, int) or b < 1 for b in batch_sizes) or not batch_sizes:
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    if vs_torchvision:
        missing = [n for n in names
                   if n not in TORCHVISION_NAMES and n not in TORCHVISION_DETECTORS]  # fmt: skip
        if missing:
            raise ValueError(
                f"no torchvision counterpart for {', '.join(missing)} (--vs torchvision)"
            )


def _bench_one(
    name: str,
    batch: int,
    backends: Sequence[str],
    threads: int,
    img_size: int | None,
    vs_torchvision: bool,
    train: bool,
    warmup: int,
    repeats: int,
    channels_last: bool,
    checkpoint: str | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> list[BenchResult]:
    """One result per backend for model ``name`` at batch size ``batch`` (under autocast to
    ``dtype`` where given)."""
    model, tv = _models(name, vs_torchvision, checkpoint, img_size)
    chans, height, width = _size(model.input_size, img_size)
    _check_memory(model, (chans, height, width), batch, train, device)
    model = model.to(device)
    tv = tv.to(device) if tv is not None else None
    x = torch.randn(batch, chans, height, width, device=device)
    macs = count_macs(model, (chans, height, width))
    timing = _race(model, x, tv, backends, threads, warmup, repeats, channels_last, dtype)
    peak_gflops = 2 * MATMUL_SIZE**3 / min(timing.samples["matmul"]) / 1e9  # the best round
    train_rate = None
    if train:
        with autocast(device, dtype):
            train_rate = _train_rate(model, x, warmup=1, repeats=max(2, repeats // 3))
    out = []
    for backend in backends:
        seconds = timing.median(backend)
        gflops = 2 * macs * batch / seconds / 1e9
        out.append(
            BenchResult(
                model=name, backend=backend, batch_size=batch, img_size=height, threads=threads,
                latency_ms=seconds * 1e3, latency_iqr_ms=timing.iqr(backend) * 1e3,
                images_per_s=batch / seconds, macs=macs, gflops=gflops,
                matmul_peak_gflops=peak_gflops, peak_fraction=gflops / peak_gflops,
                train_images_per_s=train_rate,
                torchvision_latency_ms=timing.median("torchvision") * 1e3 if tv else None,
                speedup_vs_torchvision=_speedup(timing, backend) if tv else None,
                precision="bf16" if dtype is not None and backend != "onnxruntime" else "fp32",
                clean_rounds=timing.kept, rounds=timing.rounds,
                other_cores=timing.other_cores, contended=timing.contended,
                wait_policy=wait_policy(),
            )
        )  # fmt: skip
    return out


def _models(
    name: str, vs_torchvision: bool, checkpoint: str | None = None, img_size: int | None = None
) -> tuple[nn.Module, nn.Module | None]:
    """cnnlab's model ``name`` (seed 0, or the checkpoint's weights and trained input size; eval
    mode; a detector built for ``img_size``, as its default boxes must be) and, if asked,
    torchvision's holding the same weights, so both compute the same."""
    torch.manual_seed(0)
    if checkpoint is None:
        model = _build(name, img_size).eval()
    else:
        model, meta = load(checkpoint, name)
        size = meta["preprocess"]["size"]
        model.input_size = (meta["in_chans"], size, size)
    tv = None
    if vs_torchvision and name in TORCHVISION_DETECTORS:  # a peer: its own random weights
        if model.input_size[0] != 3:
            raise ValueError(f"torchvision's {TORCHVISION_DETECTORS[name]} takes RGB images; "
                             f"this {name} takes {model.input_size[0]} channel(s)")  # fmt: skip
        tv = torchvision_model(name, num_classes=model.num_classes)
    elif vs_torchvision:
        tv = torchvision_model(name, num_classes=meta["num_classes"] if checkpoint else 1000)
        if checkpoint is None:
            model.load_state_dict(from_torchvision(name, tv.state_dict()))
        else:
            tv.load_state_dict(convert_by_position(tv.state_dict(), model.state_dict()))
    return model, tv


def _race(
    model: nn.Module,
    x: torch.Tensor,
    tv: nn.Module | None,
    backends: Sequence[str],
    threads: int,
    warmup: int,
    repeats: int,
    channels_last: bool,
    dtype: torch.dtype | None = None,
) -> Timing:
    """The backends, ``tv`` (as "torchvision", if given) and the matmul peak ("matmul"),
    timed interleaved, slow rounds dropped and re-run (:func:`cnnlab.timing.interleave`)."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        fast = _fused(model, x, channels_last) if {"fused", "compile"} & set(backends) else None
        everyone = [_backend(b, model, x, fast, threads, Path(tmp), dtype) for b in backends]
        if tv is not None:
            everyone.append(Contender("torchvision", _no_grad(lambda: tv(x), x.device, dtype)))
        everyone.append(_matmul(MATMUL_SIZE, x.device, dtype))
        for contender in everyone:
            contender.sync = _sync(x.device)
        return interleave(everyone, repeats, warmup=warmup)


def _speedup(timing: Timing, backend: str) -> float:
    """The median of per-round ratios torchvision / ``backend``: each pair ran back to back
    under the same load."""
    pairs = zip(timing.samples["torchvision"], timing.samples[backend], strict=True)
    return statistics.median(t / o for t, o in pairs)


def _no_grad(
    fn: Callable[[], Any], device: torch.device, dtype: torch.dtype | None = None
) -> Callable[[], Any]:
    """``fn`` in inference mode, under autocast to ``dtype`` on ``device`` where given."""

    def run() -> Any:
        with torch.inference_mode(), autocast(device, dtype):
            return fn()

    return run


def _fused(
    model: nn.Module, x: torch.Tensor, channels_last: bool
) -> tuple[nn.Module, torch.Tensor]:
    """The BN-folded model and its input, both channels-last unless ``channels_last=False``."""
    fused = fuse(model)
    if channels_last:
        layout = torch.channels_last
        fused, x = fused.to(memory_format=layout), x.contiguous(memory_format=layout)
    return fused, x


def _backend(
    backend: str,
    model: nn.Module,
    x: torch.Tensor,
    fast: tuple[nn.Module, torch.Tensor] | None,
    threads: int,
    tmp: Path,
    dtype: torch.dtype | None = None,
) -> Contender:
    """``fast``: what :func:`_fused` gave, shared by the ``fused`` and ``compile`` backends;
    all but onnxruntime run under autocast to ``dtype`` where given."""
    if backend == "eager":
        return Contender(backend, _no_grad(lambda: model(x), x.device, dtype))
    if backend == "onnxruntime":
        path = tmp / f"{getattr(model, 'model_name', 'model')}.onnx"
        export_onnx(model, path, img_size=x.shape[-1], dynamic_batch=True)
        session = onnxruntime_session(path, threads=threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return Contender(backend, lambda: session.run(None, feed))
    fused, fx = fast
    if backend == "fused":
        return Contender(backend, _no_grad(lambda: fused(fx), x.device, dtype))
    compiled = compile_model(fused, freeze=True)
    return Contender(backend, _no_grad(lambda: compiled(fx), x.device, dtype))


def training_step(
    model: nn.Module, x: torch.Tensor, small_map_grads: bool = False
) -> Callable[[], None]:
    """One timed training step of ``model`` (put in training mode) on the batch ``x``:
    forward, loss, backward, SGD step. The loss is cross-entropy (auxiliary outputs ignored),
    or for a detector the MultiBox loss of one box per image (:func:`_detector_loss`).
    ``small_map_grads``: in :func:`cnnlab.weight_grads.small_map_weight_grads`, as ``cnnlab
    train`` runs it."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    loss = _detector_loss(model, x) if hasattr(model, "anchors") else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with small_map_weight_grads(model, small_map_grads):
            out = model(x)
            if loss is not None:
                loss(out).backward()
            else:
                logits = out[0] if isinstance(out, tuple) else out
                nn.functional.cross_entropy(logits, target).backward()
        optimizer.step()

    return step


def _detector_loss(model: nn.Module, x: torch.Tensor) -> Callable[[Any], torch.Tensor]:
    """The SSD MultiBox loss of ``model``'s outputs for one box per image (the middle half
    of the image, class 1), matched to the model's default boxes once."""
    side = x.shape[-1]
    box = {"boxes": torch.tensor([[side / 4, side / 4, 3 * side / 4, 3 * side / 4]]),
           "labels": torch.tensor([1])}  # fmt: skip
    offsets, classes = batch_targets([box] * x.shape[0], model.anchors, side)
    offsets, classes = offsets.to(x.device), classes.to(x.device)
    return lambda out: multibox_loss(out[0].float(), out[1].float(), offsets, classes)[0]


def _train_rate(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float | None:
    """Training images/s of :func:`training_step` on a copy of ``model`` (clean rounds)."""
    import copy

    try:
        run = training_step(copy.deepcopy(model), x, small_map_grads_wanted("auto", x.device))
        step = Contender("train", run, sync=_sync(x.device))
        timing = interleave([step], repeats, warmup=warmup)
    except ValueError:  # BatchNorm cannot train on one value per channel (batch 1, 1x1 maps)
        return None
    return x.shape[0] / timing.median("train")
