"""The model registry: ``build_model`` (``build_on_meta``), ``list_models``, ``model_info``.

A leaf: it imports no model; ``import cnnlab`` imports :mod:`cnnlab.models`, whose family
files register themselves. :func:`cnnlab.create_model` (:mod:`cnnlab.factory`) builds on
``build_model`` with pretrained weights and ``features_only``.

Each architecture file registers its builders with :func:`register_model`, together with the
paper, the native input size and the reference figures (params, MACs) that the fidelity tests
check against (``docs/reference/architectures.md``).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlab.devices import available_memory
from cnnlab.layers import INITS, init_weights

__all__ = [
    "COMMON_KEYWORDS",
    "TASKS",
    "ModelEntry",
    "ShapesOnly",
    "accepted_keywords",
    "build_model",
    "build_on_meta",
    "keyword_defaults",
    "list_models",
    "match_models",
    "model_info",
    "register_model",
]


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one model name."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    paper: str
    year: int
    input_size: tuple[int, int, int]
    num_classes: int
    min_input_size: int
    reference_params: int | None
    reference_macs: int | None
    source: str
    task: str = "classification"
    train_lr: float | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "year": self.year,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
            "min_input_size": self.min_input_size,
            "reference_params": self.reference_params,
            "reference_macs": self.reference_macs,
            "source": self.source,
            "task": self.task,
            "train_lr": self.train_lr,
            "defaults": dict(self.defaults),
        }


_REGISTRY: dict[str, ModelEntry] = {}
# What a model does: "classification" (forward gives logits; the ClassifierModel interface) or
# "detection" (forward gives box regressions and class logits per anchor: cnnlab.models.ssd).
TASKS = ("classification", "detection")


def register_model(
    name: str,
    *,
    family: str,
    paper: str,
    year: int,
    input_size: int = 224,
    in_chans: int = 3,
    num_classes: int = 1000,
    min_input_size: int = 32,
    reference_params: int | None = None,
    reference_macs: int | None = None,
    source: str = "",
    task: str = "classification",
    train_lr: float | None = None,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(num_classes, in_chans, **kwargs)`` under ``name``.

    ``in_chans`` and ``num_classes`` are the paper's (what ``create_model`` builds unless told
    otherwise, and what the reference figures count). ``reference_macs`` is multiply-accumulates
    of Conv and Linear layers at batch 1 and the native ``input_size``; ``defaults`` are
    keyword arguments that make a preset (for example ``alpha=0.75`` for
    ``mobilenet_v1_075``); ``task`` is one of :data:`TASKS`; ``train_lr`` is the SGD learning
    rate of the paper's recipe, given to families that diverge at cnnlab's default 0.05
    (``cnnlab train`` takes it when no ``--lr`` is given). Decorators stack, so one builder serves
    several names.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=builder,
            family=family,
            paper=paper,
            year=year,
            input_size=(in_chans, input_size, input_size),
            num_classes=num_classes,
            min_input_size=min_input_size,
            reference_params=reference_params,
            reference_macs=reference_macs,
            source=source,
            task=task,
            train_lr=train_lr,
            defaults=defaults,
        )
        return builder

    return decorator


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `cnnlab models`"
        raise ValueError(f"unknown model {name!r}{hint}") from None


# What cnnlab.create_model takes for every model, besides each model's own keywords.
COMMON_KEYWORDS = ("num_classes", "in_chans", "init", "pretrained", "features_only", "out_indices")


def build_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    init: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered as ``name`` with random weights.

    ``num_classes`` and ``in_chans`` default to the paper's: 1000 classes of RGB images for the
    ImageNet networks, 10 classes of grey images for the LeNets; ``num_classes=0`` builds the
    model without its last layer (``forward`` returns the ``(N, head_hidden_size)`` features).
    ``init`` replaces the paper's
    initialisation of the Conv / Linear weights (:func:`cnnlab.layers.init_weights`: ``"he"``,
    ``"xavier"``, ``"normal"``). Other keywords are the model's own
    (:func:`accepted_keywords`), kept in ``model.model_kwargs`` so that saved files rebuild the
    same network. Raises ``ValueError`` for an unknown name (suggesting the closest names), an
    unknown keyword (naming those the model takes) or a bad value.
    """
    entry = _entry(name)
    num_classes = entry.num_classes if num_classes is None else num_classes
    in_chans = entry.input_size[0] if in_chans is None else in_chans
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if num_classes == 0 and entry.task != "classification":
        raise ValueError(f"{name} is a {entry.task} model: num_classes must be >= 1")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    if init is not None and init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    unknown = [k for k in kwargs if k not in accepted_keywords(name)]
    if unknown:
        raise ValueError(
            f"{name} does not take {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join([*COMMON_KEYWORDS, *accepted_keywords(name)])}"
        )
    if kwargs or in_chans not in (1, 3) or num_classes > entry.num_classes:
        _check_fits(name, num_classes, in_chans, kwargs)
    built = {**entry.defaults, **kwargs}
    # Built with a classifier, then without (and without pooling for global_pool="").
    pool = built.pop("global_pool", None) if num_classes == 0 else None
    try:
        model = entry.builder(num_classes=num_classes or 1, in_chans=in_chans, **built)
    except TypeError as exc:  # a preset fixes a keyword the class also takes
        raise ValueError(f"{name}: {exc}") from None
    if num_classes == 0:  # no classifier: forward gives the (N, head_hidden_size) features
        model.reset_classifier(0, pool)
    # A builder may set a different native size (MobileNet's resolution multiplier does).
    if getattr(model, "input_size", None) is None:
        model.input_size = (in_chans, *entry.input_size[1:])
    if getattr(model, "min_input_size", None) is None:
        model.min_input_size = entry.min_input_size
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    model.num_classes = num_classes
    return model if init is None else init_weights(model, init)


