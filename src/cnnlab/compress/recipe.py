"""Compression recipes: the fraction of each layer to prune and the bits to share it with.

* ``paper``: the per-layer tables of Deep Compression (Han, Mao, Dally, ICLR 2016: LeNet-300-100,
  LeNet-5, AlexNet, VGG-16; fractions kept as in Han et al., "Learning both Weights and
  Connections for Efficient Neural Networks", NeurIPS 2015; docs/reference/deep_compression.md);
* ``sensitivity``: from a quick sweep that prunes one layer at a time without retraining
  (the same paper, Sec. 3.3 and figure 6): each layer gets the largest fraction whose top-1
  stays within ``tolerance`` points of the unpruned model;
* a TOML file::

      [layers]
      "features.conv1" = { sparsity = 0.34, bits = 8 }
      "classifier.*" = { sparsity = 0.9 }       # shell patterns; bits: --conv-bits / --fc-bits

Layers that no entry names are not pruned. Bits a recipe does not set are ``conv_bits`` /
``fc_bits`` (the paper's 8 and 5 by default). :func:`choose` gives ``paper`` where the model has
a table, else ``sensitivity``.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.compress.prune import prunable_layers, sensitivity
from cnnlab.errors import CnnlabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PAPER",
    "SWEEP",
    "Recipe",
    "check",
    "choose",
    "from_file",
    "from_paper",
    "from_sensitivity",
]

MAX_RECIPE_BYTES = 1 << 20
SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)  # fractions tried per layer by ``sensitivity``

_ALEXNET = {
    **{f"features.conv{i}": (kept, 8) for i, kept in enumerate((0.84, 0.38, 0.35, 0.37, 0.37), 1)},
    "classifier.fc6": (0.09, 5),
    "classifier.fc7": (0.09, 5),
    "classifier.fc8": (0.25, 5),
}
_VGG16_CONV_KEPT = {  # Han et al. 2015, the VGG-16 table
    "1_1": 0.58, "1_2": 0.22, "2_1": 0.34, "2_2": 0.36, "3_1": 0.53, "3_2": 0.24, "3_3": 0.42,
    "4_1": 0.32, "4_2": 0.27, "4_3": 0.34, "5_1": 0.35, "5_2": 0.29, "5_3": 0.36,
}  # fmt: skip
_VGG16 = {
    **{f"features.conv{k}": (kept, 8) for k, kept in _VGG16_CONV_KEPT.items()},
    "classifier.fc6": (0.04, 5),
    "classifier.fc7": (0.04, 5),
    "classifier.fc8": (0.23, 5),
}
# model -> layer -> (fraction of weights kept, bits): the paper's per-layer tables.
PAPER: dict[str, dict[str, tuple[float, int]]] = {
    "lenet_300_100": {"hidden.fc1": (0.08, 6), "hidden.fc2": (0.09, 6), "fc": (0.26, 6)},
    "lenet5_caffe": {
        "features.conv1": (0.66, 8),
        "features.conv2": (0.12, 8),
        "fc1": (0.08, 5),
        "fc2": (0.19, 5),
    },
    "alexnet": _ALEXNET,
    "alexnet_tv": _ALEXNET,
    "vgg16": _VGG16,
    "vgg16_bn": _VGG16,
}


@dataclass(frozen=True)
class Recipe:
    """Per-layer sparsity (fraction removed), the weight-sharing bits the recipe itself sets
    (other layers get ``conv_bits`` / ``fc_bits``: :func:`cnnlab.compress.pipeline.plan`), and
    where they came from."""

    source: str
    sparsity: dict[str, float]
    bits: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sparsity": self.sparsity, "bits": self.bits}


def from_paper(model: nn.Module) -> Recipe:
    """The paper's table for this model (``CnnlabError`` for a model the paper did not run)."""
    name = getattr(model, "model_name", type(model).__name__)
    table = PAPER.get(name)
    if table is None:
        raise CnnlabError(
            f"the Deep Compression paper has no per-layer table for {name} (it has: "
            f"{', '.join(PAPER)}); use --recipe sensitivity or a recipe file"
        )
    layers = prunable_layers(model)
    missing = [n for n in table if n not in layers]
    if missing:  # a preset whose layer names drifted from the model
        raise CnnlabError(f"paper recipe names layers {name} lacks: {missing}")
    return Recipe(
        "paper",
        {n: round(1 - kept, 4) for n, (kept, _) in table.items()},
        {n: bits for n, (_, bits) in table.items()},
    )


