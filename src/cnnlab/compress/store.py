"""Storing a compressed model as a ``.cnz`` file (the bytes are :mod:`cnnlab.codec`'s).

What goes in: the weights exactly as the model holds them after pruning and weight sharing
(masks and codebooks baked in), the ``create_model`` arguments that rebuild it, and what a
user of the model needs (class names, preprocessing, the recipe, its measured accuracy).
:func:`cnnlab.load` reads the file back into a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cnnlab import codec
from cnnlab.compress.prune import layer_kind, prunable_layers
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_bytes
from cnnlab.registry import build_model
from cnnlab.saved import load as load_saved
from cnnlab.saved import read_cnz

__all__ = [
    "default_index_bits",
    "load",
    "load_state_dict",
    "plain_state_dict",
    "read_header",
    "save",
]


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with parametrized weights (masks, shared weights) evaluated."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if "parametrizations." not in key:
            out[key] = value
            continue
        prefix, rest = key.rsplit("parametrizations.", 1)
        pname, _, tail = rest.partition(".")
        if tail == "original":
            module = model.get_submodule(prefix[:-1]) if prefix else model
            out[prefix + pname] = getattr(module, pname).detach()
    return out


def default_index_bits(model: nn.Module, conv_bits: int = 8, fc_bits: int = 5) -> dict[str, int]:
    """Relative-index width per weight: 8 bits for conv, 5 for fc (Deep Compression, sec. 2)."""
    return {
        f"{name}.weight" if name else "weight": conv_bits if layer_kind(m) == "conv" else fc_bits
        for name, m in prunable_layers(model).items()
    }


def _model_config(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """num_classes, in_chans and the model's own keywords that rebuild ``model`` with
    ``build_model`` (checked on 'meta')."""
    name = model.model_name
    config = {"num_classes": model.num_classes, "in_chans": model.input_size[0]}
    config |= getattr(model, "model_kwargs", {})
    with torch.device("meta"):
        ref = build_model(name, **config).state_dict()
    if {k: tuple(v.shape) for k, v in ref.items()} != {k: tuple(v.shape) for k, v in state.items()}:
        raise ValueError(
            f"cannot tell how to rebuild this {name!r} (tried {config}); pass config=..."
        )
    return config


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None = None,
    index_bits: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> codec.CnzReport:
    """Write ``model`` to ``path`` as a .cnz file (atomically) and return the byte accounting.

    A registry model (one with ``model_name``) is stored with the ``create_model`` keyword
    arguments that rebuild it (``config``, inferred when not given); ``extra`` is JSON
    metadata (class names, preprocessing, recipe, accuracy); ``index_bits`` defaults to
    :func:`default_index_bits`. Weights that hold few distinct values (after
    :func:`cnnlab.compress.share_weights`) are stored SHARED; storage is lossless.
    """
    state = plain_state_dict(model)
    name = getattr(model, "model_name", None)
    if name is not None and config is None:
        config = _model_config(model, state)
    header = {"model": name, "config": dict(config) if config else None, "extra": extra or {}}
    bits = default_index_bits(model) if index_bits is None else index_bits
    data, report = codec.encode_state_dict(state, header=header, index_bits=bits)
    atomic_write_bytes(path, data)
    return report


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a .cnz file (model name, config, extra); the file is fully verified
    (:func:`cnnlab.saved.read_cnz`: a named model's shapes are checked before decoding)."""
    return read_cnz(path)[0]


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a .cnz file, bit-identical to those saved; ``CnnlabError`` if invalid
    (a named model's shapes are checked before anything is decoded)."""
    return read_cnz(path)[1]


def load(path: str | os.PathLike[str]) -> nn.Module:
    """The model stored in a .cnz file, in eval mode (:func:`cnnlab.load` also gives its
    metadata)."""
    if os.path.exists(path) and not codec.is_cnz(path):
        raise CnnlabError(f"{str(path)!r} is not a .cnz file")
    return load_saved(path)[0]