def _check_fits(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> None:
    """A model whose size the caller chose (its own keywords, more classes or channels than
    the paper's) is built on 'meta' first: weights larger than the memory available are a
    ``ValueError``, before they take the machine's memory or fail half-allocated."""
    if torch.get_default_device().type == "meta":  # this is that shapes-only build
        return
    model = build_on_meta(name, num_classes, in_chans, **kwargs)
    need = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    have = available_memory(torch.device("cpu"))
    if need > have:
        raise ValueError(
            f"{name} with num_classes={num_classes}, in_chans={in_chans}"
            + "".join(f", {k}={v!r}" for k, v in kwargs.items())
            + f" has {need / 2**30:,.1f} GiB of weights; {have / 2**30:,.1f} GiB of memory is free"
        )


def _keyword_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The builder's keyword parameters, and where it passes ``**kwargs`` on, those of the
    class its return annotation names (num_classes and in_chans left out)."""
    builder = _entry(name).builder
    params = dict(inspect.signature(builder).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        built = typing.get_type_hints(builder).get("return")
        if isinstance(built, type):
            params |= inspect.signature(built.__init__).parameters
    skip = {"self", "num_classes", "in_chans"}
    return {
        k: p for k, p in params.items()
        if k not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }  # fmt: skip


def accepted_keywords(name: str) -> list[str]:
    """The keyword arguments ``create_model(name, ...)`` takes besides num_classes, in_chans
    and :data:`COMMON_KEYWORDS`: the model's own."""
    return sorted(_keyword_parameters(name))


def keyword_defaults(name: str) -> dict[str, Any]:
    """Each of the model's own keywords with the value ``name`` builds by default (a preset's
    value where it sets one), sorted by name."""
    params = _keyword_parameters(name)
    defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
    return dict(sorted((defaults | _entry(name).defaults).items()))


def list_models(pattern: str = "*", task: str | None = "classification") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted: the classifiers
    by default (what the zoo's tools take), those of another of :data:`TASKS`, or with
    ``task=None`` every model."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} or None, got {task!r}")
    return sorted(
        n for n, e in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and task in (None, e.task)
    )  # fmt: skip


def match_models(patterns: Iterable[str]) -> list[str]:
    """The models matching any of ``patterns``, in pattern order, each once: a shell-style
    pattern matches the classifiers, a model's exact name that model whatever its task (so
    ``cnnlab bench ssdlite_mobilenet_v2`` times a detector, ``cnnlab bench '*'`` the zoo).

    A pattern that matches nothing is a ``ValueError`` (a typo should not silently shrink a
    comparison or a benchmark)."""
    names: list[str] = []
    for pattern in patterns:
        found = [pattern] if pattern in _REGISTRY else list_models(pattern)
        others = list_models(pattern, task=None)
        if not found and others:
            raise ValueError(f"{pattern!r} matches no classifier, only {', '.join(others)}")
        if not found:
            raise ValueError(f"no model matches {pattern!r}; see `cnnlab models`")
        names += [n for n in found if n not in names]
    return names


def model_info(name: str) -> dict[str, Any]:
    """Paper, year, input size, reference params / MACs and their source for ``name``."""
    return _entry(name).as_dict()


_VALUES_ONLY = {
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_,
    torch.Tensor.erfinv_, torch.Tensor.clamp_, torch.Tensor.mul_, torch.Tensor.add_,
    torch.Tensor.copy_, torch.nn.functional.batch_norm, torch.batch_norm,
    torch.nn.functional.local_response_norm, torch.nn.functional.hardtanh, torch.tanh,
    *(getattr(torch.nn.init, f"{name}_") for name in (
        "normal", "uniform", "trunc_normal", "constant", "zeros", "ones", "kaiming_normal",
        "kaiming_uniform", "xavier_normal", "xavier_uniform")),
}  # fmt: skip


class ShapesOnly(TorchFunctionMode):
    """Skip, on ``meta`` tensors, the calls that change only values: weight initialisation
    (``torch.nn.init`` and the in-place ops under it), BatchNorm, LRN, ReLU6 and tanh (their
    outputs have their input's shape: the input stands for them). PyTorch runs them on
    ``meta`` through slow Python reference kernels: they took half the time of ``cnnlab
    models``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes tensor=
        if func in _VALUES_ONLY and isinstance(first, torch.Tensor) and first.is_meta:
            return first
        return func(*args, **kwargs)


def build_on_meta(name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Registered model ``name`` with every parameter and buffer on ``meta``: the shapes of
    ``build_model(name, ...)`` at no memory or initialisation cost."""
    with torch.device("meta"), ShapesOnly():
        return build_model(name, *args, **kwargs)
