"""A run's checkpoints: weights through :mod:`cnnlab.saved`, training state here.

A run folder holds

* ``last.safetensors`` + ``last.state.pt``: the model (auxiliary heads included) and the
  training state (optimizer, scheduler, epoch, step, RNG states, config, history, all plain
  data) at the end of the last completed epoch; what ``--resume`` continues from;
* ``best.safetensors``: the inference model (auxiliary heads dropped) of the epoch with the
  best validation top-1;
* ``interrupted.safetensors``: the weights at the moment of a Ctrl-C.

Every file is written atomically (temp file, fsync, ``os.replace``). The weights are cnnlab
safetensors (:func:`cnnlab.saved.save_weights`) whose metadata holds the model name, class
names, preprocessing, epoch and step,
and the pair ``last.*`` records the same step in both files, so a pair torn apart by a kill
between the two renames is detected. Nothing read from a file is ever executed: safetensors
holds only tensors and ``weights_only=True`` refuses any pickled code.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path

__all__ = ["load_state", "save_state"]

STATE_FORMAT = "cnnlab.train-state/1"


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