def from_sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    tolerance: float = 1.0,
    fractions: Iterable[float] = SWEEP,
) -> Recipe:
    """Per layer, the largest of ``fractions`` whose top-1 (``evaluate``, in %) is within
    ``tolerance`` points of the unpruned model's, pruning that layer alone; 0 if none is."""
    baseline = float(evaluate(model))
    curves = sensitivity(model, evaluate, fractions)
    sparsity = {
        name: max([f for f, acc in curve if acc >= baseline - tolerance], default=0.0)
        for name, curve in curves.items()
    }
    return Recipe("sensitivity", sparsity, {})


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CnnlabError(f"recipe file {str(p)!r} does not exist or is not a regular file")
    if p.stat().st_size > MAX_RECIPE_BYTES:
        raise CnnlabError(f"recipe file {str(p)!r} is larger than {MAX_RECIPE_BYTES} bytes")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"recipe file {str(p)!r} is not valid TOML: {exc}") from None
    layers = data.get("layers")
    if set(data) != {"layers"} or not isinstance(layers, dict) or not layers:
        raise CnnlabError(f"recipe file {str(p)!r} must hold one non-empty [layers] table")
    return layers


def _entry(pattern: str, entry: Any, source: str) -> tuple[float, int | None]:
    if not isinstance(entry, dict) or not set(entry) <= {"sparsity", "bits"}:
        raise CnnlabError(f"{source}: {pattern!r} must be {{ sparsity = S, bits = B }}")
    s, b = entry.get("sparsity", 0.0), entry.get("bits")
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < 1:
        raise CnnlabError(f"{source}: {pattern!r}: sparsity must be a number in [0, 1)")
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16):
        raise CnnlabError(f"{source}: {pattern!r}: bits must be an integer in 1..16")
    return float(s), b


def from_file(model: nn.Module, path: str | os.PathLike[str]) -> Recipe:
    """A TOML recipe; a pattern that matches no layer of ``model`` is an error."""
    names = list(prunable_layers(model))
    bits: dict[str, int] = {}
    sparsity: dict[str, float] = {}
    for pattern, entry in _read_toml(path).items():
        s, b = _entry(pattern, entry, str(path))
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise CnnlabError(
                f"{str(path)!r}: layer {pattern!r} matches no layer of "
                f"{getattr(model, 'model_name', 'the model')} (its layers: {', '.join(names)})"
            )
        for n in hits:
            sparsity[n] = s
            if b is not None:
                bits[n] = b
    return Recipe(
        str(path),
        {n: sparsity[n] for n in names if n in sparsity},
        {n: bits[n] for n in names if n in bits},
    )


def check(model: nn.Module, recipe: str | None) -> None:
    """What :func:`choose` would refuse, found without evaluating: the paper's table for a
    model it lacks, a bad TOML file, a pattern that matches no layer."""
    if recipe is None or recipe == "sensitivity":
        return
    if recipe == "paper":
        from_paper(model)
    else:
        from_file(model, recipe)


def choose(
    model: nn.Module,
    recipe: str | None,
    evaluate: Callable[[nn.Module], float],
    tolerance: float = 1.0,
) -> Recipe:
    """``recipe`` = ``"paper"``, ``"sensitivity"``, a TOML path, or None: the paper's table
    where the model has one, else the sensitivity sweep."""
    if recipe is None:
        recipe = "paper" if getattr(model, "model_name", None) in PAPER else "sensitivity"
    if recipe == "paper":
        return from_paper(model)
    if recipe == "sensitivity":
        return from_sensitivity(model, evaluate, tolerance)
    return from_file(model, recipe)
