"""ONNX export through ``torch.onnx.export(..., dynamo=True)``, verified with onnxruntime.

The file is written in a private temporary folder beside the destination, checked there by
running onnxruntime on a random batch and comparing with PyTorch, and only then moved into
place with ``os.replace`` (weights file first, then the graph). A failed export or
verification leaves no file behind and any older file untouched.

A detector (a model with ``decode``, :class:`cnnlab.models.ssd.SSD`) is exported with two
outputs, ``boxes`` (N, A, 4) x1, y1, x2, y2 in input pixels and ``scores`` (N, A, K) class
probabilities: its default boxes decoded, NMS left to the caller (``SSD.postprocess`` does
it: a score threshold, per-class NMS at IoU 0.45, the best 200), as ONNX's NonMaxSuppression
is slow and unevenly supported across runtimes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.deploy.fuse import fuse
from cnnlab.errors import CnnlabError
from cnnlab.io import check_output

__all__ = ["ExportResult", "export_onnx", "onnxruntime_session", "require_onnx"]

FORMATS = ("onnx",)


@dataclass
class ExportResult:
    """Where the export went and how closely onnxruntime reproduced PyTorch."""

    path: str
    data_path: str | None
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    max_abs_diff: float
    bytes: int


def require_onnx() -> tuple[Any, Any]:
    """Import (onnx, onnxruntime), or raise one clear CnnlabError naming the missing extra."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not _importable(m)]
    if missing:
        raise CnnlabError(
            f"ONNX needs the optional packages {', '.join(missing)}: pip install 'cnnlab[export]'"
        )
    return importlib.import_module("onnx"), importlib.import_module("onnxruntime")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def onnxruntime_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimisations, ``threads`` intra-op threads.

    Its worker threads do not spin after a run: spinning threads would hold the cores for a
    while and slow down whatever runs next in this process (the interleaved benchmark's
    next contender, or the rest of the user's program).
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input_shape(model: nn.Module, img_size: int | None, batch_size: int) -> tuple[int, ...]:
    native = getattr(model, "input_size", None)
    if native is None:
        raise ValueError("the model has no input_size (C, H, W); build it with create_model")
    chans, height, width = native
    if img_size is not None and (img_size, img_size) != (height, width):
        if img_size < 1:
            raise ValueError(f"--img-size must be positive, got {img_size}")
        if getattr(model, "fixed_input_size", False) and (img_size, img_size) != (height, width):
            raise ValueError(f"{_name(model)} takes only {height}x{width} inputs")
        minimum = getattr(model, "min_input_size", None) or 1
        if img_size < minimum:
            raise ValueError(f"{_name(model)} needs inputs of at least {minimum}x{minimum}")
        height = width = img_size
    return (batch_size, chans, height, width)


def _name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


class _Decoded(nn.Module):
    """A detector's graph for ONNX: decoded boxes and class probabilities, no NMS."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.decode(*self.detector(x))


def _graph(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """What the ONNX graph computes, and its output names."""
    if callable(getattr(model, "decode", None)):
        return _Decoded(model).eval(), ["boxes", "scores"]
    return model, ["logits"]


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    img_size: int | None = None,
    dynamic_batch: bool = False,
    external_data: bool = False,
    fold_batchnorm: bool = True,
    atol: float = 1e-4,
    opset_version: int | None = None,
) -> ExportResult:
    """Export ``model`` (a cnnlab model: it knows its ``input_size``) to an ONNX file at ``path``.

    BatchNorm is folded first (:func:`cnnlab.deploy.fuse`) unless ``fold_batchnorm=False``.
    ``dynamic_batch`` makes the batch dimension symbolic; ``external_data`` puts the weights in
    ``path + ".data"`` beside the graph instead of inside it. The file is verified before it is
    moved into place: onnxruntime and PyTorch (the original model, eval mode) must agree to
    ``atol`` on a random batch (``atol`` times the largest |logit| where that exceeds 1).
    Raises ``CnnlabError`` if export or verification fails, ``ValueError`` for an ``atol``
    that is negative or not finite (NaN would let any difference pass).
    """
    if not 0 <= atol < float("inf"):
        raise ValueError(f"atol must be a finite number >= 0, got {atol}")
    require_onnx()
    target, folder = _destination(path)
    shape = _input_shape(model, img_size, batch_size=2 if dynamic_batch else 1)
    reference, names = _graph(model.eval())
    exported, _ = _graph(fuse(model.eval())) if fold_batchnorm else (reference, names)
    example = torch.randn(shape)

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder))
    try:
        staged = tmp / target.name
        program = _torch_export(exported, example, dynamic_batch, opset_version, names)
        try:
            program.save(staged, external_data=external_data)
        except Exception as exc:
            raise CnnlabError(f"could not write the ONNX file: {_first_line(exc)}") from None
        test_batch = (3 if dynamic_batch else 1, *shape[1:])
        diff = _verify(staged, reference, test_batch, atol)
        data_target, size = _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        path=str(target),
        data_path=str(data_target) if data_target else None,
        input_shape=(-1, *shape[1:]) if dynamic_batch else shape,
        dynamic_batch=dynamic_batch,
        max_abs_diff=diff,
        bytes=size,
    )


def _destination(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The target file and its folder, checked: not a folder itself, in a folder that exists."""
    target = Path(path)
    if target.is_dir():
        raise CnnlabError(f"{str(target)!r} is a folder; give a file name such as model.onnx")
    check_output(target)  # the folder exists, is a folder and is writable
    return target, target.parent if str(target.parent) else Path(".")


def _publish(tmp: Path, target: Path) -> tuple[Path | None, int]:
    """Move the verified files staged in ``tmp`` to ``target``: fsync'd, weights file first.

    Returns where the external weights went (None when the graph holds them) and the bytes of
    the graph and weights together.
    """
    staged = tmp / target.name
    staged_data = tmp / f"{target.name}.data"
    data_target = target.with_name(f"{target.name}.data") if staged_data.exists() else None
    size = staged.stat().st_size + (staged_data.stat().st_size if data_target else 0)
    for f in (staged_data, staged):
        if f.exists():
            with open(f, "rb+") as handle:
                os.fsync(handle.fileno())
    if data_target is not None:
        os.replace(staged_data, data_target)
    os.replace(staged, target)
    return data_target, size


def _torch_export(
    model: nn.Module,
    example: torch.Tensor,
    dynamic_batch: bool,
    opset_version: int | None,
    output_names: list[str],
) -> Any:
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=["input"],
                output_names=output_names,
                opset_version=opset_version,
                verbose=False,
            )
    except Exception as exc:  # torch.export / onnxscript raise many types
        raise CnnlabError(f"ONNX export of {_name(model)} failed: {_first_line(exc)}") from None


