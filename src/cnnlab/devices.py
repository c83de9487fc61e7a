"""Where to compute: ``resolve_device`` turns ``--device`` into a usable ``torch.device``."""

from __future__ import annotations

import torch

from cnnlab.errors import CnnlabError

__all__ = ["resolve_device"]


def resolve_device(name: str | None = None) -> torch.device:
    """``None``: the first CUDA GPU if there is one, else the CPU; ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` where that GPU exists. Anything else is one ``CnnlabError`` line."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CnnlabError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CnnlabError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise CnnlabError(f"--device {name}: no CUDA GPU is available on this machine")
    if device.index is not None and device.index >= count:
        raise CnnlabError(f"--device {name}: this machine has {count} CUDA GPU(s)")
    return device
