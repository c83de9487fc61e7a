"""Deploy: fold BatchNorm (``fuse``), export to ONNX (``export_onnx``), benchmark (``benchmark``).

onnx, onnxscript and onnxruntime are the optional extra ``cnnlab[export]``; they are imported
only when an export or the onnxruntime backend is used.
"""

from cnnlab.deploy.bench import (
    BACKENDS,
    MATMUL_SIZE,
    TORCHVISION_DETECTORS,
    BenchResult,
    benchmark,
    matmul_peak,
    torchvision_model,
    training_step,
)
from cnnlab.deploy.export import FORMATS, ExportResult, export_onnx, onnxruntime_session
from cnnlab.deploy.fuse import FuseReport, fuse, fuse_with_report

__all__ = [
    "BACKENDS",
    "FORMATS",
    "MATMUL_SIZE",
    "TORCHVISION_DETECTORS",
    "BenchResult",
    "ExportResult",
    "FuseReport",
    "benchmark",
    "export_onnx",
    "fuse",
    "fuse_with_report",
    "matmul_peak",
    "onnxruntime_session",
    "torchvision_model",
    "training_step",
]
