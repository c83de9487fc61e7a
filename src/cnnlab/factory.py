"""``create_model``: a registered model, built fresh or from saved weights, whole or as its
feature maps (timm's ``create_model(name, pretrained=..., features_only=...)``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.features import FeatureListModel
from cnnlab.registry import build_model
from cnnlab.saved import is_aux_key, load

__all__ = ["create_model", "load_pretrained"]


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    *,
    pretrained: str | os.PathLike[str] | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered as ``name``.

    * ``num_classes``, ``in_chans``, ``init`` and the model's own keywords (drop rates,
      ``global_pool``, the papers' switches: :func:`cnnlab.registry.accepted_keywords`) as in
      :func:`cnnlab.registry.build_model`; ``num_classes=0`` leaves out the classifier.
    * ``pretrained``: any file :func:`cnnlab.load` takes (a cnnlab file or run folder, a
      ``.cnz``, ``torchvision:PATH`` / ``timm:PATH`` weights). A different ``num_classes``
      gets a new classifier; the weights must otherwise fit the model the keywords describe.
    * ``features_only=True``: a :class:`~cnnlab.models.features.FeatureListModel` returning
      the maps of ``out_indices`` (default all levels of ``model.feature_info``).

    Raises ``ValueError`` for an unknown name or keyword and a bad value, and
    :class:`~cnnlab.errors.CnnlabError` for a file that cannot be loaded.
    """
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature levels; it needs features_only=True")
    if pretrained is None:
        model = build_model(name, num_classes, in_chans, **kwargs)
    else:
        model = _pretrained(name, pretrained, num_classes, in_chans, kwargs)
    return FeatureListModel(model, out_indices) if features_only else model


def load_pretrained(
    name: str, source: str | os.PathLike[str], **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """(``name`` holding the weights of ``source``, the file's metadata): built as the file
    says, with ``kwargs`` (the model's own keywords) on top of the ones it stored. Keywords
    that change the network's shapes make the weights not fit: a ``CnnlabError``."""
    if kwargs.get("init") is not None:
        raise ValueError("init re-initialises the weights that pretrained loads; pass one")
    loaded, meta = load(source, name)
    if not kwargs:
        return loaded.train(), meta
    stored = {**meta["model_kwargs"], **kwargs}
    model = build_model(name, meta["num_classes"], meta["in_chans"], **stored)
    _copy_weights(loaded.state_dict(), model, f"{os.fspath(source)!r} does not fit {name} {kwargs}")
    return model.train(), meta


def _copy_weights(weights: dict[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """``weights`` into ``model`` where every tensor but an auxiliary head's fits by name and
    shape; otherwise a ``CnnlabError`` (``what``: the start of its line), model untouched."""
    own = model.state_dict()
    wrong = [k for k in own.keys() | weights.keys() if not is_aux_key(k) and (
        k not in own or k not in weights or own[k].shape != weights[k].shape
    )]  # fmt: skip
    if wrong:
        raise CnnlabError(f"{what}: {', '.join(sorted(wrong)[:5])} differ")
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)


def _pretrained(
    name: str,
    source: str | os.PathLike[str],
    num_classes: int | None,
    in_chans: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """``name`` built with ``kwargs``, holding the weights of ``source``; the classifier is new
    where ``num_classes`` differs from the file's."""
    pool = kwargs.pop("global_pool", None) if kwargs.get("global_pool") == "" else None
    model, meta = load_pretrained(name, source, **kwargs)
    if in_chans is not None and in_chans != meta["in_chans"]:
        raise ValueError(
            f"{os.fspath(source)!r} holds {name} for {meta['in_chans']}-channel input, "
            f"not in_chans={in_chans}"
        )
    classes = meta["num_classes"] if num_classes is None else num_classes
    if classes != meta["num_classes"] or pool is not None:
        model.reset_classifier(classes, pool)
    return model
