"""``features_only``: a model's multi-scale feature maps, for detectors and segmenters (timm's
``features_only=True``).

Each model lists its levels in ``feature_info`` (module, channels, reduction = cumulative
stride). :class:`FeatureListModel` traces the model with torch.fx
(``torchvision.models.feature_extraction``), keeps the graph up to the deepest level asked for
and returns the chosen maps, shallow to deep.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from cnnlab.models.base import ClassifierModel

__all__ = ["FeatureInfo", "FeatureListModel"]


class FeatureInfo:
    """The levels a :class:`FeatureListModel` returns: ``channels()``, ``reduction()``,
    ``module_name()`` give one value per level, or that of level ``idx`` (timm's interface)."""

    def __init__(self, levels: Sequence[dict[str, Any]]) -> None:
        self.info = [dict(level) for level in levels]

    def get(self, key: str, idx: int | None = None) -> Any:
        return [level[key] for level in self.info] if idx is None else self.info[idx][key]

    def channels(self, idx: int | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


def _level_indices(name: str, count: int, out_indices: Sequence[int] | None) -> list[int]:
    """``out_indices`` as increasing indices into the model's ``count`` levels (negative ones
    count from the deepest); all of them by default."""
    if count == 0:
        raise ValueError(f"{name} has no feature maps (fully connected), so no features_only")
    if out_indices is None:
        return list(range(count))
    if isinstance(out_indices, int | str) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in out_indices
    ):
        raise ValueError(f"out_indices must be a sequence of level indices, got {out_indices!r}")
    bad = [i for i in out_indices if not -count <= i < count]
    if bad or not out_indices:
        raise ValueError(
            f"{name} has {count} feature levels (0..{count - 1}); out_indices {out_indices!r}"
        )
    indices = [i % count for i in out_indices]
    if indices != sorted(set(indices)):
        raise ValueError(f"out_indices must name distinct levels shallow to deep: {out_indices!r}")
    return indices


class FeatureListModel(nn.Module):
    """``model``'s feature maps at ``out_indices`` (default: every level), shallow to deep.

    ``feature_info`` describes exactly the returned maps. The parameters are ``model``'s own
    (shared, not copied), under ``graph_module.``; the classifier and any layer after the
    deepest level are dropped.
    """

    def __init__(self, model: ClassifierModel, out_indices: Sequence[int] | None = None) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor

        super().__init__()
        name = getattr(model, "model_name", type(model).__name__)
        indices = _level_indices(name, len(getattr(model, "feature_info", [])), out_indices)
        self.feature_info = FeatureInfo([model.feature_info[i] for i in indices])
        self.out_indices = tuple(indices)
        self.model_name = name
        self.input_size, self.min_input_size = model.input_size, model.min_input_size
        nodes = {module: str(k) for k, module in enumerate(self.feature_info.module_name())}
        with warnings.catch_warnings():  # train-only nodes (dropout, aux heads) are not ours
            warnings.filterwarnings("ignore", "NOTE: The nodes obtained by tracing")
            self.graph_module = create_feature_extractor(model, return_nodes=nodes)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for a batch the trunk cannot take (any size from the minimum)."""
        if x.dim() != 4 or (self.input_size and x.shape[1] != self.input_size[0]):
            channels = self.input_size[0] if self.input_size else "C"
            raise ValueError(f"expected a batch (N, {channels}, H, W), got {tuple(x.shape)}")
        minimum = self.min_input_size or 1
        if min(x.shape[-2:]) < minimum:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than the minimum "
                f"{minimum}x{minimum} that {self.model_name} supports"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not (torch.compiler.is_compiling() or is_fx_symbolic_tracing()):
            self.check_input(x)
        return list(self.graph_module(x).values())
