"""Per-layer parameters, MACs, activations and memory of any ``nn.Module``.

:func:`profile` runs one forward pass on the ``meta`` device (shapes only, no compute) with a
hook on every module, and returns a :class:`Profile`: one row per module in call order and the
totals below. :func:`measure_memory` runs a real forward and a real training step and reports
the peak memory they allocate, to set beside the analytic figures.

Definitions (``docs/analysis.md`` explains them with VGG-16 and MobileNet):

- ``params`` all parameters; ``trainable_params`` those with ``requires_grad`` (BN running
  statistics are buffers, never parameters); ``param_bytes`` their storage.
- ``macs`` multiply-accumulates of Conv and Linear layers (``layer_macs``), ``flops`` = 2 x MACs
  (``docs/reference/architectures.md``).
- ``activations`` the elements of every tensor a forward pass keeps: the input, then each
  tensor a module returns that is *new*. A tensor is not new when it shares storage with one
  already counted (an in-place ReLU, ``Flatten``'s view, ``Dropout`` and ``Identity`` in eval
  mode, an in-place residual add) or when the layer is the identity at this input size (an
  adaptive pool to the size its input already has). Each tensor is credited to the innermost
  module that returned it, so a residual block's ``out + identity`` counts once, at the block.
  For VGG-16 at 224 this is the input plus every conv, pool and FC output: 15,237,608.
- ``forward_bytes`` the bytes of those activations.
- ``training_bytes`` per optimizer, what one training step holds: activations kept for the
  backward pass (``forward_bytes``), parameters and buffers, one gradient per trainable
  parameter, and the optimizer state (SGD with momentum: one buffer; Adam: two).

Counting conventions run the model in eval mode at batch ``batch_size``; totals are for the
whole batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cnnlab.analysis.macs import counts_macs, layer_macs, meta_copy
from cnnlab.devices import require_memory

# Input values a profile takes at most: 2**53, exact as a float, leaves layers that widen the
# input (64 channels out of 3) far from PyTorch's 2**63 - 1 elements per tensor.
MAX_PROFILE_VALUES = 2**53

__all__ = ["LayerRow", "Profile", "check_memory", "measure_memory", "profile"]

# Modules of these torch files cost no MACs by the convention (norms, activations, pooling,
# dropout, reshapes, padding, resampling).
_FREE_MODULES = {
    f"torch.nn.modules.{name}"
    for name in (
        "activation",
        "batchnorm",
        "normalization",
        "instancenorm",
        "pooling",
        "dropout",
        "flatten",
        "padding",
        "pixelshuffle",
        "upsampling",
        "channelshuffle",
        "container",
    )
} | {"torchvision.ops.stochastic_depth"}
_NOT_FREE = (nn.MultiheadAttention,)  # in torch.nn.modules.activation, but it multiplies
# Layers whose output has their input's shape. On the meta device PyTorch computes their
# shapes through slow Python reference kernels, so profile() gives them the same answer
# directly: the input itself when the layer works in place, otherwise a new tensor.
_SHAPE_PRESERVING = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.PReLU,
    nn.Softplus,
)
_IDENTITY_AT_SAME_SIZE = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


@dataclasses.dataclass
class LayerRow:
    """One module of the model, with the totals of its sub-tree (itself and its children)."""

    name: str  # qualified name, e.g. "features.0.conv"
    type: str  # class name
    depth: int  # 1 for the model's direct children
    output_shape: tuple[int, ...] | None
    params: int
    macs: int
    activations: int  # elements of the new tensors this sub-tree returned
    is_leaf: bool
    ran: bool = True  # False: not called in this forward (an aux head in eval mode)


@dataclasses.dataclass
class Profile:
    """What :func:`profile` measured. ``to_dict()`` gives the totals and the rows."""

    input_size: tuple[int, ...]
    batch_size: int
    layers: list[LayerRow]
    params: int
    trainable_params: int
    macs: int
    flops: int
    activations: int
    forward_bytes: int
    training_bytes: dict[str, int]  # {"sgd_momentum": ..., "adam": ...}
    param_bytes: int
    buffer_bytes: int
    input_bytes: int
    uncounted: dict[str, int]  # module type -> how many such modules ran uncounted
    measured: dict[str, int] | None = None  # filled by measure_memory when asked

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        for row in data["layers"]:
            row["output_shape"] = list(row["output_shape"]) if row["output_shape"] else None
        return data


def _is_free(module: nn.Module) -> bool:
    """A norm, activation, pool, dropout, reshape or container (or a subclass of one), or a
    module that says it costs no MACs (``macs_free = True``: pooling, padding, identity)."""
    if getattr(module, "macs_free", False):
        return True
    return _torch_base(module).__module__ in _FREE_MODULES and not isinstance(module, _NOT_FREE)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a module's output (tensors, tuples, lists, dicts, namedtuples)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _shape_of(value: Any) -> tuple[int, ...] | None:
    first = next(_tensors(value), None)
    return tuple(first.shape) if first is not None else None


def check_input_size(model: nn.Module, input_size: tuple[int, ...]) -> tuple[int, ...]:
    """``input_size`` as a tuple of positive ints, checked against the model's minimum side."""
    size = tuple(input_size)
    if not size or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"input size must be positive integers like (3, 224, 224), got {size}")
    minimum = getattr(model, "min_input_size", None)
    if minimum and len(size) >= 3 and min(size[1:]) < minimum:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(
            f"input {'x'.join(map(str, size))} is too small for {name}: "
            f"the minimum is {minimum}x{minimum}"
        )
    return size


