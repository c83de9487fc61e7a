"""Measure models: parameters, MACs, activations, memory, comparisons, gradient flow."""

from cnnlab.analysis.compare import compare_models, measure_latency, zoo_table
from cnnlab.analysis.gradients import GradientReport, gradient_norms
from cnnlab.analysis.macs import count_macs, layer_macs
from cnnlab.analysis.profile import LayerRow, Profile, measure_memory, profile

__all__ = [
    "GradientReport",
    "LayerRow",
    "Profile",
    "compare_models",
    "count_macs",
    "gradient_norms",
    "layer_macs",
    "measure_latency",
    "measure_memory",
    "profile",
    "zoo_table",
]
