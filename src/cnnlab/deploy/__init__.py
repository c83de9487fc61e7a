"""Deploy: fold BatchNorm (``fuse``), export to ONNX, benchmark inference."""

from cnnlab.deploy.fuse import FuseReport, fuse, fuse_with_report

__all__ = ["FuseReport", "fuse", "fuse_with_report"]