def _verify(path: Path, model: nn.Module, batch_shape: tuple[int, ...], atol: float) -> float:
    """Max |onnxruntime - PyTorch| over the outputs on a random batch; CnnlabError above
    ``atol`` (times the largest |output| where that exceeds 1)."""
    try:
        session = onnxruntime_session(path)
    except Exception as exc:
        raise CnnlabError(
            f"onnxruntime cannot load the exported file: {_first_line(exc)}"
        ) from None
    x = torch.randn(batch_shape, generator=torch.Generator().manual_seed(0))
    expected = model(x)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    try:
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    except Exception as exc:
        raise CnnlabError(f"onnxruntime cannot run the exported file: {_first_line(exc)}") from None
    expected = expected[: len(got)]  # a classifier's auxiliary outputs are not exported
    return max(_compare(g, e, atol) for g, e in zip(got, expected, strict=True))


def _compare(got: np.ndarray, expected: torch.Tensor, atol: float) -> float:
    if got.shape != tuple(expected.shape):
        raise CnnlabError(
            f"export failed verification: onnxruntime gives shape {got.shape}, "
            f"PyTorch {tuple(expected.shape)}"
        )
    diff = float(np.max(np.abs(got - expected.numpy()))) if got.size else 0.0
    # float32 resolves ~1e-7 relative: logits in the thousands (deep random-weight ResNets)
    # cannot agree to 1e-4 absolute, so the tolerance grows with them beyond magnitude 1.
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    if not np.isfinite(diff) or diff > atol * scale:
        raise CnnlabError(
            f"export failed verification: onnxruntime and PyTorch differ by {diff:.3g} "
            f"(tolerance {atol:g} x max(1, |output| {scale:.3g}))"
        )
    return diff


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
