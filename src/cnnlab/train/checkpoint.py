"""Checkpoints: weights in safetensors, training state through ``torch.load(weights_only=True)``.

A run folder holds

* ``last.safetensors`` + ``last.state.pt``: the model (auxiliary heads included) and the
  training state (optimizer, scheduler, epoch, step, RNG states, config, history, all plain
  data) at the end of the last completed epoch; what ``--resume`` continues from;
* ``best.safetensors``: the inference model (auxiliary heads dropped) of the epoch with the
  best validation top-1;
* ``interrupted.safetensors``: the weights at the moment of a Ctrl-C.

Every file is written atomically (temp file, fsync, ``os.replace``). The weights carry
metadata (``format``, model name, class names, preprocessing, epoch, step) as JSON strings,
and the pair ``last.*`` records the same step in both files, so a pair torn apart by a kill
between the two renames is detected. Nothing read from a file is ever executed: safetensors
holds only tensors and ``weights_only=True`` refuses any pickled code.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from cnnlab.io import CnnlabError, atomic_path, atomic_write_bytes

__all__ = [
    "FORMAT",
    "is_aux_key",
    "load_state",
    "load_weights",
    "read_meta",
    "read_weights",
    "resolve_weights",
    "save_state",
    "save_weights",
]

FORMAT = "cnnlab.weights/1"
STATE_FORMAT = "cnnlab.train-state/1"


def is_aux_key(key: str) -> bool:
    """Parameters of auxiliary heads (``aux1.*``, ``aux2.*``), used in training only."""
    return key.split(".", 1)[0].startswith("aux")


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    meta: dict[str, Any] | None = None,
    drop_aux: bool = False,
) -> None:
    """Write the model's tensors (and JSON ``meta``) to ``path`` atomically."""
    tensors = _state_dict(model)
    if drop_aux:
        tensors = {k: v for k, v in tensors.items() if not is_aux_key(k)}
    # Tied tensors (shared storage) are cloned: safetensors stores each tensor on its own.
    seen: set[int] = set()
    for k, v in tensors.items():
        if v.untyped_storage().data_ptr() in seen:
            tensors[k] = v.clone()
        seen.add(tensors[k].untyped_storage().data_ptr())
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def resolve_weights(path: str | os.PathLike[str]) -> Path:
    """A weights file, or a run folder's ``best.safetensors`` (else ``last.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CnnlabError(f"no best.safetensors or last.safetensors in folder {str(p)!r}")
    if not p.exists():
        raise CnnlabError(f"checkpoint {str(p)!r} does not exist")
    return p


def read_weights(
    path: str | os.PathLike[str], with_tensors: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a cnnlab weights file; any other file is a CnnlabError.

    ``with_tensors=False`` reads the header only (the tensors come back empty)."""
    p = resolve_weights(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw_meta = f.metadata() or {}
            if raw_meta.get("format") != FORMAT:
                raise CnnlabError(f"{str(p)!r} is a safetensors file but not a cnnlab checkpoint")
            keys = f.keys() if with_tensors else []
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CnnlabError(
            f"{str(p)!r} is not a readable cnnlab checkpoint (corrupt, truncated or another "
            f"format): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError:
        raise CnnlabError(f"{str(p)!r}: corrupt checkpoint metadata") from None
    return tensors, meta


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a weights file (model, class names, preprocessing, epoch, ...)."""
    return read_weights(path, with_tensors=False)[1]


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, strict_aux: bool = False
) -> None:
    """Load our safetensors weights (a file, or a run folder's best/last) into ``model``.

    Auxiliary-head tensors may be missing from the file (inference weights) or from the model
    (built without them); everything else must match in name and shape, or ``CnnlabError``
    says what does not fit and the model is left untouched.
    """
    tensors, _ = read_weights(path)
    target = getattr(model, "module", model)
    own = target.state_dict()
    missing = [k for k in own if k not in tensors and (strict_aux or not is_aux_key(k))]
    unexpected = [k for k in tensors if k not in own and (strict_aux or not is_aux_key(k))]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if keys
    ]
    if problems:
        name = getattr(target, "model_name", type(target).__name__)
        raise CnnlabError(
            f"checkpoint {str(resolve_weights(path))!r} does not fit {name}: " + "; ".join(problems)
        )
    with torch.no_grad():
        for k, v in own.items():
            if k in tensors:
                v.copy_(tensors[k])


def save_state(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the training state atomically (tensors and plain Python data only)."""
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: pickled code is refused, not run."""
    p = Path(path)
    if not p.is_file():
        raise CnnlabError(f"training state {str(p)!r} does not exist")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is not worth a warning
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile, AttributeError, TypeError) as exc:  # fmt: skip
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnlabError(
            f"{str(p)!r} is not a cnnlab training state (refused: {first[:160]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CnnlabError(f"{str(p)!r} is not a cnnlab training state")
    return state
