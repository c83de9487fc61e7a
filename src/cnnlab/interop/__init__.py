"""Weight conversion from torchvision and timm layouts to cnnlab's.

Our models register their layers in the same order as the reference implementation of the
same architecture, so a state dict converts by position: the n-th tensor of theirs becomes
the n-th of ours, and every shape must agree. ``tests/test_interop.py`` checks that the
converted model gives the reference model's outputs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch

from cnnlab.registry import build_on_meta

__all__ = [
    "TIMM_NAMES",
    "TORCHVISION_NAMES",
    "convert_by_position",
    "from_timm",
    "from_torchvision",
]

# cnnlab name -> torchvision.models builder name
TORCHVISION_NAMES: dict[str, str] = {
    "alexnet_tv": "alexnet",
    **{f"vgg{d}{bn}": f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "googlenet_tv": "googlenet",
    **{f"resnet{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)},
    "mobilenet_v2": "mobilenet_v2",
    "efficientnet_b0": "efficientnet_b0",
}

# cnnlab name -> timm model name
TIMM_NAMES: dict[str, str] = {
    "xception": "legacy_xception",
    "mobilenet_v1": "mobilenetv1_100",
}

# Keys of theirs that have no counterpart in ours (shell-style patterns), per cnnlab name.
_SKIP: dict[str, tuple[str, ...]] = {
    "googlenet_tv": ("aux1.*", "aux2.*"),
}


def convert_by_position(
    target: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    skip: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Map ``state_dict`` onto the keys of ``target`` in order, checking every shape.

    Raises ``ValueError`` naming the first key whose shape does not fit, or the keys left over.
    """
    theirs = [(k, v) for k, v in state_dict.items() if not any(fnmatch.fnmatch(k, p) for p in skip)]
    ours = list(target.items())
    if len(theirs) != len(ours):
        raise ValueError(
            f"state dict has {len(theirs)} tensors, the model expects {len(ours)}; "
            f"first unmatched: {_first_mismatch(ours, theirs)}"
        )
    out: dict[str, torch.Tensor] = {}
    for (our_key, our_value), (their_key, their_value) in zip(ours, theirs, strict=True):
        if tuple(our_value.shape) != tuple(their_value.shape):
            raise ValueError(
                f"{their_key} {tuple(their_value.shape)} does not fit "
                f"{our_key} {tuple(our_value.shape)}"
            )
        out[our_key] = their_value
    return out


def _first_mismatch(ours: list, theirs: list) -> str:
    for (ok, ov), (tk, tv) in zip(ours, theirs, strict=False):
        if tuple(ov.shape) != tuple(tv.shape):
            return f"{tk} {tuple(tv.shape)} vs {ok} {tuple(ov.shape)}"
    longer, name = (ours, "model") if len(ours) > len(theirs) else (theirs, "state dict")
    key, value = longer[min(len(ours), len(theirs))]
    return f"{name} key {key} {tuple(value.shape)}"


def _convert(name: str, state_dict: Mapping[str, torch.Tensor], **model_kwargs) -> dict:
    skip = _SKIP.get(name, ())
    if model_kwargs.get("aux_logits"):  # googlenet_tv built with its aux heads takes theirs too
        skip = ()
    kept = [v for k, v in state_dict.items() if not any(fnmatch.fnmatch(k, p) for p in skip)]
    if not kept:
        raise ValueError("the state dict is empty")
    matrices = [v for v in kept if v.dim() == 2]
    convs = [v for v in kept if v.dim() == 4]
    model_kwargs.setdefault("num_classes", matrices[-1].shape[0] if matrices else 1000)
    model_kwargs.setdefault("in_chans", convs[0].shape[1] if convs else 3)
    model = build_on_meta(name, **model_kwargs)
    return convert_by_position(model.state_dict(), state_dict, skip)


def from_torchvision(name: str, state_dict: Mapping[str, torch.Tensor], **model_kwargs) -> dict:
    """Convert a torchvision state dict to the cnnlab model ``name`` (see TORCHVISION_NAMES)."""
    if name not in TORCHVISION_NAMES:
        raise ValueError(
            f"{name!r} has no torchvision counterpart; these do: {', '.join(TORCHVISION_NAMES)}"
        )
    return _convert(name, state_dict, **model_kwargs)


def from_timm(name: str, state_dict: Mapping[str, torch.Tensor], **model_kwargs) -> dict:
    """Convert a timm state dict to the cnnlab model ``name`` (see TIMM_NAMES)."""
    if name not in TIMM_NAMES:
        raise ValueError(f"{name!r} has no timm counterpart; these do: {', '.join(TIMM_NAMES)}")
    return _convert(name, state_dict, **model_kwargs)
