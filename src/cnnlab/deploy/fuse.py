"""Fold BatchNorm into the preceding convolution or linear layer; drop dropout and aux heads.

In eval mode BatchNorm is a fixed per-channel affine map, ``y = gamma * (x - mean) / sqrt(var
+ eps) + beta`` (Ioffe & Szegedy 2015, Sec. 3.1, Algorithm 2, step 11), so when it directly
follows a convolution it can be folded into that convolution's weight and bias: scale every
output filter by ``s = gamma / sqrt(var + eps)`` and set the bias to ``(b - mean) * s + beta``.
The folded network computes the same function with one layer fewer per block.

Pairs are found generically: every module's own ``forward`` is traced with ``torch.fx``
(children as leaves), so a conv -> BN pair is found in a ``Sequential`` (``ConvNormAct``) and
in hand-written forward code (a ResNet bottleneck's ``self.bn1(self.conv1(x))``) alike. A BN is
folded only where the conv's output feeds that BN and nothing else, and both modules are
called exactly once. Anything else is left in place and listed in the :class:`FuseReport`.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

__all__ = ["FuseReport", "fuse", "fuse_with_report"]

# Methods traced when a module's ``forward`` itself cannot be (ClassifierModel.forward checks
# its input shape in Python, which symbolic tracing cannot follow).
_FALLBACK_METHODS = ("forward_features", "forward_head")


@dataclass
class FuseReport:
    """What :func:`fuse` did: folded (conv, bn) pairs, BNs left with the reason, modules dropped."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"folded {len(self.folded)} BatchNorm layers, dropped {len(self.dropped)} modules"]
        lines += [f"left {name}: {reason}" for name, reason in self.left.items()]
        return "\n".join(lines)


class _ChildrenAsLeaves(fx.Tracer):
    """Trace one module's own code: every submodule call becomes a single ``call_module``."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def fuse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with BatchNorm folded, dropout and aux heads removed.

    The copy's outputs equal ``model.eval()``'s up to float rounding. It is for inference only:
    with the BatchNorm layers gone it cannot be trained as the original was. See
    :func:`fuse_with_report` for what was folded and what was left (and why).
    """
    return fuse_with_report(model)[0]


@torch.no_grad()
def fuse_with_report(model: nn.Module) -> tuple[nn.Module, FuseReport]:
    """:func:`fuse`, also returning a :class:`FuseReport`. ``model`` itself is not changed."""
    fused = copy.deepcopy(model).eval()
    report = FuseReport()
    calls, outputs, untraced = _calls_of_every_module(fused)
    call_counts = Counter(id(fused.get_submodule(c.target)) for c in calls)
    shared = _shared_modules(fused)

    for call in calls:
        bn = fused.get_submodule(call.target)
        if not isinstance(bn, _BatchNorm) or call.source is None:
            continue
        chain = _producers(fused, call.source, outputs)
        layer = fused.get_submodule(chain[-1])
        reason = _cannot_fold(
            layer, bn, call.source_users, [*chain, call.target], fused, call_counts, shared
        )
        if reason:
            report.left[call.target] = reason
            continue
        _fold(layer, bn)
        report.folded.append((chain[-1], call.target))

    folded_bns = {bn for _, bn in report.folded}

    for name, module in list(fused.named_modules()):
        if isinstance(module, _BatchNorm) and name in folded_bns:
            _remove(fused, name)
        elif isinstance(module, _BatchNorm) and name not in report.left:
            report.left[name] = _why_not_found(name, untraced)
        elif isinstance(module, _DropoutNd):
            _remove(fused, name)
            report.dropped.append(name)
    report.dropped += _drop_unused_aux_heads(fused, calls, untraced)
    return fused, report


@dataclass(frozen=True)
class _Call:
    """One submodule call in a module's code: the called module and, when its only argument is
    the output of another submodule call, that module and how many uses its output has."""

    caller: str
    target: str
    source: str | None
    source_users: int