def profile(
    model: nn.Module,
    input_size: tuple[int, ...] = (3, 224, 224),
    batch_size: int = 1,
    *,
    measure: bool = False,
) -> Profile:
    """Per-layer and total parameters, MACs, activations and memory of ``model``.

    The forward pass runs on a ``meta`` copy of the model (``model`` itself is left alone), so
    even VGG-19 profiles in a fraction of a second. Modules that are neither counted Conv/Linear
    layers nor known to cost no MACs, and that hold parameters of their own or have no
    children, are listed in ``Profile.uncounted``: their MACs are missing from ``macs``.
    ``measure=True`` adds :func:`measure_memory`'s real peaks (runs the model on CPU).
    """
    size = check_input_size(model, input_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if (values := math.prod((batch_size, *size))) > MAX_PROFILE_VALUES:
        raise ValueError(
            f"batch {batch_size} x input {'x'.join(map(str, size))} is {values:,} values; "
            f"profiles stop at 2**53 ({MAX_PROFILE_VALUES:,}), so that no layer's count overflows"
        )
    meta = meta_copy(model)
    names = {m: n for n, m in meta.named_modules()}
    dtype = next((p.dtype for p in meta.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros((batch_size, *size), device="meta", dtype=dtype)
    recorder = _Recorder(x)
    _hooked_forward(meta, x, recorder)
    rows = _rows(names, _listed(meta, recorder.order), recorder.own)
    result = _totals(model, x, rows, recorder)
    if measure:
        result.measured = measure_memory(model, size, batch_size)
    return result


class _Recorder:
    """The hooks :func:`profile` puts on every module: MACs, new activations, output shape."""

    def __init__(self, x: torch.Tensor) -> None:
        self.order: list[nn.Module] = []  # modules in call order
        self.own: dict[nn.Module, dict[str, Any]] = {}  # each module's own counts
        self.uncounted: dict[str, int] = {}
        # storage -> tensor, kept alive so ids are not reused; the input is already counted
        self.seen: dict[int, torch.Tensor] = {_storage_key(x): x}

    def pre_hook(self, module: nn.Module, inputs: tuple) -> None:
        if module not in self.own:
            self.order.append(module)
            self.own[module] = {"macs": 0, "activations": 0, "bytes": 0, "output_shape": None}

    def hook(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        stats = self.own[module]
        stats["output_shape"] = _shape_of(output)
        stats["macs"] += layer_macs(module, inputs, output)  # 0 for layers it does not count
        if not counts_macs(module) and not _is_free(module):
            has_own = any(True for _ in module.parameters(recurse=False))
            if has_own or not any(True for _ in module.children()):
                kind = type(module).__name__
                self.uncounted[kind] = self.uncounted.get(kind, 0) + 1
        first_in = next(_tensors(inputs), None)
        for t in _tensors(output):
            key = _storage_key(t)
            if key in self.seen:
                continue
            if (
                isinstance(module, _IDENTITY_AT_SAME_SIZE)
                and first_in is not None
                and t.shape == first_in.shape
            ):
                continue
            self.seen[key] = t
            stats["activations"] += t.numel()
            stats["bytes"] += t.numel() * t.element_size()


def _hooked_forward(meta: nn.Module, x: torch.Tensor, recorder: _Recorder) -> None:
    """One eval-mode forward of the meta model with ``recorder``'s hooks on every module.

    Shape-preserving torch layers get a shortcut forward for the pass (see
    ``_SHAPE_PRESERVING``); hooks, shortcuts and the training mode are restored afterwards.
    """
    handles = []
    shortcut = []
    for m in meta.modules():
        handles.append(m.register_forward_pre_hook(recorder.pre_hook))
        handles.append(m.register_forward_hook(recorder.hook))
        if type(m).forward is getattr(_torch_base(m), "forward", None) and isinstance(
            m, _SHAPE_PRESERVING
        ):
            m.forward = _same_shape_forward(m)
            shortcut.append(m)
    was_training = meta.training
    try:
        meta.eval()
        with torch.no_grad():
            meta(x)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"forward pass failed for input {'x'.join(map(str, x.shape[1:]))}: {first_line}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        for m in shortcut:
            del m.forward
        meta.train(was_training)


def _totals(
    model: nn.Module, x: torch.Tensor, rows: list[LayerRow], recorder: _Recorder
) -> Profile:
    """The :class:`Profile` of ``model``: the rows plus the totals defined in the module doc."""
    own = recorder.own.values()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    macs = sum(s["macs"] for s in own)
    activations = x.numel() + sum(s["activations"] for s in own)
    forward_bytes = x.numel() * x.element_size() + sum(s["bytes"] for s in own)
    resident = forward_bytes + param_bytes + buffer_bytes + grad_bytes
    return Profile(
        input_size=tuple(x.shape[1:]),
        batch_size=x.shape[0],
        layers=rows,
        params=params,
        trainable_params=trainable,
        macs=macs,
        flops=2 * macs,
        activations=activations,
        forward_bytes=forward_bytes,
        training_bytes={"sgd_momentum": resident + grad_bytes, "adam": resident + 2 * grad_bytes},
        param_bytes=param_bytes,
        buffer_bytes=buffer_bytes,
        input_bytes=x.numel() * x.element_size(),
        uncounted=dict(sorted(recorder.uncounted.items())),
    )


def _torch_base(module: nn.Module) -> type:
    """The torch.nn class a module is, or derives from (subclasses may override forward)."""
    return next(c for c in type(module).__mro__ if c.__module__.startswith("torch.nn."))


def _same_shape_forward(module: nn.Module) -> Any:
    """A forward with the layer's shape semantics: in place returns the input, else a copy."""
    in_place = bool(getattr(module, "inplace", False))
    if isinstance(module, (nn.modules.dropout._DropoutNd, nn.Identity)):
        in_place = True  # eval mode: both hand their input through

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x if in_place else torch.empty_like(x)

    return forward


def _listed(root: nn.Module, order: list[nn.Module]) -> list[nn.Module]:
    """The modules to show, so that every level's rows add up to the whole model: those that
    ran (call order), each after the containers above it that never ran themselves (a
    ``ModuleDict`` iterated by ``forward``), then, in registration order, the sub-trees that
    hold parameters but did not run (GoogLeNet's auxiliary heads in eval mode)."""
    by_name = dict(root.named_modules())
    name_of = {m: n for n, m in by_name.items()}
    listed: list[nn.Module] = []
    seen = {root}
    for module in order:
        if module in seen:
            continue
        parts = name_of[module].split(".")
        for i in range(1, len(parts) + 1):
            m = by_name[".".join(parts[:i])]
            if m not in seen:
                seen.add(m)
                listed.append(m)
    for name, m in by_name.items():
        parent = by_name[name.rpartition(".")[0]] if "." in name else root
        if m not in seen and parent in seen and any(True for _ in m.parameters()):
            stack = [m]  # the idle sub-tree, depth first
            while stack:
                top = stack.pop()
                seen.add(top)
                listed.append(top)
                stack.extend(reversed([c for c in top.children() if c not in seen]))
    return listed


def _rows(
    names: dict[nn.Module, str],
    order: list[nn.Module],
    own: dict[nn.Module, dict[str, Any]],
) -> list[LayerRow]:
    """Rows in call order, each with the totals of its sub-tree."""
    rows = []
    for module in order:
        subtree = [m for m in module.modules() if m in own]
        rows.append(
            LayerRow(
                name=names[module],
                type=type(module).__name__,
                depth=names[module].count(".") + 1,
                output_shape=own[module]["output_shape"] if module in own else None,
                params=sum(p.numel() for p in module.parameters()),
                macs=sum(own[m]["macs"] for m in subtree),
                activations=sum(own[m]["activations"] for m in subtree),
                is_leaf=not any(True for _ in module.children()),
                ran=bool(subtree),
            )
        )
    return rows


def _live_peak(fn: Any, device: torch.device) -> tuple[int, int]:
    """Peak and final bytes allocated above the starting level while ``fn()`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        end = torch.cuda.memory_allocated(device)
        return torch.cuda.max_memory_allocated(device) - start, end - start
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, live


def check_memory(
    model: nn.Module, input_size: tuple[int, ...], batch_size: int, device: torch.device, *,
    train: bool = True, fix: str = "use a smaller --batch-size or --input",
) -> None:  # fmt: skip
    """Refuse (``CnnlabError``, ending with ``fix``), before anything is allocated, a training
    step (``train``) or a forward pass of ``model`` at ``batch_size`` x ``input_size`` that
    needs more than ``device`` has free: the profile's figure (counted on ``meta``: the
    SGD-with-momentum step, or the forward pass) plus a copy of the weights."""
    prof = profile(model, input_size, batch_size)
    work = prof.training_bytes["sgd_momentum"] if train else prof.forward_bytes
    need = work + prof.param_bytes + prof.buffer_bytes
    name = getattr(model, "model_name", type(model).__name__)
    size = "x".join(map(str, prof.input_size))
    step = "a training step" if train else "a forward pass"
    require_memory(need, device, f"{step} of {name} at batch {batch_size}, input {size}", fix)


def measure_memory(
    model: nn.Module,
    input_size: tuple[int, ...] = (3, 224, 224),
    batch_size: int = 1,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, int]:
    """Peak memory a real forward pass and a real training step allocate, in bytes.

    All are measured above the resting state (parameters, buffers and the input batch already
    allocated), by PyTorch's profiler on CPU and the allocator's statistics on CUDA:

    - ``forward_held_bytes``: what is still allocated at the end of a forward pass in eval mode
      with autograd recording and the output held (as when the loss is about to be computed):
      the tensors kept for the backward pass. Compare with
      ``Profile.forward_bytes - Profile.input_bytes``: it is never smaller (every counted
      activation is alive), and larger by what autograd saves beyond the layer outputs, such as
      max-pool indices (int64, twice the bytes of the fp32 pool output).
    - ``forward_peak_bytes``: the peak during that pass, adding short-lived workspaces.
    - ``training_peak_bytes``: forward, cross-entropy, backward and one SGD-with-momentum step
      in train mode, starting without gradients or momentum buffers. Compare with
      ``training_bytes["sgd_momentum"] - param_bytes - buffer_bytes - input_bytes``.

    The model is copied, so its weights and mode are left as they were.
    """
    size = check_input_size(model, input_size)
    device = torch.device(device)
    check_memory(model, size, batch_size, device)
    work = copy.deepcopy(model).to(device)
    x = torch.randn((batch_size, *size), device=device)
    held: list[Any] = []

    def forward() -> None:
        held.append(work(x))

    work.eval()
    forward_peak, forward_held = _live_peak(forward, device)
    held.clear()

    work.train()
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step() -> None:
        out = work(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        nn.functional.cross_entropy(logits.flatten(1), target).backward()
        optimizer.step()

    return {
        "forward_held_bytes": forward_held,
        "forward_peak_bytes": forward_peak,
        "training_peak_bytes": _live_peak(step, device)[0],
    }