def _calls_of_every_module(
    model: nn.Module,
) -> tuple[list[_Call], dict[str, str], dict[str, str]]:
    """For every module with children: the submodule calls in its code; the child whose output
    it returns (where that output has no other use); and the modules whose code is untraceable.
    """
    calls: list[_Call] = []
    outputs: dict[str, str] = {}
    untraced: dict[str, str] = {}
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            continue
        prefix = f"{name}." if name else ""
        try:
            found, output = _calls(module)
        except Exception as exc:  # torch.fx raises many types for Python it cannot follow
            untraced[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            continue
        calls += [_Call(name, prefix + t, s and prefix + s, u) for t, s, u in found]
        if output is not None:
            outputs[name] = prefix + output
    return calls, outputs, untraced


def _calls(module: nn.Module) -> tuple[list[tuple[str, str | None, int]], str | None]:
    """(target, source, source's number of users) for every submodule call in ``module``'s code,
    and the child whose output is returned as it is (None if there is no such child)."""
    if type(module).forward is nn.Sequential.forward:  # each child feeds the next, and only it
        names = list(module._modules)
        found = [(n, names[i - 1] if i else None, 1) for i, n in enumerate(names)]
        return found, names[-1] if names else None
    try:
        graphs = [_trace(module, "forward")]
    except Exception:
        methods = [m for m in _FALLBACK_METHODS if hasattr(type(module), m)]
        if not methods:
            raise
        graphs = [_trace(module, m) for m in methods]
    found = []
    for graph in graphs:
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if isinstance(src, fx.Node) and src.op == "call_module":
                found.append((str(node.target), str(src.target), len(src.users)))
            else:
                found.append((str(node.target), None, 0))
    returned = graphs[0].output_node().args[0] if len(graphs) == 1 else None
    if isinstance(returned, fx.Node) and returned.op == "call_module" and len(returned.users) == 1:
        return found, str(returned.target)
    return found, None


def _producers(model: nn.Module, name: str, outputs: dict[str, str]) -> list[str]:
    """``name``, then the child that produces its output, and so on down to a leaf layer.

    A BN after Xception's ``SeparableConv2d`` module folds into the pointwise conv inside it.
    """
    chain = [name]
    while not isinstance(model.get_submodule(chain[-1]), _ConvNd | nn.Linear) and (
        chain[-1] in outputs
    ):
        chain.append(outputs[chain[-1]])
    return chain


def _trace(module: nn.Module, method: str) -> fx.Graph:
    tracer = _ChildrenAsLeaves(autowrap_modules=())
    tracer.traced_func_name = method
    params = list(inspect.signature(getattr(type(module), method)).parameters.values())[2:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return tracer.trace(module, concrete_args=concrete or None)


def _shared_modules(model: nn.Module) -> set[int]:
    seen = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return {key for key, count in seen.items() if count > 1}


def _cannot_fold(
    conv: nn.Module,
    bn: _BatchNorm,
    users: int,
    path: list[str],
    model: nn.Module,
    calls: Counter,
    shared: set[int],
) -> str | None:
    """Why ``bn`` cannot be folded into ``conv`` (None if it can); ``path`` runs from the
    module whose output feeds ``bn`` down to ``conv``, then ``bn`` itself."""
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return "follows a transposed convolution (not folded)"
    if not isinstance(conv, _ConvNd | nn.Linear):
        return f"follows a {type(conv).__name__}, not a convolution or linear layer"
    if bn.running_mean is None or bn.running_var is None:
        return "has no running statistics (track_running_stats=False uses batch statistics)"
    out_features = conv.out_channels if isinstance(conv, _ConvNd) else conv.out_features
    if bn.num_features != out_features:
        return f"has {bn.num_features} features but the layer before it has {out_features}"
    if users != 1:
        return "the layer's output is also used elsewhere"
    modules = [model.get_submodule(name) for name in path]
    if any(id(m) in shared or calls[id(m)] != 1 for m in modules):
        return "a module on the way is shared or called more than once"
    return None


def _fold(layer: nn.Module, bn: _BatchNorm) -> None:
    """Fold ``bn`` into ``layer``'s weight and bias in place."""
    fold = fuse_conv_bn_weights if isinstance(layer, _ConvNd) else fuse_linear_bn_weights
    layer.weight, layer.bias = fold(
        layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )


def _remove(model: nn.Module, name: str) -> None:
    """Delete module ``name`` from a plain Sequential, or replace it by an Identity elsewhere."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if type(parent).forward is nn.Sequential.forward:
        del parent._modules[child]
    else:
        setattr(parent, child, nn.Identity())


def _why_not_found(name: str, untraced: dict[str, str]) -> str:
    parent = name.rpartition(".")[0]
    if parent in untraced:
        return f"the code of {parent or 'the model'!r} cannot be traced ({untraced[parent]})"
    return "does not directly follow a convolution or linear layer"


def _drop_unused_aux_heads(
    model: nn.Module, calls: list[_Call], untraced: dict[str, str]
) -> list[str]:
    """Set ``aux*`` children (GoogLeNet's auxiliary classifiers) to None where eval code skips them.

    Only a child of a traced module, and only if no traced code outside it calls it.
    """
    called = {c.target for c in calls}
    dropped: list[str] = []
    for name, _ in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        if not child.lower().startswith("aux") or parent in untraced:
            continue
        if any(name == d or name.startswith(f"{d}.") for d in dropped):
            continue
        if any(c == name or c.startswith(f"{name}.") for c in called - _inside(calls, name)):
            continue
        setattr(model.get_submodule(parent), child, None)
        dropped.append(name)
    return dropped


def _inside(calls: list[_Call], name: str) -> set[str]:
    """Targets of calls made by the code of ``name`` or of its submodules."""
    return {c.target for c in calls if c.caller == name or c.caller.startswith(f"{name}.")}
